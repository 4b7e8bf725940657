"""Fine-tuners: one interface, two providers. `LocalLoRAFineTuner` trains a LoRA adapter
(peft) on the local base model with loss on assistant tokens only; `OpenAIFineTuner` runs an
OpenAI fine-tuning job. Which one runs is configuration (`ft_config.ft_resources`)."""

from __future__ import annotations

import json
import math
import random
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path

from dagster import ConfigurableResource

from kb_core import progress
from kb_core.models import ASSISTANT_MODEL

from .ft_jobs import JobRecord
from .llm import (DEFAULT_OPENAI_MODEL, _threads, autocast, base_model_id, load_base,
                  openai_client, redact)


class FineTuneError(Exception):
    """Training could not produce a model; the message is one line, safe to show."""


@dataclass(frozen=True)
class TrainJob:
    train_file: str            # chat JSONL
    eval_file: str             # held-out chat JSONL (validation)
    out_dir: str               # where a local adapter is written
    parent: str | None = None  # adapter dir / OpenAI model id to continue from
    label: str = ASSISTANT_MODEL
    state_dir: str = ""        # where a remote job id is recorded; "" = beside the model dirs


@dataclass
class TrainResult:
    provider: str
    base_model: str
    model_ref: str             # adapter folder (local) or fine-tuned OpenAI model id
    parent: str | None
    params: dict
    metrics: dict
    loss_curve: list = field(default_factory=list)  # (step, loss)
    details: dict = field(default_factory=dict)

    def as_dict(self) -> dict:
        return asdict(self)


def read_chat_jsonl(path: str) -> list[list[dict]]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line)["messages"] for line in f if line.strip()]


class FineTuner(ConfigurableResource):
    """Interface: `provider`, `base_model()`, `settings()`, `train(job, log)`."""

    @property
    def provider(self) -> str:
        raise NotImplementedError

    def base_model(self) -> str:
        raise NotImplementedError

    def settings(self) -> dict:
        """Training settings that define a fine-tune (part of its fingerprint)."""
        return {k: getattr(self, k) for k in type(self).model_fields}

    def train(self, job: TrainJob, log=None) -> TrainResult:
        raise NotImplementedError


# -- local LoRA -----------------------------------------------------------------------------
def encode_example(tok, messages: list[dict], max_len: int):
    """(input_ids, labels, truncated) for one chat example; labels are -100 on the prompt
    (system + user + assistant header) so only the answer is learned. None if the prompt
    alone does not fit; a long answer is cut at max_len (and counted: a cut answer loses
    its citation and end token)."""
    prompt = tok.apply_chat_template(messages[:-1], tokenize=False, add_generation_prompt=True)
    full = tok.apply_chat_template(messages, tokenize=False)
    if not full.startswith(prompt):
        raise FineTuneError("the chat template does not render the prompt as a prefix of the "
                            "full conversation; cannot mask prompt tokens")
    p_ids = tok(prompt, add_special_tokens=False)["input_ids"]
    a_ids = tok(full[len(prompt):], add_special_tokens=False)["input_ids"]
    if len(p_ids) + 4 > max_len:
        return None
    ids = (p_ids + a_ids)[:max_len]
    labels = ([-100] * len(p_ids) + a_ids)[:max_len]
    return ids, labels, len(p_ids) + len(a_ids) > max_len


def length_batches(lengths: list[int], batch_size: int, rng: random.Random) -> list[list[int]]:
    """Shuffled batches of similar length (less padding), in shuffled order."""
    order = list(range(len(lengths)))
    rng.shuffle(order)
    batches = []
    chunk = batch_size * 8
    for i in range(0, len(order), chunk):
        group = sorted(order[i:i + chunk], key=lambda j: lengths[j])
        batches.extend(group[k:k + batch_size] for k in range(0, len(group), batch_size))
    rng.shuffle(batches)
    return batches


def _collate(rows, pad_id):
    import torch

    n = max(len(r[0]) for r in rows)
    ids = torch.full((len(rows), n), pad_id, dtype=torch.long)
    labels = torch.full((len(rows), n), -100, dtype=torch.long)
    mask = torch.zeros((len(rows), n), dtype=torch.long)
    for i, (x, y, *_) in enumerate(rows):
        ids[i, :len(x)] = torch.tensor(x)
        labels[i, :len(y)] = torch.tensor(y)
        mask[i, :len(x)] = 1
    return {"input_ids": ids, "labels": labels, "attention_mask": mask}


def answer_loss(model, batch):
    """Cross-entropy on answer tokens only, projecting only those positions through the
    vocabulary head (the full-sequence logits of a 49k vocabulary dominate memory)."""
    import torch

    causal = model.get_base_model() if hasattr(model, "get_base_model") else model
    hidden = causal.model(input_ids=batch["input_ids"],
                          attention_mask=batch["attention_mask"]).last_hidden_state
    labels = batch["labels"][:, 1:]
    keep = labels != -100
    logits = causal.lm_head(hidden[:, :-1][keep])
    return torch.nn.functional.cross_entropy(logits.float(), labels[keep])


def mean_loss(model, rows, pad_id, batch_size: int, precision: str = "auto") -> float | None:
    import torch

    if not rows:
        return None
    total, n = 0.0, 0
    with torch.no_grad(), autocast(precision):
        for i in range(0, len(rows), batch_size):
            b = rows[i:i + batch_size]
            total += float(answer_loss(model, _collate(b, pad_id))) * len(b)
            n += len(b)
    return round(total / n, 4)


class LocalLoRAFineTuner(FineTuner):
    """LoRA SFT on the local base model (packaged SmolLM2-135M-Instruct by default)."""

    base_model_path: str = ""      # empty: packaged GGUF; else a local HF folder or .gguf file
    epochs: int = 1
    max_steps: int = 30            # 0: no cap (epochs decide)
    batch_size: int = 4
    learning_rate: float = 1e-3
    lora_rank: int = 8
    lora_alpha: int = 16
    lora_dropout: float = 0.05
    target_modules: str = "q_proj,v_proj"
    max_seq_len: int = 384         # the sample data's longest example is ~360 tokens
    warmup_ratio: float = 0.1
    eval_loss_examples: int = 16
    log_every: int = 5
    seed: int = 0
    num_threads: int = 0           # 0: all cores (best alone; on a busy box 1 can be faster)
    precision: str = "auto"        # auto: bf16 autocast where the CPU has native bf16

    @property
    def provider(self) -> str:
        return "local"

    def base_model(self) -> str:
        return base_model_id(self.base_model_path)

    def train(self, job: TrainJob, log=None) -> TrainResult:
        with _threads(self.num_threads):
            return self._train(job, log)

    def _train(self, job: TrainJob, log) -> TrainResult:
        import torch
        from peft import LoraConfig, PeftModel, get_peft_model

        t0 = time.perf_counter()
        torch.manual_seed(self.seed)
        tok, base = load_base(self.base_model_path)
        load_s = time.perf_counter() - t0
        train = [encode_example(tok, m, self.max_seq_len) for m in read_chat_jsonl(job.train_file)]
        skipped = sum(r is None for r in train)
        train = [r for r in train if r is not None]
        truncated = sum(r[2] for r in train)
        if (skipped or truncated) and log:
            log.warning(f"{skipped} examples skipped and {truncated} cut at max_seq_len="
                        f"{self.max_seq_len} tokens: raise it (KB_FT_MAX_SEQ_LEN)")
        if not train:
            raise FineTuneError(f"no training example of {job.train_file} fits in "
                                f"max_seq_len={self.max_seq_len} tokens")
        held = [encode_example(tok, m, self.max_seq_len)
                for m in read_chat_jsonl(job.eval_file)[:self.eval_loss_examples]]
        held = [r for r in held if r is not None]
        pad = tok.pad_token_id
        eval_before = mean_loss(base, held, pad, self.batch_size, self.precision)
        with warnings.catch_warnings():  # peft probes a deprecated transformers property
            warnings.simplefilter("ignore", FutureWarning)
            if job.parent:
                model = PeftModel.from_pretrained(base, job.parent, is_trainable=True)
            else:
                model = get_peft_model(base, LoraConfig(
                    r=self.lora_rank, lora_alpha=self.lora_alpha, lora_dropout=self.lora_dropout,
                    target_modules=[m.strip() for m in self.target_modules.split(",") if m.strip()],
                    task_type="CAUSAL_LM"))
        if job.parent:  # the parent adapter's own loss is the fair "before"
            model.eval()
            eval_before = mean_loss(model, held, pad, self.batch_size, self.precision)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=self.learning_rate, weight_decay=0.0)
        per_epoch = math.ceil(len(train) / self.batch_size)
        total = per_epoch * self.epochs
        if self.max_steps > 0:
            total = min(total, self.max_steps)
        warm = max(1, int(total * self.warmup_ratio))
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: min((s + 1) / warm, max(0.0, (total - s) / max(1, total - warm))))
        rng = random.Random(self.seed)
        curve, step, seen, window = [], 0, 0, []
        t_train, cpu0 = time.perf_counter(), time.process_time()
        model.train()
        while step < total:
            for batch in length_batches([len(r[0]) for r in train], self.batch_size, rng):
                if step >= total:
                    break
                with autocast(self.precision):
                    loss = answer_loss(model, _collate([train[i] for i in batch], pad))
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                sched.step()
                opt.zero_grad()
                step += 1
                seen += len(batch)
                progress.report("training", step, total, "steps")
                window.append(float(loss.detach()))
                if step % self.log_every == 0 or step == total:
                    loss = round(sum(window) / len(window), 4)
                    curve.append((step, loss))
                    window = []
                    if log:
                        el = time.perf_counter() - t_train
                        log.info(f"step {step}/{total} loss {loss:.4f} "
                                 f"({el / step:.2f} s/step, ~{el / step * (total - step):.0f} s left)")
        train_s, train_cpu_s = time.perf_counter() - t_train, time.process_time() - cpu0
        model.eval()
        eval_after = mean_loss(model, held, pad, self.batch_size, self.precision)
        out_dir = Path(job.out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        with warnings.catch_warnings():  # "no config file next to the GGUF": expected
            warnings.simplefilter("ignore")
            model.save_pretrained(str(out_dir))
        metrics = {
            "steps": step, "examples_seen": seen, "train_examples": len(train),
            "examples_skipped_too_long": skipped, "examples_cut_at_max_len": truncated,
            "epochs_done": round(seen / len(train), 3),
            "mean_tokens": round(sum(len(r[0]) for r in train) / len(train), 1),
            "train_loss_first": curve[0][1] if curve else None,
            "train_loss_last": curve[-1][1] if curve else None,
            "eval_loss_before": eval_before, "eval_loss_after": eval_after,
            "load_s": round(load_s, 2), "train_s": round(train_s, 2),
            "train_cpu_s": round(train_cpu_s, 2),  # robust to other jobs on the machine
            "s_per_step": round(train_s / max(1, step), 3),
            "s_per_100_examples": round(train_s / max(1, seen) * 100, 2),
        }
        return TrainResult("local", self.base_model(), str(out_dir), job.parent,
                           self.settings(), metrics, curve)


# -- OpenAI ---------------------------------------------------------------------------------
TERMINAL = ("succeeded", "failed", "cancelled")


class OpenAIFineTuner(FineTuner):
    """OpenAI fine-tuning job: upload files, create the job, poll with backoff."""

    base_model_name: str = DEFAULT_OPENAI_MODEL
    base_url: str = ""             # empty: OPENAI_BASE_URL or api.openai.com
    n_epochs: int = 0              # 0: let OpenAI choose
    suffix: str = ASSISTANT_MODEL
    poll_initial_s: float = 2.0
    poll_max_s: float = 60.0
    timeout_s: float = 4 * 3600

    @property
    def provider(self) -> str:
        return "openai"

    def base_model(self) -> str:
        return self.base_model_name

    def settings(self) -> dict:
        # base_url is deliberately not part of settings: it is deployment, not the model,
        # and it could carry credentials.
        return {"base_model": self.base_model_name, "n_epochs": self.n_epochs,
                "suffix": self.suffix}

    def _api(self, what: str, fn, *args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except FineTuneError:
            raise
        except Exception as exc:  # openai.APIError and friends carry the server's message
            raise FineTuneError(redact(f"OpenAI {what} failed: {type(exc).__name__}: {exc}")) from None

    def train(self, job: TrainJob, log=None) -> TrainResult:
        try:
            client = openai_client(self.base_url)
        except Exception as exc:
            raise FineTuneError(redact(str(exc))) from None
        t0 = time.perf_counter()
        record = JobRecord.for_job(job, self.settings())
        ftj, resumed = self._recorded_job(client, record, log), True
        if ftj is None:
            resumed = False
            ftj = self._create(client, job, record, log)
        tf, vf = ftj.training_file, ftj.validation_file
        ftj = self._poll(client, ftj, log, record)
        if ftj.status != "succeeded":
            record.clear()  # its final state is reported now; a deliberate re-run starts anew
            err = getattr(ftj, "error", None)
            text = getattr(err, "message", None) or "no error message returned"
            extra = ", ".join(f"{k}={getattr(err, k)}" for k in ("code", "param")
                              if err is not None and getattr(err, k, None))
            raise FineTuneError(redact(f"OpenAI fine-tuning job {ftj.id} {ftj.status}: {text}"
                                       + (f" ({extra})" if extra else "")))
        record.write(ftj.id, ftj.status)
        metrics = {"trained_tokens": getattr(ftj, "trained_tokens", None) or 0,
                   "duration_s": round(time.perf_counter() - t0, 2)}
        return TrainResult("openai", self.base_model_name, ftj.fine_tuned_model, job.parent,
                           self.settings(), metrics,
                           details={"job_id": ftj.id, "training_file": tf,
                                    "validation_file": vf, "resumed": resumed})

    def _create(self, client, job: TrainJob, record: JobRecord, log):
        with open(job.train_file, "rb") as f:
            tf = self._api("upload of the training file", client.files.create, file=f,
                           purpose="fine-tune")
        with open(job.eval_file, "rb") as f:
            vf = self._api("upload of the validation file", client.files.create, file=f,
                           purpose="fine-tune")
        kwargs = {"model": job.parent or self.base_model_name, "training_file": tf.id,
                  "validation_file": vf.id, "suffix": self.suffix}
        if self.n_epochs:
            kwargs["method"] = {"type": "supervised", "supervised": {
                "hyperparameters": {"n_epochs": self.n_epochs}}}
        ftj = self._api("fine-tuning job creation", client.fine_tuning.jobs.create, **kwargs)
        # Recorded before polling (which may last hours): a crash or restart from here on
        # resumes this billable job instead of starting another.
        record.write(ftj.id, ftj.status)
        if log:
            log.info(f"OpenAI fine-tuning job {ftj.id} created on {kwargs['model']} "
                     f"(training file {tf.id}, validation file {vf.id}); recorded in "
                     f"{record.path}")
        return ftj

    def _recorded_job(self, client, record: JobRecord, log):
        """The job an earlier (crashed or restarted) run created for the same inputs, or
        None when there is none or the API no longer knows it."""
        job_id = record.job_id()
        if not job_id:
            return None
        try:
            ftj = client.fine_tuning.jobs.retrieve(job_id)
        except Exception as exc:
            if getattr(exc, "status_code", None) == 404:
                if log:
                    log.warning(f"recorded OpenAI job {job_id} is unknown to the API: "
                                "creating a new one")
                record.clear()
                return None
            raise FineTuneError(redact(f"OpenAI job status poll failed: "
                                       f"{type(exc).__name__}: {exc}")) from None
        if log:
            log.info(f"resuming OpenAI fine-tuning job {job_id} recorded by an earlier run "
                     f"(status {ftj.status}); no new job is created")
        return ftj

    def _poll(self, client, ftj, log, record: JobRecord | None = None):
        delay, t0, last = self.poll_initial_s, time.monotonic(), None
        while ftj.status not in TERMINAL:
            if time.monotonic() - t0 > self.timeout_s:
                self._api("cancel", client.fine_tuning.jobs.cancel, ftj.id)
                if record is not None:
                    record.clear()
                raise FineTuneError(f"OpenAI fine-tuning job {ftj.id} did not finish within "
                                    f"{self.timeout_s:.0f} s and was cancelled")
            time.sleep(delay)
            delay = min(delay * 2, self.poll_max_s)
            ftj = self._api("job status poll", client.fine_tuning.jobs.retrieve, ftj.id)
            if log and ftj.status != last:
                log.info(f"OpenAI fine-tuning job {ftj.id}: {ftj.status}")
                last = ftj.status
        return ftj

