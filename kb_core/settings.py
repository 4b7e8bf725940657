"""Every KB_* environment variable in one table, read by one typed parser.

Values are read when they are used, never at import: a process sees the environment it runs
with. A bad value raises SettingError naming the variable, the value and what was expected
(`kb` prints it as one line, exit code 2; Dagster shows it as the load or step error).
The README's table of variables is checked against VARIABLES by tests/test_settings.py."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

from kb_core.errors import CLIError

TRUE = frozenset({"1", "true", "yes", "on", "running"})
FALSE = frozenset({"0", "false", "no", "off", "stopped"})


class SettingError(CLIError, ValueError):
    """A bad KB_* value."""


@dataclass(frozen=True)
class Var:
    name: str
    kind: type  # str, int, float or bool
    default: object
    doc: str
    minimum: float | None = None
    choices: tuple[str, ...] = ()


VARIABLES: tuple[Var, ...] = (
    # --- where state lives
    Var("KB_HOME", str, "data", "Folder holding the KB (inbox, DuckDB, versions, MLflow, "
        "Dagster). Unset: the nearest KB home from the current folder upward, else ./data "
        "(kb_core/home.py)."),
    Var("KB_INBOX", str, "", "The inbox folder (default $KB_HOME/inbox)."),
    Var("KB_DAGSTER_PG_URL", str, "", "PostgreSQL URL (postgresql+psycopg2://user:password@"
        "host:5432/db) for the Dagster instance's runs, event log and schedules "
        "(dagster-postgres); unset: SQLite under DAGSTER_HOME. dagster.yaml names the "
        "variable, not its value."),
    # --- ingestion and data-quality gates
    Var("KB_DOC_TIME_BUDGET_S", float, 30.0, "Seconds one document may take to parse before "
        "it is quarantined.", minimum=0.001),
    Var("KB_EMBED_COMMIT_EVERY", int, 512, "Embeddings written to the cache per commit "
        "(a crash loses at most this many).", minimum=1),
    Var("KB_EMBED_BACKEND", str, "auto", "Embedding encoder: torch (sentence-transformers), "
        "onnx (ONNX Runtime, same vectors, faster), onnx-int8 (quantised, own cache key), "
        "bf16 (a bfloat16 TorchScript trace, same vectors within cosine 0.9999, fast only on "
        "CPUs with AMX-BF16) or auto (the measured default: onnx, torch when onnxruntime is "
        "missing; bf16 for large passage backlogs on AMX-BF16 CPUs, see KB_EMBED_BF16_MIN).",
        choices=("auto", "torch", "onnx", "onnx-int8", "bf16")),
    Var("KB_EMBED_BF16_MIN", int, 64, "With KB_EMBED_BACKEND=auto on a CPU with AMX-BF16, a "
        "backlog of at least this many uncached chunks is encoded by the bfloat16 trace "
        "(same vectors within cosine 0.9999, same cache key); 0: never. 64 is the "
        "break-even measured here (a fresh process, load + encode of n scifact abstracts, "
        "medians of 3: n=32 ONNX 1.14 s vs bf16 1.42; 64: 1.80 vs 1.72; 128: 3.40 vs 2.18; "
        "256: 6.45 vs 3.51).",
        minimum=0),
    Var("KB_EMBED_TORCH_MIN", int, 0, "With KB_EMBED_BACKEND=auto, a backlog of at least "
        "this many uncached chunks is encoded by torch (same vectors, same cache key); 0: never. "
        "Off by default: on 2 cores ONNX encodes passages at 1.08x torch's rate, loads ~2 s "
        "sooner and answers queries faster (BENCHMARKS.md, 'Encoder backends'); set it where "
        "torch measures faster.", minimum=0),
    Var("KB_EMBED_WORKERS", int, 1, "Worker processes that embed a large backlog of uncached "
        "chunks in shards, merged by the embeddings step; 1: in-process.", minimum=1),
    Var("KB_EMBED_FANOUT_MIN", int, 2000, "Uncached chunks from which KB_EMBED_WORKERS > 1 "
        "starts workers (a smaller backlog is embedded in-process).", minimum=1),
    Var("KB_MODEL_CACHE", str, "", "Folder for models derived from the embedder (ONNX exports, "
        "`onnx/<key>/`); default $KB_HOME/models. The test suite shares one."),
    Var("KB_ACCEPT_DRIFT", bool, False, "Accept an intended chunking change for one run."),
    Var("KB_ACCEPT_SHRINK", bool, False, "Accept an intended large removal of documents for "
        "one run."),
    # KB_QUALITY_<FIELD> overrides any field of resources/quality_config.py (a family).
    # --- the vector index of a KB version (resources/ann_index.py)
    Var("KB_ANN_KIND", str, "auto", "Vector index: exact (flat), approximate (hnsw), or auto "
        "(hnsw from KB_ANN_MIN_CHUNKS chunks).", choices=("auto", "flat", "hnsw")),
    Var("KB_ANN_MIN_CHUNKS", int, 50000, "auto: chunks from which a version gets an HNSW "
        "index (0 = never).", minimum=0),
    Var("KB_ANN_MIN_RECALL", float, 0.95, "Least recall@10 vs exact an HNSW index must reach, "
        "else efSearch rises, then exact search.", minimum=0),
    # --- release
    Var("KB_GOLDEN", str, "", "A curated golden set (project jsonl or BEIR folder); default "
        "$KB_HOME/golden/, else questions made from the KB."),
    Var("KB_AUTO_PROMOTE", bool, True, "Move `production` when a candidate passes the gate."),
    # --- answering
    Var("KB_ASK_UNTRUSTED", str, "mark", "Untrusted passages (possible prompt injection) in "
        "answers: mark them or omit them.", choices=("mark", "omit")),
    # --- inbox sensor and fine-tune schedule (read by the process that loads the code)
    Var("KB_SENSOR", str, "on", "`off` (or 0/false/no) makes the inbox sensor start stopped."),
    Var("KB_SENSOR_INTERVAL_S", float, 30.0, "Seconds between inbox sensor ticks.", minimum=1),
    Var("KB_SENSOR_SETTLE_S", float, 5.0, "Seconds a file must stay unchanged before it is "
        "ingested.", minimum=0),
    Var("KB_SENSOR_MAX_WAIT_S", float, 600.0, "Longest a still-changing file delays a run.",
        minimum=0),
    Var("KB_FT_SCHEDULE", bool, False, "Start the nightly fine-tune schedule running."),
    Var("KB_FT_SCHEDULE_CRON", str, "0 2 * * *", "Cron of the fine-tune schedule."),
    Var("KB_FT_SCHEDULE_TZ", str, "UTC", "Timezone of the fine-tune schedule."),
    # --- fine-tuning
    Var("KB_FT_PROVIDER", str, "local", "Fine-tune locally (LoRA) or with OpenAI.",
        choices=("local", "openai")),
    Var("KB_FT_BASE_MODEL", str, "", "Base model: a local folder or .gguf file (local) or an "
        "OpenAI model name; default the packaged SmolLM2 / gpt-4o-mini."),
    Var("KB_OPENAI_CHAT_MODEL", str, "", "OpenAI chat model for answers (default the base)."),
    Var("KB_FT_EPOCHS", int, None, "Epochs (local default 1; OpenAI default: its own).",
        minimum=0),
    Var("KB_FT_MAX_STEPS", int, 30, "Optimiser steps of a local fine-tune.", minimum=1),
    Var("KB_FT_BATCH_SIZE", int, 4, "Examples per local training step.", minimum=1),
    Var("KB_FT_LEARNING_RATE", float, 1e-3, "Learning rate of a local fine-tune.", minimum=0),
    Var("KB_FT_LORA_RANK", int, 8, "LoRA rank of a local fine-tune.", minimum=1),
    Var("KB_FT_MAX_SEQ_LEN", int, 384, "Tokens per training example (longer are cut).",
        minimum=16),
    Var("KB_FT_THREADS", int, 0, "Torch threads for local training (0: torch's default).",
        minimum=0),
    Var("KB_FT_EVAL_QUESTIONS", int, 24, "Held-out questions scored per fine-tune.", minimum=1),
    Var("KB_FT_EVAL_MAX_NEW_TOKENS", int, 96, "Answer length cap during evaluation.",
        minimum=1),
    Var("KB_FT_GATE_MARGIN", float, 0.02, "Score a fine-tune must beat base and extractive "
        "answers by.", minimum=0),
    Var("KB_FT_MIN_EXAMPLES", int, 20, "Fewest training examples worth a fine-tune.",
        minimum=1),
    Var("KB_FT_REPLAY_SHARE", float, 0.2, "Share of examples replayed from earlier datasets.",
        minimum=0),
    Var("KB_FT_REFUSAL_SHARE", float, 0.25, "Share of examples whose context lacks the "
        "answer.", minimum=0),
    Var("KB_FT_QUESTIONS_PER_DOC", int, 3, "Evaluation questions used per document.",
        minimum=1),
    # --- operator and reviewer pages (Dagster UI, MLflow UI)
    Var("KB_DAGSTER_URL", str, "http://127.0.0.1:3000", "The Dagster UI's address, for the "
        "run links on MLflow model versions, and where `kb build` submits runs in queue mode."),
    Var("KB_VERSIONS_URL", str, "", "Shared storage for published KB versions and the serving "
        "pointer (s3://bucket/prefix, endpoint and credentials from the usual AWS_* variables, "
        "or file:///shared/folder): the writer pushes each version and pointer move, and "
        "`kb serve` on any machine follows it. Unset: versions stay on this machine."),
    Var("KB_DAGSTER_EXECUTOR", str, "in_process", "How a launched run (UI, sensor, schedule, "
        "queue) executes its steps: in_process, one process per run (models and imports load "
        "once; the run holds the KB writer lock throughout); multiprocess, one process per step "
        "(each step holds the lock while it runs). `kb build` in local mode always runs in "
        "its own process.", choices=("in_process", "multiprocess")),
    Var("KB_BUILD_MODE", str, "local", "local: `kb build` runs in this process on this "
        "KB_HOME; queue: it submits the run to the team's Dagster at KB_DAGSTER_URL, where it "
        "queues on the kb_writer pool with runs from every machine and executes on the "
        "writer's KB_HOME, and follows it to the end.", choices=("local", "queue")),
    Var("KB_FRESHNESS_WARN_HOURS", float, 24.0, "Hours after which the Dagster UI warns that "
        "the served KB (faiss_index, kb_promotion) is stale.", minimum=0.01),
    Var("KB_FRESHNESS_FAIL_HOURS", float, 48.0, "Hours after which the served KB fails its "
        "freshness policy.", minimum=0.01),
    # --- operations
    Var("KB_COMPACT_MAX_SEGMENTS", int, 8, "Segments a KB version may have before a publish "
        "merges them into one.", minimum=1),
    Var("KB_RETAIN_LAST", int, 5, "KB versions whose files a publish always keeps (the "
        "newest); older ones go unless an alias or serving.json names them or they are "
        "younger than KB_RETAIN_DAYS.", minimum=1),
    Var("KB_RETAIN_DAYS", float, 7.0, "Days a KB version's files are kept at least.",
        minimum=0),
    Var("KB_COMPACT_MAX_DELETED", float, 0.2, "Share of deleted rows in a KB version's "
        "segments above which a publish merges them into one.", minimum=0),
    Var("KB_CALIBRATION_CARRY_MAX", float, 0.01, "A version whose chunks changed by at most "
        "this share since the version its zero-hit thresholds were calibrated on keeps them "
        "(0 = calibrate every version).", minimum=0),
    Var("KB_AUDIT_LOCK_TIMEOUT_S", float, 60.0, "Seconds `kb audit` waits for a writer to "
        "release the DuckDB file.", minimum=0),
)
BY_NAME: dict[str, Var] = {v.name: v for v in VARIABLES}
QUALITY_PREFIX = "KB_QUALITY_"  # + a field of resources.quality_config.QualityThresholds


def parse(name: str, raw: str, kind: type, minimum: float | None = None,
          choices: tuple[str, ...] = ()) -> object:
    """The one typed parser: `raw` (from variable `name`) as `kind`, or SettingError."""
    text = raw.strip()
    if kind is bool:
        low = text.lower()
        if low in TRUE | FALSE:
            return low in TRUE
        raise SettingError(f"{name}={raw!r}: expected 1/0, true/false, yes/no, on/off")
    if kind in (int, float):
        try:
            value = kind(text)
        except ValueError:
            raise SettingError(f"{name}={raw!r}: expected a"
                               f"{'n integer' if kind is int else ' number'}") from None
        if minimum is not None and value < minimum:
            raise SettingError(f"{name}={raw!r}: must be at least {minimum:g}")
        return value
    if choices and text.lower() not in choices:
        raise SettingError(f"{name}={raw!r}: expected one of {', '.join(choices)}")
    return text.lower() if choices else text


def get(name: str, environ: Mapping[str, str] | None = None, default: object = ...) -> object:
    """The typed value of variable `name` (its table default when unset or empty)."""
    var = BY_NAME[name]
    raw = (os.environ if environ is None else environ).get(name)
    if raw is None or not raw.strip():
        return var.default if default is ... else default
    return parse(name, raw, var.kind, var.minimum, var.choices)


def enabled(name: str, environ: Mapping[str, str] | None = None) -> bool:
    """For on/off variables with free spelling (KB_SENSOR): anything but an off word is on."""
    value = get(name, environ)
    return bool(value) if isinstance(value, bool) else str(value).lower() not in FALSE
