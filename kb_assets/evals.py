"""Reading stored evaluations (DuckDB `eval_results`) and gate verdicts (`check_results`),
the same way for every model. No Dagster or MLflow import: the CLI uses it too."""

from __future__ import annotations

import json

from kb_core.models import ModelSpec
from resources.store import KBStore, fetch_one


def eval_for_run(store: KBStore, spec: ModelSpec, run_id: str) -> dict | None:
    """The evaluation of `spec`'s model a Dagster run made, if any: {version, passed,
    metrics, details} (the latest, should a run have made two)."""
    with store.connect(read_only=True) as con:
        row = fetch_one(con, "SELECT version, passed, metrics, details FROM eval_results "
                             "WHERE model_name = ? AND run_id = ? "
                             "ORDER BY created_at DESC LIMIT 1", [spec.name, run_id])
    if row is None:
        return None
    return {"version": row[0], "passed": bool(row[1]), "metrics": json.loads(row[2]),
            "details": json.loads(row[3])}


def gate_evals(store: KBStore, spec: ModelSpec) -> dict[int, dict]:
    """Latest gate evaluation per version: {version: {metrics, passed}}."""
    sql = "SELECT version, metrics, passed FROM eval_results WHERE model_name = ?"
    params: list = [spec.name]
    if spec.gate_trigger is not None:
        sql += " AND json_extract_string(details, '$.trigger') = ?"
        params.append(spec.gate_trigger)
    with store.connect(read_only=True) as con:
        rows = con.execute(sql + " ORDER BY created_at", params).fetchall()
    return {v: {"metrics": json.loads(m), "passed": p} for v, m, p in rows}


def check_verdict(store: KBStore, spec: ModelSpec, run_id: str) -> bool | None:
    """What the model's gate check decided in this run (None: it did not run)."""
    with store.connect(read_only=True) as con:
        row = fetch_one(con, "SELECT passed FROM check_results WHERE run_id = ? AND asset = ? "
                             "AND check_name = ? ORDER BY event_at DESC LIMIT 1",
                        [run_id, spec.eval_asset, spec.gate_check])
    return None if row is None else bool(row[0])
