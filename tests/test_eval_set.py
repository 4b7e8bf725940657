"""Pure parts of the KB's own evaluation: synthetic known-item questions, curated sets and
their applicability, the per-version relevance calibration, and the gate per kind of set."""

from __future__ import annotations

import json
import math

import pytest

from kb_assets.release_gate import GateThresholds, SyntheticFloors, release_gate
from kb_assets.eval_set import (CURATED, SYNTHETIC, EvalQuestion, EvalSet, applicable,
                                coverage, curated_location, load_curated)
from kb_assets.golden import GoldenError
from kb_core.lexical import lexical_tokens
from kb_assets.relevance import (Calibration, Evidence, calibrate, carried_calibration,
                                 null_questions)
from kb_assets.synthetic_questions import (SourceDoc, make_question, pick_documents,
                                           question_for)

IDF = {"reimbursement": 5.0, "receipts": 4.5, "travel": 3.0, "days": 1.0, "within": 0.5,
       "submit": 2.0, "invoice": 4.0, "expense": 3.5}


def idf(term: str) -> float:
    return IDF.get(term, 2.5)


EN_DOC = SourceDoc("finance/expenses.md", "finance/expenses.md", "h-en", (
    (1, "Expense policy.\nSubmit travel receipts and the invoice within 30 days of returning. "
        "Late reimbursement requests need the director's approval."),))
ZH_DOC = SourceDoc("hr/overtime_zh.md", "hr/overtime_zh.md", "h-zh", (
    (2, "加班規定。假日加班需部門主管與人資雙重核准，並於事後七日內補登加班紀錄。"),))


# -- synthetic questions ----------------------------------------------------------------------
@pytest.mark.parametrize("doc", [EN_DOC, ZH_DOC], ids=["english", "chinese"])
def test_synthetic_question_is_deterministic_partial_and_points_at_its_document(doc):
    q1, q2 = question_for(doc, idf), question_for(doc, idf)
    assert q1 == q2 and q1 is not None
    assert q1.doc_id == doc.doc_id and q1.source_chunk_id == doc.chunks[0][0]
    assert q1.answer in doc.chunks[0][1]
    assert q1.question.rstrip("?？.。") not in q1.answer  # not a verbatim copy of the passage
    # ... but it keeps words of its source sentence, so the document can be found.
    assert set(lexical_tokens(q1.question)) & set(lexical_tokens(q1.answer))
    assert q1.qid == "syn-" + doc.content_hash[:12]


def test_synthetic_question_keeps_rare_words_and_drops_common_ones():
    q = make_question("Submit travel receipts and the invoice within 30 days.", idf, "s")
    words = set(q.lower().rstrip("?.").split())
    assert {"receipts", "invoice"} <= words and "within" not in words


def test_a_document_without_a_sentence_worth_asking_gets_no_question():
    assert question_for(SourceDoc("k", "k", "h", ((1, "OK."),)), idf) is None


def test_document_sample_is_stable_when_documents_are_added():
    keys = [f"doc{i}" for i in range(300)]
    before = pick_documents(keys, 50)
    after = pick_documents(keys + [f"new{i}" for i in range(10)], 50)
    assert len(before) == 50 and len(before & after) >= 40


# -- curated sets -----------------------------------------------------------------------------
def es(*questions: EvalQuestion, kind: str = CURATED) -> EvalSet:
    return EvalSet(kind, list(questions), "sha", "golden.jsonl", "jsonl")


def q(qid: str, *docs: str) -> EvalQuestion:
    return EvalQuestion(qid, f"question {qid}", {d: 1.0 for d in docs}, CURATED, None, None)


def test_questions_about_absent_documents_are_not_applicable_and_copies_count():
    s = es(q("a", "d1"), q("b", "gone"), q("c", "copy-of-d2"), q("d", "gone", "d3"))
    scored, skipped = applicable(s, {"d1", "d2", "d3"}, {"copy-of-d2": "d2"})
    assert [x.qid for x in scored.questions] == ["a", "c", "d"]
    assert [x.qid for x in skipped] == ["b"]
    assert scored.questions[1].relevant == {"d2": 1.0}   # the copy is scored as its original
    assert scored.questions[2].relevant == {"d3": 1.0}   # only what the version holds
    assert coverage(scored, {"d1", "d2", "d3", "d4"}, {}) == 0.75


def test_curated_location_prefers_kb_golden_then_the_kb_home_folder(tmp_path):
    assert curated_location(None, tmp_path) is None
    (tmp_path / "golden").mkdir()
    assert curated_location(None, tmp_path) is None  # an empty folder is no golden set
    (tmp_path / "golden" / "g.jsonl").write_text("", encoding="utf-8")
    assert curated_location(None, tmp_path) == tmp_path / "golden"
    assert curated_location(str(tmp_path / "x.jsonl"), tmp_path) == tmp_path / "x.jsonl"


def test_curated_folder_merges_files_keeps_answers_and_rejects_qid_clashes(tmp_path):
    folder = tmp_path / "golden"
    folder.mkdir()
    (folder / "a.jsonl").write_text(json.dumps({"qid": "1", "question": "Leave days?",
                                                "doc_id": "hr/leave.md", "answer": "20"}) + "\n")
    (folder / "b.jsonl").write_text(json.dumps({"qid": "2", "question": "VPN?",
                                                "doc_ids": ["it/vpn.md"]}) + "\n")
    s = load_curated(folder)
    assert s.kind == CURATED and [x.qid for x in s.questions] == ["1", "2"]
    assert s.questions[0].answer == "20" and s.questions[1].relevant == {"it/vpn.md": 1.0}
    (folder / "c.jsonl").write_text(json.dumps({"qid": "1", "question": "again?",
                                                "doc_id": "x"}) + "\n")
    with pytest.raises(GoldenError, match="qid '1' is also in"):
        load_curated(folder)


# -- relevance calibration --------------------------------------------------------------------
def ev(dense: float, lexical: float, cjk: bool = False) -> Evidence:
    return Evidence(dense, lexical, cjk)


def test_calibration_refuses_the_target_share_of_unrelated_questions():
    null = ([ev(0.05 + 0.005 * i, 0.0) for i in range(60)] + [ev(0.1, 0.02 * i) for i in range(20)]
            + [ev(0.0, 0.05 * i, True) for i in range(40)])
    positives = [ev(0.6, 2.0) for _ in range(50)] + [ev(0.0, 4.0, True) for _ in range(50)]
    cal = calibrate(null, positives, target_refusal=0.8)
    assert cal.latin.null_refusal >= 0.8 and cal.cjk.null_refusal >= 0.8
    assert cal.latin.positive_refusal == 0.0 and cal.cjk.positive_refusal == 0.0
    assert math.isinf(cal.cjk.dense)  # CJK queries: dense evidence never counts
    assert not cal.accepts(ev(0.9, 0.0, True)) and cal.accepts(ev(0.0, 4.0, True))
    # Stored with the version and read back unchanged.
    assert Calibration.from_dict(json.loads(json.dumps(cal.as_dict()))) == cal


def test_calibration_steps_back_for_the_kbs_own_questions_but_not_below_half():
    null = [ev(0.01 * i, 0.0) for i in range(100)] + [ev(0.0, 0.1 * i, True) for i in range(100)]
    weak_positives = [ev(0.6, 0.0) for _ in range(90)] + [ev(0.55, 0.0) for _ in range(10)]
    cal = calibrate(null, weak_positives + [ev(0.0, 9.0, True)], target_refusal=0.8)
    assert cal.latin.quantile < 0.8 and cal.latin.positive_refusal <= 0.01
    hopeless = [ev(0.1, 0.0) for _ in range(100)]
    cal = calibrate(null, hopeless + [ev(0.0, 9.0, True)], target_refusal=0.8)
    assert cal.latin.quantile == 0.5 and cal.latin.null_refusal >= 0.5


def test_a_shared_word_is_not_evidence_when_unrelated_questions_share_words_too():
    # Most unrelated questions share no word with the KB; a few share one common word.
    null = ([ev(0.0, 0.0) for _ in range(70)] + [ev(0.0, 0.9 + 0.02 * i) for i in range(10)]
            + [ev(0.0, 0.1 * i, True) for i in range(80)])
    cal = calibrate(null, [ev(0.0, 4.0) for _ in range(20)], target_refusal=0.8)
    assert not cal.accepts(ev(0.0, 1.0)) and cal.accepts(ev(0.0, 4.0))


BASE_INFO = {"version": 3, "n_chunks": 10_000,
             "relevance": {"method": "null-quantile-v1", "latin": {}, "cjk": {}},
             "relevance_provenance": {"calibrated_on": 2, "chunks": 10_000, "changed_since": 40,
                                      "null_questions": "abc"}}


@pytest.mark.parametrize("base, changed, carry_max, digest, carried_on, changed_since", [
    (BASE_INFO, 60, 0.01, "abc", 2, 100),           # 40 + 60 = 1% of 10k: kept
    (BASE_INFO, 61, 0.01, "abc", None, None),       # 101 rows > 1%: calibrate
    (BASE_INFO, 0, 0.0, "abc", None, None),         # 0 turns carrying off
    (BASE_INFO, 10, 0.01, "other", None, None),     # another null sample: calibrate
    ({**BASE_INFO, "relevance": {**BASE_INFO["relevance"], "method": "older"}}, 10, 0.01,
     "abc", None, None),                            # another method: calibrate
    ({k: v for k, v in BASE_INFO.items() if k != "relevance"}, 10, 0.01, "abc", None, None),
    # A version from before provenance was recorded: calibrated on itself, on its n_chunks.
    ({k: v for k, v in BASE_INFO.items() if k != "relevance_provenance"}, 100, 0.01, "abc", 3,
     100),
])
def test_thresholds_are_kept_while_the_changed_share_stays_within_the_bound(
        base, changed, carry_max, digest, carried_on, changed_since):
    prov = carried_calibration(base, changed, 10_050, carry_max, digest)
    if carried_on is None:
        assert prov is None
    else:
        assert prov["carried"] and prov["calibrated_on"] == carried_on
        assert prov["changed_since"] == changed_since and prov["chunks"] == 10_000


def test_bundled_unrelated_questions_cover_both_scripts():
    qs = null_questions()
    assert len(qs) >= 150 and len(set(qs)) == len(qs)
    cjk = [x for x in qs if any("\u4e00" <= c <= "\u9fff" for c in x)]
    assert 60 <= len(cjk) <= len(qs) - 60


# -- the gate per kind of set -----------------------------------------------------------------
METRICS = {"recall_at_3": 0.62, "zero_hit_rate": 0.01, "latency_p95_ms": 40.0, "mrr": 0.5}


def test_curated_set_gets_the_absolute_slos_synthetic_the_floors():
    t, floors = GateThresholds(), SyntheticFloors()
    curated = release_gate(CURATED, METRICS, None, None, t, floors, 30)
    assert not all(r.passed for r in curated)  # recall@3 0.62 < 0.70
    synthetic = release_gate(SYNTHETIC, METRICS, None, None, t, floors, 30)
    assert all(r.passed for r in synthetic)
    assert {r.detail for r in synthetic} >= {"integrity", "floor (synthetic)"}
    broken = dict(METRICS, recall_at_3=0.1)
    assert not all(r.passed for r in release_gate(SYNTHETIC, broken, None, None, t, floors, 30))


def test_synthetic_gate_refuses_a_regression_on_shared_questions():
    t, floors = GateThresholds(), SyntheticFloors()
    prod = dict(METRICS, recall_at_3=0.9, mrr=0.8)
    results = release_gate(SYNTHETIC, METRICS, METRICS, prod, t, floors, 30)
    failed = [r.name for r in results if not r.passed]
    assert "recall_at_3 vs production" in failed and "mrr vs production" in failed
