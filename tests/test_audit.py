"""Audit queries, diffs and formatting over a real DuckDB file holding a hand-written lineage
(an incident: v1 good, v2 force-promoted at 23:45, rollback to v1 at 02:00). The CLI is
tested in test_audit_cli, the real incident in test_audit_incident."""

import json
from datetime import datetime

import pytest

from dagster_project.audit import format as audit_format, report as audit
from dagster_project.audit.report import AuditError, Lineage, parse_time, production_windows
from resources import persistence
from resources.store import KBStore

T = datetime.fromisoformat
CHUNKER = {"tokenizer": "tok", "size": 200, "overlap": 40, "mask_pii": True, "normaliser": "n1"}


def chunker(size, overlap):
    c = dict(CHUNKER, size=size, overlap=overlap)
    c["version"] = f"tok:size={size}:overlap={overlap}"
    return json.dumps(c)


def put(con, table, columns, rows):
    persistence.insert(con, table, [dict(zip(columns, r)) for r in rows])


def seed(con):
    """Three KB versions, one FT dataset and model, alias moves, checks and evals."""
    versions = [(1, T("2026-11-20 09:00"), "run-1", chunker(200, 40), "code-a"),
                (2, T("2026-11-21 23:30"), "run-2", chunker(60, 10), "code-b"),
                (3, T("2026-11-22 03:00"), "run-3", chunker(60, 10), "code-b")]
    for n, at, run, ch, code in versions:
        persistence.insert(con, "kb_versions", {
            "version": n, "created_at": at, "run_id": run, "path": f"/v/{n}",
            "fingerprint": f"fp{n}", "n_docs": 3, "n_chunks": 0, "embedding_model": "mini",
            "dim": 384, "chunker": ch, "code_version": code,
            "info": json.dumps({"lexical": "bm25"})})
    # (version, chunk_id, doc_key, doc_id, content hash, text hash, n_tokens)
    members = [
        (1, 1, "a.md", "a.md", "ha1", "t1", 150), (1, 2, "a.md", "a.md", "ha1", "t2", 90),
        (1, 3, "f.jsonl#b", "b", "hb1", "t3", 120), (1, 4, "c.md", "c.md", "hc1", "t4", 180),
        (2, 1, "a.md", "a.md", "ha1", "t1", 150), (2, 2, "a.md", "a.md", "ha1", "t2", 90),
        (2, 5, "f.jsonl#b", "b", "hb2", "t5", 40), (2, 6, "bad/d.md", "bad/d.md", "hd1", "t6", 55),
        (2, 7, "bad/d.md", "bad/d.md", "hd1", "t7", 20),
        (3, 8, "a.md", "a.md", "ha1", "t8", 60), (3, 9, "a.md", "a.md", "ha1", "t9", 60),
        (3, 10, "a.md", "a.md", "ha1", "t10", 50), (3, 5, "f.jsonl#b", "b", "hb2", "t5", 40),
        (3, 11, "f.jsonl#e", "e", "he1", "t11", 30),
    ]
    put(con, "kb_version_members", ("version", "chunk_id", "doc_key", "doc_id", "doc_content_hash",
                                    "text_hash", "n_tokens"), members)
    put(con, "kb_version_sources", ("version", "path", "sha256", "n_docs"), [
        (1, "a.md", "sa1", 1), (1, "f.jsonl", "sf1", 1), (1, "c.md", "sc1", 1),
        (2, "a.md", "sa1", 1), (2, "f.jsonl", "sf2", 1), (2, "bad/d.md", "sd1", 1),
        (3, "a.md", "sa1", 1), (3, "f.jsonl", "sf3", 2)])
    put(con, "document_events", ("run_id", "event_at", "doc_key", "doc_id", "source_path", "event",
                                 "content_hash", "file_sha256"), [
        ("run-1", T("2026-11-20 08:59"), "a.md", "a.md", "a.md", "added", "ha1", "sa1"),
        ("run-1", T("2026-11-20 08:59"), "f.jsonl#b", "b", "f.jsonl", "added", "hb1", "sf1"),
        ("run-1", T("2026-11-20 08:59"), "c.md", "c.md", "c.md", "added", "hc1", "sc1"),
        ("run-2", T("2026-11-21 23:29"), "f.jsonl#b", "b", "f.jsonl", "changed", "hb2", "sf2"),
        ("run-2", T("2026-11-21 23:29"), "bad/d.md", "bad/d.md", "bad/d.md", "added", "hd1", "sd1"),
        ("run-2", T("2026-11-21 23:29"), "c.md", "c.md", "c.md", "removed", "hc1", None),
        ("run-3", T("2026-11-22 02:59"), "bad/d.md", "bad/d.md", "bad/d.md", "removed", "hd1",
         None),
        ("run-3", T("2026-11-22 02:59"), "f.jsonl#e", "e", "f.jsonl", "added", "he1", "sf3")])
    put(con, "quarantine", ("run_id", "event_at", "source_path", "line", "reason", "file_sha256",
                            "active", "resolved_at"), [
        ("run-2", T("2026-11-21 23:29"), "bad/x.txt", None, "not valid UTF-8", "sx", False,
         T("2026-11-22 02:59")),
        ("run-0", T("2026-11-19 10:00"), "old.html", None, "empty", "so", False,
         T("2026-11-19 12:00"))])
    put(con, "alias_history", ("model_name", "alias", "from_version", "to_version", "actor",
                               "reason", "event_at", "forced", "run_id"), [
        ("kb", "production", None, 1, "dagster:run-1", "gate passed", T("2026-11-20 09:05"),
         False, "run-1"),
        ("kb-assistant", "production", None, 1, "dagster:run-ft", "gate passed",
         T("2026-11-20 11:00"), False, "run-ft"),
        ("kb", "production", 1, 2, "alice@host", "urgent content fix", T("2026-11-21 23:45"),
         True, None),
        ("kb", "production", 2, 1, "bob@host", "rollback: hallucinations",
         T("2026-11-22 02:00"), False, None)])
    put(con, "registry_versions", ("model_name", "version", "mlflow_version", "run_id",
                                   "created_at", "status", "tags"), [
        ("kb", 1, 1, "mlrun-1", T("2026-11-20 09:01"), "passed",
         json.dumps({"dagster_run_id": "run-1"})),
        ("kb", 2, 2, "mlrun-2", T("2026-11-21 23:31"), "rejected",
         json.dumps({"dagster_run_id": "run-2"})),
        ("kb-assistant", 1, 1, "mlrun-ft", T("2026-11-20 10:50"), "passed",
         json.dumps({"dagster_run_id": "run-ft", "dataset_version": "1"})),
        # an incremental fine-tune continued from v1 on a dataset without document b
        ("kb-assistant", 2, 2, "mlrun-ft2", T("2026-11-22 04:00"), "passed",
         json.dumps({"dagster_run_id": "run-ft2", "dataset_version": "2",
                     "parent_version": "1"}))])
    put(con, "ft_datasets", ("dataset_version", "created_at", "run_id", "kb_version",
                             "content_sha256", "n_train", "n_eval", "path", "info"), [
        (1, T("2026-11-20 10:00"), "run-ft", 1, "sha", 2, 1, "/ft/1", "{}"),
        (2, T("2026-11-22 03:30"), "run-ft2", 3, "sh2", 1, 0, "/ft/2", "{}")])
    put(con, "ft_dataset_lines", ("dataset_version", "split", "line_no", "example_id", "doc_key",
                                  "doc_id", "doc_content_hash"), [
        (1, "train", 1, "ex1", "f.jsonl#b", "b", "hb1"),
        (1, "train", 2, "ex2", "f.jsonl#b", "b", "hb1"),
        (1, "eval", 1, "ex3", "a.md", "a.md", "ha1"),
        (2, "train", 1, "ex4", "f.jsonl#e", "e", "he1")])
    put(con, "eval_results", ("model_name", "version", "run_id", "created_at", "metrics", "passed",
                              "details"), [
        ("kb", 1, "run-1", T("2026-11-20 09:02"), json.dumps({"recall@3": 0.9, "mrr": 0.8}),
         True, "{}"),
        ("kb", 2, "run-2", T("2026-11-21 23:31"), json.dumps({"recall@3": 0.55, "mrr": 0.5}),
         False, "{}")])
    put(con, "check_results", ("run_id", "event_at", "asset", "check_name", "passed", "severity",
                               "blocking", "description", "kb_version", "metadata"), [
        ("run-2", T("2026-11-21 23:29"), "cleaned_chunks", "chunking_drift", True, "ERROR",
         True, "mean moved 70%; ACCEPTED", None, json.dumps({"values": {"accepted": True}})),
        ("run-2", T("2026-11-21 23:30"), "faiss_index", "chunk_length", False, "WARN", False,
         "median chunk 40 tokens < 80", 2, "{}"),
        ("run-2", T("2026-11-21 23:31"), "retrieval_eval", "recall_gate", False, "ERROR", True,
         "recall@3 0.55 < 0.70", 2, "{}"),
        ("run-1", T("2026-11-20 09:02"), "retrieval_eval", "recall_gate", True, "ERROR", True,
         "ok", 1, "{}")])


@pytest.fixture
def lineage(kb_paths):
    store = KBStore(db_path=str(kb_paths.db))
    with store.transaction() as con:
        seed(con)
    with store.connect(read_only=True) as con:
        yield Lineage(con)


# ---------------------------------------------------------------------------- time input
@pytest.mark.parametrize("text, expected, note_has", [
    ("2026-11-21 23:45", "2026-11-21 23:45:00", "interpreted as UTC"),
    ("2026-11-21T23:45:10", "2026-11-21 23:45:10", "interpreted as UTC"),
    ("2026-11-22T07:45:00+08:00", "2026-11-21 23:45:00", "converted to UTC"),
    ("2026-11-21T23:45Z", "2026-11-21 23:45:00", "converted to UTC"),
    ("2026-11-21T18:45:00-05:00", "2026-11-21 23:45:00", "converted to UTC"),
    ("2026-11-21", "2026-11-21 00:00:00", "interpreted as UTC"),
    ("now", "2026-11-21 12:00:00", "now"),
])
def test_parse_time(text, expected, note_has):
    t, note = parse_time(text, now=T("2026-11-21 12:00"))
    assert t == T(expected) and t.tzinfo is None
    assert note_has in note


@pytest.mark.parametrize("text", ["", "yesterday", "21/11/2026 23:45", "2026-13-01"])
def test_parse_time_rejects(text):
    with pytest.raises(AuditError, match="cannot read time"):
        parse_time(text)


# ---------------------------------------------------------------------------- windows
def mv(to, at):
    return {"to_version": to, "event_at": T(at), "actor": "x", "forced": to == 2,
            "reason": "", "from_version": None, "run_id": None}


@pytest.mark.parametrize("moves, version, expected", [
    ([], 1, []),
    ([mv(1, "2026-01-01 10:00")], 1, [("2026-01-01 10:00", None)]),
    ([mv(1, "2026-01-01 10:00"), mv(2, "2026-01-02 10:00"), mv(1, "2026-01-03 10:00")], 1,
     [("2026-01-01 10:00", "2026-01-02 10:00"), ("2026-01-03 10:00", None)]),
    ([mv(1, "2026-01-01 10:00"), mv(2, "2026-01-02 10:00"), mv(1, "2026-01-03 10:00")], 2,
     [("2026-01-02 10:00", "2026-01-03 10:00")]),
    # re-promoting the version that already holds the alias continues the same window
    ([mv(1, "2026-01-01 10:00"), mv(1, "2026-01-01 11:00"), mv(3, "2026-01-01 12:00")], 1,
     [("2026-01-01 10:00", "2026-01-01 12:00")]),
])
def test_production_windows(moves, version, expected):
    got = [(w["from"], w["until"]) for w in production_windows(moves, version)]
    assert got == [(T(a), T(b) if b else None) for a, b in expected]


# ---------------------------------------------------------------------------- at
def test_live_inside_bad_window_names_v2_and_its_run(lineage):
    r = audit.live_at(lineage, T("2026-11-22 00:30"))
    kb = r["models"]["kb"]
    assert kb["version"] == 2 and kb["built_by_run"] == "run-2"
    assert kb["since"] == T("2026-11-21 23:45") and kb["until"] == T("2026-11-22 02:00")
    assert kb["set_by"]["actor"] == "alice@host" and kb["set_by"]["forced"] is True
    assert kb["ended_by"]["to_version"] == 1 and "rollback" in kb["ended_by"]["reason"]
    assert kb["registry"]["mlflow_version"] == 2
    asst = r["models"]["kb-assistant"]
    assert asst["version"] == 1 and asst["built_by_run"] == "run-ft"
    assert asst["mlflow_run_id"] == "mlrun-ft" and asst["kb_version"] == 1
    assert asst["ft_dataset"]["dataset_version"] == 1


@pytest.mark.parametrize("at, version, since", [
    ("2026-11-21 23:45:00", 2, "2026-11-21 23:45"),   # the move itself counts
    ("2026-11-21 23:44:59", 1, "2026-11-20 09:05"),
    ("2026-11-22 02:00:00", 1, "2026-11-22 02:00"),
    ("2026-11-30 00:00:00", 1, "2026-11-22 02:00"),
])
def test_live_at_boundaries(lineage, at, version, since):
    kb = audit.live_at(lineage, T(at))["models"]["kb"]
    assert kb["version"] == version and kb["since"] == T(since)


def test_live_before_first_promotion_is_latest_built(lineage):
    r = audit.live_at(lineage, T("2026-11-20 09:03"))
    kb, asst = r["models"]["kb"], r["models"]["kb-assistant"]
    assert kb["version"] == 1 and "nothing promoted" in kb["basis"]
    assert kb["until"] == T("2026-11-20 09:05")
    assert asst["version"] is None


def test_live_at_other_alias(lineage):
    r = audit.live_at(lineage, T("2026-11-22 00:30"), alias="staging")
    assert r["models"]["kb"]["version"] is None and r["timeline"] == []


def test_live_before_first_version_is_an_error(lineage):
    with pytest.raises(AuditError,
                       match=r"nothing was live at 2026-11-19 .*first KB version \(v1\)"):
        audit.live_at(lineage, T("2026-11-19 00:00"))


# ---------------------------------------------------------------------------- diff
def test_diff_classifies_documents_sources_and_settings(lineage):
    d = audit.diff_versions(lineage, 1, 2)
    by = {(x["change"], x["doc_key"]) for x in d["document_changes"]}
    assert by == {("added", "bad/d.md"), ("changed", "f.jsonl#b"), ("removed", "c.md")}
    assert d["documents"] == {"added": 1, "changed": 1, "removed": 1, "rechunked": 0,
                              "unchanged": 1}
    changed = next(x for x in d["document_changes"] if x["change"] == "changed")
    assert (changed["hash_before"], changed["hash_after"], changed["source_path"]) == \
        ("hb1", "hb2", "f.jsonl")
    assert set(d["settings_changed"]) == {"chunker.size", "chunker.overlap", "code_version"}
    assert {(s["change"], s["path"]) for s in d["sources"]} == {
        ("added", "bad/d.md"), ("changed", "f.jsonl"), ("removed", "c.md")}
    assert d["chunks_shared"] == 2
    s1, s2 = d["chunk_stats"]["1"], d["chunk_stats"]["2"]
    assert (s1["chunks"], s1["max"], s2["chunks"], s2["min"]) == (4, 180, 5, 20)
    assert s2["mean"] == pytest.approx((150 + 90 + 40 + 55 + 20) / 5, abs=0.1)
    recall = next(m for m in d["eval_metrics"] if m["metric"] == "recall@3")
    assert recall["delta"] == pytest.approx(-0.35)


def test_diff_detects_rechunked_documents(lineage):
    d = audit.diff_versions(lineage, 2, 3)
    assert {(x["change"], x["doc_key"]) for x in d["document_changes"]} == {
        ("rechunked", "a.md"), ("removed", "bad/d.md"), ("added", "f.jsonl#e")}
    assert d["settings_changed"] == []


def test_diff_of_a_version_with_itself_is_empty(lineage):
    d = audit.diff_versions(lineage, 2, 2)
    assert d["document_changes"] == [] and d["sources"] == [] and d["settings_changed"] == []


def test_diff_unknown_version(lineage):
    with pytest.raises(AuditError, match=r"KB version 7 does not exist \(known versions: 1..3\)"):
        audit.diff_versions(lineage, 1, 7)


# ---------------------------------------------------------------------------- version
def test_version_report(lineage):
    r = audit.version_report(lineage, 2)
    assert r["run_id"] == "run-2" and r["code_version"] == "code-b"
    assert r["chunker"]["size"] == 60 and r["previous_version"] == 1
    assert [(c["check_name"], c["overridden"]) for c in r["checks"]] == [
        ("chunking_drift", True), ("chunk_length", False), ("recall_gate", False)]
    assert (r["counts"]["checks_failed"], r["counts"]["checks_overridden"]) == (2, 1)
    assert [e["metrics"]["recall@3"] for e in r["evals"]] == [0.55]
    assert [s["path"] for s in r["sources"]] == ["a.md", "bad/d.md", "f.jsonl"]
    assert [(q["source_path"], q["this_run"]) for q in r["quarantine"]] == [("bad/x.txt", True)]
    assert [(w["from"], w["until"], w["forced"]) for w in r["production_windows"]] == [
        (T("2026-11-21 23:45"), T("2026-11-22 02:00"), True)]
    assert r["diff"]["a"] == 1 and r["diff"]["b"] == 2
    assert audit.version_report(lineage, 1)["diff"] is None
    assert [f["dataset_version"] for f in audit.version_report(lineage, 1)["ft_datasets"]] == [1]


# ---------------------------------------------------------------------------- doc
@pytest.mark.parametrize("ident, keys, kb, ds, models", [
    ("b", ["f.jsonl#b"], [1, 2, 3], [1], ["kb-assistant v1", "kb-assistant v2"]),
    ("f.jsonl#b", ["f.jsonl#b"], [1, 2, 3], [1], ["kb-assistant v1", "kb-assistant v2"]),
    ("f.jsonl", ["f.jsonl#b", "f.jsonl#e"], [1, 2, 3], [1, 2],
     ["kb-assistant v1", "kb-assistant v2"]),
    ("e", ["f.jsonl#e"], [3], [2], ["kb-assistant v2"]),
    ("a.md", ["a.md"], [1, 2, 3], [1], ["kb-assistant v1"]),  # eval split: not inherited
    ("bad/d.md", ["bad/d.md"], [2], [], []),
    ("c.md", ["c.md"], [1], [], []),
])
def test_doc_report(lineage, ident, keys, kb, ds, models):
    r = audit.doc_report(lineage, ident)
    assert [d["doc_key"] for d in r["documents"]] == keys
    assert r["summary"]["kb_versions"] == kb
    assert r["summary"]["ft_datasets"] == ds and r["summary"]["models"] == models


def test_doc_report_history_and_production(lineage):
    r = audit.doc_report(lineage, "b")
    assert [(e["event"], e["content_hash"]) for e in r["events"]] == [
        ("added", "hb1"), ("changed", "hb2")]
    assert [(k["version"], k["content_hash"], k["file_sha256"]) for k in r["kb_versions"]] == [
        (1, "hb1", "sf1"), (2, "hb2", "sf2"), (3, "hb2", "sf3")]
    assert r["summary"]["ever_in_production"] == [1, 2]
    assert [(m["version"], m["exposure"], m["run_id"]) for m in r["models"]] == [
        (1, "trained on it (train split)", "run-ft"),
        (2, "inherited from v1 (continued training)", "run-ft2")]
    assert r["summary"]["models_in_production"] == [1]
    held_out = audit.doc_report(lineage, "a.md")["models"]
    assert [(m["version"], m["exposure"]) for m in held_out] == [
        (1, "not trained on it: in the eval split only")]
    assert audit.doc_report(lineage, "bad/d.md")["summary"]["ever_in_production"] == [2]


def test_doc_never_seen(lineage):
    with pytest.raises(AuditError, match="'nope.md' was never seen"):
        audit.doc_report(lineage, "nope.md")


# ---------------------------------------------------------------------------- format
def test_markdown_sections(lineage):
    at = audit_format.md_at(audit.live_at(lineage, T("2026-11-22 00:30")), "read as UTC")
    assert at.startswith("## What was live at 2026-11-22 00:30:00 UTC")
    row = next(line for line in at.splitlines() if line.startswith("| kb | v2"))
    assert "alice@host" in row and "| yes |" in row and "`run-2`" in row
    assert "→ v1 by bob@host" in row
    ver = audit_format.md_version(audit.version_report(lineage, 2))
    for needle in ("## KB version 2", "size=60 overlap=10", "**FAILED**",
                   "### Changes from KB v1 to v2", "chunker.size 200 → 60",
                   "| added | bad/d.md |", "| bad/x.txt |", "`sd1`",
                   "cleaned_chunks:chunking_drift passed by override (blocking)",
                   "| chunking_drift | passed (**override**) |"):
        assert needle in ver
    doc = audit_format.md_doc(audit.doc_report(lineage, "bad/d.md"))
    assert "- KB versions that contained it: v2\n" in doc
    assert "- Models that saw it: none" in doc
    doc = audit_format.md_doc(audit.doc_report(lineage, "b"))
    assert "(in production: kb-assistant v1)" in doc
    assert "| kb-assistant | v2 | inherited from v1 (continued training) |" in doc


def test_json_is_complete_and_times_are_utc(lineage):
    data = json.loads(audit_format.to_json(audit.version_report(lineage, 2)))
    assert data["created_at"] == "2026-11-21T23:30:00Z"
    assert data["diff"]["documents"]["added"] == 1


def test_table_escapes_and_truncates():
    out = audit_format.table([("a|b", None, True, 0.123456)] * 3, ["x", "y", "z", "w"], limit=2)
    assert "| a\\|b | — | yes | 0.1235 |" in out
    assert "… and 1 more rows" in out


# ---------------------------------------------------------------------------- UI metadata
def test_release_metadata_links_run_mlflow_and_changes(lineage, kb_paths):
    from kb_assets.release_metadata import release_metadata

    store = KBStore(db_path=str(kb_paths.db))
    md = release_metadata(store, 2)
    assert md["built_by_run_id"] == "run-2" and md["mlflow_run_id"] == "mlrun-2"
    assert md["mlflow_model_uri"] == "models:/kb/2" and md["audit_command"] == "kb audit version 2"
    text = md["changes_since_previous"].value
    assert "**v1 → v2:** 1 added, 1 changed, 1 removed" in text
    assert "chunker.size 200 → 60" in text and "| added | bad/d.md |" in text
    assert "First KB version" in release_metadata(store, 1)["changes_since_previous"].value
    assert "KB version 9 does not exist" in release_metadata(store, 9)["audit_error"]
