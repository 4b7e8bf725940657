"""Score a candidate KB version (and production, on the same questions) with the KB's own
evaluation set, and apply the gate that fits the set: absolute SLOs on a curated golden set;
integrity, floors calibrated for synthetic questions and no regression on a synthetic one
(the rule: kb_assets/release_gate.py). Used by the `retrieval_eval` asset and by `kb eval`."""

from __future__ import annotations

from dataclasses import dataclass, field

from .eval_set import EvalQuestion, EvalSet, applicable, coverage
from .golden import EvalReport, evaluate, one_torch_thread, timed_questions
from .paired_latency import PairedLatency, time_side_by_side
from .release_gate import (GateResult, GateThresholds, SyntheticFloors, latency_limit,
                           no_questions, release_gate)


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
    # Rounds of side-by-side latency timing against production (0: no production to time).
    latency_rounds: int = 0

    @property
    def passed(self) -> bool:
        return bool(self.gate) and all(r.passed for r in self.gate)

    def details(self) -> dict:
        return {"kind": self.kind, "source": self.eval_set.source, "sha256": self.eval_set.sha256,
                "format": self.eval_set.fmt, "n_questions": len(self.eval_set.questions),
                "not_applicable": len(self.not_applicable),
                "not_applicable_qids": [q.qid for q in self.not_applicable[:50]],
                "coverage": round(self.coverage, 4), "fallback_reason": self.fallback_reason,
                "latency_rounds": self.latency_rounds}


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
    latency_sample = max(1, latency_sample)
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
        return ReleaseEvaluation(kind, scored, None, None, None, no_questions(floors, why),
                                 skipped, cov, fallback)

    shared: set[str] = set()
    if prod_searcher is not None:
        p_ids, p_dups = _doc_ids(prod_searcher)
        shared_set, _ = applicable(scored, p_ids, p_dups)
        shared = {q.qid for q in shared_set.questions}
    # With a production to compare with, latency is timed on both side by side (below).
    cand = evaluate(cand_searcher, scored.as_golden(), k,
                    latency_sample=0 if shared else latency_sample)
    prod = cand_shared = None
    rounds = 0
    if shared:
        sub = _subset(scored, shared)
        vectors = [v for q, v in zip(scored.questions, cand.query_vectors) if q.qid in shared]
        # Production answers with its own relevant ids (a copy may be indexed elsewhere).
        prod = evaluate(prod_searcher, shared_set.as_golden(), k, query_vectors=vectors,
                        latency_sample=0)
        cand_shared = (EvalReport(cand.version, dict(cand.metrics), cand.per_query,
                                  cand.query_vectors)
                       if len(shared) == len(scored.questions) else
                       evaluate(cand_searcher, sub.as_golden(), k, query_vectors=vectors,
                                latency_sample=0))
        paired = _time_side_by_side(cand_searcher, prod_searcher,
                                    timed_questions(sub.as_golden(), latency_sample), k, t)
        rounds = paired.rounds
        cand.metrics.update(paired.first_round())  # as a served query saw it
        cand_shared.metrics.update(paired.fastest())  # what the gate compares
        prod.metrics.update(paired.fastest(production=True))
    results = release_gate(kind, cand.metrics, cand_shared.metrics if cand_shared else None,
                           prod.metrics if prod else None, t, floors, len(scored.questions))
    return ReleaseEvaluation(kind, scored, cand, prod, cand_shared, results, skipped, cov,
                             fallback, rounds)


def _time_side_by_side(cand_searcher, prod_searcher, questions: list[str], k: int,
                       t: GateThresholds) -> PairedLatency:
    """End to end (embed + search), one torch thread as `kb serve`, after one untimed query
    on each version."""
    with one_torch_thread():
        for s in (cand_searcher, prod_searcher):
            s.search(questions[0], k=k)
        return time_side_by_side(lambda q: cand_searcher.search(q, k=k),
                                 lambda q: prod_searcher.search(q, k=k), questions,
                                 lambda cand, prod: cand <= latency_limit(prod, t))
