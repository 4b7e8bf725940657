"""The KB release policy: how a candidate KB version is evaluated and when it may become
`production` (the promotion gate's thresholds)."""

from __future__ import annotations

from dagster import ConfigurableResource

from kb_core import settings


class ReleaseConfig(ConfigurableResource):
    """How a KB candidate is evaluated and when it may become `production`. Defaults are the
    team's SLOs; KB_GOLDEN and KB_AUTO_PROMOTE override from the environment."""

    # A curated golden set: project jsonl or BEIR folder (KB_GOLDEN). Empty: the KB's own
    # `$KB_HOME/golden/` folder if it holds one, else questions made from the KB itself.
    golden_path: str = ""
    kb_home: str = ""  # where `golden/` is looked for
    eval_k: int = 10
    latency_sample: int = 50  # questions timed one by one (embed + search) for p50/p95
    min_recall_at_3: float = 0.70
    max_zero_hit_rate: float = 0.02
    max_p95_latency_ms: float = 500.0
    # A quality metric (recall, MRR, nDCG) may be at most this much (absolute) below
    # production's; zero-hit rate at most this much above.
    max_regression: float = 0.05
    # p95 latency may be at most this fraction above production's (timings are noisy).
    max_latency_regression: float = 1.0
    # ... and by at least this many ms (a few-ms p95 doubles on a busy machine's noise).
    min_latency_regression_ms: float = 25.0
    auto_promote: bool = True
    # Without a curated set: how many documents get a synthetic question, and the floors the
    # candidate must reach on them (kb_assets/release_gate.py says how they were measured).
    synthetic_questions: int = 200
    min_synthetic_recall_at_3: float = 0.5
    max_synthetic_zero_hit_rate: float = 0.05

    @classmethod
    def from_env(cls, kb_home: str = "") -> "ReleaseConfig":
        return cls(golden_path=settings.get("KB_GOLDEN"), kb_home=kb_home,
                   auto_promote=settings.get("KB_AUTO_PROMOTE"))
