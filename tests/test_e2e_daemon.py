"""End to end with the real webserver + daemon (scripts/ui.sh): a file dropped into the inbox
is searchable through `kb search` within 60 s, started by the sensor alone; runs that write
the KB never overlap (run queue tag limit + writer lock); both processes stop cleanly."""

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus, RunsFilter

from kb_core.serving import resolve
from kb_assets.searcher import Searcher
from resources.embedder import Embedder
from tests.kbtest import REPO, write
from tests.ui_stack import UIStack

INDEX_CHAIN = ["raw_docs", "cleaned_chunks", "embeddings", "faiss_index"]

pytestmark = pytest.mark.slow

# `kb` itself, run from this checkout with the interpreter running the tests.
KB = [sys.executable, "-m", "dagster_project.cli"]
FRESHNESS_BUDGET_S = 60
DONE = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}

DOC_ID = "policies/zorblax-stipend.md"
QUERY = "How many credits is the Zorblax stipend?"
NEW_DOC = """# Zorblax travel stipend
Every employee who travels for a client visit receives the Zorblax stipend of 4242 credits
per quarter. Claims are filed with the travel desk within 14 days of returning.
"""


def kb_search(paths, query: str) -> list[dict]:
    out = subprocess.run([*KB, "search", query, "--json", "-k", "3"], cwd=REPO,
                         env={**os.environ, "KB_HOME": str(paths.home)},
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0:
        return []
    return json.loads(out.stdout)["hits"]


def sensor_runs(instance) -> list:
    return instance.get_runs(RunsFilter(tags={"kb/trigger": "inbox_sensor"}))


def wait_finished(instance, run_ids, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = [instance.get_run_by_id(r) for r in run_ids]
        if all(r is not None and r.status in DONE for r in runs):
            return runs
        time.sleep(1)
    raise TimeoutError(f"runs not finished after {timeout}s: "
                       f"{[(r.run_id[:8], r.status.value) for r in runs if r]}")


def step_window(instance, run_id: str) -> tuple[float, float]:
    """First step start to last step end of a run, from its event log."""
    kinds = {DagsterEventType.STEP_START, DagsterEventType.STEP_SUCCESS,
             DagsterEventType.STEP_FAILURE}
    times = [e.timestamp for e in instance.all_logs(run_id, of_type=kinds)]
    assert times, f"run {run_id} executed no step"
    return min(times), max(times)


def test_dropped_file_is_searchable_within_a_minute(kb_paths, tmp_path):
    stack = UIStack(kb_paths.home, tmp_path / "ui.log",
                    KB_SENSOR_INTERVAL_S="4", KB_SENSOR_SETTLE_S="1")
    stack.start()
    try:
        with DagsterInstance.get() as instance:
            time.sleep(6)  # one sensor tick on the empty inbox: nothing to do
            assert sensor_runs(instance) == []

            embedder = Embedder()
            embedder.encode_query("warm up")  # so that polling measures the KB, not a model load
            t0 = time.monotonic()
            write(kb_paths, "policies/zorblax-stipend.md", NEW_DOC)
            elapsed, served, opened = None, None, {}
            while time.monotonic() - t0 < FRESHNESS_BUDGET_S:
                served = resolve(kb_paths)  # what `kb search` opens: production, else latest
                if served.version is not None:
                    if opened.get("version") != served.version:
                        opened = {"version": served.version, "searcher": Searcher.open(
                            kb_paths, served.version, embedder=embedder)}
                    hits = opened["searcher"].search(QUERY, k=3)
                    if any(h.doc_id == DOC_ID for h in hits):
                        elapsed = time.monotonic() - t0
                        break
                time.sleep(0.5)
            assert elapsed is not None, (f"not searchable within {FRESHNESS_BUDGET_S}s\n"
                                         f"{stack.log()[-4000:]}")
            print(f"\nsearchable {elapsed:.1f}s after the drop (KB version {served.version}, "
                  f"{served.source})")
            # The real command agrees.
            found = [h for h in kb_search(kb_paths, QUERY) if h["doc_id"] == DOC_ID]
            assert found and "4242 credits" in found[0]["text"], found

            [run] = sensor_runs(instance)          # the sensor alone started it
            assert run.job_name == "kb_job" and run.tags["kb/writer"] == "true"
            assert run.tags["dagster/run_key"].startswith("inbox-1-")

            # Touching the file (new mtime, same bytes) starts nothing.
            (kb_paths.inbox / "policies/zorblax-stipend.md").touch()
            time.sleep(12)                          # two more sensor ticks
            assert len(sensor_runs(instance)) == 1
            assert "touched but their content is unchanged" in stack.log()
            wait_finished(instance, [run.run_id], timeout=180)
    finally:
        leftovers = stack.stop()
    assert leftovers == [], f"processes survived the stop: {leftovers}"
    assert "stopped" in stack.log()


def test_kb_writers_never_overlap(kb_paths, tmp_path):
    """Three writers at once: the sensor's kb_job run, a "Materialize" of the index chain
    launched from the UI's GraphQL API (Dagster's implicit asset job: no kb/writer tag, so
    only the `kb_writer` pool queues it) and a CLI `kb build` (waits on the writer file lock,
    which the store resource of the daemon-launched runs also takes)."""
    write(kb_paths, "hr/leave.md", "# Leave\nEmployees get 20 days of annual leave.\n")
    write(kb_paths, "it/vpn.md", "# VPN\nUse the VPN when working from a cafe.\n")
    for p in kb_paths.inbox.rglob("*.md"):
        os.utime(p, (time.time() - 60, time.time() - 60))
    stack = UIStack(kb_paths.home, tmp_path / "ui.log",
                    KB_SENSOR_INTERVAL_S="4", KB_SENSOR_SETTLE_S="1")
    stack.start()
    try:
        with DagsterInstance.get() as instance:
            deadline = time.monotonic() + 30
            while not sensor_runs(instance) and time.monotonic() < deadline:
                time.sleep(0.5)
            [sensor_run] = sensor_runs(instance)
            ui_run_id = stack.materialize(INDEX_CHAIN, {"kb/trigger": "test-ui"})
            assert "kb/writer" not in instance.get_run_by_id(ui_run_id).tags
            cli = subprocess.run([*KB, "build", "--select", "kb"], cwd=REPO,
                                 env={**os.environ, "KB_HOME": str(kb_paths.home)},
                                 capture_output=True, text=True, timeout=600)
            assert "run " in cli.stdout, cli.stdout + cli.stderr
            cli_run = instance.get_runs(RunsFilter(tags={"kb/trigger": "cli"}))[0]
            assert cli_run.tags["kb/host"] == socket.gethostname()  # for the stale-run reaper
            runs = wait_finished(instance, [sensor_run.run_id, ui_run_id], timeout=600)

            # Queue: the two daemon-launched runs did not even start together.
            a, b = sorted((instance.get_run_record_by_id(r.run_id) for r in runs),
                          key=lambda rec: rec.start_time)
            assert b.start_time >= a.end_time - 0.5, "two kb/writer runs were in progress at once"
            # Lock: no step of the CLI build ran while a daemon run executed its steps.
            windows = sorted(step_window(instance, r) for r in
                             (sensor_run.run_id, ui_run_id, cli_run.run_id))
            for (_, end), (start, _) in zip(windows, windows[1:]):
                assert start >= end, f"step windows overlap: {windows}"
            lock_events = [e for e in instance.all_logs(ui_run_id)
                           if "Holding the KB writer lock" in (e.message or "")]
            assert lock_events, "the daemon-launched run did not take the writer lock"
    finally:
        leftovers = stack.stop()
    assert leftovers == [], f"processes survived the stop: {leftovers}"


def test_ui_stops_cleanly_even_when_started_with_sigterm_ignored(kb_paths, tmp_path):
    """nohup, background jobs and some test runners hand SIGINT/SIGTERM down as ignored,
    which a shell cannot trap; ui.sh restarts itself with default dispositions."""
    import signal

    previous = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        stack = UIStack(kb_paths.home, tmp_path / "ui.log", KB_SENSOR="off")
        stack.start(wait_for_sensor=False)
    finally:
        signal.signal(signal.SIGTERM, previous)
    leftovers = stack.stop()
    assert leftovers == [], f"processes survived the stop: {leftovers}"
    assert "stopped" in stack.log()


def test_a_launched_run_on_the_multiprocess_executor(kb_paths, tmp_path):
    """KB_DAGSTER_EXECUTOR=multiprocess: a "Materialize" of the index chain launched from the
    UI's GraphQL API runs each step in its own process (the default run launcher starts the
    run worker, which starts the steps); each step that writes takes the KB writer lock, so no
    two held it at once; the version is published and searchable."""
    write(kb_paths, "hr/leave.md", "# Leave\nEmployees get 20 days of annual leave.\n")
    write(kb_paths, "it/vpn.md", "# VPN\nUse the VPN when working from a cafe.\n")
    stack = UIStack(kb_paths.home, tmp_path / "ui.log", KB_SENSOR="off",
                    KB_DAGSTER_EXECUTOR="multiprocess")
    stack.start(wait_for_sensor=False)
    try:
        with DagsterInstance.get() as instance:
            run_id = stack.materialize(INDEX_CHAIN, {"kb/trigger": "test-ui"})
            [run] = wait_finished(instance, [run_id], timeout=900)
            logs = instance.all_logs(run_id)
            assert run.status == DagsterRunStatus.SUCCESS, [
                e.message for e in logs if e.dagster_event and e.dagster_event.is_failure][:3]
            starts = {e.step_key: e.dagster_event.pid for e in logs if e.dagster_event
                      and e.dagster_event.event_type == DagsterEventType.STEP_START}
            assert {"raw_docs", "embeddings", "faiss_index"} <= set(starts), starts
            assert len(set(starts.values())) == len(starts), f"steps shared a process: {starts}"
            # Each asset step held the lock; from taking it to its end, no other step had it.
            held = {e.step_key: e.timestamp for e in logs
                    if "Holding the KB writer lock" in (e.message or "")}
            assert {"raw_docs", "cleaned_chunks", "embeddings", "faiss_index"} <= set(held), held
            ends = {e.step_key: e.timestamp for e in logs if e.dagster_event and
                    e.dagster_event.event_type in (DagsterEventType.STEP_SUCCESS,
                                                   DagsterEventType.STEP_FAILURE)}
            windows = sorted((held[k], ends[k]) for k in held)
            for (_, end), (start, _) in zip(windows, windows[1:]):
                assert start >= end - 0.05, f"two steps held the writer lock at once: {windows}"
        hits = kb_search(kb_paths, "how many days of annual leave")
        assert hits and hits[0]["doc_id"].endswith("leave.md"), hits
    finally:
        leftovers = stack.stop()
    assert leftovers == [], f"processes survived the stop: {leftovers}"
