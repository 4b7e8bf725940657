"""Postmortem audits over the lineage recorded at the time: alias moves (alias_history), KB
versions and their members and sources, check and eval results, FT dataset lines and the
registry mirror. Every answer comes from rows written when things happened, never from
today's state re-derived: "what was live at T" reads alias_history, "what went into version
N" reads kb_version_members/kb_version_sources, not the current documents table.

Pure-ish: functions take an open (read-only) DuckDB connection and return JSON-ready dicts;
`audit_format` renders them. Split: audit_query (shared lookups), audit_diff."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from resources.lineage.diff import chunk_stats, diff_versions
from resources.lineage.query import (ASSISTANT_MODEL, DATASET_TAG_KEYS, KB_MODEL,
                                         PRODUCTION, AuditError, Lineage, alias_moves, as_int,
                                         assistant_lineage, fmt_time, kb_version_row, loads,
                                         move_brief, parse_time, production_windows,
                                         registry_row, tag_value)

__all__ = ["AuditError", "Lineage", "parse_time", "fmt_time", "production_windows", "live_at",
           "version_report", "diff_versions", "doc_report"]


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
                         f"(v{first_kb['version']}) was created at "
                         f"{fmt_time(first_kb['created_at'])}")
    models = {}
    for model in (KB_MODEL, ASSISTANT_MODEL):
        moves = [m for m in all_moves if m["model_name"] == model]
        before = [m for m in moves if m["event_at"] <= t]
        after = [m for m in moves if m["event_at"] > t]
        entry: dict = {"model": model, "alias": alias, "version": None, "basis": None,
                       "since": None, "set_by": None, "until": None, "ended_by": move_brief(
                           after[0]) if after else None}
        if before:
            cur = before[-1]
            entry.update(version=cur["to_version"], basis=f"alias_history ({alias})",
                         set_by=move_brief(cur), until=after[0]["event_at"] if after else None)
            # 'since' = start of the unbroken stretch holding this version
            since = cur["event_at"]
            for m in reversed(before[:-1]):
                if m["to_version"] != cur["to_version"]:
                    break
                since = m["event_at"]
            entry["since"] = since
        elif model == KB_MODEL and alias == PRODUCTION:
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
            "timeline": [{"model": m["model_name"], **move_brief(m)} for m in near]}


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
        c["overridden"] = check_overridden(c["metadata"])
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
        # Retention may have removed the files; the lineage rows above stay.
        "files_on_disk": bool(v["path"]) and (Path(v["path"]) / "version.json").exists(),
        "chunker": v["chunker"], "embedding_model": v["embedding_model"], "dim": v["dim"],
        "lexical": (v["info"] or {}).get("lexical"),
        "hashes": {"index_sha256": v["index_sha256"], "manifest_sha256": v["manifest_sha256"],
                   "source_manifest_sha256": v["source_manifest_sha256"]},
        "counts": {"documents": v["n_docs"], "chunks": v["n_chunks"], "source_files": len(sources),
                   "quarantined": len(quarantine),
                   "checks_failed": sum(1 for c in checks if not c["passed"]),
                   "checks_overridden": sum(1 for c in checks if c["overridden"])},
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
    splits: dict[int, set[str]] = {}
    for r in ft:
        splits.setdefault(r["dataset_version"], set()).update((r["splits"] or "").split(","))
    models = exposed_models(lin, splits)
    return {"kind": "doc", "query": ident, "documents": docs, "events": events,
            "kb_versions": kb, "ft_datasets": ft, "models": models,
            "summary": {"kb_versions": sorted({r["version"] for r in kb}),
                        "ft_datasets": datasets,
                        "models": [f"{m['model']} v{m['version']}" for m in models],
                        "models_in_production": [m["version"] for m in models
                                                 if m["production_windows"]],
                        "ever_in_production": sorted({r["version"] for r in kb
                                                      if r["production_windows"]})}}


def check_overridden(metadata: dict) -> bool:
    """A gate that passed only because an operator accepted the change (e.g. the chunking
    drift check run with KB_ACCEPT_DRIFT=1 records values.accepted = true)."""
    values = metadata.get("values") if isinstance(metadata.get("values"), dict) else {}
    return bool(values.get("accepted") or metadata.get("accepted"))


def exposed_models(lin: Lineage, splits: dict[int, set[str]]) -> list[dict]:
    """kb-assistant versions whose FT dataset held the document (`splits`: dataset version ->
    the splits it was in), and (transitively) those that continued training from a version
    that trained on it (tag parent_version): an incremental fine-tune keeps what its parent
    learned. A held-out (eval) line was shown to the model, and for the OpenAI provider
    uploaded, but not trained on: listed, and said so."""
    regs = {}
    for reg in lin.rows("SELECT * FROM registry_versions WHERE model_name = ? ORDER BY version",
                        [ASSISTANT_MODEL], needs=("registry_versions",)):
        reg["tags"] = loads(reg.get("tags"), {})
        regs[reg["version"]] = reg

    def own_splits(v: int) -> set[str]:
        return splits.get(as_int(tag_value(regs[v]["tags"], DATASET_TAG_KEYS)), set())

    def trained(v: int, seen: frozenset = frozenset()) -> bool:
        if "train" in own_splits(v):
            return True
        parent = as_int(regs[v]["tags"].get("parent_version"))
        return parent in regs and parent not in seen and trained(parent, seen | {v})

    def exposure(v: int) -> str | None:
        own = own_splits(v)
        parent = as_int(regs[v]["tags"].get("parent_version"))
        if "train" in own:
            return "trained on it (train split)"
        if parent in regs and trained(parent, frozenset({v})):
            return f"inherited from v{parent} (continued training)"
        if own:
            return f"not trained on it: in the {'/'.join(sorted(own))} split only"
        return None

    amoves = alias_moves(lin, ASSISTANT_MODEL)
    out = []
    for v, reg in regs.items():
        how = exposure(v)
        if how:
            tags = reg["tags"]
            out.append({"model": ASSISTANT_MODEL, "version": v, "exposure": how,
                        "mlflow_version": reg.get("mlflow_version"),
                        "run_id": tags.get("dagster_run_id") or None,
                        "mlflow_run_id": reg.get("run_id"), "created_at": reg.get("created_at"),
                        "ft_dataset_version": as_int(tag_value(tags, DATASET_TAG_KEYS)),
                        "parent_version": as_int(tags.get("parent_version")),
                        "production_windows": production_windows(amoves, v)})
    return out
