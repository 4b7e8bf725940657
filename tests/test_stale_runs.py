"""scripts/ui.sh marks runs whose worker died with an earlier UI session as failed, so their
kb/writer tag stops holding the run queue. Real instance, real run records."""

import os
import socket
import subprocess
import sys

from dagster import DagsterEvent, DagsterEventType, DagsterInstance, DagsterRunStatus, job, op
from dagster._core.events import EngineEventData

from kb_core.writer_lock import HOST_TAG, KB_WRITER_POOL
from sensors.stale_runs import fail_orphaned_runs


@op
def noop():
    return None


@job(tags={"kb/writer": "true"})
def writer_job():
    noop()


def started_run(instance, pid: int | None, tags: dict | None = None):
    run = instance.create_run_for_job(job_def=writer_job, tags=tags)
    if pid is not None:
        instance.report_engine_event(f"Started process for run (pid: {pid}).", run,
                                     EngineEventData.in_process(pid))
    instance.report_dagster_event(DagsterEvent(DagsterEventType.RUN_START.value,
                                               job_name=run.job_name), run_id=run.run_id)
    assert instance.get_run_by_id(run.run_id).status == DagsterRunStatus.STARTED
    return run


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_runs_of_dead_workers_are_failed_live_ones_kept(kb_paths):
    with DagsterInstance.get() as instance:
        orphan = started_run(instance, dead_pid())
        alive = started_run(instance, os.getpid())          # e.g. a `kb build` in progress
        young = started_run(instance, None)                  # worker not reported yet
        # A `kb build` on another machine sharing the instance: its pid means nothing here.
        elsewhere = started_run(instance, dead_pid(), tags={HOST_TAG: "another-machine"})
        here = started_run(instance, dead_pid(), tags={HOST_TAG: socket.gethostname()})
        failed = fail_orphaned_runs(instance)
        assert sorted(failed) == sorted([orphan.run_id, here.run_id])
        assert instance.get_run_by_id(elsewhere.run_id).status == DagsterRunStatus.STARTED
        assert instance.get_run_by_id(orphan.run_id).status == DagsterRunStatus.FAILURE
        assert instance.get_run_by_id(alive.run_id).status == DagsterRunStatus.STARTED
        assert instance.get_run_by_id(young.run_id).status == DagsterRunStatus.STARTED
        # Without a pid, a run is failed only once it is older than the grace period.
        import time

        # `kb build` judges only its own host's tagged runs, never a daemon's untagged ones.
        assert fail_orphaned_runs(instance, now=time.time() + 3600, untagged=False) == []
        assert young.run_id in fail_orphaned_runs(instance, now=time.time() + 3600)
        assert alive.run_id not in fail_orphaned_runs(instance, now=time.time() + 3600)


def test_module_entry_point_creates_the_instance(kb_paths, monkeypatch):
    (kb_paths.dagster_home / "dagster.yaml").unlink()
    out = subprocess.run([sys.executable, "-m", "sensors.stale_runs"], capture_output=True,
                         text=True, env={**os.environ, "KB_HOME": str(kb_paths.home)}, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "kb/writer" in (kb_paths.dagster_home / "dagster.yaml").read_text()
    # The writer pool's limit is stored before the daemon's first queue pass: Dagster treats a
    # pool it has not stored as unlimited in the pass that first sees it.
    monkeypatch.setenv("DAGSTER_HOME", str(kb_paths.dagster_home))
    with DagsterInstance.get() as instance:
        storage = instance.event_log_storage
        assert KB_WRITER_POOL in storage.get_concurrency_keys()
        assert storage.get_concurrency_info(KB_WRITER_POOL).slot_count == 1


def test_a_fresh_instance_gets_the_writer_pool_limit(kb_paths, monkeypatch):
    from sensors.stale_runs import register_writer_pool

    monkeypatch.setenv("DAGSTER_HOME", str(kb_paths.dagster_home))
    with DagsterInstance.get() as instance:
        assert KB_WRITER_POOL not in instance.event_log_storage.get_concurrency_keys()
        assert register_writer_pool(instance) and register_writer_pool(instance)  # idempotent
        assert instance.event_log_storage.get_concurrency_info(KB_WRITER_POOL).slot_count == 1
