"""The persistence module for real: DuckDB files, the v1 schema as the old code wrote it,
migrations on open, the named-column writer."""

from datetime import datetime

import duckdb
import pandas as pd
import pytest

from resources import persistence
from resources.persistence import (SCHEMA_VERSION, TABLES, UnknownColumnError, applied_version,
                                   migrate)
from resources.store import KBStore
from tests.store_schema_v1 import SCHEMA_V1


def columns_of(con) -> dict[str, list[tuple[str, str]]]:
    out: dict[str, list] = {}
    for table, col, dtype in con.execute(
            "SELECT table_name, column_name, data_type FROM duckdb_columns() "
            "WHERE schema_name = 'main' ORDER BY table_name, column_index").fetchall():
        out.setdefault(table, []).append((col, dtype))
    return out


def write_v1_file(path) -> None:
    """A KB store as the code before schema versions left it, with a few rows."""
    con = duckdb.connect(str(path))
    con.execute(SCHEMA_V1)
    con.execute("INSERT INTO documents VALUES ('a.jsonl#1', 'd1', 'a.jsonl', 1, 'T', 'text', "
                "'h1', 'sha', '{}', ['x'], true, '2026-01-01', '2026-01-01', 'run-1')")
    con.execute("INSERT INTO check_results VALUES ('run-1', '2026-01-01', 'chunks', 'c1', true, "
                "'ERROR', true, 'ok', 3, '{\"k\": 1}')")
    con.execute("INSERT INTO doc_chunk_state VALUES ('a.jsonl#1', 'h1', 'v1', 2, '{}')")
    con.close()


def test_fresh_store_has_every_table_at_the_latest_version(tmp_path):
    store = KBStore(db_path=str(tmp_path / "kb.duckdb"))
    with store.connect() as con:
        assert applied_version(con) == SCHEMA_VERSION
        assert set(columns_of(con)) >= set(TABLES) | {"indexed_documents"}
        assert [r[0] for r in con.execute(
            "SELECT version FROM schema_version ORDER BY version").fetchall()] == \
            list(range(1, SCHEMA_VERSION + 1))


def test_new_schema_has_the_v1_columns_in_the_v1_order(tmp_path):
    """Readers written against v1 (positional SELECT *, old audits) see the same tables."""
    old = duckdb.connect(str(tmp_path / "v1.duckdb"))
    old.execute(SCHEMA_V1)
    v1 = columns_of(old)
    old.close()
    with KBStore(db_path=str(tmp_path / "new.duckdb")).connect() as con:
        new = columns_of(con)
    new.pop("schema_version")
    assert new == v1


def test_a_v1_file_is_migrated_on_open_and_keeps_its_rows(tmp_path):
    path = tmp_path / "kb.duckdb"
    write_v1_file(path)
    store = KBStore(db_path=str(path))
    with store.connect(read_only=True) as con:  # a reader never migrates
        assert applied_version(con) == 0
        assert con.execute("SELECT count(*) FROM documents").fetchall() == [(1,)]
    with store.transaction() as con:
        assert applied_version(con) == SCHEMA_VERSION
        assert con.execute("SELECT doc_id, flags, active FROM documents").fetchall() == \
            [("d1", ["x"], True)]
        persistence.record_check_results(con, [{
            "run_id": "run-2", "asset": "chunks", "check_name": "c2", "passed": False,
            "severity": "WARN", "blocking": False, "description": "bad", "kb_version": None,
            "metadata": {"why": "test"}}])
    with store.connect() as con:
        assert migrate(con) == []  # idempotent: nothing left to apply
        rows = con.execute("SELECT run_id, check_name, passed, kb_version, metadata->>'why' "
                           "FROM check_results ORDER BY run_id").fetchall()
        versions = con.execute("SELECT version FROM schema_version ORDER BY 1").fetchall()
    assert rows == [("run-1", "c1", True, 3, None), ("run-2", "c2", False, None, "test")]
    assert versions == [(v,) for v in range(1, SCHEMA_VERSION + 1)]


def test_a_file_from_before_issue_16_gains_pii_counts(tmp_path):
    path = tmp_path / "kb.duckdb"
    con = duckdb.connect(str(path))
    con.execute(SCHEMA_V1.replace(
        "ALTER TABLE doc_chunk_state ADD COLUMN IF NOT EXISTS pii_counts JSON;", ""))
    con.execute("INSERT INTO doc_chunk_state VALUES ('k', 'h', 'v1', 4)")
    assert "pii_counts" not in dict(columns_of(con)["doc_chunk_state"])
    con.close()
    with KBStore(db_path=str(path)).connect() as con:
        assert con.execute("SELECT doc_key, n_chunks, pii_counts FROM doc_chunk_state"
                           ).fetchall() == [("k", 4, None)]


def test_a_failing_migration_rolls_back_and_records_nothing(tmp_path, monkeypatch):
    from resources.persistence import migrations

    def broken(con):
        con.execute("CREATE TABLE half_done (x INTEGER)")
        raise RuntimeError("step failed")
    steps = migrations.MIGRATIONS + (migrations.Migration(SCHEMA_VERSION + 1, "broken", broken),)
    monkeypatch.setattr(migrations, "MIGRATIONS", steps)
    monkeypatch.setattr(migrations, "LATEST", SCHEMA_VERSION + 1)
    con = duckdb.connect(str(tmp_path / "kb.duckdb"))
    with pytest.raises(RuntimeError, match="step failed"):
        migrations.migrate(con)
    assert applied_version(con) == SCHEMA_VERSION  # the good steps stay applied
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'half_done'"
                       ).fetchall() == [(0,)]
    con.close()


@pytest.fixture
def con(tmp_path):
    with KBStore(db_path=str(tmp_path / "kb.duckdb")).connect() as c:
        yield c


def test_unknown_column_is_refused_naming_table_and_column(con):
    with pytest.raises(UnknownColumnError, match="'check_results' has no column 'pased'"):
        persistence.insert(con, "check_results", {"run_id": "r", "pased": True})
    with pytest.raises(UnknownColumnError, match="no table 'check_result'"):
        persistence.insert(con, "check_result", {"run_id": "r"})
    with pytest.raises(UnknownColumnError, match="'chunks' has no column 'body'"):
        persistence.insert_frame(con, "chunks", pd.DataFrame({"chunk_id": [1], "body": ["x"]}))
    with pytest.raises(UnknownColumnError, match="'quarantine' has no column 'path'"):
        persistence.delete(con, "quarantine", path="a")
    assert con.execute("SELECT count(*) FROM check_results").fetchall() == [(0,)]


def test_rows_naming_different_columns_are_refused(con):
    with pytest.raises(UnknownColumnError, match="different columns"):
        persistence.insert(con, "kb_version_sources", [{"version": 1, "path": "a"},
                                                       {"version": 1, "sha256": "s"}])


def test_column_order_does_not_matter(con):
    at = datetime(2026, 1, 2, 3, 4, 5)
    persistence.insert(con, "quarantine", [
        {"run_id": "r", "event_at": at, "source_path": "a", "line": 1, "reason": "x",
         "active": True},
        {"active": False, "reason": "y", "line": 2, "source_path": "b", "event_at": at,
         "run_id": "r"}])
    persistence.insert_frame(con, "quarantine", pd.DataFrame({
        "reason": ["z"], "active": [True], "line": [3], "run_id": ["r"], "source_path": ["c"],
        "event_at": [at]}))
    assert con.execute("SELECT source_path, line, reason, active, file_sha256, event_at "
                       "FROM quarantine ORDER BY line").fetchall() == [
        ("a", 1, "x", True, None, at), ("b", 2, "y", False, None, at),
        ("c", 3, "z", True, None, at)]
    assert "INSERT INTO quarantine (reason, line) VALUES (?, ?)" == \
        persistence.insert_sql("quarantine", ["reason", "line"])


def test_conflicts_and_deletes(con):
    row = {"model_id": "m", "text_hash": "h", "vector": b"\x00\x01", "created_at": None}
    persistence.insert(con, "embedding_cache", row)
    with pytest.raises(duckdb.ConstraintException):
        persistence.insert(con, "embedding_cache", row)
    persistence.insert_frame(con, "embedding_cache", pd.DataFrame([row, {**row, "text_hash": "g"}]),
                             on_conflict="ignore")
    assert con.execute("SELECT text_hash, vector FROM embedding_cache ORDER BY 1").fetchall() == \
        [("g", b"\x00\x01"), ("h", b"\x00\x01")]
    persistence.delete_in(con, "embedding_cache", "text_hash", ["g", "nope"])
    persistence.delete(con, "embedding_cache", model_id="m", text_hash="h")
    assert con.execute("SELECT count(*) FROM embedding_cache").fetchall() == [(0,)]
    with pytest.raises(ValueError, match="at least one condition"):
        persistence.delete(con, "embedding_cache")


def test_store_insert_commits_its_own_transaction(tmp_path):
    store = KBStore(db_path=str(tmp_path / "kb.duckdb"))
    assert store.insert("kb_version_sources", [{"path": "a", "version": 7, "n_docs": 2}]) == 1
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT * FROM kb_version_sources").fetchall() == [(7, "a", None, 2)]


def test_threads_opening_a_new_file_at_once_migrate_it_once(tmp_path):
    from concurrent.futures import ThreadPoolExecutor

    store = KBStore(db_path=str(tmp_path / "kb.duckdb"))

    def open_and_write(i):
        with store.transaction() as con:
            persistence.insert(con, "kb_version_sources", {"version": i, "path": f"p{i}"})
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(open_and_write, range(8)))
    with store.connect(read_only=True) as con:
        assert con.execute("SELECT version FROM schema_version ORDER BY 1").fetchall() == \
            [(v,) for v in range(1, SCHEMA_VERSION + 1)]
        assert con.execute("SELECT count(*) FROM kb_version_sources").fetchall() == [(8,)]
