"""The KB chain end to end with real Dagster runs, the packaged model, FAISS and DuckDB."""

import json
import os

import duckdb
import pytest

from kb_assets.searcher import Searcher
from resources.config import KBConfig
from resources.embedder import PACKAGED_MODEL_ID
from resources.vector_index import VersionStore
from tests.counting_embedder import ENCODED_TEXTS, CountingEmbedder
from tests.kbtest import GOLDEN, copy_samples, env_vars, materialized, run_job, write

LEAVE = "# Annual Leave\n\nEmployees receive 20 days of paid annual leave each calendar year."
VPN = "# VPN\n\nUse the GlobalConnect VPN client with MFA when working outside the office."


def encoded() -> int:
    return ENCODED_TEXTS.get(PACKAGED_MODEL_ID, 0)


def build(paths, **overrides):
    overrides.setdefault("embedder", CountingEmbedder())
    result = run_job(paths, "index_job", **overrides)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    return materialized(result)


def manifest_docs(paths, version):
    return set(VersionStore(root=str(paths.versions)).load(version).manifest["doc_id"])


def query(con, sql, *params):
    return con.execute(sql, list(params)).fetchall()


def test_add_edit_delete_and_noop(kb_paths):
    write(kb_paths, "leave.md", LEAVE)
    md = build(kb_paths)
    assert md["faiss_index"]["kb_version"] == 1 and md["raw_docs"]["documents_added"] == 1

    # Add one file: exactly its chunks are encoded.
    write(kb_paths, "vpn.md", VPN)
    before = encoded()
    md = build(kb_paths)
    assert md["raw_docs"]["documents_added"] == 1 and md["raw_docs"]["documents_unchanged"] == 1
    assert md["embeddings"]["chunks_embedded"] == md["cleaned_chunks"]["chunks_written"] == 1
    assert encoded() - before == 1
    assert md["faiss_index"]["kb_version"] == 2
    assert manifest_docs(kb_paths, 2) == {"leave.md", "vpn.md"}

    # Re-run with no change: no new version, nothing encoded, files not re-read.
    before = encoded()
    md = build(kb_paths)
    assert md["faiss_index"]["new_version"] is False and md["faiss_index"]["kb_version"] == 2
    assert md["raw_docs"]["files_read"] == 0 and encoded() == before
    assert VersionStore(root=str(kb_paths.versions)).numbers() == [1, 2]

    # Touch without changing: hashed, recognised as unchanged.
    os.utime(kb_paths.inbox / "vpn.md", ns=(1, 1))
    md = build(kb_paths)
    assert md["raw_docs"]["files_touched_not_changed"] == 1 and md["faiss_index"]["new_version"] is False

    # Edit: the old chunk is replaced, not kept beside the new one.
    write(kb_paths, "leave.md", LEAVE.replace("20 days", "25 days"))
    md = build(kb_paths)
    assert md["raw_docs"]["documents_changed"] == 1
    v3 = VersionStore(root=str(kb_paths.versions)).load(3).manifest
    leave_text = " ".join(v3[v3.doc_id == "leave.md"]["text"])
    assert "25 days" in leave_text and "20 days" not in leave_text
    assert len(v3[v3.doc_id == "leave.md"]) == 1

    # Delete: its documents disappear from the next version.
    (kb_paths.inbox / "vpn.md").unlink()
    md = build(kb_paths)
    assert md["raw_docs"]["documents_removed"] == 1
    assert manifest_docs(kb_paths, 4) == {"leave.md"}
    with duckdb.connect(str(kb_paths.db), read_only=True) as con:
        events = query(con, "SELECT doc_id, event FROM document_events ORDER BY event_at, event")
        assert ("vpn.md", "removed") in events and ("leave.md", "changed") in events
        members = query(con, "SELECT version, count(*) FROM kb_version_members GROUP BY 1 ORDER BY 1")
        assert members == [(1, 1), (2, 2), (3, 2), (4, 1)]


def test_chunk_size_change_reembeds_only_changed_texts(kb_paths):
    long_doc = "\n\n".join(f"Section {i}. " + " ".join(f"policy{i}word{j}" for j in range(30)) + "."
                           for i in range(12))
    write(kb_paths, "long.md", long_doc)
    write(kb_paths, "short.md", "# Parking\n\nVisitors park on level B2.")
    build(kb_paths, kb_config=KBConfig(inbox=str(kb_paths.inbox), chunk_size=200, chunk_overlap=0))
    old = VersionStore(root=str(kb_paths.versions)).load(1).manifest
    before = encoded()
    md = build(kb_paths, kb_config=KBConfig(inbox=str(kb_paths.inbox), chunk_size=64, chunk_overlap=0))
    new = VersionStore(root=str(kb_paths.versions)).load(2).manifest
    changed_texts = set(new["text_hash"]) - set(old["text_hash"])
    assert md["cleaned_chunks"]["docs_rechunked"] == 2
    assert md["embeddings"]["chunks_embedded"] == len(changed_texts) == encoded() - before
    # The short document's single chunk is byte-identical: reused from the cache.
    assert md["embeddings"]["chunks_reused_from_cache"] >= 1
    assert json.loads(json.dumps(VersionStore(root=str(kb_paths.versions)).info(2)["chunker"]))["size"] == 64


def test_bad_inputs_are_quarantined_and_the_rest_ingested(kb_paths):
    write(kb_paths, "good.md", LEAVE)
    write(kb_paths, "mixed.jsonl", "\n".join([
        '{"id": "ok-1", "text": "Meeting rooms are booked in the Rooms app."}',
        '{"id": "bad-json", "text": "unterminated',
        '{"id": "no-text"}',
        '{"id": "blank", "text": "  "}',
        '{"id": "ok-2", "text": "Parking is on level B2."}',
    ]) + "\n")
    write(kb_paths, "legacy.txt", "請假規定：員工享有七天特休假。".encode("big5"))
    write(kb_paths, "blob.txt", b"\x00\x01\x02\x03binary")
    write(kb_paths, "empty.md", "   \n")
    write(kb_paths, "slides.pdf", b"%PDF-1.7")
    snapshot = {p: p.read_bytes() for p in kb_paths.inbox.rglob("*") if p.is_file()}
    mtimes = {p: p.stat().st_mtime_ns for p in snapshot}

    md = build(kb_paths)
    assert md["raw_docs"]["documents_active"] == 3
    assert md["raw_docs"]["quarantined_items"] == 7
    table = md["raw_docs"]["quarantine"]
    for expected in ("mixed.jsonl | 2 | malformed JSON", "field 'text' is missing",
                     "legacy.txt", "Big5", "blob.txt", "binary file", "empty.md",
                     "unsupported extension '.pdf'"):
        assert expected in table, expected
    assert manifest_docs(kb_paths, 1) == {"good.md", "ok-1", "ok-2"}
    # The user's files are untouched.
    assert {p: p.read_bytes() for p in snapshot} == snapshot
    assert {p: p.stat().st_mtime_ns for p in snapshot} == mtimes

    # Fixing a file resolves its quarantine entries.
    write(kb_paths, "legacy.txt", "請假規定：員工享有七天特休假。")
    md = build(kb_paths)
    assert md["raw_docs"]["quarantined_items"] == 6 and md["raw_docs"]["documents_added"] == 1


def test_empty_inbox_is_explicit(kb_paths):
    md = build(kb_paths)
    assert md["raw_docs"]["documents_active"] == 0
    assert md["faiss_index"]["n_chunks"] == 0


@pytest.fixture(scope="module")
def sample_kb(tmp_path_factory):
    """The bundled sample documents built once for the golden-question tests."""
    from kb_core.paths import Paths

    home = tmp_path_factory.mktemp("sample_kb")
    with env_vars(KB_HOME=str(home), DAGSTER_HOME=None, KB_INBOX=None):
        paths = Paths.from_env().ensure()
        copy_samples(paths)
        build(paths)
        yield Searcher.open(paths, 1)


@pytest.mark.parametrize("lang", ["en", "zh-TW"])
def test_golden_questions_hit_their_document_in_top3(sample_kb, lang):
    golden = [json.loads(line) for line in GOLDEN.read_text(encoding="utf-8").splitlines()]
    golden = [g for g in golden if g["lang"] == lang]
    results = sample_kb.search_batch([g["question"] for g in golden], k=3)
    hits = [g["doc_id"] in {h.doc_id for h in res} for g, res in zip(golden, results)]
    misses = [g["question"] for g, ok in zip(golden, hits) if not ok]
    # The zero-hit thresholds are calibrated per version (kb_assets/relevance.py), not tuned
    # on these questions: 0.947 on zh-TW here, one more miss than the old sample-tuned
    # constants; on tipo_faq_zh_tw's 708 real questions it refuses none (BENCHMARKS.md).
    assert sum(hits) / len(hits) >= 0.94, misses


@pytest.mark.parametrize("question, doc_id", [
    ("請問特休假一年有幾天？", "hr/annual_leave_zh.md"),
    ("密碼打錯幾次帳號會被鎖住?", "it-password-zh"),
    ("How do I connect to the company network from home?", "it-vpn-en"),
    ("What is the deadline to submit expense claims?", "finance/expense_reimbursement_en.md"),
])
def test_specific_questions(sample_kb, question, doc_id):
    assert doc_id in [h.doc_id for h in sample_kb.search(question, k=3)]


@pytest.mark.parametrize("question", ["What is the capital of France?", "best pizza recipe",
                                      "今天天氣如何"])
def test_unrelated_questions_are_zero_hits(sample_kb, question):
    assert sample_kb.search(question, k=3) == []
