"""The named-column writer: every INSERT and DELETE the platform runs is built here from
column names checked against the schema, so no write depends on column order.

Functions take an open connection, so several writes share the caller's transaction
(`with store.transaction() as con: ...`)."""

from __future__ import annotations

import itertools
from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping

import pandas as pd

from resources.persistence.schema import UnknownColumnError, check_columns

_CONFLICT = {None: "INSERT", "ignore": "INSERT OR IGNORE", "replace": "INSERT OR REPLACE"}
_names = itertools.count()


def insert_sql(table: str, columns, on_conflict: str | None = None) -> str:
    """`INSERT INTO t (a, b) VALUES (?, ?)` for the validated columns."""
    columns = check_columns(table, columns)
    if on_conflict not in _CONFLICT:
        raise ValueError(f"on_conflict must be one of {sorted(map(str, _CONFLICT))}")
    return (f"{_CONFLICT[on_conflict]} INTO {table} ({', '.join(columns)}) "
            f"VALUES ({', '.join('?' * len(columns))})")


def insert(con, table: str, rows: Iterable[Mapping] | Mapping,
           on_conflict: str | None = None) -> int:
    """Insert dict rows by column name (any order; omitted columns take their default).
    All rows must name the same columns. Returns the number of rows written."""
    rows = [rows] if isinstance(rows, Mapping) else list(rows)
    if not rows:
        return 0
    columns = tuple(rows[0])
    for r in rows[1:]:
        if set(r) != set(columns):
            raise UnknownColumnError(
                f"table {table!r}: rows name different columns: {sorted(columns)} vs {sorted(r)}")
    sql = insert_sql(table, columns, on_conflict)
    con.executemany(sql, [[r[c] for c in columns] for r in rows])
    return len(rows)


def insert_frame(con, table: str, frame: pd.DataFrame,
                 on_conflict: str | None = None) -> int:
    """Bulk insert a DataFrame by its column names (DuckDB casts each to the column's type).
    The fast path for many rows: one statement instead of one per row."""
    if frame is None or len(frame) == 0:
        return 0
    columns = check_columns(table, [str(c) for c in frame.columns])
    with registered(con, frame) as view:
        con.execute(f"{_CONFLICT[on_conflict]} INTO {table} ({', '.join(columns)}) "
                    f"SELECT {', '.join(columns)} FROM {view}")
    return len(frame)


def delete(con, table: str, **equals) -> None:
    """DELETE FROM t WHERE a = ? AND b = ? (at least one condition: no accidental wipe)."""
    if not equals:
        raise ValueError(f"delete from {table!r} needs at least one condition")
    columns = check_columns(table, equals)
    con.execute(f"DELETE FROM {table} WHERE " + " AND ".join(f"{c} = ?" for c in columns),
                [equals[c] for c in columns])


def delete_in(con, table: str, column: str, values: Iterable) -> None:
    """DELETE FROM t WHERE column IN (values); values go through a registered frame, so a
    long list costs one statement."""
    values = list(values)
    if not values:
        return
    (column,) = check_columns(table, [column])
    with values_in(con, values) as selected:
        con.execute(f"DELETE FROM {table} WHERE {column} IN {selected}")


@contextmanager
def registered(con, frame: pd.DataFrame) -> Iterator[str]:
    """The frame as a uniquely named view for the duration of the block."""
    name = f"_kb_write_{next(_names)}"
    con.register(name, frame)
    try:
        yield name
    finally:
        con.unregister(name)


@contextmanager
def values_in(con, values: Iterable) -> Iterator[str]:
    """`(SELECT v FROM <view>)` over the values, for `... WHERE col IN <that>`: a long list
    costs one statement."""
    with registered(con, pd.DataFrame({"v": list(values)})) as name:
        yield f"(SELECT v FROM {name})"
