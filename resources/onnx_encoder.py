"""ONNX Runtime encoder for a local sentence-transformers folder (Transformer + mean Pooling
[+ Normalize]): exported once with torch.onnx.export, cached under the model cache
(`KB_MODEL_CACHE`, default `$KB_HOME/models`) as `onnx/<key>/model.onnx`, then run without
torch. Tokeniser, truncation (max_seq_length), mean pooling and L2 normalisation are the
sentence-transformers ones, so fp32 vectors equal the torch backend's (tests check it).
Nothing is downloaded: the export reads only the model folder."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
import threading
import warnings
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

# Bumped whenever the exported graph or its post-processing changes: part of the cache key.
# 2: attention exported from the eager implementation, not transformers' default SDPA.
EXPORTER_VERSION = "2"
OPSET = 17
META_FILE = "kb_onnx.json"
MODEL_FILE = "model.onnx"
# Quantisations by backend name: None is fp32. "onnx-int8" quantises the weights of the
# MatMuls per output channel (the word-embedding Gather stays fp32): the variant whose
# retrieval quality held on scifact (benchmarks/bench_encoder.py, BENCHMARKS.md).
QUANTIZATIONS: dict[str, str | None] = {"onnx": None, "onnx-int8": "int8-matmul-perchannel"}
_EXPORT_LOCK = threading.Lock()


class OnnxUnavailable(RuntimeError):
    """The ONNX backend cannot serve this model (runtime missing, unsupported layout, export
    failed); the Embedder falls back to torch with one warning."""


@dataclass(frozen=True)
class ModelLayout:
    """What the sentence-transformers folder says about pooling and truncation."""

    folder: Path
    transformer_dir: Path
    max_seq_length: int
    do_lower_case: bool


def read_layout(folder: Path) -> ModelLayout:
    """Accept only Transformer -> mean Pooling [-> Normalize]; anything else is not ours to
    reproduce and raises OnnxUnavailable naming the file."""
    modules_file = folder / "modules.json"
    if not modules_file.is_file():
        raise OnnxUnavailable(f"{modules_file} missing: not a sentence-transformers folder")
    modules = json.loads(modules_file.read_text(encoding="utf-8"))
    kinds = [m.get("type", "").rsplit(".", 1)[-1] for m in modules]
    if kinds[:2] != ["Transformer", "Pooling"] or kinds[2:] not in ([], ["Normalize"]):
        raise OnnxUnavailable(f"{modules_file}: modules {kinds} are not "
                              "Transformer, Pooling[, Normalize]")
    pooling_file = folder / modules[1]["path"] / "config.json"
    pooling = json.loads(pooling_file.read_text(encoding="utf-8"))
    modes = sorted(k for k, v in pooling.items() if k.startswith("pooling_mode") and v is True)
    if modes != ["pooling_mode_mean_tokens"]:
        raise OnnxUnavailable(f"{pooling_file}: pooling {modes}, only mean pooling is exported")
    transformer_dir = folder / modules[0].get("path", "")
    st_config = {}
    for name in ("sentence_bert_config.json", "sentence_xlnet_config.json"):
        if (transformer_dir / name).is_file():
            st_config = json.loads((transformer_dir / name).read_text(encoding="utf-8"))
            break
    max_len = st_config.get("max_seq_length")
    if not max_len:
        raise OnnxUnavailable(f"{transformer_dir / 'sentence_bert_config.json'}: no max_seq_length")
    # Vectors are always L2-normalised (the Embedder asks sentence-transformers for that too).
    return ModelLayout(folder, transformer_dir, int(max_len), bool(st_config.get("do_lower_case")))


@lru_cache(maxsize=8)
def folder_digest(folder: str) -> str:
    """sha256 over every file's relative path and content: a changed weight or tokenizer file
    is a new export. Cached per process (the packaged model is ~90 MB, ~0.2 s to hash)."""
    h = hashlib.sha256()
    root = Path(folder)
    for p in sorted(q for q in root.rglob("*") if q.is_file()):
        h.update(p.relative_to(root).as_posix().encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


def export_key(folder: Path, backend: str) -> str:
    # The installed torch's version, read without importing torch (2-4 s): the exporter's
    # version is part of the key, but loading an existing export never needs torch.
    from importlib.metadata import version

    parts = [folder_digest(str(folder)), backend, str(QUANTIZATIONS[backend]),
             EXPORTER_VERSION, f"opset{OPSET}", f"torch{version('torch')}"]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:24]


def _hidden_states_module(model, input_names: list[str]):
    """The Hugging Face model called with named inputs (transformers 5 collides positional
    arguments with `use_cache`), returning last_hidden_state: the graph that is exported."""
    import torch

    class HiddenStates(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *tensors):
            return self.model(**dict(zip(input_names, tensors))).last_hidden_state

    return HiddenStates()


def traceable_model(layout: ModelLayout, attention: str):
    """(the model as a module of named input tensors returning last_hidden_state, the input
    names, a two-sentence padded sample batch) for a tracer. `attention` is transformers'
    attn_implementation, where the architecture has it."""
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(layout.transformer_dir), local_files_only=True)
    try:
        model = AutoModel.from_pretrained(str(layout.transformer_dir), local_files_only=True,
                                          attn_implementation=attention)
    except (TypeError, ValueError):  # an architecture without that implementation
        model = AutoModel.from_pretrained(str(layout.transformer_dir), local_files_only=True)
    model.eval()
    sample = tok(["a short probe", "a second, slightly longer probe sentence"], padding=True,
                 return_tensors="pt")
    names = [n for n in ("input_ids", "attention_mask", "token_type_ids") if n in sample]
    return _hidden_states_module(model, names), names, sample


def _export_fp32(layout: ModelLayout, out: Path) -> list[str]:
    import torch

    # Eager attention traces to plain MatMul/Softmax: 195 scifact abstracts encoded at 41.8
    # texts/s against 28.9 for the SDPA graph, same vectors (cosine >= 0.9999998), 2 threads,
    # 5 alternated rounds on a quiet machine. (ORT's transformer optimizer, fused Attention
    # included, added nothing on top: 41.3.)
    module, names, sample = traceable_model(layout, "eager")
    axes = {n: {0: "batch", 1: "sequence"} for n in names}
    axes["last_hidden_state"] = {0: "batch", 1: "sequence"}
    # The tracer warns about Python booleans in transformers' masking code: they are
    # constant for an encoder (no causal mask, mask as long as the input); tests compare
    # vectors on other batch sizes and lengths than the traced sample.
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(module, tuple(sample[n] for n in names),
                          str(out), input_names=names, output_names=["last_hidden_state"],
                          dynamic_axes=axes, opset_version=OPSET, dynamo=False)
    return names


def _quantize(src: Path, dst: Path, quantization: str) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if quantization != "int8-matmul-perchannel":
        raise OnnxUnavailable(f"unknown quantization {quantization!r}")
    # The quantizer calls logging.warning(), which on a root logger without handlers installs
    # a stderr handler for the whole process: a placeholder handler keeps logging as it was.
    root, placeholder = logging.getLogger(), logging.NullHandler()
    root.addHandler(placeholder)
    try:
        quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=True,
                         op_types_to_quantize=["MatMul"])
    finally:
        root.removeHandler(placeholder)


def publish_folder(target: Path, build) -> Path:
    """`build(tmp)` writes an export into a private temporary folder beside `target` and
    returns its metadata (written last, as META_FILE); the folder is then renamed into place:
    a reader sees a complete folder or none, and of two concurrent exporters the loser
    discards its copy."""
    if (target / META_FILE).is_file():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", dir=target.parent))
    try:
        meta = build(tmp)
        (tmp / META_FILE).write_text(json.dumps(meta, indent=1), encoding="utf-8")
        try:
            os.rename(tmp, target)
        except OSError:  # another process renamed its complete copy first
            if not (target / META_FILE).is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target


def export(layout: ModelLayout, backend: str, target: Path) -> Path:
    """The ONNX graph of `layout` for `backend` (fp32, or quantised) in `target`."""

    def build(tmp: Path) -> dict:
        names = _export_fp32(layout, tmp / "fp32.onnx")
        quantization = QUANTIZATIONS[backend]
        if quantization:
            _quantize(tmp / "fp32.onnx", tmp / MODEL_FILE, quantization)
            (tmp / "fp32.onnx").unlink()
        else:
            (tmp / "fp32.onnx").rename(tmp / MODEL_FILE)
        return {"source": str(layout.folder), "backend": backend, "quantization": quantization,
                "inputs": names, "max_seq_length": layout.max_seq_length,
                "exporter_version": EXPORTER_VERSION}

    return publish_folder(target, build)


class FastTokenizer:
    """The model's tokenizer.json through the `tokenizers` package, set to what
    transformers' AutoTokenizer does for `(batch, padding=True, truncation="longest_first",
    max_length=...)`: same ids (tests/test_embedder_backends.py), without importing
    transformers (6-9 s of every process that embeds, measured under a `kb build`)."""

    def __init__(self, transformer_dir: Path, max_length: int):
        from tokenizers import Tokenizer

        config_file = transformer_dir / "tokenizer_config.json"
        config = (json.loads(config_file.read_text(encoding="utf-8"))
                  if config_file.is_file() else {})
        self.tokenizer = Tokenizer.from_file(str(transformer_dir / "tokenizer.json"))
        # tokenizer.json carries its own (often 128-token, fixed) truncation and padding;
        # the sentence-transformers max_seq_length and longest-in-batch padding win.
        self.tokenizer.enable_truncation(max_length=max_length, strategy="longest_first")
        pad_token = config.get("pad_token", "[PAD]")
        pad_token = pad_token.get("content", "[PAD]") if isinstance(pad_token, dict) else pad_token
        pad_id = self.tokenizer.token_to_id(pad_token)
        if pad_id is None:
            raise OnnxUnavailable(f"{config_file}: pad token {pad_token!r} not in tokenizer.json")
        self.tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token,
                                      direction=config.get("padding_side", "right"))
        unk = config.get("unk_token", "[UNK]")
        self.unk_token_id = self.tokenizer.token_to_id(
            unk.get("content", "[UNK]") if isinstance(unk, dict) else unk)

    def __call__(self, batch: list[str] | str, add_special_tokens: bool = True) -> dict:
        """A batch: padded int64 arrays. One string (as Embedder.reads_cjk asks, like
        transformers): its list of ids."""
        if isinstance(batch, str):
            return {"input_ids": self.tokenizer.encode(
                batch, add_special_tokens=add_special_tokens).ids}
        encodings = self.tokenizer.encode_batch(batch, add_special_tokens=add_special_tokens)
        return {"input_ids": np.array([e.ids for e in encodings], dtype=np.int64),
                "attention_mask": np.array([e.attention_mask for e in encodings], dtype=np.int64),
                "token_type_ids": np.array([e.type_ids for e in encodings], dtype=np.int64)}


class HFTokenizer:
    """transformers' AutoTokenizer, for model folders without a tokenizer.json."""

    def __init__(self, transformer_dir: Path, max_length: int):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(transformer_dir), local_files_only=True)
        self.max_length = max_length
        self.unk_token_id = self.tokenizer.unk_token_id

    def __call__(self, batch: list[str] | str, add_special_tokens: bool = True) -> dict:
        if isinstance(batch, str):
            return self.tokenizer(batch, add_special_tokens=add_special_tokens)
        enc = self.tokenizer(batch, padding=True, truncation="longest_first",
                             max_length=self.max_length, return_tensors="np")
        return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


def load_tokenizer(transformer_dir: Path, max_length: int):
    if (transformer_dir / "tokenizer.json").is_file():
        return FastTokenizer(transformer_dir, max_length)
    return HFTokenizer(transformer_dir, max_length)


class PooledEncoder:
    """Length-sorted batches -> tokeniser -> `_hidden` (last hidden states) -> mean pooling
    over the attention mask -> L2 norm: the sentence-transformers recipe around any runtime."""

    layout: ModelLayout
    tokenizer: object
    dim: int
    inputs: list[str]

    def _hidden(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        raise NotImplementedError

    def encode(self, texts: list[str], batch_size: int = 64) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        # Sorted by length like sentence-transformers: less padding per batch.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        for start in range(0, len(texts), batch_size):
            idx = order[start:start + batch_size]
            batch = [texts[i].lower() if self.layout.do_lower_case else texts[i] for i in idx]
            enc = self.tokenizer(batch)
            feeds = {n: enc[n] for n in self.inputs}
            hidden = self._hidden(feeds)
            mask = feeds["attention_mask"][..., None].astype(np.float32)
            pooled = (hidden * mask).sum(axis=1) / np.clip(mask.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[idx] = pooled / np.clip(norms, 1e-12, None)
        return out


class OnnxEncoder(PooledEncoder):
    """The ONNX Runtime session over the cached export."""

    def __init__(self, folder: Path, backend: str, cache_root: Path, threads: int = 2):
        try:
            import onnxruntime as ort
        except ImportError as e:
            raise OnnxUnavailable(f"onnxruntime is not installed ({e})") from e

        self.layout = read_layout(folder)
        self.target = cache_root / "onnx" / export_key(folder, backend)
        with _EXPORT_LOCK:
            try:
                export(self.layout, backend, self.target)
            except OnnxUnavailable:
                raise
            except Exception as e:  # noqa: BLE001 - any exporter failure means "use torch"
                raise OnnxUnavailable(f"export of {folder} failed: {type(e).__name__}: {e}") from e
        self.meta = json.loads((self.target / META_FILE).read_text(encoding="utf-8"))
        self.inputs = self.meta["inputs"]
        self.tokenizer = load_tokenizer(self.layout.transformer_dir, self.layout.max_seq_length)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        # No busy-waiting between ops: on a shared 2-core machine (load 11-16) spinning
        # threads made a short query 2-4x slower (49-92 ms vs 20-53 ms, side by side).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.target / MODEL_FILE), opts,
                                            providers=["CPUExecutionProvider"])
        self.dim = int(self.session.get_outputs()[0].shape[-1])

    def _hidden(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run(None, feeds)[0]
