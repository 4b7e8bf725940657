"""Score a candidate KB version (and production, on the same questions) with the KB's own
evaluation set, and apply the gate that fits the set: absolute SLOs on a curated golden set;
integrity, floors calibrated for synthetic questions and no regression on a synthetic one.
Used by the `retrieval_eval` asset and by `kb eval`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .eval_set import CURATED, SYNTHETIC, EvalQuestion, EvalSet, applicable, coverage
from .golden import EvalReport, evaluate
from .metrics import GateResult, GateThresholds, gate


@dataclass(frozen=True)
class SyntheticFloors:
    """Floors for the platform's own known-item questions. They are easier than people's
    questions (their words come from the passage), so these catch a broken KB, not a mediocre
    one: measured on scifact (5,183 documents), stackfaq_en and tipo_faq_zh_tw used as
    inboxes, synthetic recall@3 was 0.74-0.98 and zero-hit 0-1% (BENCHMARKS.md, new_user)."""

    min_recall_at_3: float = 0.5
    max_zero_hit_rate: float = 0.05
    min_questions: int = 1


@dataclass
class ReleaseEvaluation:
    kind: str  # curated | synthetic: the set the verdict rests on
    eval_set: EvalSet  # the questions scored on the candidate (applicable ones)
    candidate: EvalReport | None
    production: EvalReport | None  # production on the questions both versions can answer
    candidate_shared: EvalReport | None  # the candidate on those same questions
    gate: list[GateResult]
    not_applicable: list[EvalQuestion] = field(default_factory=list)
    coverage: float = 0.0
    fallback_reason: str | None = None  # why a curated set was not used

    @property
    def passed(self) -> bool:
        return bool(self.gate) and all(r.passed for r in self.gate)

    def details(self) -> dict:
        return {"kind": self.kind, "source": self.eval_set.source, "sha256": self.eval_set.sha256,
                "format": self.eval_set.fmt, "n_questions": len(self.eval_set.questions),
                "not_applicable": len(self.not_applicable),
                "not_applicable_qids": [q.qid for q in self.not_applicable[:50]],
                "coverage": round(self.coverage, 4), "fallback_reason": self.fallback_reason}


def _doc_ids(searcher) -> tuple[set[str], dict[str, str]]:
    v = searcher.version
    return set(v.manifest["doc_id"].astype(str)), dict(v.info.get("duplicates") or {})


def _subset(es: EvalSet, qids: set[str]) -> EvalSet:
    return EvalSet(es.kind, [q for q in es.questions if q.qid in qids], es.sha256, es.source,
                   es.fmt)


def evaluate_release(cand_searcher, prod_searcher, curated: EvalSet | None,
                     synthetic: EvalSet, k: int, t: GateThresholds,
                     floors: SyntheticFloors = SyntheticFloors(),
                     latency_sample: int = 50) -> ReleaseEvaluation:
    """`prod_searcher` is None when nothing is in production (or it is the candidate)."""
    doc_ids, dups = _doc_ids(cand_searcher)
    fallback = None
    chosen = curated
    if curated is not None:
        scored, skipped = applicable(curated, doc_ids, dups)
        if not scored.questions:
            fallback = (f"none of the {len(curated.questions)} curated questions ({curated.source}) "
                        "is about a document in this KB version; the synthetic set was used")
            chosen = None
    if chosen is None:
        scored, skipped = applicable(synthetic, doc_ids, dups)
    kind = scored.kind
    cov = coverage(scored, doc_ids, dups)
    if not scored.questions:
        why = ("the KB has no document to ask about" if not doc_ids else
               "no evaluation question applies to this version")
        return ReleaseEvaluation(kind, scored, None, None, None, [GateResult(
            "eval_questions", False, 0, f">= {floors.min_questions}", f"integrity: {why}")],
            skipped, cov, fallback)

    cand = evaluate(cand_searcher, scored.as_golden(), k, latency_sample=latency_sample)
    prod = cand_shared = None
    if prod_searcher is not None:
        p_ids, p_dups = _doc_ids(prod_searcher)
        shared_set, _ = applicable(scored, p_ids, p_dups)
        shared = {q.qid for q in shared_set.questions}
        if shared:
            sub = _subset(scored, shared)
            vectors = [v for q, v in zip(scored.questions, cand.query_vectors) if q.qid in shared]
            # Production answers with its own relevant ids (a copy may be indexed elsewhere).
            prod = evaluate(prod_searcher, shared_set.as_golden(), k, query_vectors=vectors,
                            latency_sample=latency_sample)
            cand_shared = (cand if len(shared) == len(scored.questions) else
                           evaluate(cand_searcher, sub.as_golden(), k, query_vectors=vectors,
                                    latency_sample=latency_sample))
    results = release_gate(kind, cand.metrics, cand_shared.metrics if cand_shared else None,
                           prod.metrics if prod else None, t, floors, len(scored.questions))
    return ReleaseEvaluation(kind, scored, cand, prod, cand_shared, results, skipped, cov,
                             fallback)


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
