"""Numbered, idempotent schema migrations, run when a store is opened for writing.

A file with no `schema_version` table was written before migrations existed: its schema is
version 1 (or older: issue 16 added `doc_chunk_state.pii_counts`). Step 1 is idempotent, so
it is applied to such a file as to an empty one and brings both to version 1; later steps
follow. Append new steps to MIGRATIONS; never edit an applied one.

To add a column: add it to its Table in schema.py (a new file gets it from step 1) and
append a step `ALTER TABLE t ADD COLUMN IF NOT EXISTS c TYPE` (an existing file gets it on
its next read-write open). Read-only connections never migrate, so a reader of a new column
must tolerate a file not yet opened for writing (resources/lineage does)."""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Callable

from kb_core.clock import utc_now
from resources.persistence.schema import INDEXED_DOCUMENTS_VIEW, TABLES


@dataclass(frozen=True)
class Migration:
    version: int
    description: str
    apply: Callable  # (con) -> None; must be idempotent


def _baseline(con) -> None:
    for table in TABLES.values():
        if table.name != "schema_version":
            con.execute(table.ddl())
    # A KB_HOME from before issue 16 has doc_chunk_state without pii_counts.
    con.execute("ALTER TABLE doc_chunk_state ADD COLUMN IF NOT EXISTS pii_counts JSON")
    con.execute(INDEXED_DOCUMENTS_VIEW)


def _named_writes_marker(con) -> None:
    """No column changes: from here every write names its columns (persistence.writer), so
    a later step may add or reorder columns without breaking a writer."""


MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "baseline: the 16 tables and indexed_documents view (issue 16 pii_counts)",
              _baseline),
    Migration(2, "schema owned by resources.persistence; writes name their columns",
              _named_writes_marker),
)
LATEST = MIGRATIONS[-1].version

# Threads of one process share a DuckDB database: one migrates, the others wait and re-check.
_lock = threading.Lock()


def applied_version(con) -> int:
    """The highest migration applied to this file; 0 when it has no version table."""
    has_table = con.execute(
        "SELECT count(*) FROM duckdb_tables() WHERE table_name = 'schema_version' "
        "AND schema_name = 'main'").fetchall()[0][0]
    if not has_table:
        return 0
    return con.execute("SELECT coalesce(max(version), 0) FROM schema_version").fetchall()[0][0]


def migrate(con) -> list[int]:
    """Apply every pending step in order, each in its own transaction with its version row.
    Returns the versions applied (empty when the file is current)."""
    if applied_version(con) >= LATEST:
        return []
    with _lock:
        con.execute(TABLES["schema_version"].ddl())
        done = []
        for step in MIGRATIONS:
            if step.version <= applied_version(con):
                continue
            con.execute("BEGIN TRANSACTION")
            try:
                step.apply(con)
                con.execute("INSERT INTO schema_version (version, applied_at, description) "
                            "VALUES (?, ?, ?)", [step.version, utc_now(), step.description])
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")
            done.append(step.version)
        return done
