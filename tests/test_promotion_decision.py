"""The one promotion decision both models' promotion assets take, as a table; and the gates
deciding from stored scores (what the blocking checks do), not from a stored verdict."""

import pytest

from checks.ft_checks import ft_verdict
from kb_assets.release_gate import (GateThresholds, SyntheticFloors, passed, release_gate,
                                 stored_verdict)
from kb_assets.ft_answer import ContenderSummary
from kb_core.models import ASSISTANT, KB, MODELS, spec_of
from kb_core.promotion import (ALREADY, MANUAL, NO_CANDIDATE, PROMOTE, REJECTED,
                               decide_promotion)

BOTH = pytest.mark.parametrize("spec", [KB, ASSISTANT], ids=lambda s: s.name)


# gate_passed, auto_promote, current, candidate -> action
@BOTH
@pytest.mark.parametrize("gate_passed, auto, current, candidate, action", [
    (None, True, None, None, NO_CANDIDATE),
    (None, True, 2, None, NO_CANDIDATE),
    (True, False, 2, None, NO_CANDIDATE),       # nothing evaluated: auto_promote is irrelevant
    (False, True, None, 1, REJECTED),
    (False, True, 1, 2, REJECTED),
    (False, False, 2, 2, REJECTED),             # a failed gate wins over "already production"
    (None, True, 1, 2, REJECTED),               # no verdict is not a pass
    (True, True, 2, 2, ALREADY),
    (True, False, 2, 2, ALREADY),               # never asks a person to promote what serves
    (True, False, None, 1, MANUAL),
    (True, False, 1, 2, MANUAL),
    (True, True, None, 1, PROMOTE),
    (True, True, 1, 2, PROMOTE),
    (True, True, 3, 2, PROMOTE),                # promoting an older candidate is the gate's call
])
def test_decision_table(spec, gate_passed, auto, current, candidate, action):
    d = decide_promotion(spec, gate_passed, auto, current, candidate)
    assert (d.model, d.action, d.candidate, d.current) == (spec.name, action, candidate, current)
    assert d.promote == (action == PROMOTE)
    assert spec.label in d.summary


@BOTH
def test_summaries_name_the_command_a_person_runs(spec):
    manual = decide_promotion(spec, True, False, 1, 2).summary
    assert "automatic promotion is off" in manual and "Production stays v1" in manual
    assert f"`{spec.promote_command(2)}`" in manual
    assert "production stays none" in decide_promotion(spec, False, True, None, 1).summary


def test_promote_command_and_specs():
    assert KB.promote_command(3) == "kb promote 3"
    assert ASSISTANT.promote_command(3) == "kb promote 3 --model kb-assistant"
    assert set(MODELS) == {"kb", "kb-assistant"} and spec_of("kb") is KB
    assert (KB.gate_check, ASSISTANT.gate_check) == ("promotion_gate", "ft_beats_base")
    assert KB.serving_pointer and not ASSISTANT.serving_pointer
    with pytest.raises(ValueError, match="unknown model 'kb2'"):
        spec_of("kb2")


# -- the KB gate on stored scores ------------------------------------------------------------
GOOD = {"recall_at_1": 0.8, "recall_at_3": 0.9, "mrr": 0.85, "ndcg_at_10": 0.88,
        "zero_hit_rate": 0.0, "latency_p50_ms": 10.0, "latency_p95_ms": 20.0}
T, F = GateThresholds(), SyntheticFloors()


def _details(kind, n=30, shared=None, prod=None, stored_verdict_says=None):
    return {"trigger": "dagster", "eval_set": {"kind": kind, "n_questions": n},
            "candidate_shared_metrics": shared, "production_metrics": prod,
            # what an older asset would have stored; the check must not read it
            "gate": stored_verdict_says or []}


@pytest.mark.parametrize("kind, metrics, shared, prod, expected", [
    ("curated", GOOD, None, None, True),
    ("curated", {**GOOD, "recall_at_3": 0.6}, None, None, False),       # below the 0.70 SLO
    ("synthetic", {**GOOD, "recall_at_3": 0.6}, None, None, True),      # above the 0.5 floor
    ("synthetic", {**GOOD, "zero_hit_rate": 0.1}, None, None, False),
    ("curated", GOOD, GOOD, {**GOOD, "mrr": 0.95}, False),              # regresses by 0.10
    ("curated", GOOD, GOOD, {**GOOD, "mrr": 0.88}, True),               # within 0.05
    ("synthetic", {}, None, None, False),                               # no question applied
])
def test_stored_verdict_is_computed_from_scores(kind, metrics, shared, prod, expected):
    results = stored_verdict(metrics, _details(kind, shared=shared, prod=prod,
                                               stored_verdict_says=[{"passed": not expected}]),
                             T, F)
    assert passed(results) is expected
    if metrics:  # the same rule as retrieval_eval shows beside its scores
        assert results == release_gate(kind, metrics, shared, prod, T, F, 30)


def test_stored_verdict_follows_the_thresholds():
    strict = GateThresholds(min_recall_at_3=0.95)
    assert passed(stored_verdict(GOOD, _details("curated"), T, F))
    failed = [r.name for r in stored_verdict(GOOD, _details("curated"), strict, F) if not r.passed]
    assert failed == ["recall_at_3"]


# -- the kb-assistant gate on stored scores --------------------------------------------------
def _metrics(ft, base, extractive, n=10):
    out = {}
    for prefix, score in (("ft_", ft), ("base_", base), ("extractive_", extractive)):
        s = ContenderSummary(prefix, n, n - 2, 2, score, score, 1.0, score, 0.0, 0.1, score)
        out.update(s.as_dict(prefix))
    return out


@pytest.mark.parametrize("ft, base, extractive, margin, expected", [
    (0.8, 0.5, 0.6, 0.02, True),
    (0.8, 0.79, 0.6, 0.02, False),      # beats base by less than the margin
    (0.8, 0.5, 0.85, 0.02, False),      # the extractive answer is better
    (0.8, 0.79, 0.6, 0.0, True),
    (0.5, 0.6, 0.6, -1.0, True),        # a negative margin (tests) lets anything through
])
def test_ft_verdict_from_stored_metrics(ft, base, extractive, margin, expected):
    ok, reason = ft_verdict(_metrics(ft, base, extractive), margin)
    assert ok is expected and ("beats every other" in reason) is expected


def test_ft_verdict_with_no_answered_question():
    ok, reason = ft_verdict(_metrics(0.0, 0.0, 0.0, n=0), 0.02)
    assert not ok and "no held-out questions" in reason
