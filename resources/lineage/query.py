"""Shared pieces of the postmortem audits: input parsing, a tolerant query helper over a
read-only DuckDB connection, and lookups of the registry mirror and alias history. Stored
times are naive UTC."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from kb_core.clock import utc_now
from kb_core.markdown import fmt_time  # noqa: F401  (re-exported)
from kb_core.models import ASSISTANT_MODEL, KB_MODEL  # noqa: F401 - used via this module

PRODUCTION = "production"
# Registry tags naming the FT dataset a kb-assistant version was trained on (first found wins).
DATASET_TAG_KEYS = ("ft_dataset_version", "dataset_version", "ft_dataset")
KB_TAG_KEYS = ("kb_version",)


class AuditError(Exception):
    """A user-facing, one-line answer to bad input (unknown version, time, document)."""


# ---------------------------------------------------------------------------- time input
def parse_time(text: str, now: datetime | None = None) -> tuple[datetime, str]:
    """(naive UTC datetime, note on how the input was read). Accepts ISO-8601 with or without
    a timezone ('2026-11-21T23:45:00+08:00', '...Z', '2026-11-21 23:45', a date) and 'now'."""
    s = (text or "").strip()
    if s.lower() == "now":
        return (now or utc_now()), "now (UTC)"
    iso = s[:-1] + "+00:00" if s[-1:] in ("Z", "z") else s
    try:
        dt = datetime.fromisoformat(iso)
    except ValueError:
        raise AuditError(f"cannot read time {text!r}: use ISO-8601 such as "
                         f"'2026-11-21T23:45:00+08:00', '2026-11-21T15:45Z' or "
                         f"'2026-11-21 23:45' (read as UTC)") from None
    if dt.tzinfo is None:
        return dt, f"{s!r} has no timezone: interpreted as UTC"
    utc = dt.astimezone(timezone.utc).replace(tzinfo=None)
    return utc, f"{s!r} converted to UTC"


# ---------------------------------------------------------------------------- access
class Lineage:
    """Thin query helper over a DuckDB connection that tolerates an older database lacking
    some tables (a read-only connection never runs the schema migration)."""

    def __init__(self, con):
        self.con = con
        self.tables = {r[0] for r in con.execute(
            "SELECT table_name FROM information_schema.tables").fetchall()}

    def rows(self, sql: str, params=(), needs: tuple[str, ...] = ()) -> list[dict]:
        if any(t not in self.tables for t in needs):
            return []
        cur = self.con.execute(sql, list(params))
        cols = [d[0] for d in cur.description]
        return [dict(zip(cols, r)) for r in cur.fetchall()]

    def one(self, sql: str, params=(), needs: tuple[str, ...] = ()) -> dict | None:
        rows = self.rows(sql, params, needs)
        return rows[0] if rows else None


def loads(value, default=None):
    """DuckDB returns JSON columns as text."""
    if value is None or value == "":
        return default
    if isinstance(value, (dict, list)):
        return value
    try:
        return json.loads(value)
    except (TypeError, ValueError):
        return default


def tag_value(tags: dict | None, keys: tuple[str, ...]):
    for k in keys:
        if tags and tags.get(k) not in (None, ""):
            return tags[k]
    return None


def as_int(value) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


# ---------------------------------------------------------------------------- shared lookups
def kb_version_row(lin: Lineage, n: int) -> dict:
    row = lin.one("SELECT * FROM kb_versions WHERE version = ?", [n], needs=("kb_versions",))
    if row is None:
        known = lin.rows("SELECT min(version) lo, max(version) hi, count(*) n FROM kb_versions",
                         needs=("kb_versions",))
        if not known or not known[0]["n"]:
            raise AuditError(f"KB version {n} does not exist: no KB version has been built yet")
        k = known[0]
        raise AuditError(f"KB version {n} does not exist (known versions: {k['lo']}..{k['hi']})")
    row["chunker"] = loads(row.get("chunker"), {})
    row["info"] = loads(row.get("info"), {})
    return row


def registry_row(lin: Lineage, model: str, version: int) -> dict | None:
    row = lin.one("SELECT * FROM registry_versions WHERE model_name = ? AND version = ?",
                  [model, version], needs=("registry_versions",))
    if row:
        row["tags"] = loads(row.get("tags"), {})
    return row


def alias_moves(lin: Lineage, model: str | None = None, alias: str = PRODUCTION) -> list[dict]:
    where, params = "alias = ?", [alias]
    if model:
        where += " AND model_name = ?"
        params.append(model)
    return lin.rows(f"SELECT * FROM alias_history WHERE {where} ORDER BY event_at, rowid",
                    params, needs=("alias_history",))


def production_windows(moves: list[dict], version: int) -> list[dict]:
    """[{from, until, set_by, forced, ended_by}]: the stretches during which `version` held
    the alias (`moves` ordered by time, one model and alias)."""
    out, cur = [], None
    for m in moves:
        if m["to_version"] == version and cur is None:
            cur = {"from": m["event_at"], "until": None, "set_by": m.get("actor"),
                   "forced": bool(m.get("forced")), "reason": m.get("reason"), "ended_by": None}
        elif m["to_version"] != version and cur is not None:
            cur.update(until=m["event_at"], ended_by=move_brief(m))
            out.append(cur)
            cur = None
    if cur is not None:
        out.append(cur)
    return out


def move_brief(m: dict | None) -> dict | None:
    if m is None:
        return None
    return {"event_at": m["event_at"], "from_version": m.get("from_version"),
            "to_version": m.get("to_version"), "actor": m.get("actor"),
            "reason": m.get("reason"), "forced": bool(m.get("forced")),
            "run_id": m.get("run_id")}


def assistant_lineage(lin: Lineage, version: int) -> dict:
    """kb-assistant version -> registry row, FT dataset and the KB version behind it."""
    reg = registry_row(lin, ASSISTANT_MODEL, version)
    tags = (reg or {}).get("tags") or {}
    ds_no = as_int(tag_value(tags, DATASET_TAG_KEYS))
    ds = None
    if ds_no is not None:
        ds = lin.one("SELECT dataset_version, created_at, run_id, kb_version, content_sha256, "
                     "n_train, n_eval FROM ft_datasets WHERE dataset_version = ?", [ds_no],
                     needs=("ft_datasets",))
    kb_no = (ds or {}).get("kb_version") or as_int(tag_value(tags, KB_TAG_KEYS))
    # registry_versions.run_id is the MLflow run; the Dagster run is tagged dagster_run_id.
    return {"registry": reg, "built_by_run": tags.get("dagster_run_id") or None,
            "mlflow_run_id": (reg or {}).get("run_id"), "ft_dataset": ds, "kb_version": kb_no,
            "parent_version": as_int(tags.get("parent_version"))}

