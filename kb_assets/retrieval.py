"""Hybrid retrieval over one KB version: dense FAISS inner product fused with CJK-aware BM25
by weighted reciprocal-rank fusion, with an explicit "nothing relevant" answer (a zero-hit)
instead of returning noise."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

from kb_core.fusion import dense_weight, rrf_fuse
from .relevance import CJK_QUERY_THRESHOLD, Calibration, readable_dense_top
from kb_core.text import cjk_ratio


def evidence_weights(version, t, dense_rows, dense_scores, lex_scores) -> list[float] | None:
    """Fusion weights from how far each ranking's best score clears this version's calibrated
    threshold, relative to the threshold: a ranking that barely beats what unrelated questions
    get counts little for this query. Replaces a fixed lexical weight tuned on one corpus
    (nDCG@10, BENCHMARKS.md: stackfaq_en 0.930 -> 0.936, scifact subset 0.816 -> 0.830)."""
    d_top = readable_dense_top(version, version.chunk_ids[dense_rows], dense_scores)
    l_top = float(lex_scores[0]) / math.log1p(max(1, version.lexical.n_docs))
    # max(threshold, 0.05): a threshold of 0 (nothing unrelated scored) must not divide by 0.
    wd = max(0.0, d_top - t.dense) / max(t.dense, 0.05)
    wl = max(0.0, l_top - t.lexical) / max(t.lexical, 0.05)
    return [wd / (wd + wl), wl / (wd + wl)] if wd + wl > 0 else None


def readable_rows(version, rows: np.ndarray) -> np.ndarray:
    """Mask of manifest rows whose text is mostly not CJK, cached per version and row."""
    cache = version.__dict__.setdefault("_readable", {})
    texts = version.manifest["text"]
    out = np.empty(len(rows), dtype=bool)
    for i, r in enumerate(rows.tolist()):
        ok = cache.get(r)
        if ok is None:
            ok = cache[r] = cjk_ratio(str(texts.iat[r])) < CJK_QUERY_THRESHOLD
        out[i] = ok
    return out


def version_calibration(version) -> Calibration | None:
    """The relevance calibration stored with the version (None for older versions)."""
    cached = getattr(version, "_calibration", False)
    if cached is False:
        raw = (version.info or {}).get("relevance")
        cached = Calibration.from_dict(raw) if raw else None
        try:
            version._calibration = cached
        except AttributeError:
            pass
    return cached


@dataclass(frozen=True)
class RetrievalConfig:
    candidates: int = 50
    # The next three: the zero-hit rule of versions published before per-version relevance
    # calibration (kb_assets/relevance.py); newer versions carry their own thresholds.
    # Cosine below which a dense neighbour is not evidence of relevance (MiniLM, English).
    min_dense_score: float = 0.30
    # Share of the query's IDF mass the corpus vocabulary must cover for lexical evidence.
    min_lexical_coverage: float = 0.25
    # Best BM25 score needed, in units of log(1 + chunks) so it holds as the KB grows (IDF
    # grows with log N). Measured on the sample set: golden questions >= 1.8, most
    # unrelated Chinese questions < 1.2.
    min_lexical_score: float = 1.5
    # A query at least this CJK is judged by lexical evidence only: the default embedder
    # maps CJK to [UNK], so its cosines say nothing.
    cjk_query_threshold: float = 0.5
    # Weight of the lexical ranking for a Latin-script query (CJK queries always use 1.0).
    # 0.5: on stackfaq_en nDCG@10 went 0.909 (1.0) -> 0.933 (0.5) -> 0.936 (0.35).
    lexical_weight: float = 0.5


@dataclass(frozen=True)
class Hit:
    rank: int
    score: float
    doc_id: str
    source: str
    title: str
    text: str
    chunk_id: int
    dense_score: float | None
    lexical_score: float | None
    untrusted: bool = False  # looks like prompt injection (kb_assets.untrusted)

    def as_dict(self) -> dict:
        return asdict(self)


def dense_search(version, query_vec: np.ndarray, n: int) -> tuple[np.ndarray, np.ndarray]:
    n = min(n, version.search_index.ntotal)
    if n == 0:
        return np.empty(0, np.int64), np.empty(0, np.float32)
    scores, ids = version.search_index.search(query_vec.reshape(1, -1).astype(np.float32), n)
    keep = ids[0] >= 0
    return version.rows_for_ids(ids[0][keep]), scores[0][keep]


def hybrid_search(version, query: str, query_vec: np.ndarray, k: int = 5,
                  cfg: RetrievalConfig = RetrievalConfig(), mode: str = "hybrid") -> list[Hit]:
    """`mode` is hybrid, dense or lexical (the latter two for evaluation and benchmarks)."""
    dense_rows, dense_scores = (dense_search(version, query_vec, cfg.candidates)
                                if mode != "lexical" else (np.empty(0, np.int64), np.empty(0)))
    lex_rows, lex_scores = (version.lexical.search(query, cfg.candidates)
                            if mode != "dense" else (np.empty(0, np.int64), np.empty(0)))
    cjk = cjk_ratio(query)
    calibration = version_calibration(version)
    if calibration is not None and not version.info.get("embedder_reads_cjk", True):
        # The embedder cannot read CJK: its neighbours for a Chinese query, and its mostly-CJK
        # neighbours for any query, are noise that would reorder the lexical ranking.
        if cjk >= CJK_QUERY_THRESHOLD:
            dense_rows, dense_scores = np.empty(0, np.int64), np.empty(0)
        elif len(dense_rows):
            keep = readable_rows(version, dense_rows)
            dense_rows, dense_scores = dense_rows[keep], dense_scores[keep]
    if calibration is not None:  # thresholds calibrated on this version's own data
        t = calibration.for_query(cjk >= CJK_QUERY_THRESHOLD)
        dense_floor = t.dense
        dense_ok = (not math.isinf(t.dense) and len(dense_scores) > 0
                    and readable_dense_top(version, version.chunk_ids[dense_rows],
                                           dense_scores) > t.dense)
        lexical_ok = (len(lex_rows) > 0 and float(lex_scores[0])
                      / math.log1p(max(1, version.lexical.n_docs)) > t.lexical)
    else:  # a version published before calibration existed: the old constants
        dense_floor = cfg.min_dense_score
        dense_ok = (cjk < cfg.cjk_query_threshold and len(dense_scores) > 0
                    and float(dense_scores[0]) >= cfg.min_dense_score)
        lexical_ok = (len(lex_rows) > 0
                      and float(lex_scores[0]) >= cfg.min_lexical_score
                      * math.log1p(version.lexical.n_docs)
                      and version.lexical.coverage(query) >= cfg.min_lexical_coverage)
    if mode == "dense":
        lexical_ok = False
    if mode == "lexical":
        dense_ok = False
    if not (dense_ok or lexical_ok):
        return []
    dense_map = dict(zip(dense_rows.tolist(), dense_scores.tolist()))
    lex_map = dict(zip(lex_rows.tolist(), lex_scores.tolist()))
    rankings, weights = [], []
    if mode != "lexical" and len(dense_rows):
        # Without lexical support, only dense neighbours above the floor are evidence.
        rows = dense_rows if lexical_ok else dense_rows[dense_scores > dense_floor]
        rankings.append(rows.tolist())
        weights.append(dense_weight(cjk) if mode == "hybrid" else 1.0)
    if lexical_ok:
        rankings.append(lex_rows.tolist())
        weights.append(cfg.lexical_weight + (1.0 - cfg.lexical_weight) * cjk
                       if mode == "hybrid" else 1.0)
    if mode == "hybrid" and calibration is not None and len(rankings) == 2:
        weights = evidence_weights(version, calibration.for_query(cjk >= CJK_QUERY_THRESHOLD),
                                   dense_rows, dense_scores, lex_scores) or weights
    fused = rrf_fuse(rankings, weights)[:k]
    m = version.manifest
    hits = []
    for rank, (row, score) in enumerate(fused, start=1):
        rec = m.iloc[row]
        hits.append(Hit(rank=rank, score=round(float(score), 6), doc_id=str(rec["doc_id"]),
                        source=str(rec["source_path"]), title=str(rec["title"]),
                        text=str(rec["text"]), chunk_id=int(rec["chunk_id"]),
                        dense_score=dense_map.get(row), lexical_score=lex_map.get(row)))
    return hits


def context_block(hits: list[Hit]) -> str:
    """The retrieved passages formatted for an LLM prompt, each with its source; an
    untrusted passage is marked as such in its header."""
    from .untrusted import UNTRUSTED_NOTE

    return "\n\n".join(
        f"[{h.rank}] (source: {h.doc_id})" + (f" [{UNTRUSTED_NOTE}]" if h.untrusted else "")
        + f"\n{h.text}" for h in hits)
