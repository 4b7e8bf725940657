"""Postmortem audits over the lineage recorded at the time: alias moves (alias_history), KB
versions and their members and sources, check and eval results, FT dataset lines and the
registry mirror. Every answer comes from rows written when things happened, never from
today's state re-derived: "what was live at T" reads alias_history, "what went into version
N" reads kb_version_members/kb_version_sources, not the current documents table.

Pure-ish: functions take an open (read-only) DuckDB connection and return JSON-ready dicts;
`audit_format` renders them. Stored times are naive UTC."""

from __future__ import annotations

import json
from datetime import datetime, timezone

KB_MODEL = "kb"
ASSISTANT_MODEL = "kb-assistant"
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
        return (now or utcnow()), "now (UTC)"
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


def utcnow() -> datetime:
    return datetime.now(timezone.utc).replace(tzinfo=None)


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
            cur.update(until=m["event_at"], ended_by=_move_brief(m))
            out.append(cur)
            cur = None
    if cur is not None:
        out.append(cur)
    return out


def _move_brief(m: dict | None) -> dict | None:
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
            "mlflow_run_id": (reg or {}).get("run_id"), "ft_dataset": ds, "kb_version": kb_no}


# ---------------------------------------------------------------------------- kb audit at
def live_at(lin: Lineage, t: datetime, alias: str = PRODUCTION) -> dict:
    """Which KB and kb-assistant versions held `alias` at time t (naive UTC)."""
    first_kb = lin.one("SELECT version, created_at FROM kb_versions ORDER BY created_at LIMIT 1",
                       needs=("kb_versions",))
    if first_kb is None:
        raise AuditError("no KB version has been built yet: nothing was ever live")
    all_moves = alias_moves(lin, None, alias)
    first_move = all_moves[0]["event_at"] if all_moves else None
    if t < first_kb["created_at"] and (first_move is None or t < first_move):
        raise AuditError(f"nothing was live at {fmt_time(t)}: the first KB version "
                         f"(v{first_kb['version']}) was created at {fmt_time(first_kb['created_at'])}")
    models = {}
    for model in (KB_MODEL, ASSISTANT_MODEL):
        moves = [m for m in all_moves if m["model_name"] == model]
        before = [m for m in moves if m["event_at"] <= t]
        after = [m for m in moves if m["event_at"] > t]
        entry: dict = {"model": model, "alias": alias, "version": None, "basis": None,
                       "since": None, "set_by": None, "until": None, "ended_by": _move_brief(
                           after[0]) if after else None}
        if before:
            cur = before[-1]
            entry.update(version=cur["to_version"], basis=f"alias_history ({alias})",
                         set_by=_move_brief(cur), until=after[0]["event_at"] if after else None)
            # 'since' = start of the unbroken stretch holding this version
            since = cur["event_at"]
            for m in reversed(before[:-1]):
                if m["to_version"] != cur["to_version"]:
                    break
                since = m["event_at"]
            entry["since"] = since
        elif model == KB_MODEL:
            # Before the first promotion, serving falls back to the latest built version.
            latest = lin.one("SELECT version, created_at FROM kb_versions WHERE created_at <= ? "
                             "ORDER BY version DESC LIMIT 1", [t], needs=("kb_versions",))
            if latest:
                nxt = lin.one("SELECT created_at FROM kb_versions WHERE created_at > ? "
                              "ORDER BY created_at LIMIT 1", [t], needs=("kb_versions",))
                ends = [x for x in ((nxt or {}).get("created_at"), after[0]["event_at"]
                                    if after else None) if x is not None]
                entry.update(version=latest["version"], since=latest["created_at"],
                             until=min(ends) if ends else None,
                             basis="latest built version (nothing promoted yet)")
        if entry["version"] is not None:
            if model == KB_MODEL:
                kv = lin.one("SELECT version, created_at, run_id, code_version, n_docs, n_chunks, "
                             "embedding_model, chunker FROM kb_versions WHERE version = ?",
                             [entry["version"]], needs=("kb_versions",))
                if kv:
                    kv["chunker"] = loads(kv.get("chunker"), {})
                entry["kb_version"] = kv
                entry["built_by_run"] = (kv or {}).get("run_id")
                entry["registry"] = registry_row(lin, KB_MODEL, entry["version"])
            else:
                entry.update(assistant_lineage(lin, entry["version"]))
        models[model] = entry
    near = [m for m in all_moves if m["event_at"] <= t][-4:] + \
        [m for m in all_moves if m["event_at"] > t][:4]
    return {"kind": "at", "time": t, "alias": alias, "models": models,
            "timeline": [{"model": m["model_name"], **_move_brief(m)} for m in near]}


# ---------------------------------------------------------------------------- diff
def doc_changes(lin: Lineage, a: int, b: int) -> list[dict]:
    """Per-document changes from version a to b: added / changed / removed / rechunked
    (same content, different chunks: a chunker or normaliser change)."""
    return lin.rows("""
        WITH v AS (
            SELECT version, doc_key, any_value(doc_id) AS doc_id,
                   any_value(doc_content_hash) AS h, count(*) AS n_chunks,
                   md5(string_agg(text_hash, ',' ORDER BY text_hash)) AS sig
            FROM kb_version_members WHERE version IN (?, ?) GROUP BY version, doc_key),
        a AS (SELECT * FROM v WHERE version = ?), b AS (SELECT * FROM v WHERE version = ?),
        paths AS (SELECT doc_key, any_value(source_path) AS source_path FROM (
            SELECT doc_key, source_path FROM documents
            UNION ALL SELECT doc_key, source_path FROM document_events) GROUP BY doc_key),
        d AS (
            SELECT coalesce(a.doc_key, b.doc_key) AS doc_key,
                   coalesce(b.doc_id, a.doc_id) AS doc_id,
                   a.h AS hash_before, b.h AS hash_after,
                   a.n_chunks AS chunks_before, b.n_chunks AS chunks_after,
                   CASE WHEN a.doc_key IS NULL THEN 'added'
                        WHEN b.doc_key IS NULL THEN 'removed'
                        WHEN a.h <> b.h THEN 'changed'
                        WHEN a.sig <> b.sig THEN 'rechunked' ELSE 'unchanged' END AS change
            FROM a FULL OUTER JOIN b ON a.doc_key = b.doc_key)
        SELECT d.change, d.doc_id, d.doc_key, coalesce(p.source_path, d.doc_key) AS source_path,
               d.hash_before, d.hash_after, d.chunks_before, d.chunks_after
        FROM d LEFT JOIN paths p USING (doc_key)
        WHERE d.change <> 'unchanged' ORDER BY d.change, d.doc_key""",
        [a, b, a, b], needs=("kb_version_members", "documents", "document_events"))


def chunk_stats(lin: Lineage, n: int) -> dict:
    row = lin.one("""
        SELECT count(*) AS chunks, count(DISTINCT doc_key) AS docs, sum(n_tokens) AS tokens,
               round(avg(n_tokens), 1) AS mean, median(n_tokens) AS median,
               quantile_disc(n_tokens, 0.1) AS p10, quantile_disc(n_tokens, 0.9) AS p90,
               min(n_tokens) AS min, max(n_tokens) AS max
        FROM kb_version_members WHERE version = ?""", [n], needs=("kb_version_members",))
    return {k: (float(v) if k in ("mean", "median") and v is not None else v)
            for k, v in (row or {}).items()}


def source_changes(lin: Lineage, a: int, b: int) -> list[dict]:
    return lin.rows("""
        WITH a AS (SELECT path, sha256, n_docs FROM kb_version_sources WHERE version = ?),
             b AS (SELECT path, sha256, n_docs FROM kb_version_sources WHERE version = ?)
        SELECT CASE WHEN a.path IS NULL THEN 'added' WHEN b.path IS NULL THEN 'removed'
                    ELSE 'changed' END AS change,
               coalesce(a.path, b.path) AS path, a.sha256 AS sha256_before,
               b.sha256 AS sha256_after, a.n_docs AS docs_before, b.n_docs AS docs_after
        FROM a FULL OUTER JOIN b ON a.path = b.path
        WHERE a.path IS NULL OR b.path IS NULL OR a.sha256 <> b.sha256
        ORDER BY change, path""", [a, b], needs=("kb_version_sources",))


def settings_of(v: dict) -> dict:
    """The build settings that change what a version contains, flattened for comparison."""
    info = v.get("info") or {}
    out = {f"chunker.{k}": val for k, val in (v.get("chunker") or {}).items() if k != "version"}
    out.update({"embedding_model": v.get("embedding_model"), "dim": v.get("dim"),
                "lexical": info.get("lexical"), "code_version": v.get("code_version")})
    return out


def latest_eval(lin: Lineage, model: str, version: int) -> dict | None:
    row = lin.one("SELECT * FROM eval_results WHERE model_name = ? AND version = ? "
                  "ORDER BY created_at DESC LIMIT 1", [model, version], needs=("eval_results",))
    if row:
        row["metrics"] = loads(row.get("metrics"), {})
        row["details"] = loads(row.get("details"), {})
    return row


def diff_versions(lin: Lineage, a: int, b: int) -> dict:
    va, vb = kb_version_row(lin, a), kb_version_row(lin, b)
    sa, sb = settings_of(va), settings_of(vb)
    settings = [{"setting": k, "before": sa.get(k), "after": sb.get(k),
                 "changed": sa.get(k) != sb.get(k)} for k in sorted(set(sa) | set(sb))]
    docs = doc_changes(lin, a, b)
    counts = {c: sum(1 for d in docs if d["change"] == c)
              for c in ("added", "changed", "removed", "rechunked")}
    shared = lin.one("""SELECT count(*) AS n FROM (
        SELECT text_hash FROM kb_version_members WHERE version = ?
        INTERSECT SELECT text_hash FROM kb_version_members WHERE version = ?)""", [a, b],
        needs=("kb_version_members",))
    ea, eb = latest_eval(lin, KB_MODEL, a), latest_eval(lin, KB_MODEL, b)
    ma, mb = (ea or {}).get("metrics") or {}, (eb or {}).get("metrics") or {}
    metrics = [{"metric": k, "before": ma.get(k), "after": mb.get(k),
                "delta": _delta(ma.get(k), mb.get(k))} for k in sorted(set(ma) | set(mb))]
    return {"kind": "diff", "a": a, "b": b,
            "versions": {str(a): _version_brief(va), str(b): _version_brief(vb)},
            "settings": settings, "settings_changed": [s["setting"] for s in settings
                                                         if s["changed"]],
            "documents": counts | {"unchanged": max(0, (vb["n_docs"] or 0) - counts["added"]
                                                     - counts["changed"] - counts["rechunked"])},
            "document_changes": docs,
            "sources": source_changes(lin, a, b),
            "chunk_stats": {str(a): chunk_stats(lin, a), str(b): chunk_stats(lin, b)},
            "chunks_shared": (shared or {}).get("n", 0),
            "eval_metrics": metrics}


def _delta(x, y):
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) \
            and not isinstance(x, bool) and not isinstance(y, bool):
        return round(y - x, 6)
    return None


def _version_brief(v: dict) -> dict:
    return {"version": v["version"], "created_at": v["created_at"], "run_id": v["run_id"],
            "code_version": v["code_version"], "n_docs": v["n_docs"], "n_chunks": v["n_chunks"],
            "chunker_version": (v.get("chunker") or {}).get("version")}


# ---------------------------------------------------------------------------- version N
def version_report(lin: Lineage, n: int) -> dict:
    v = kb_version_row(lin, n)
    run_id, created = v["run_id"], v["created_at"]
    prev = lin.one("SELECT max(version) AS p FROM kb_versions WHERE version < ?", [n],
                   needs=("kb_versions",))
    prev_no = (prev or {}).get("p")
    checks = lin.rows("""
        SELECT event_at, asset, check_name, passed, severity, blocking, description, run_id,
               kb_version, metadata FROM check_results
        WHERE kb_version = ? OR run_id = ? ORDER BY event_at, asset, check_name""",
        [n, run_id], needs=("check_results",))
    for c in checks:
        c["metadata"] = loads(c.get("metadata"), {})
    evals = lin.rows("SELECT * FROM eval_results WHERE model_name = ? AND version = ? "
                     "ORDER BY created_at", [KB_MODEL, n], needs=("eval_results",))
    for e in evals:
        e["metrics"], e["details"] = loads(e.get("metrics"), {}), loads(e.get("details"), {})
    # Quarantined by the building run, or still quarantined when the version was cut.
    quarantine = lin.rows("""
        SELECT source_path, line, reason, file_sha256, event_at, run_id, resolved_at,
               run_id = ? AS this_run FROM quarantine
        WHERE run_id = ? OR (event_at <= ? AND (resolved_at IS NULL OR resolved_at > ?))
        ORDER BY source_path, line""", [run_id, run_id, created, created],
        needs=("quarantine",))
    sources = lin.rows("SELECT path, sha256, n_docs FROM kb_version_sources WHERE version = ? "
                       "ORDER BY path", [n], needs=("kb_version_sources",))
    ft = lin.rows("SELECT dataset_version, created_at, run_id, n_train, n_eval, content_sha256 "
                  "FROM ft_datasets WHERE kb_version = ? ORDER BY dataset_version", [n],
                  needs=("ft_datasets",))
    windows = production_windows(alias_moves(lin, KB_MODEL), n)
    return {
        "kind": "version", "version": n, "created_at": created, "run_id": run_id,
        "code_version": v["code_version"], "fingerprint": v["fingerprint"], "path": v["path"],
        "chunker": v["chunker"], "embedding_model": v["embedding_model"], "dim": v["dim"],
        "lexical": (v["info"] or {}).get("lexical"),
        "hashes": {"index_sha256": v["index_sha256"], "manifest_sha256": v["manifest_sha256"],
                   "source_manifest_sha256": v["source_manifest_sha256"]},
        "counts": {"documents": v["n_docs"], "chunks": v["n_chunks"], "source_files": len(sources),
                   "quarantined": len(quarantine),
                   "checks_failed": sum(1 for c in checks if not c["passed"])},
        "chunk_stats": chunk_stats(lin, n),
        "registry": registry_row(lin, KB_MODEL, n),
        "production_windows": windows,
        "checks": checks, "evals": evals, "sources": sources, "quarantine": quarantine,
        "ft_datasets": ft,
        "previous_version": prev_no,
        "diff": diff_versions(lin, prev_no, n) if prev_no is not None else None,
    }


# ---------------------------------------------------------------------------- doc
def resolve_doc_keys(lin: Lineage, ident: str) -> list[dict]:
    """doc_keys whose doc_id, doc_key or source path equals ident (a path matches every
    document from that file), from everything ever recorded."""
    parts = []
    if "documents" in lin.tables:
        parts.append("SELECT doc_key, doc_id, source_path FROM documents")
    if "document_events" in lin.tables:
        parts.append("SELECT doc_key, doc_id, source_path FROM document_events")
    if "ft_dataset_lines" in lin.tables:
        parts.append("SELECT doc_key, doc_id, NULL FROM ft_dataset_lines")
    if not parts:
        return []
    return lin.rows(f"""
        SELECT doc_key, any_value(doc_id) AS doc_id, max(source_path) AS source_path
        FROM ({' UNION ALL '.join(parts)}) AS x(doc_key, doc_id, source_path)
        WHERE doc_key = ? OR doc_id = ? OR source_path = ?
        GROUP BY doc_key ORDER BY doc_key""", [ident, ident, ident])


def doc_report(lin: Lineage, ident: str) -> dict:
    docs = resolve_doc_keys(lin, ident)
    if not docs:
        raise AuditError(f"document {ident!r} was never seen (no doc_id, doc_key or source "
                         f"path matches in the lineage)")
    keys = [d["doc_key"] for d in docs]
    events = lin.rows("""
        SELECT event_at, event, doc_key, doc_id, source_path, content_hash, file_sha256, run_id
        FROM document_events WHERE list_contains(?, doc_key) ORDER BY event_at, doc_key""",
        [keys], needs=("document_events",))
    kb = lin.rows("""
        SELECT m.version, m.doc_key, any_value(m.doc_id) AS doc_id,
               any_value(m.doc_content_hash) AS content_hash, count(*) AS chunks,
               any_value(v.created_at) AS created_at, any_value(v.run_id) AS run_id
        FROM kb_version_members m JOIN kb_versions v USING (version)
        WHERE list_contains(?, m.doc_key) GROUP BY m.version, m.doc_key
        ORDER BY m.version, m.doc_key""", [keys], needs=("kb_version_members", "kb_versions"))
    paths = sorted({d["source_path"] for d in docs if d["source_path"]})
    file_sha = {(r["version"], r["path"]): r["sha256"] for r in lin.rows(
        "SELECT version, path, sha256 FROM kb_version_sources WHERE list_contains(?, path)",
        [paths], needs=("kb_version_sources",))} if paths else {}
    src_of = {d["doc_key"]: d["source_path"] for d in docs}
    moves = alias_moves(lin, KB_MODEL)
    for r in kb:
        r["file_sha256"] = file_sha.get((r["version"], src_of.get(r["doc_key"])))
        r["production_windows"] = production_windows(moves, r["version"])
    ft = lin.rows("""
        SELECT l.dataset_version, l.doc_key, any_value(l.doc_content_hash) AS content_hash,
               count(*) AS lines, string_agg(DISTINCT l.split, ',' ORDER BY l.split) AS splits,
               any_value(d.kb_version) AS kb_version, any_value(d.created_at) AS created_at,
               any_value(d.run_id) AS run_id
        FROM ft_dataset_lines l LEFT JOIN ft_datasets d USING (dataset_version)
        WHERE list_contains(?, l.doc_key) GROUP BY l.dataset_version, l.doc_key
        ORDER BY l.dataset_version, l.doc_key""", [keys],
        needs=("ft_dataset_lines", "ft_datasets"))
    datasets = sorted({r["dataset_version"] for r in ft})
    models = []
    amoves = alias_moves(lin, ASSISTANT_MODEL)
    for reg in lin.rows("SELECT * FROM registry_versions WHERE model_name = ? ORDER BY version",
                        [ASSISTANT_MODEL], needs=("registry_versions",)):
        tags = loads(reg.get("tags"), {})
        ds = as_int(tag_value(tags, DATASET_TAG_KEYS))
        if ds in datasets:
            models.append({"model": ASSISTANT_MODEL, "version": reg["version"],
                           "mlflow_version": reg.get("mlflow_version"),
                           "run_id": tags.get("dagster_run_id") or None,
                           "mlflow_run_id": reg.get("run_id"),
                           "created_at": reg.get("created_at"), "ft_dataset_version": ds,
                           "production_windows": production_windows(amoves, reg["version"])})
    return {"kind": "doc", "query": ident, "documents": docs, "events": events,
            "kb_versions": kb, "ft_datasets": ft, "models": models,
            "summary": {"kb_versions": sorted({r["version"] for r in kb}),
                        "ft_datasets": datasets,
                        "models": [f"{m['model']} v{m['version']}" for m in models],
                        "ever_in_production": sorted({r["version"] for r in kb
                                                      if r["production_windows"]})}}


# ---------------------------------------------------------------------------- formatting aid
def fmt_time(t: datetime | None) -> str:
    return "" if t is None else t.strftime("%Y-%m-%d %H:%M:%S UTC")
