"""The DuckDB store: documents, chunks, embedding cache, quarantine, KB versions and their
members: the row-level lineage. Connections are short-lived because DuckDB lets only one
process hold a read-write handle; readers that must not block (search, serve) read the
immutable version directories instead. The schema, its migrations and every write live in
`resources.persistence`; opening the file for writing migrates it."""

from __future__ import annotations

import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import duckdb
from dagster import ConfigurableResource, InitResourceContext

from kb_core.writer_lock import writer_lock, writer_lock_path
from resources.duckdb_files import connect_with_retry, fetch_one  # noqa: F401 (fetch_one: API)
from resources.persistence import insert, migrate


class KBStore(ConfigurableResource):
    """DuckDB file holding the platform's row-level state and lineage."""

    db_path: str
    # The KB home whose writer lock a Dagster run using this store holds, from its first step
    # to its last: with the in-process executor a run initialises its resources once, and
    # every KB asset and check uses the store. Empty: no lock (a store opened outside a run).
    writer_lock_home: str = ""

    @contextmanager
    def yield_for_execution(self, context: InitResourceContext) -> Iterator["KBStore"]:
        if not self.writer_lock_home:
            yield self
            return
        home = Path(self.writer_lock_home)
        log = context.log

        def waiting(msg: str) -> None:
            if log is not None:
                log.info(f"{msg} (lock file {writer_lock_path(home)})")

        t0 = time.monotonic()
        with writer_lock(home, announce=waiting):
            if log is not None:
                log.info(f"Holding the KB writer lock (waited {time.monotonic() - t0:.1f}s)")
            yield self

    @contextmanager
    def connect(self, read_only: bool = False,
                timeout_s: float = 60.0) -> Iterator[duckdb.DuckDBPyConnection]:
        path = Path(self.db_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if read_only and not path.exists():
            read_only = False  # first use: create the schema
        con = connect_with_retry(str(path), read_only, timeout_s)
        try:
            if not read_only:
                migrate(con)
            yield con
        finally:
            con.close()

    @contextmanager
    def transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self.connect() as con:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except BaseException:
                con.execute("ROLLBACK")
                raise
            con.execute("COMMIT")

    def insert(self, table: str, rows) -> int:
        """Insert dict rows by column name in their own transaction (see persistence.insert)."""
        with self.transaction() as con:
            return insert(con, table, rows)
