"""The vector index of a KB version: exact (flat inner product) or approximate (HNSW), with
chunk ids preserved (IndexIDMap2) so `index.search` returns chunk ids whatever the kind, and
`index.reconstruct(chunk_id)` returns the stored vector (the index checks compare it with
the embedding cache).

An approximate index is only kept when its recall@10 against exact search, measured on the
version's own vectors, reaches the wanted minimum; otherwise efSearch is raised, and past
the largest efSearch tried the version falls back to the exact index (and says so).

Numpy and FAISS only (no Dagster): pure functions, tested by tests/test_ann_index.py and
measured by benchmarks/bench_ann.py."""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import faiss
import numpy as np

from kb_core import settings
from resources.segments import segment_ids

KINDS = ("flat", "hnsw")
# Chosen with benchmarks/bench_ann.py (BENCHMARKS.md, section ann): at 100k clustered
# 384-d unit vectors M=32, efConstruction=64 builds in about a minute on 2 cores and
# efSearch=64 gives recall@10 >= 0.95 at a fraction of the exact search's latency.
HNSW_PARAMS = {"M": 32, "efConstruction": 64, "efSearch": 64}
# Tried in turn when the measured recall is below the minimum, before falling back to flat.
# 1024 and 2048: at 1M clustered vectors (200 clusters, benchmarks/bench_scale.py's seed) HNSW
# reached recall@10 0.9375 at 512 and 0.9625 at 1024, at 3.1 ms p50 / 5.3 ms p95 per query on
# one thread against 110 ms for exact search; 4096 took 10 ms for 0.968 (2026-12-03, 2 cores).
EF_SEARCH_STEPS = (64, 128, 256, 512, 1024, 2048)
RECALL_QUERIES = 200
# Recall queries are the version's own vectors moved to cosine 0.7 from where they were:
# near the data like a real question, but not the trivial "find yourself" query.
RECALL_QUERY_COSINE = 0.7


def _as_arrays(vectors: np.ndarray, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
    vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, dim)
    ids = np.ascontiguousarray(ids, dtype=np.int64).reshape(-1)
    if len(vectors) != len(ids):
        raise ValueError(f"{len(vectors)} vectors but {len(ids)} ids")
    return vectors, ids


def build_vector_index(vectors: np.ndarray, ids: np.ndarray, dim: int, kind: str = "flat",
                       params: Mapping[str, int] | None = None) -> faiss.Index:
    """An inner-product index over `vectors` whose search returns `ids`.
    kind: "flat" (exact) or "hnsw" (approximate; params M, efConstruction, efSearch)."""
    if kind not in KINDS:
        raise ValueError(f"vector index kind {kind!r}: expected one of {', '.join(KINDS)}")
    vectors, ids = _as_arrays(vectors, ids, dim)
    if kind == "flat":
        inner = faiss.IndexFlatIP(dim)
    else:
        p = {**HNSW_PARAMS, **(params or {})}
        inner = faiss.IndexHNSWFlat(dim, int(p["M"]), faiss.METRIC_INNER_PRODUCT)
        inner.hnsw.efConstruction = int(p["efConstruction"])
        inner.hnsw.efSearch = int(p["efSearch"])
    index = faiss.IndexIDMap2(inner)
    if len(ids):
        index.add_with_ids(vectors, ids)
    return index


def index_kind(index: faiss.Index) -> str:
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    return "hnsw" if isinstance(inner, faiss.IndexHNSW) else "flat"


def set_ef_search(index: faiss.Index, ef_search: int) -> None:
    """Set efSearch of an HNSW index (inside its id map); nothing for a flat index."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    if isinstance(inner, faiss.IndexHNSW):
        inner.hnsw.efSearch = int(ef_search)


def ef_search_of(index: faiss.Index) -> int | None:
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    return int(inner.hnsw.efSearch) if isinstance(inner, faiss.IndexHNSW) else None


def read_vector_index(path: Path | str, info: Mapping | None = None) -> faiss.Index:
    """Read an index file; an HNSW index gets the efSearch its version recorded (FAISS 1.15
    persists efSearch, but not every version does, and the recorded one is what recall
    was measured at)."""
    index = faiss.read_index(str(path))
    ef = ((info or {}).get("vector_index") or {}).get("params", {}).get("efSearch")
    if ef:
        set_ef_search(index, ef)
    return index


def exact_neighbours(vectors: np.ndarray, ids: np.ndarray, queries: np.ndarray,
                     k: int) -> np.ndarray:
    """The ids of the exact top-k inner-product neighbours of each query (brute force over
    `vectors` in place: no second copy of a large version's vectors)."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    k = min(k, len(vectors))
    if k == 0:
        return np.zeros((len(queries), 0), dtype=np.int64)
    _, rows = faiss.knn(np.ascontiguousarray(queries, dtype=np.float32), vectors, k,
                        metric=faiss.METRIC_INNER_PRODUCT)
    return np.where(rows >= 0, np.asarray(ids, dtype=np.int64)[np.maximum(rows, 0)], -1)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of `truth` (exact ids) that `found` holds (-1 = no result)."""
    if truth.size == 0:
        return 1.0
    hits = [len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, int((t >= 0).sum()))
            for f, t in zip(found, truth)]
    return float(np.mean(hits))


def measure_recall(index: faiss.Index, vectors: np.ndarray, ids: np.ndarray,
                   queries: np.ndarray, k: int = 10, truth: np.ndarray | None = None) -> float:
    """recall@k of `index` against exact search over (`vectors`, `ids`)."""
    k = min(k, len(ids))
    if k == 0 or len(queries) == 0:
        return 1.0
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if truth is None:
        truth = exact_neighbours(vectors, ids, queries, k)
    return recall_at_k(index.search(queries, k)[1], truth[:, :k])


def recall_queries(vectors: np.ndarray, n: int = RECALL_QUERIES,
                   cosine: float = RECALL_QUERY_COSINE, seed: int = 0) -> np.ndarray:
    """`n` of `vectors` (a deterministic sample), each turned to about `cosine` from itself
    in a random direction and unit-normalised."""
    if len(vectors) == 0:
        return np.zeros((0, vectors.shape[1]), dtype=np.float32)
    rng = np.random.default_rng(seed)
    rows = rng.choice(len(vectors), min(n, len(vectors)), replace=False)
    base = vectors[np.sort(rows)].astype(np.float32)
    noise = rng.standard_normal(base.shape).astype(np.float32)
    noise -= (noise * base).sum(1, keepdims=True) * base  # orthogonal to each base vector
    noise /= np.linalg.norm(noise, axis=1, keepdims=True) + 1e-12
    tan = np.sqrt(1.0 / cosine**2 - 1.0)
    q = base + tan * np.linalg.norm(base, axis=1, keepdims=True) * noise
    return (q / np.linalg.norm(q, axis=1, keepdims=True)).astype(np.float32)


@dataclass(frozen=True)
class IndexPolicy:
    """Which index a version of `n` chunks gets (KB_ANN_* settings)."""

    kind: str = "auto"  # auto | flat | hnsw
    min_chunks: int = 50_000  # auto: HNSW from this many chunks; 0 = never
    min_recall: float = 0.95
    params: Mapping[str, int] = field(default_factory=lambda: dict(HNSW_PARAMS))

    @classmethod
    def from_settings(cls, environ: Mapping[str, str] | None = None) -> IndexPolicy:
        return cls(kind=settings.get("KB_ANN_KIND", environ),
                   min_chunks=settings.get("KB_ANN_MIN_CHUNKS", environ),
                   min_recall=settings.get("KB_ANN_MIN_RECALL", environ))

    def wanted_kind(self, n: int) -> str:
        if self.kind != "auto":
            return self.kind
        return "hnsw" if self.min_chunks > 0 and n >= self.min_chunks else "flat"


def build_version_index(vectors: np.ndarray, ids: np.ndarray, dim: int,
                        policy: IndexPolicy | None = None) -> tuple[faiss.Index, dict]:
    """The index a KB version publishes, and what to record of it (version info
    "vector_index": kind, params, recall_at_10, n_queries, build_s, and why)."""
    policy = policy or IndexPolicy()
    vectors, ids = _as_arrays(vectors, ids, dim)
    t0 = time.perf_counter()
    wanted = policy.wanted_kind(len(ids))
    if wanted == "flat" or len(ids) == 0:
        index = build_vector_index(vectors, ids, dim, "flat")
        return index, {"kind": "flat", "requested": policy.kind, "params": {},
                       "recall_at_10": 1.0, "n_queries": 0,
                       "build_s": round(time.perf_counter() - t0, 3),
                       "note": "exact search" if wanted == "flat" else "empty version"}
    params = {**HNSW_PARAMS, **policy.params}
    index = build_vector_index(vectors, ids, dim, "hnsw", params)
    hnsw_s = time.perf_counter() - t0
    queries = recall_queries(vectors)
    truth = exact_neighbours(vectors, ids, queries, min(10, len(ids)))
    tried = []
    for ef in sorted({int(params["efSearch"]), *[e for e in EF_SEARCH_STEPS
                                                 if e > params["efSearch"]]}):
        set_ef_search(index, ef)
        recall = measure_recall(index, vectors, ids, queries, 10, truth)
        tried.append({"efSearch": ef, "recall_at_10": round(recall, 4)})
        if recall >= policy.min_recall:
            return index, {"kind": "hnsw", "requested": policy.kind,
                           "params": {**params, "efSearch": ef},
                           "recall_at_10": round(recall, 4), "n_queries": len(queries),
                           "build_s": round(hnsw_s, 3), "efsearch_tried": tried,
                           "note": f"recall@10 {recall:.3f} >= {policy.min_recall} vs exact"}
    index = build_vector_index(vectors, ids, dim, "flat")
    return index, {"kind": "flat", "requested": policy.kind, "params": {},
                   "recall_at_10": 1.0, "n_queries": len(queries),
                   "build_s": round(time.perf_counter() - t0, 3), "efsearch_tried": tried,
                   "note": (f"fell back to exact search: HNSW {params} reached recall@10 "
                            f"{tried[-1]['recall_at_10']} < {policy.min_recall} "
                            f"even at efSearch {tried[-1]['efSearch']}")}


class ShardedSearch:
    """Several segment indexes searched as one: each shard answers its own top k, skipping
    the rows the version deleted from it (a FAISS id selector, so no rebuild), and the
    answers are merged by score. Exact where every shard is exact; otherwise the HNSW shards'
    measured recall bounds the whole. No vector is copied: a version of a million chunks is
    searched in the files' own indexes. Offers what retrieval, calibration and the index
    checks use of a FAISS index: `search`, `ntotal`, `d`, `reconstruct`, and `ids()`."""

    def __init__(self, shards: list[tuple[faiss.Index, np.ndarray]]):
        self._shards = []
        for index, dead in shards:
            dead = np.unique(np.ascontiguousarray(dead, dtype=np.int64))
            params, keep_alive = None, ()
            if len(dead):
                batch = faiss.IDSelectorBatch(dead)
                hnsw = index_kind(index) == "hnsw"
                params = faiss.SearchParametersHNSW() if hnsw else faiss.SearchParameters()
                params.sel = faiss.IDSelectorNot(batch)
                if hnsw:
                    params.efSearch = ef_search_of(index)
                keep_alive = (batch, params.sel)  # SWIG does not keep selectors alive
            stored = segment_ids(index)
            live = stored[~np.isin(stored, dead)] if len(dead) else stored
            self._shards.append((index, params, live, dead, keep_alive))
        self.d = shards[0][0].d if shards else 0
        self.ntotal = sum(len(live) for _, _, live, _, _ in self._shards)

    @property
    def kinds(self) -> list[str]:
        return [index_kind(index) for index, *_ in self._shards]

    def ids(self) -> np.ndarray:
        """The live ids of every shard, shard after shard (a duplicate is a finding)."""
        parts = [live for _, _, live, _, _ in self._shards]
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def reconstruct(self, chunk_id: int) -> np.ndarray:
        """The stored vector of a live id (the shard holding it live)."""
        for index, _, live, dead, _ in self._shards:
            pos = np.searchsorted(dead, chunk_id)
            if pos < len(dead) and dead[pos] == chunk_id:
                continue
            try:
                return index.reconstruct(int(chunk_id))
            except RuntimeError:  # not in this shard's id map
                continue
        raise KeyError(f"chunk id {chunk_id} is in no shard of this version")

    def search(self, x: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        x = np.ascontiguousarray(x, dtype=np.float32).reshape(-1, self.d)
        scores, ids = [], []
        for index, params, live, _, _ in self._shards:
            if len(live) == 0:
                continue
            s, i = index.search(x, min(k, len(live)), params=params)
            scores.append(np.where(i >= 0, s, -np.inf))
            ids.append(i)
        if not scores:
            return (np.full((len(x), k), -np.inf, np.float32), np.full((len(x), k), -1, np.int64))
        if len(scores) == 1:
            s, i = scores[0], ids[0]
        else:
            s, i = np.concatenate(scores, axis=1), np.concatenate(ids, axis=1)
            # By score; equal scores (identical vectors) by descending id, the order one
            # exact index lists them in. Which of several tied rows fills the last of k
            # places may differ from one index's choice.
            order = np.lexsort((np.where(i >= 0, -i, np.iinfo(np.int64).max), -s))[:, :k]
            s, i = np.take_along_axis(s, order, 1), np.take_along_axis(i, order, 1)
        if s.shape[1] < k:  # fewer live rows than k: pad as FAISS does
            pad = k - s.shape[1]
            s = np.pad(s, ((0, 0), (0, pad)), constant_values=-np.inf)
            i = np.pad(i, ((0, 0), (0, pad)), constant_values=-1)
        return s.astype(np.float32), np.where(np.isfinite(s), i, -1).astype(np.int64)
