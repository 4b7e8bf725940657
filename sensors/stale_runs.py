"""Before the daemon starts (scripts/ui.sh): fail runs whose worker process is gone.

A run killed with the UI session (Ctrl-C mid-run, a crash, a reboot) stays STARTED in the
run storage forever: Dagster's default run launcher cannot health-check its workers. Such
a run still carries the kb/writer tag, and with the tag limit of 1 every later sensor run
would wait behind it for good. `python -m sensors.stale_runs` also creates KB_HOME and
dagster.yaml."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

from kb_core.paths import Paths
from kb_core.writer_lock import HOST_TAG, KB_WRITER_POOL

IN_PROGRESS = ("STARTING", "STARTED", "CANCELING")
NO_PID_GRACE_S = 120  # a run this young may simply not have reported its worker yet


def worker_pids(instance, run_id: str) -> list[int]:
    """pids the run's engine events name (the run worker / in-process executor)."""
    from dagster import DagsterEventType

    pids = []
    records = instance.get_records_for_run(run_id, of_type=DagsterEventType.ENGINE_EVENT).records
    for rec in records:
        data = rec.event_log_entry.dagster_event.engine_event_data
        pid = data.metadata.get("pid") if data and data.metadata else None
        value = getattr(pid, "value", pid)
        if value is not None:
            try:
                pids.append(int(value))
            except (TypeError, ValueError):
                continue
    return pids


def alive(pid: int) -> bool:
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return b"python" in cmd or b"dagster" in cmd or b"kb" in cmd


UI_STARTUP = ("Marked failed by scripts/ui.sh at startup: {why}; the previous UI session "
              "probably stopped mid-run. Re-run it from the UI if needed.")
KB_BUILD = ("Marked failed by the next `kb build` on {host}: {why}; the process stopped "
            "mid-run (killed, or it lost the instance's database) and never recorded the end.")


def fail_orphaned_runs(instance, now: float | None = None, message: str = UI_STARTUP,
                       untagged: bool = True) -> list[str]:
    """Mark failed the in-progress runs of this host whose worker process is gone (runs of
    other hosts sharing the instance are theirs to judge). Runs without the kb/host tag were
    launched by a daemon, which runs beside `make ui`: only the UI's startup judges them
    (`untagged`); `kb build` on a machine sharing the instance cannot see their processes."""
    from dagster import DagsterRunStatus, RunsFilter

    now = time.time() if now is None else now
    failed = []
    statuses = [DagsterRunStatus[s] for s in IN_PROGRESS]
    here = socket.gethostname()
    for run in instance.get_runs(RunsFilter(statuses=statuses)):
        host = run.tags.get(HOST_TAG)
        if (host is None and not untagged) or (host is not None and host != here):
            continue  # another machine's, or a daemon's: not ours to judge
        pids = worker_pids(instance, run.run_id)
        if pids and any(alive(p) for p in pids):
            continue
        if not pids:
            record = instance.get_run_record_by_id(run.run_id)
            created = record.create_timestamp.timestamp() if record else 0.0
            if now - created < NO_PID_GRACE_S:
                continue
        why = (f"run worker (pid {', '.join(map(str, pids))}) is gone" if pids
               else "no run worker ever reported")
        instance.report_run_failed(run, message.format(why=why, host=here))
        failed.append(run.run_id)
    return failed


def register_writer_pool(instance) -> bool:
    """Give the `kb_writer` pool its limit in the instance's storage now. Dagster's run queue
    (1.13) treats a pool it has not stored yet as unlimited during the pass that first sees
    it, so on a fresh instance two writer runs queued together (a sensor run and a UI
    "Materialize") could both start. True when the limit is stored."""
    storage = instance.event_log_storage
    if not storage.supports_global_concurrency_limits:
        return False
    if KB_WRITER_POOL not in storage.get_concurrency_keys():
        storage.initialize_concurrency_limit_to_default(KB_WRITER_POOL)
    return KB_WRITER_POOL in storage.get_concurrency_keys()


def main() -> int:
    from resources.dagster_instance import open_instance

    paths = Paths.from_env().ensure()
    os.environ["DAGSTER_HOME"] = str(paths.dagster_home)
    with open_instance() as instance:
        register_writer_pool(instance)
        for run_id in fail_orphaned_runs(instance):
            print(f"marked orphaned run {run_id} as failed (its worker is gone)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
