"""Retrieval metrics, as pure functions (the promotion gate built on them is
kb_assets/release_gate.py).

A query's result is the ranked list of doc ids of the returned passages (several passages may
come from one document). A document counts once, at the rank of its first passage; `k` cuts
the passage list, which is what the user sees. `relevant` maps doc id -> graded relevance
(> 0); a plain set means grade 1 for each."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

# Metric name -> whether higher is better. Names avoid "@" (MLflow metric-name rules).
HIGHER_IS_BETTER = {"mrr": True, "zero_hit_rate": False,
                    "latency_p50_ms": False, "latency_p95_ms": False}


def is_metric(name: str) -> bool:
    return name in HIGHER_IS_BETTER or name.startswith(("recall_at_", "ndcg_at_"))


def higher_is_better(name: str) -> bool:
    if name.startswith(("recall_at_", "ndcg_at_")):
        return True
    return HIGHER_IS_BETTER[name]


def _grades(relevant: Mapping[str, float] | Iterable[str]) -> dict[str, float]:
    grades = (dict(relevant) if isinstance(relevant, Mapping)
              else {d: 1.0 for d in relevant})
    grades = {d: float(g) for d, g in grades.items() if g and g > 0}
    if not grades:
        raise ValueError("a golden query needs at least one relevant document")
    return grades


def first_ranks(ranked: Sequence[str]) -> dict[str, int]:
    """doc id -> 1-based rank of its first passage."""
    out: dict[str, int] = {}
    for i, doc in enumerate(ranked, start=1):
        out.setdefault(doc, i)
    return out


def recall_at_k(ranked: Sequence[str], relevant, k: int) -> float:
    grades = _grades(relevant)
    found = sum(1 for d, r in first_ranks(ranked[:k]).items() if d in grades)
    return found / len(grades)


def reciprocal_rank(ranked: Sequence[str], relevant) -> float:
    grades = _grades(relevant)
    for i, doc in enumerate(ranked, start=1):
        if doc in grades:
            return 1.0 / i
    return 0.0


def ndcg_at_k(ranked: Sequence[str], relevant, k: int) -> float:
    """Linear-gain nDCG (as BEIR / trec_eval): gain g at rank r adds g / log2(r + 1)."""
    grades = _grades(relevant)
    dcg = sum(grades[d] / math.log2(r + 1)
              for d, r in first_ranks(ranked[:k]).items() if d in grades)
    ideal = sorted(grades.values(), reverse=True)[:k]
    idcg = sum(g / math.log2(i + 2) for i, g in enumerate(ideal))
    return dcg / idcg


def percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    if not values:
        return 0.0
    xs = sorted(values)
    pos = (len(xs) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (pos - lo)


def recall_cutoffs(k: int) -> list[int]:
    return sorted({c for c in (1, 3, k) if c <= k})


def summarize(results: Sequence[tuple[Sequence[str], object]],
              latencies_ms: Sequence[float] | None, k: int = 10) -> dict[str, float]:
    """Mean metrics over queries. `results` holds (ranked doc ids, relevant) per query;
    a query with no passage at all is a zero-hit. No latencies (None): no latency metrics."""
    if not results:
        raise ValueError("no golden queries to evaluate")
    n = len(results)
    out: dict[str, float] = {}
    for c in recall_cutoffs(k):
        out[f"recall_at_{c}"] = sum(recall_at_k(r, rel, c) for r, rel in results) / n
    out["mrr"] = sum(reciprocal_rank(r[:k], rel) for r, rel in results) / n
    out[f"ndcg_at_{k}"] = sum(ndcg_at_k(r, rel, k) for r, rel in results) / n
    out["zero_hit_rate"] = sum(1 for r, _ in results if len(r) == 0) / n
    if latencies_ms is not None:
        out["latency_p50_ms"] = percentile(latencies_ms, 50)
        out["latency_p95_ms"] = percentile(latencies_ms, 95)
    return {name: round(v, 6) for name, v in out.items()}


def comparison_rows(candidate: Mapping[str, float],
                    production: Mapping[str, float] | None) -> list[tuple]:
    """(metric, candidate, production, delta, better/worse) rows for a markdown table."""
    rows = []
    for name, cand in candidate.items():
        prod = (production or {}).get(name)
        if prod is None or not is_metric(name):
            rows.append((name, cand, "", "", ""))
            continue
        delta = cand - prod
        if abs(delta) < 1e-9:
            verdict = "same"
        else:
            verdict = "better" if (delta > 0) == higher_is_better(name) else "worse"
        rows.append((name, cand, prod, round(delta, 6), verdict))
    return rows
