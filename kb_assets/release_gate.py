"""The KB promotion gate's rule, as pure functions: the thresholds (from the release_config
resource), the SLO / floor / no-regression tests, and the verdict on a stored evaluation.
The `promotion_gate` check (checks/release_checks.py) decides with it from the stored scores;
`retrieval_eval` and `kb eval` show the same rule's result next to the scores. (It lives
below checks/ because assets may not import checks: the layers in pyproject.toml.)"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from .eval_set import CURATED, SYNTHETIC
from .metrics import higher_is_better, is_metric


@dataclass(frozen=True)
class GateThresholds:
    min_recall_at_3: float = 0.70
    max_zero_hit_rate: float = 0.02
    max_p95_latency_ms: float = 500.0
    max_regression: float = 0.05
    max_latency_regression: float = 1.0
    # A p95 slower than production's by less than this many ms is not a regression: on this
    # 2-core machine one code's 100k-chunk query p95 measured 6.6 ms quiet and 28.8-31.6 ms
    # at load 3-4 (BENCHMARKS.md, scale sections), and a few-ms KB doubles on such noise.
    min_latency_regression_ms: float = 25.0


@dataclass(frozen=True)
class SyntheticFloors:
    """Floors for the platform's own known-item questions. They are easier than people's
    questions (their words come from the passage), so these catch a broken KB, not a mediocre
    one: measured on scifact (5,183 documents), stackfaq_en and tipo_faq_zh_tw used as
    inboxes, synthetic recall@3 was 0.74-0.98 and zero-hit 0-1% (BENCHMARKS.md, new_user)."""

    min_recall_at_3: float = 0.5
    max_zero_hit_rate: float = 0.05
    min_questions: int = 1


@dataclass(frozen=True)
class GateResult:
    name: str
    passed: bool
    value: float | None
    threshold: str
    detail: str


def thresholds_of(cfg) -> GateThresholds:
    """The SLOs of a ReleaseConfig (resources/release_config.py)."""
    return GateThresholds(cfg.min_recall_at_3, cfg.max_zero_hit_rate, cfg.max_p95_latency_ms,
                          cfg.max_regression, cfg.max_latency_regression,
                          cfg.min_latency_regression_ms)


def floors_of(cfg) -> SyntheticFloors:
    return SyntheticFloors(cfg.min_synthetic_recall_at_3, cfg.max_synthetic_zero_hit_rate)


def passed(results: list[GateResult]) -> bool:
    return bool(results) and all(r.passed for r in results)


def latency_limit(production_p95_ms: float, t: GateThresholds) -> float:
    """The slowest candidate p95 that is not a regression against production's."""
    return max(production_p95_ms * (1 + t.max_latency_regression),
               production_p95_ms + t.min_latency_regression_ms)


def gate(candidate: Mapping[str, float], production: Mapping[str, float] | None,
         t: GateThresholds = GateThresholds()) -> list[GateResult]:
    """The blocking promotion checks: the SLOs, then no regression against production."""
    out = [
        GateResult("recall_at_3", candidate["recall_at_3"] >= t.min_recall_at_3,
                   candidate["recall_at_3"], f">= {t.min_recall_at_3}", "SLO"),
        GateResult("zero_hit_rate", candidate["zero_hit_rate"] <= t.max_zero_hit_rate,
                   candidate["zero_hit_rate"], f"<= {t.max_zero_hit_rate}", "SLO"),
        GateResult("latency_p95_ms", candidate["latency_p95_ms"] <= t.max_p95_latency_ms,
                   candidate["latency_p95_ms"], f"<= {t.max_p95_latency_ms}", "SLO"),
    ]
    for name, prod in sorted((production or {}).items()):
        if name not in candidate or name == "latency_p50_ms" or not is_metric(name):
            continue
        cand = candidate[name]
        if name == "latency_p95_ms":
            limit = latency_limit(prod, t)
            ok, thr = cand <= limit, (f"<= {limit:.1f} (production {prod:.1f} "
                                      f"+{t.max_latency_regression:.0%}, at least "
                                      f"+{t.min_latency_regression_ms:.0f} ms)")
        elif higher_is_better(name):
            limit = prod - t.max_regression
            ok, thr = cand >= limit - 1e-9, f">= {limit:.4f} (production {prod:.4f} - {t.max_regression})"
        else:
            limit = prod + t.max_regression
            ok, thr = cand <= limit + 1e-9, f"<= {limit:.4f} (production {prod:.4f} + {t.max_regression})"
        out.append(GateResult(f"{name} vs production", ok, cand, thr, "no regression"))
    return out


def no_questions(floors: SyntheticFloors, why: str) -> list[GateResult]:
    """The verdict when no evaluation question applies to the candidate."""
    return [GateResult("eval_questions", False, 0, f">= {floors.min_questions}",
                       f"integrity: {why}")]


def release_gate(kind: str, candidate: dict, candidate_shared: dict | None,
                 production: dict | None, t: GateThresholds, floors: SyntheticFloors,
                 n_questions: int) -> list[GateResult]:
    """Curated: the absolute SLOs; synthetic: integrity and floors. Both: no regression
    against production on the questions both versions can answer."""
    if kind == CURATED:
        slo = gate(candidate, None, t)
    else:
        assert kind == SYNTHETIC
        slo = [
            GateResult("eval_questions", n_questions >= floors.min_questions, n_questions,
                       f">= {floors.min_questions}", "integrity"),
            GateResult("recall_at_3", candidate["recall_at_3"] >= floors.min_recall_at_3,
                       candidate["recall_at_3"], f">= {floors.min_recall_at_3}",
                       "floor (synthetic)"),
            GateResult("zero_hit_rate", candidate["zero_hit_rate"] <= floors.max_zero_hit_rate,
                       candidate["zero_hit_rate"], f"<= {floors.max_zero_hit_rate}",
                       "floor (synthetic)"),
            GateResult("latency_p95_ms", candidate["latency_p95_ms"] <= t.max_p95_latency_ms,
                       candidate["latency_p95_ms"], f"<= {t.max_p95_latency_ms}", "SLO"),
        ]
    if production is None or candidate_shared is None:
        return slo
    regression = [r for r in gate(candidate_shared, production, t) if r.detail == "no regression"]
    return slo + regression


def stored_verdict(metrics: dict, details: dict, t: GateThresholds,
                   floors: SyntheticFloors) -> list[GateResult]:
    """The gate on an evaluation as `eval_results` stores it (kb_assets/release.py save_eval):
    the candidate's scores, its scores on the questions production can answer too, and
    production's."""
    eval_set = details.get("eval_set") or {}
    if not metrics:
        return no_questions(floors, "no evaluation question applies to this version")
    return release_gate(eval_set.get("kind", CURATED), metrics,
                        details.get("candidate_shared_metrics"),
                        details.get("production_metrics"), t, floors,
                        int(eval_set.get("n_questions", 0)))
