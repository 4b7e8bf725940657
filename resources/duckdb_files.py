"""Opening a DuckDB file that another process may hold, and reading results whole: shared by
`resources.store` (the Dagster resource) and `resources.registry_mirror` (which must not
import Dagster). Imports only duckdb."""

from __future__ import annotations

import time

import duckdb


def connect_with_retry(path: str, read_only: bool, timeout_s: float):
    """Another process (a build, an audit) may hold the file lock briefly: wait for it."""
    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            return duckdb.connect(path, read_only=read_only)
        except duckdb.IOException as exc:
            if "lock" not in str(exc).lower() or time.monotonic() > deadline:
                raise
            time.sleep(delay)
            delay = min(delay * 2, 1.0)


def fetch_one(con, sql: str, params: list | None = None):
    """First row or None. DuckDB 2 refuses new work on a connection whose previous result
    was not read to the end, so never leave a `fetchone()` cursor half-read."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def rows_of(con, sql: str, params: list) -> list[dict]:
    cur = con.execute(sql, params)
    cols = [d[0] for d in cur.description]
    return [dict(zip(cols, r)) for r in cur.fetchall()]
