"""Read-only views of the registry's DuckDB mirror (`registry_versions`, `alias_history`) and
the rollback rule, importing nothing heavier than duckdb. `kb rollback` decides and switches
serving with these before it imports MLflow or Dagster (seconds of imports it must not wait
for); `resources.registry` reads through them too, so there is one query of each."""

from __future__ import annotations

import json
from pathlib import Path

from resources.duckdb_files import connect_with_retry, fetch_one, rows_of


def _read(db_path: str | Path, table: str, sql: str, params: list,
          timeout_s: float = 60.0) -> list[dict]:
    """Rows of `sql` on a read-only connection; [] when the file or the table does not exist
    yet (nothing registered, nothing moved)."""
    if not Path(db_path).exists():
        return []
    con = connect_with_retry(str(db_path), read_only=True, timeout_s=timeout_s)
    try:
        if fetch_one(con, "SELECT 1 FROM information_schema.tables WHERE table_name = ?",
                     [table]) is None:
            return []
        return rows_of(con, sql, params)
    finally:
        con.close()


def registered_versions(db_path: str | Path, model_name: str) -> list[dict]:
    """`registry_versions` rows of a model, by version; `tags` decoded to a dict."""
    rows = _read(db_path, "registry_versions",
                 "SELECT * FROM registry_versions WHERE model_name = ? ORDER BY version",
                 [model_name])
    for r in rows:
        r["tags"] = json.loads(r["tags"]) if isinstance(r["tags"], str) else (r["tags"] or {})
    return rows


def alias_history(db_path: str | Path, model_name: str | None = None,
                  alias: str | None = None) -> list[dict]:
    """`alias_history` rows, oldest first."""
    sql = "SELECT * FROM alias_history WHERE 1=1"
    params: list = []
    if model_name:
        sql += " AND model_name = ?"
        params.append(model_name)
    if alias:
        sql += " AND alias = ?"
        params.append(alias)
    return _read(db_path, "alias_history", sql + " ORDER BY event_at, rowid", params)


def rollback_target(history: list[dict], current: int | None) -> int | None:
    """The version a rollback returns to: the production before `current`, skipping versions
    that were themselves rolled back. Moves whose reason starts with "rollback" pop the stack
    of promotions back to their target, so repeated rollbacks walk further back."""
    stack: list[int] = []
    for m in history:
        to = m["to_version"]
        if str(m.get("reason") or "").startswith("rollback"):
            while stack and stack[-1] != to:
                stack.pop()
            if not stack:
                stack.append(to)
        elif not stack or stack[-1] != to:
            stack.append(to)
    while stack and stack[-1] == current:
        stack.pop()
    return stack[-1] if stack else None
