"""Pure measures behind the checks: no Dagster, no DuckDB, no GX."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kb_core.pii import find_pii

# Quarantine reasons (kb_assets/parsing.py) that mean "this record had no text".
EMPTY_TEXT_REASON = re.compile(
    r"field 'text' is (missing|empty)|file is empty|must be a string, got NoneType")


def is_empty_text_reason(reason: str | None) -> bool:
    return bool(reason) and EMPTY_TEXT_REASON.search(reason) is not None


def ratio(part: int, whole: int) -> float:
    return part / whole if whole else 0.0


def relative_change(new: float, old: float) -> float:
    """|new - old| / old; 0 when both are 0, inf when only the old value is 0."""
    if old == 0:
        return 0.0 if new == 0 else math.inf
    return abs(new - old) / abs(old)


def ratio_gate(offending: int, total: int, limit: float, *, upper: bool,
               min_records: int, min_offending: int) -> str:
    """Verdict of a batch ratio gate: "pass", "fail", or why it was not enforced:
    "small_batch" (fewer than min_records records) or "few_offenders" (fewer than
    min_offending offending records), so that one stray bad line never blocks a build.
    `upper`: the offending share must stay <= limit; else the clean share must be >= limit."""
    share = ratio(offending, total)
    ok = share <= limit if upper else (1.0 - share) >= limit
    if ok:
        return "pass"
    if total < min_records:
        return "small_batch"
    if offending < min_offending:
        return "few_offenders"
    return "fail"


@dataclass(frozen=True)
class LengthStats:
    chunks: int
    docs: int
    mean_tokens: float
    median_tokens: float

    @property
    def chunks_per_doc(self) -> float:
        return self.chunks / self.docs if self.docs else 0.0

    def as_dict(self) -> dict:
        return {"chunks": self.chunks, "docs": self.docs, "mean_tokens": round(self.mean_tokens, 2),
                "median_tokens": round(self.median_tokens, 2),
                "chunks_per_doc": round(self.chunks_per_doc, 3)}


def length_stats(frame: pd.DataFrame) -> LengthStats:
    """Stats of a frame with columns doc_key and n_tokens (one row per chunk)."""
    if frame.empty:
        return LengthStats(0, 0, 0.0, 0.0)
    tokens = frame["n_tokens"].astype(float)
    return LengthStats(len(frame), int(frame["doc_key"].nunique()),
                       float(tokens.mean()), float(tokens.median()))


def same_content_docs(candidate: pd.DataFrame, members: pd.DataFrame) -> set[str]:
    """doc_keys whose content is the same in the candidate and in the baseline version."""
    if candidate.empty or members.empty:
        return set()
    cols = ["doc_key", "doc_content_hash"]
    same = candidate[cols].drop_duplicates().merge(members[cols].drop_duplicates(), on=cols)
    return set(same["doc_key"].tolist())


@dataclass(frozen=True)
class DriftReport:
    population: str  # which documents were compared
    doc_keys: frozenset | None  # those documents; None = all
    new: LengthStats
    old: LengthStats
    changes: dict[str, float]  # metric -> relative change

    def worst(self) -> tuple[str, float]:
        return max(self.changes.items(), key=lambda kv: kv[1]) if self.changes else ("", 0.0)


def chunk_drift(candidate: pd.DataFrame, members: pd.DataFrame,
                min_docs: int | None) -> DriftReport:
    """Compare chunk length and chunks per document between the candidate and the baseline.

    With `min_docs`, only on documents whose content did not change (so new content is not
    mistaken for a chunker change), and not at all when fewer than `min_docs` are unchanged.
    With None, on all documents (the content shift, a softer signal)."""
    keys = None
    if min_docs is None:
        population = "all documents"
    else:
        same = same_content_docs(candidate, members)
        population = f"{len(same)} documents with unchanged content"
        keys = frozenset(same)
        candidate = candidate[candidate["doc_key"].isin(same)]
        members = members[members["doc_key"].isin(same)]
        if len(same) < min_docs:
            return DriftReport(population, keys, length_stats(candidate), length_stats(members), {})
    new, old = length_stats(candidate), length_stats(members)
    changes = {}
    if new.chunks and old.chunks:
        changes = {"mean_tokens": relative_change(new.mean_tokens, old.mean_tokens),
                   "median_tokens": relative_change(new.median_tokens, old.median_tokens),
                   "chunks_per_doc": relative_change(new.chunks_per_doc, old.chunks_per_doc)}
    return DriftReport(population, keys, new, old, changes)


def redact(text: str, keep: int = 2) -> str:
    """Show the shape of a PII match without its value: 'jo***@ex***'."""
    parts = re.split(r"([@.\s-])", text)
    return "".join(p if len(p) <= 1 and not p.isalnum() else p[:keep] + "***" for p in parts if p)


def pii_hits(text: str, max_examples: int = 2) -> tuple[dict[str, int], list[str]]:
    """Counts of PII pattern matches per kind and a couple of redacted examples."""
    found: dict[str, int] = {}
    examples: list[str] = []
    for m in find_pii(text):  # the same validated detectors that mask
        found[m.label] = found.get(m.label, 0) + 1
        if len(examples) < max_examples:
            examples.append(f"{m.label}: {redact(text[m.start:m.end])}")
    return found, examples


def pii_frame(chunks: pd.DataFrame) -> pd.DataFrame:
    """One row per chunk: chunk_id, doc_id, pii_count, pii_kinds, example (redacted)."""
    rows = []
    for cid, doc_id, text in zip(chunks["chunk_id"], chunks["doc_id"], chunks["text"]):
        found, examples = pii_hits(text or "")
        rows.append((cid, doc_id, sum(found.values()), ",".join(sorted(found)) or None,
                     "; ".join(examples) or None))
    return pd.DataFrame(rows, columns=["chunk_id", "doc_id", "pii_count", "pii_kinds", "example"])


def vector_frame(ids: pd.DataFrame, blobs: list[bytes]) -> tuple[pd.DataFrame, np.ndarray]:
    """Per-vector stats (dim, non-finite values, norm, max |x|) and the matrix of the
    vectors that have the modal dimension (for the centroid)."""
    dims = np.fromiter((len(b) // 4 for b in blobs), dtype=np.int64, count=len(blobs))
    stats = ids.copy()
    stats["dim"] = dims
    stats["nonfinite"] = 0
    stats["norm"] = np.nan
    stats["max_abs"] = np.nan
    if not blobs:
        return stats, np.zeros((0, 0), np.float32)
    d = int(np.bincount(dims).argmax())
    same = np.flatnonzero(dims == d)
    matrix = np.frombuffer(b"".join(blobs[i] for i in same), dtype=np.float32).reshape(len(same), d)
    finite = np.isfinite(matrix)
    clean = np.where(finite, matrix, 0.0)
    stats.loc[stats.index[same], "nonfinite"] = (~finite).sum(axis=1)
    stats.loc[stats.index[same], "norm"] = np.linalg.norm(clean, axis=1)
    stats.loc[stats.index[same], "max_abs"] = np.abs(clean).max(axis=1) if d else 0.0
    for i in np.flatnonzero(dims != d):  # odd sizes: judge what is there
        v = np.frombuffer(blobs[i][: (len(blobs[i]) // 4) * 4], dtype=np.float32)
        fin = np.isfinite(v)
        stats.loc[stats.index[i], ["nonfinite", "norm", "max_abs"]] = [
            int((~fin).sum()), float(np.linalg.norm(v[fin])), float(np.abs(v[fin]).max(initial=0.0))]
    return stats, matrix[np.isfinite(matrix).all(axis=1)]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    na, nb = float(np.linalg.norm(a)), float(np.linalg.norm(b))
    if na == 0 or nb == 0 or a.shape != b.shape:
        return float("nan")
    return float(np.dot(a, b) / (na * nb))


def centroid_reference(base: np.ndarray, n: int, trials: int = 20, seed: int = 0) -> float:
    """The 5th percentile of cosine(centroid of n random baseline vectors, baseline centroid):
    how far a same-size batch drawn from the KB itself may point away. A centroid of few
    vectors is noisy (one document scores ~0.4 against a KB's centroid), so the warning
    threshold for a batch is the lower of this and the configured floor."""
    if len(base) == 0 or n <= 0:
        return float("nan")
    if n >= len(base):
        return 1.0
    n = min(n, 2000)  # beyond this the sample centroid is stable; keeps the cost bounded
    rng = np.random.default_rng(seed)
    centre = base.mean(axis=0)
    cos = [cosine(base[rng.choice(len(base), n, replace=False)].mean(axis=0), centre)
           for _ in range(trials)]
    return float(np.percentile(cos, 5))
