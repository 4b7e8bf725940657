"""The gates' pure parts without Dagster: thresholds, measures, the GX wrapper and each
asset's evaluate() on hand-made frames (empty, one row, the incident shapes)."""

import math

import numpy as np
import pandas as pd
import pytest

from checks import chunk_checks, embedding_checks, raw_docs_checks
from checks.gx_suites import Expect, validate
from checks.metrics import (centroid_reference, chunk_drift, cosine, is_empty_text_reason,
                            pii_frame, ratio_gate, redact, relative_change, vector_frame)
from checks.state import declared_model_dim
from resources.quality_config import QualityThresholds
from resources.embedder import packaged_model_path

Q = QualityThresholds()


# --- thresholds ----------------------------------------------------------------------------
def test_thresholds_defaults_documented_and_env_overrides():
    doc = QualityThresholds.documentation()
    assert len(doc) == len(QualityThresholds.model_fields) and all(why for _, _, why in doc)
    assert dict((n, d) for n, d, _ in doc)["max_chunk_drift"] == 0.25
    q = QualityThresholds.from_env({"KB_ACCEPT_DRIFT": "1", "KB_QUALITY_MAX_CHUNK_DRIFT": "0.4",
                                    "KB_QUALITY_MIN_BATCH_RECORDS": "50"})
    assert q.accept_drift is True and q.max_chunk_drift == 0.4 and q.min_batch_records == 50
    assert QualityThresholds.from_env({}).accept_drift is False
    assert QualityThresholds.from_env({"KB_ACCEPT_DRIFT": "no"}).accept_drift is False
    assert Q.chunk_token_max(200) == 200 and QualityThresholds(max_chunk_tokens=300).chunk_token_max(200) == 300


@pytest.mark.parametrize("env, message", [
    ({"KB_ACCEPT_DRIFT": "maybe"}, "KB_ACCEPT_DRIFT='maybe': expected 1/0"),
    ({"KB_QUALITY_MAX_CHUNK_DRIFT": "a lot"}, "KB_QUALITY_MAX_CHUNK_DRIFT='a lot': expected a number"),
    ({"KB_QUALITY_MIN_BATCH_RECORDS": "2.5"}, "expected an integer"),
    ({"KB_QUALITY_MAX_DUPLICATE_RATIO": "-1"}, "must be at least 0"),
])
def test_thresholds_bad_env_is_one_clear_line(env, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        QualityThresholds.from_env(env)


# --- measures ------------------------------------------------------------------------------
@pytest.mark.parametrize("offending, total, limit, upper, verdict", [
    (15, 100, 0.10, True, "fail"),          # the incident: 15% quarantined
    (10, 100, 0.10, True, "pass"),          # at the limit
    (1, 33, 0.02, True, "few_offenders"),   # one stray copy in the sample corpus
    (5, 10, 0.10, True, "small_batch"),     # a handful of bad files
    (15, 100, 0.90, False, "fail"),         # 85% with text < 90%
    (0, 0, 0.90, False, "pass"),            # empty batch
])
def test_ratio_gate(offending, total, limit, upper, verdict):
    assert ratio_gate(offending, total, limit, upper=upper, min_records=20,
                      min_offending=2) == verdict


@pytest.mark.parametrize("new, old, change", [(280, 450, 170 / 450), (450, 450, 0.0),
                                              (0, 0, 0.0), (5, 0, math.inf)])
def test_relative_change(new, old, change):
    assert relative_change(new, old) == pytest.approx(change)


@pytest.mark.parametrize("reason, empty", [
    ("field 'text' is empty or whitespace only", True), ("field 'text' is missing", True),
    ("file is empty or whitespace only", True), ("malformed JSON: Expecting value (column 1)", False),
    (None, False)])
def test_empty_text_reasons(reason, empty):
    assert is_empty_text_reason(reason) is empty


def chunk_frame(docs: dict[str, list[int]], hashes: dict[str, str] | None = None) -> pd.DataFrame:
    rows = []
    for doc, lengths in docs.items():
        for i, n in enumerate(lengths):
            rows.append({"chunk_id": hash((doc, i, n)) & 0xFFFFFFFF, "doc_key": doc, "doc_id": doc,
                         "ordinal": i, "n_tokens": n, "doc_content_hash": (hashes or {}).get(doc, "h-" + doc),
                         "text_chars": 5 * n, "preview": "x", "chunker_version": "v", "text_hash": f"{doc}{i}"})
    return pd.DataFrame(rows)


def test_chunk_drift_on_unchanged_documents_ignores_new_content():
    old = chunk_frame({f"d{i}": [450, 450, 300] for i in range(5)})
    # Same documents re-chunked smaller: drift.
    new = chunk_frame({f"d{i}": [280, 280, 280, 280, 120] for i in range(5)})
    r = chunk_drift(new, old, min_docs=3)
    assert r.changes["mean_tokens"] > 0.25 and r.changes["chunks_per_doc"] > 0.25
    # Same documents unchanged plus many short new ones: no chunking drift on the cohort...
    grown = pd.concat([old, chunk_frame({f"n{i}": [40] for i in range(20)})])
    r = chunk_drift(grown, old, min_docs=3)
    assert r.doc_keys == frozenset(f"d{i}" for i in range(5)) and max(r.changes.values()) == 0
    # ...but the content shift over all documents shows it.
    assert chunk_drift(grown, old, None).changes["mean_tokens"] > 0.25
    # Too few unchanged documents: not judged.
    assert chunk_drift(chunk_frame({"z": [10]}), old, min_docs=3).changes == {}


def test_redact_and_pii_frame_never_show_the_value():
    assert redact("jane.doe@northwind.example") == "ja***.do***@no***.ex***"
    frame = pii_frame(pd.DataFrame({"chunk_id": [1, 2], "doc_id": ["a", "b"], "text": [
        "mail jane.doe@northwind.example, ID A123456789", "[EMAIL] masked already"]}))
    assert frame["pii_count"].tolist() == [2, 0]
    assert frame["pii_kinds"][0] == "EMAIL,NATIONAL_ID"
    assert "jane" not in frame["example"][0] and "A123456789" not in frame["example"][0]


def unit_rows(n: int, d: int = 8, seed: int = 0) -> np.ndarray:
    v = np.random.default_rng(seed).normal(size=(n, d)).astype(np.float32)
    return v / np.linalg.norm(v, axis=1, keepdims=True)


def test_vector_frame_flags_bad_vectors():
    good = unit_rows(3)
    nan = good[0].copy()
    nan[2] = np.nan
    blobs = [good[0].tobytes(), nan.tobytes(), np.zeros(8, np.float32).tobytes(),
             (good[1] * 3).tobytes(), good[2][:4].tobytes()]
    ids = pd.DataFrame({"chunk_id": range(5), "doc_id": list("abcde")})
    stats, matrix = vector_frame(ids, blobs)
    assert stats["dim"].tolist() == [8, 8, 8, 8, 4]
    assert stats["nonfinite"].tolist() == [0, 1, 0, 0, 0]
    assert stats["norm"].round(3).tolist()[::3] == [1.0, 3.0] and stats["max_abs"][2] == 0
    assert matrix.shape == (3, 8)  # NaN row and the odd-sized one left out of the centroid


def test_centroid_reference_adapts_to_batch_size():
    base = unit_rows(500, 16)
    assert centroid_reference(base, 1) < centroid_reference(base, 200) <= 1.0
    assert centroid_reference(base, 600) == 1.0 and math.isnan(centroid_reference(base[:0], 5))
    assert math.isnan(cosine(np.zeros(3), np.ones(3)))


def test_declared_model_dim_reads_config_without_loading():
    assert declared_model_dim(packaged_model_path()) == 384
    assert declared_model_dim("/nonexistent") is None


# --- GX wrapper ------------------------------------------------------------------------------
def test_validate_reports_observed_expected_and_offending_rows():
    df = pd.DataFrame({"doc_id": list("abcd"), "text": ["x", None, "y", None], "n": [1, 2, 3, 99]})
    r = validate("unit", df, [Expect("not_null", "text", {"mostly": 0.9}, "has text"),
                              Expect("between", "n", {"min_value": 0, "max_value": 10}),
                              Expect("mean_between", "n", {"min_value": 0, "max_value": 10})],
                 ["doc_id"], 5)
    nn, between, mean = r.outcomes
    assert not r.success and len(r.failed) == 3
    assert nn.observed_text() == "2 of 4 rows unexpected (50.0%)"
    assert nn.expect.describe_expected() == "text not null for >= 90.0% of rows"
    assert [row["doc_id"] for row in nn.offending] == ["b", "d"]
    assert between.offending == [{"n": 99, "doc_id": "d"}]
    assert mean.observed == 26.25 and mean.expect.describe_expected() == "n mean in [0, 10]"


def test_validate_handles_narrow_and_nullable_integers():
    df = pd.DataFrame({"n": np.array([1, 50], dtype=np.int32),
                       "line": pd.array([3, None], dtype="Int32")})
    r = validate("unit_ints", df, [Expect("between", "n", {"min_value": 0, "max_value": 10}),
                                   Expect("between", "line", {"min_value": 1})])
    assert [o.unexpected_count for o in r.outcomes] == [1, 0]


def test_validate_empty_frame_and_missing_column():
    empty = pd.DataFrame({"doc_id": [], "text": []})
    assert validate("unit_empty", empty, [Expect("not_null", "text")], ["doc_id"]).success
    with pytest.raises(KeyError, match="lacks columns"):
        validate("unit_missing", empty, [Expect("not_null", "nope")])


# --- evaluate() per asset ------------------------------------------------------------------
def docs_frame(n: int, dup: int = 0) -> pd.DataFrame:
    return pd.DataFrame({
        "doc_key": [f"f.jsonl#{i}" for i in range(n)], "doc_id": [str(i) for i in range(n)],
        "source_path": "f.jsonl", "line": list(range(1, n + 1)), "title": "t",
        "content_hash": [f"h{i}" for i in range(n)], "text": "some text", "n_chars": 400,
        "is_duplicate": [i < dup for i in range(n)],
        "duplicate_of": [f"{i + 50}" if i < dup else None for i in range(n)]})


def quarantine_frame(n: int, reason: str = "field 'text' is empty or whitespace only"):
    return pd.DataFrame({"source_path": "f.jsonl", "line": range(200, 200 + n), "reason": reason})


def by_name(outcomes) -> dict:
    return {o.check.name: o for o in outcomes}


def test_raw_docs_empty_inbox_and_nothing_new_are_explicit():
    none = quarantine_frame(0)
    out = by_name(raw_docs_checks.evaluate(docs_frame(0), none, Q, "KB version 3", 0))
    assert all(o.passed for o in out.values()) and len(out) == 6
    assert "no valid documents" in out["raw_docs_quarantine_ratio"].description
    out = by_name(raw_docs_checks.evaluate(docs_frame(0), none, Q, "KB version 3", 40))
    assert "no new or changed documents since KB version 3" in out["raw_docs_required_fields"].description


def test_raw_docs_broken_feed_blocks_with_causes_and_how_to_proceed():
    # Most of the batch lost its text: a broken export, not a few bad files.
    out = by_name(raw_docs_checks.evaluate(docs_frame(40, dup=6), quarantine_frame(60), Q,
                                           "KB version 1", 45))
    assert not out["raw_docs_quarantine_ratio"].passed
    desc = out["raw_docs_quarantine_ratio"].description
    assert "60.0% of 100 batch records were quarantined" in desc
    assert "top reason: field 'text' is empty" in desc and "KB_QUALITY_MAX_QUARANTINE_RATIO" in desc
    assert not out["raw_docs_non_empty_text"].passed
    assert "f.jsonl:200" in out["raw_docs_non_empty_text"].description  # names the records
    # Copies are indexed once and listed: a warning, never a block.
    dup = out["raw_docs_duplicate_content"]
    assert not dup.passed and not dup.check.blocking
    assert dup.offending()[0]["duplicate_of"] == "50" and "indexed once" in dup.description
    assert out["raw_docs_required_fields"].passed and out["raw_docs_length_bounds"].passed
    assert not out["raw_docs_length_bounds"].check.blocking


def test_raw_docs_a_few_bad_files_never_keep_good_documents_out():
    # 18 good documents and 4 bad files (18%): quarantined, the batch goes through.
    out = by_name(raw_docs_checks.evaluate(docs_frame(18), quarantine_frame(4), Q, "x", 18))
    blocking = [o for o in out.values() if o.check.blocking]
    assert all(o.passed for o in blocking), [o.description for o in blocking if not o.passed]
    # 30 good documents and 4 bad lines in a bigger batch: still through.
    out = by_name(raw_docs_checks.evaluate(docs_frame(30), quarantine_frame(4), Q, "x", 30))
    assert out["raw_docs_quarantine_ratio"].passed and out["raw_docs_non_empty_text"].passed


def test_raw_docs_truncated_feed_blocks_unless_accepted():
    lost = pd.DataFrame({"source_path": ["faq.jsonl", "old.md"], "lost": [90, 1],
                         "example_doc": ["faq017", "old.md"]})
    out = by_name(raw_docs_checks.evaluate(docs_frame(0), quarantine_frame(0), Q,
                                           "KB version 4", 9, published=100, lost=lost))
    shrink = out["raw_docs_kb_shrink"]
    assert not shrink.passed and shrink.check.blocking
    assert "91 of the 100 documents of KB version 4 are gone" in shrink.description
    assert "faq.jsonl (-90)" in shrink.description and "KB_ACCEPT_SHRINK=1" in shrink.description
    accepted = Q.model_copy(update={"accept_shrink": True})
    out = by_name(raw_docs_checks.evaluate(docs_frame(0), quarantine_frame(0), accepted,
                                           "KB version 4", 9, published=100, lost=lost))
    assert out["raw_docs_kb_shrink"].passed and "accepted" in out["raw_docs_kb_shrink"].description
    # An ordinary edit (a few documents removed) passes.
    few = pd.DataFrame({"source_path": ["old.md"], "lost": [3], "example_doc": ["old.md"]})
    out = by_name(raw_docs_checks.evaluate(docs_frame(0), quarantine_frame(0), Q,
                                           "KB version 4", 97, published=100, lost=few))
    assert out["raw_docs_kb_shrink"].passed


def test_raw_docs_single_document_and_missing_field():
    one = docs_frame(1)
    assert all(o.passed for o in raw_docs_checks.evaluate(one, quarantine_frame(0), Q, "x", 1))
    one.loc[0, "content_hash"] = None
    out = by_name(raw_docs_checks.evaluate(one, quarantine_frame(0), Q, "x", 1))
    assert not out["raw_docs_required_fields"].passed
    assert "lack 'content_hash'" in out["raw_docs_required_fields"].description


def test_chunk_checks_empty_and_bad_chunks():
    empty = chunk_frame({})
    for col in ("chunk_id", "doc_key", "doc_id", "ordinal", "n_tokens", "text_chars",
                "doc_content_hash", "chunker_version", "preview"):
        empty[col] = pd.Series(dtype=object)
    none = pd.DataFrame({"chunk_id": [], "doc_id": [], "text": []})
    out = by_name(chunk_checks.evaluate(empty, empty, none, Q, 200, True, "no published version yet"))
    assert all(o.passed for o in out.values()) and len(out) == 6

    bad = chunk_frame({"a": [0, 250, 10]})
    bad.loc[0, "text_chars"] = 0
    bad.loc[2, "chunk_id"] = bad.loc[1, "chunk_id"]
    out = by_name(chunk_checks.evaluate(bad, empty, none, Q, 200, True, "no published version yet"))
    assert not out["chunks_unique_ids"].passed and not out["chunks_not_empty"].passed
    assert not out["chunks_token_bounds"].passed
    assert "outside 1..200 tokens" in out["chunks_token_bounds"].description


def test_chunk_drift_blocks_unless_accepted_and_pii_unless_allowed():
    old = chunk_frame({f"d{i}": [450, 450, 300] for i in range(5)})
    new = chunk_frame({f"d{i}": [280, 280, 280, 280, 120] for i in range(5)})
    pii = pd.DataFrame({"chunk_id": [7], "doc_id": ["d1"], "text": ["call 0912 345 678"]})
    out = by_name(chunk_checks.evaluate(new, old, pii, Q, 450, False, "KB version 1"))
    assert not out["chunking_drift"].passed and "KB_ACCEPT_DRIFT=1" in out["chunking_drift"].description
    assert not out["chunk_distribution_shift"].passed and not out["chunk_distribution_shift"].check.blocking
    assert not out["chunks_pii_free"].passed and "PHONE" in out["chunks_pii_free"].description
    lenient = QualityThresholds(accept_drift=True, allow_pii=True)
    out = by_name(chunk_checks.evaluate(new, old, pii, lenient, 450, False, "KB version 1"))
    assert out["chunking_drift"].passed and "ACCEPTED" in out["chunking_drift"].description
    assert out["chunks_pii_free"].passed and "allowed" in out["chunks_pii_free"].description


def test_embedding_checks_flag_each_defect_and_warn_on_centroid():
    base = unit_rows(300, 8, seed=1) + np.eye(8, dtype=np.float32)[0] * 3
    base /= np.linalg.norm(base, axis=1, keepdims=True)
    batch = unit_rows(200, 8, seed=2) - np.eye(8, dtype=np.float32)[0] * 3
    batch /= np.linalg.norm(batch, axis=1, keepdims=True)
    ids = pd.DataFrame({"chunk_id": range(200), "doc_id": "d"})
    stats, matrix = vector_frame(ids, [v.tobytes() for v in batch])
    out = by_name(embedding_checks.evaluate(500, 0, pd.DataFrame(columns=["chunk_id", "doc_id"]),
                                            stats, matrix, 8, "m", base, Q, "KB version 1"))
    assert all(out[n].passed for n in ("embeddings_dimension", "embeddings_finite",
                                       "embeddings_unit_norm", "embeddings_nonzero"))
    centroid = out["embeddings_centroid_drift"]
    assert not centroid.passed and not centroid.check.blocking and centroid.values["centroid_cosine"] < 0

    broken = [batch[0].tobytes(), np.zeros(8, np.float32).tobytes(), (batch[1] * 2).tobytes(),
              np.full(8, np.inf, np.float32).tobytes(), batch[2][:6].tobytes()]
    stats, matrix = vector_frame(ids.head(5), broken)
    missing_rows = pd.DataFrame({"chunk_id": [9], "doc_id": ["x"]})
    out = by_name(embedding_checks.evaluate(6, 1, missing_rows, stats, matrix, 8, "m", None, Q,
                                            "none"))
    dim = out["embeddings_dimension"]
    assert not dim.passed and "1 of 6 active chunks have no cached m vector" in dim.description
    assert "1 of 5 new vectors are not 8-d" in dim.description
    assert {"chunk_id": 9, "doc_id": "x", "dim": "missing"} in dim.offending()
    assert {"dim": 6, "chunk_id": 4, "doc_id": "d", "expectation": "expect_in_set(dim)"} in dim.offending()
    assert not out["embeddings_finite"].passed and not out["embeddings_nonzero"].passed
    assert "4 of 5 new vectors have a norm outside" in out["embeddings_unit_norm"].description
    assert out["embeddings_centroid_drift"].passed  # nothing to compare against


def test_a_crashing_check_becomes_a_failed_result_for_each_check():
    from checks.outcome import guarded

    def boom():
        raise ZeroDivisionError("odd data")

    out = guarded(raw_docs_checks.CHECKS, boom)
    assert [o.check.name for o in out] == [c.name for c in raw_docs_checks.CHECKS]
    assert not any(o.passed for o in out)
    assert out[0].description == "the check itself crashed: ZeroDivisionError: odd data"
    result = out[0].to_result()
    assert result.severity.value == "ERROR" and result.check_name == "raw_docs_required_fields"
    # A result forgotten by the evaluation is reported as failed, not silently skipped.
    partial = guarded(raw_docs_checks.CHECKS, lambda: [])
    assert len(partial) == 6 and all("no result" in o.description for o in partial)


def test_bad_threshold_env_is_one_line_from_kb_build(kb_paths, monkeypatch, capsys):
    from dagster_project.cli import main

    monkeypatch.setenv("KB_QUALITY_MAX_CHUNK_DRIFT", "a lot")
    assert main(["build", "--select", "kb"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "kb build: KB_QUALITY_MAX_CHUNK_DRIFT='a lot': expected a number"


# --- index check helpers: fast paths must say what the general ones say -----------------------
@pytest.mark.parametrize("sets", [
    {"a": [5, 1, 9], "b": [1, 5, 9], "c": [9, 5, 1]},  # healthy: one set of ids
    {"a": [5, 1, 9], "b": [1, 5], "c": [9, 5, 1]},  # one missing from b
    {"a": [5, 1, 9, 9], "b": [1, 5, 9], "c": [9, 5, 1]},  # a duplicate index id
    {"a": [5, 1, 9], "b": [1, 5, 7], "c": [9, 5, 1]},  # 7 only in b, 9 not in b
    {"a": [], "b": [], "c": []},
])
def test_id_presence_equals_the_membership_of_every_set(sets):
    from checks.index_checks import id_presence

    arrays = {k: np.array(v, dtype=np.int64) for k, v in sets.items()}
    frame = id_presence(arrays)
    universe = np.unique(np.concatenate(list(arrays.values())))
    assert frame["chunk_id"].tolist() == universe.tolist()
    for k, arr in arrays.items():
        assert frame[k].tolist() == np.isin(universe, arr).tolist(), k


@pytest.mark.parametrize("values,ids", [
    ([3, 4, 100, -1], [1, 3, 5, 100]), ([7], []), ([], [1, 2]), ([2, 2, 9], [2, 9])])
def test_sorted_member_is_isin(values, ids):
    from checks.index_checks import sorted_member

    v, s = np.array(values, dtype=np.int64), np.array(ids, dtype=np.int64)
    assert sorted_member(v, s).tolist() == np.isin(v, s).tolist()


def test_posting_lookup_and_row_terms_match_the_matrix():
    from scipy import sparse

    from checks.index_checks import in_posting
    from kb_core.lexical import BM25Index

    texts = ["vpn token rotation", "annual leave days leave", "vpn client", "", "expense receipts"]
    built = BM25Index.build(texts)
    w = built.weights
    dense = w.toarray() != 0
    loaded = BM25Index(sparse.csc_matrix(w), built.vocab, built.idf)  # as read from disk
    unsorted = w.copy()
    unsorted.has_sorted_indices = False  # the column-scan path
    for row in range(w.shape[0]):
        for term in range(w.shape[1]):
            assert in_posting(w, term, row) == dense[row, term]
            assert in_posting(unsorted, term, row) == dense[row, term]
    assert built.row_terms().tolist() == dense.sum(axis=1).tolist()
    assert loaded.terms_per_row is None
    assert loaded.row_terms().tolist() == dense.sum(axis=1).tolist()


# --- GX's unused dependencies load on first use (checks/gx_suites.deferred_imports) ---------

def test_a_deferred_import_runs_the_module_only_when_first_used(tmp_path, monkeypatch):
    import importlib
    import sys

    from checks.gx_suites import deferred_imports

    (tmp_path / "kb_deferred_probe.py").write_text(
        "import os\nos.environ['KB_DEFERRED_PROBE'] = 'ran'\nANSWER = 42\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delenv("KB_DEFERRED_PROBE", raising=False)
    try:
        with deferred_imports(("kb_deferred_probe",)):
            import kb_deferred_probe  # noqa: F401 - bound, not yet run
        assert "KB_DEFERRED_PROBE" not in __import__("os").environ
        assert kb_deferred_probe.ANSWER == 42  # first use runs it
        assert __import__("os").environ["KB_DEFERRED_PROBE"] == "ran"
        # only the named modules, and only inside the block
        (tmp_path / "kb_deferred_other.py").write_text("X = 1\n")
        with deferred_imports(("kb_deferred_probe",)):
            other = importlib.import_module("kb_deferred_other")
        assert type(other).__name__ == "module"
    finally:
        sys.modules.pop("kb_deferred_probe", None)
        sys.modules.pop("kb_deferred_other", None)


def test_gx_validates_without_loading_the_modules_only_unused_expectations_need():
    """In a fresh process (this one may have loaded scipy.stats already): GX imported through
    gx_context validates a suite while scipy.stats and altair stay unrun, and both still work
    when something uses them afterwards."""
    import subprocess
    import sys

    code = (
        "import sys, pandas as pd\n"
        "from checks.gx_suites import Expect, validate\n"
        "r = validate('probe', pd.DataFrame({'a': [1.0, 2.0, None]}),"
        " [Expect('not_null', 'a'), Expect('mean_between', 'a', {'min_value': 0, 'max_value': 5})])\n"
        "assert [o.success for o in r.outcomes] == [False, True], r\n"
        "assert 'scipy.stats._stats_py' not in sys.modules\n"
        "assert 'altair.vegalite' not in sys.modules\n"
        "from scipy import stats\n"
        "assert stats.norm.cdf(0.0) == 0.5\n"
        "import altair\n"
        "assert hasattr(altair, 'Chart')\n"
        "print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=str(__import__("pathlib").Path(__file__).resolve().parents[1]),
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]
