"""Opening the Dagster instance. On a PostgreSQL instance shared by machines
(KB_DAGSTER_PG_URL), the first use creates Dagster's tables, and machines may do so at the
same moment. dagster-postgres retries the loser of a DuplicateTable (42P07) but not of
DuplicateObject (42710: 'type "runs" already exists', the row type PostgreSQL creates with
each table) or of the pg_type unique violation (23505): those are retried here."""

from __future__ import annotations

import time

SCHEMA_RACE_CODES = frozenset({"42P07", "42710", "23505"})


def schema_race(exc: BaseException | None) -> bool:
    """Whether `exc` (or what caused it) is PostgreSQL refusing a table or type that another
    process created a moment earlier."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        for err in (exc, getattr(exc, "orig", None)):
            if getattr(err, "pgcode", None) in SCHEMA_RACE_CODES:
                return True
        exc = exc.__cause__ or exc.__context__
    return False


def open_instance(attempts: int = 6, wait_s: float = 0.3):
    """DagsterInstance.get(), retried while another process is creating the same schema."""
    from dagster import DagsterInstance

    for attempt in range(1, attempts + 1):
        try:
            return DagsterInstance.get()
        except Exception as exc:
            if attempt == attempts or not schema_race(exc):
                raise
            time.sleep(wait_s * attempt)
    raise AssertionError("unreachable")
