"""Facts about the Dagster runs named by the lineage, read from the instance's run storage
and event log (recorded when the run happened): job, status, start/end, trigger tags, the
assets it materialized and the asset checks it evaluated."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from kb_core.clock import utc_from_timestamp

KEEP_TAGS = ("kb/trigger", "dagster/sensor_name", "dagster/schedule_name", "dagster/backfill",
             "dagster/partition", "user")


def run_facts(dagster_home: Path, run_ids: Iterable[str | None]) -> dict:
    """{run_id: facts}; {} when there is no instance. Never raises: an audit must still
    answer from DuckDB when the Dagster instance is unreadable (facts carry `error`)."""
    ids = sorted({r for r in run_ids if r})
    if not ids or not (Path(dagster_home) / "dagster.yaml").exists():
        return {}
    try:
        from dagster import DagsterEventType, DagsterInstance

        instance = DagsterInstance.from_config(str(dagster_home))
    except Exception as exc:  # noqa: BLE001 - degrade to DuckDB-only answers
        return {rid: {"found": False, "error": f"Dagster instance unreadable: {exc}"}
                for rid in ids}
    out = {}
    try:
        for rid in ids:
            try:
                out[rid] = _one_run(instance, rid, DagsterEventType)
            except Exception as exc:  # noqa: BLE001
                out[rid] = {"found": False, "error": str(exc).splitlines()[0][:200]}
    finally:
        instance.dispose()
    return out


def _one_run(instance, run_id: str, event_type) -> dict:
    rec = instance.get_run_record_by_id(run_id)
    if rec is None:
        return {"found": False}
    run = rec.dagster_run
    logs = instance.all_logs(run_id, of_type={event_type.ASSET_MATERIALIZATION,
                                              event_type.ASSET_CHECK_EVALUATION})
    assets, checks = [], []
    for entry in logs:
        ev = entry.dagster_event
        if ev is None:
            continue
        data = ev.event_specific_data
        if ev.event_type == event_type.ASSET_MATERIALIZATION:
            assets.append(data.materialization.asset_key.to_user_string())
        else:
            checks.append({"asset": data.asset_key.to_user_string(), "check": data.check_name,
                           "passed": bool(data.passed),
                           "severity": getattr(getattr(data, "severity", None), "value", None)})
    return {"found": True, "job": run.job_name, "status": run.status.value,
            "start": utc_from_timestamp(rec.start_time),
            "end": utc_from_timestamp(rec.end_time),
            "tags": {k: v for k, v in run.tags.items() if k in KEEP_TAGS},
            "assets_materialized": sorted(set(assets)), "checks": checks}

