"""Retrieval metrics and the promotion gate, against hand-computed values."""

import math

import pytest

from kb_assets.release_gate import GateThresholds, gate
from kb_assets.metrics import (comparison_rows, first_ranks, ndcg_at_k, percentile, recall_at_k,
                               reciprocal_rank, summarize)

L3 = 1 / math.log2(3)  # discount at rank 2
L4 = 1 / math.log2(4)  # discount at rank 3 (= 0.5)


@pytest.mark.parametrize("ranked, relevant, k, expected", [
    (["a", "b", "c"], {"b"}, 1, 0.0),
    (["a", "b", "c"], {"b"}, 2, 1.0),
    (["a", "x", "b"], {"a", "b"}, 2, 0.5),
    (["a", "x", "b"], {"a", "b"}, 3, 1.0),
    (["x", "x", "a"], {"a"}, 2, 0.0),          # k cuts passages, not distinct documents
    (["x", "x", "a"], {"a"}, 3, 1.0),
    (["a", "a", "a"], {"a", "b"}, 3, 0.5),     # one document counts once
    ([], {"a"}, 10, 0.0),                       # zero-hit
    (["b"], {"a": 2.0, "b": 0.0}, 1, 0.0),     # grade 0 is not relevant
])
def test_recall_at_k(ranked, relevant, k, expected):
    assert recall_at_k(ranked, relevant, k) == pytest.approx(expected)


@pytest.mark.parametrize("ranked, relevant, expected", [
    (["a"], {"a"}, 1.0),
    (["x", "a"], {"a"}, 0.5),
    (["x", "y", "z", "a"], {"a", "z"}, 1 / 3),
    (["x", "y"], {"a"}, 0.0),
    ([], {"a"}, 0.0),
])
def test_reciprocal_rank(ranked, relevant, expected):
    assert reciprocal_rank(ranked, relevant) == pytest.approx(expected)


@pytest.mark.parametrize("ranked, relevant, k, expected", [
    (["a"], {"a"}, 10, 1.0),
    (["x", "a"], {"a"}, 10, L3),                                   # 0.6309
    (["x", "a"], {"a"}, 1, 0.0),
    (["a", "x", "b"], {"a", "b"}, 10, (1 + L4) / (1 + L3)),        # 0.9197
    (["b", "a"], {"a": 2, "b": 1}, 10, (1 + 2 * L3) / (2 + L3)),   # graded: 0.8597
    (["a", "a"], {"a"}, 10, 1.0),                                  # a repeat adds no gain
    (["x", "y"], {"a"}, 10, 0.0),
    # three relevant, k=2: the ideal ranking holds only two of them
    (["a", "b"], {"a", "b", "c"}, 2, 1.0),
])
def test_ndcg_at_k(ranked, relevant, k, expected):
    assert ndcg_at_k(ranked, relevant, k) == pytest.approx(expected)


def test_hand_computed_ndcg_values():
    assert ndcg_at_k(["x", "a"], {"a"}, 10) == pytest.approx(0.63093, abs=1e-5)
    assert ndcg_at_k(["a", "x", "b"], {"a", "b"}, 10) == pytest.approx(0.91972, abs=1e-5)


def test_relevant_set_must_not_be_empty():
    with pytest.raises(ValueError, match="at least one relevant"):
        recall_at_k(["a"], set(), 3)
    with pytest.raises(ValueError):
        ndcg_at_k(["a"], {"a": 0}, 3)


def test_first_ranks_keeps_the_first_passage_of_each_document():
    assert first_ranks(["a", "b", "a", "c"]) == {"a": 1, "b": 2, "c": 4}


@pytest.mark.parametrize("values, q, expected", [
    ([1, 2, 3, 4], 50, 2.5),
    ([1, 2, 3, 4], 95, 3.85),
    ([4, 1, 3, 2], 0, 1.0),
    ([4, 1, 3, 2], 100, 4.0),
    ([7.0], 95, 7.0),
    ([], 50, 0.0),
    (list(range(1, 101)), 95, 95.05),
])
def test_percentile(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_summarize_means_over_queries():
    results = [(["a", "x"], {"a"}),          # rank 1
               (["x", "y", "b"], {"b"}),     # rank 3
               ([], {"c"}),                  # zero-hit
               (["x", "d"], {"d"})]          # rank 2
    m = summarize(results, [10, 20, 30, 40], k=10)
    assert m["recall_at_1"] == pytest.approx(1 / 4)
    assert m["recall_at_3"] == pytest.approx(3 / 4)
    assert m["recall_at_10"] == pytest.approx(3 / 4)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 0 + 1 / 2) / 4)
    assert m["ndcg_at_10"] == pytest.approx((1 + L4 + 0 + L3) / 4, abs=1e-6)
    assert m["zero_hit_rate"] == pytest.approx(0.25)
    assert m["latency_p50_ms"] == pytest.approx(25.0)
    assert m["latency_p95_ms"] == pytest.approx(38.5)


def test_summarize_with_small_k_has_no_recall_beyond_k():
    m = summarize([(["a"], {"a"})], [1.0], k=3)
    assert set(m) >= {"recall_at_1", "recall_at_3", "ndcg_at_3"}
    assert "recall_at_10" not in m


def test_summarize_refuses_no_queries():
    with pytest.raises(ValueError):
        summarize([], [], k=10)


GOOD = {"recall_at_1": 0.8, "recall_at_3": 0.9, "recall_at_10": 0.95, "mrr": 0.85,
        "ndcg_at_10": 0.88, "zero_hit_rate": 0.0, "latency_p50_ms": 20.0,
        "latency_p95_ms": 40.0, "n_queries": 100}


def _failed(results):
    return sorted(r.name for r in results if not r.passed)


@pytest.mark.parametrize("change, failed", [
    ({}, []),
    ({"recall_at_3": 0.69}, ["recall_at_3"]),
    ({"recall_at_3": 0.70}, []),                        # the threshold itself passes
    ({"zero_hit_rate": 0.03}, ["zero_hit_rate"]),
    ({"zero_hit_rate": 0.02}, []),
    ({"latency_p95_ms": 501.0}, ["latency_p95_ms"]),
])
def test_gate_slos_without_production(change, failed):
    assert _failed(gate({**GOOD, **change}, None)) == failed


@pytest.mark.parametrize("change, failed", [
    ({}, []),
    ({"mrr": 0.85 - 0.049}, []),                                   # inside the margin
    ({"mrr": 0.85 - 0.06}, ["mrr vs production"]),
    ({"recall_at_1": 0.7}, ["recall_at_1 vs production"]),
    ({"zero_hit_rate": 0.01}, []),                                  # +0.01 <= margin 0.05
    ({"latency_p95_ms": 80.0}, []),                                 # +100% allowed
    ({"latency_p95_ms": 81.0}, ["latency_p95_ms vs production"]),
    ({"latency_p50_ms": 400.0}, []),                                # p50 is not gated
    ({"n_queries": 5}, []),                                         # not a metric
])
def test_gate_no_regression_against_production(change, failed):
    assert _failed(gate({**GOOD, **change}, GOOD)) == failed


@pytest.mark.parametrize("production_ms, candidate_ms, regressed", [
    (6.7, 14.0, False),   # doubled, but by 7 ms: a busy machine's noise (CI saw exactly this)
    (6.7, 31.7, False),   # +25 ms: the least counted
    (6.7, 32.0, True),
    (100.0, 200.0, False),  # +100%
    (100.0, 201.0, True),
])
def test_a_latency_regression_is_relative_and_at_least_some_milliseconds(
        production_ms, candidate_ms, regressed):
    results = gate({**GOOD, "latency_p95_ms": candidate_ms},
                   {**GOOD, "latency_p95_ms": production_ms})
    assert ("latency_p95_ms vs production" in _failed(results)) is regressed


def test_gate_thresholds_are_configurable():
    strict = GateThresholds(min_recall_at_3=0.95, max_regression=0.0)
    assert _failed(gate(GOOD, None, strict)) == ["recall_at_3"]
    better = {**GOOD, "mrr": 0.9}
    assert _failed(gate(better, GOOD, GateThresholds(max_regression=0.0))) == []


def test_comparison_rows_say_better_or_worse_by_direction():
    rows = {r[0]: r for r in comparison_rows(
        {"mrr": 0.9, "zero_hit_rate": 0.05, "latency_p95_ms": 30.0, "n_queries": 10},
        {"mrr": 0.8, "zero_hit_rate": 0.01, "latency_p95_ms": 30.0, "n_queries": 10})}
    assert rows["mrr"][3] == pytest.approx(0.1) and rows["mrr"][4] == "better"
    assert rows["zero_hit_rate"][4] == "worse"
    assert rows["latency_p95_ms"][4] == "same"
    assert rows["n_queries"][2:] == ("", "", "")
