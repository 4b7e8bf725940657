"""Writes of the audit trail: check results, evaluation results, the registry mirror and
alias moves. Each table is written from here only, by column name."""

from __future__ import annotations

import json

import pandas as pd

from kb_core.clock import utc_now
from resources.persistence.writer import delete, insert, insert_frame


def record_check_results(con, rows: list[dict]) -> int:
    """Append check outcomes. Each row names check_results columns; `event_at` defaults to
    now, a dict/list `metadata` is stored as JSON."""
    at = utc_now()
    prepared = []
    for r in rows:
        r = {"event_at": at, **r}
        if not isinstance(r.get("metadata", "{}"), str):
            r["metadata"] = json.dumps(r["metadata"], ensure_ascii=False, default=str)
        prepared.append(r)
    frame = pd.DataFrame(prepared)
    if "kb_version" in frame:
        frame["kb_version"] = frame["kb_version"].astype("Int64")
    return insert_frame(con, "check_results", frame)


def record_check_result(con, *, run_id: str, asset: str, check_name: str, passed: bool,
                        description: str, severity: str = "ERROR", blocking: bool = True,
                        kb_version: int | None = None, metadata=None) -> None:
    """One check outcome, e.g. a gate decided outside Dagster's check machinery."""
    insert(con, "check_results", {
        "run_id": run_id, "event_at": utc_now(), "asset": asset, "check_name": check_name,
        "passed": passed, "severity": severity, "blocking": blocking,
        "description": description, "kb_version": kb_version,
        "metadata": metadata if isinstance(metadata, str)
        else json.dumps(metadata or {}, ensure_ascii=False, default=str)})


def attach_check_results_version(con, run_id: str, kb_version: int) -> None:
    """A run's check rows written before its KB version existed gated that version."""
    con.execute("UPDATE check_results SET kb_version = ? WHERE run_id = ? AND kb_version IS NULL",
                [kb_version, run_id])


def record_eval_result(con, *, model_name: str, version: int, run_id: str, metrics,
                       passed: bool, details) -> None:
    """One evaluation of a registered version (KB or assistant); dicts are stored as JSON."""
    def as_json(v):
        return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)
    insert(con, "eval_results", {
        "model_name": model_name, "version": version, "run_id": run_id,
        "created_at": utc_now(), "metrics": as_json(metrics), "passed": passed,
        "details": as_json(details)})


def mirror_registry_version(con, *, model_name: str, version: int, mlflow_version: int,
                            run_id: str, tags: dict, status: str = "registered") -> None:
    """(Re)write a registered version's mirror row."""
    delete(con, "registry_versions", model_name=model_name, version=version)
    insert(con, "registry_versions", {
        "model_name": model_name, "version": version, "mlflow_version": mlflow_version,
        "run_id": run_id, "created_at": utc_now(), "status": status,
        "tags": json.dumps(tags)})


def set_registry_status(con, model_name: str, version: int, status: str) -> None:
    con.execute("UPDATE registry_versions SET status = ? WHERE model_name = ? AND version = ?",
                [status, model_name, version])


def record_alias_move(con, *, model_name: str, alias: str, from_version: int | None,
                      to_version: int, actor: str, reason: str, event_at, forced: bool,
                      run_id: str | None) -> None:
    insert(con, "alias_history", {
        "model_name": model_name, "alias": alias, "from_version": from_version,
        "to_version": to_version, "actor": actor, "reason": reason, "event_at": event_at,
        "forced": forced, "run_id": run_id})
