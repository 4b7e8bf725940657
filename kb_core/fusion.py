"""Rank fusion for hybrid retrieval. Pure."""

from __future__ import annotations

from collections.abc import Sequence

RRF_K = 60


def rrf_fuse(rankings: Sequence[Sequence[int]], weights: Sequence[float] | None = None,
             k: int = RRF_K) -> list[tuple[int, float]]:
    """Weighted reciprocal-rank fusion: score(d) = sum_i w_i / (k + rank_i(d)), rank from 1.

    Returns (item, score) sorted by score, ties broken by first appearance so the result is
    deterministic."""
    weights = list(weights) if weights is not None else [1.0] * len(rankings)
    if len(weights) != len(rankings):
        raise ValueError("one weight per ranking")
    scores: dict[int, float] = {}
    first_seen: dict[int, int] = {}
    seq = 0
    for ranking, w in zip(rankings, weights):
        for rank, item in enumerate(ranking, start=1):
            scores[item] = scores.get(item, 0.0) + w / (k + rank)
            if item not in first_seen:
                first_seen[item] = seq
                seq += 1
    return sorted(scores.items(), key=lambda kv: (-kv[1], first_seen[kv[0]]))


def dense_weight(cjk_share: float, floor: float = 0.1) -> float:
    """Weight of the dense ranking for a query. The default embedder reads English only
    (CJK becomes [UNK]), so a mostly-Chinese query trusts the lexical ranking."""
    return max(floor, 1.0 - cjk_share)
