"""A team deployment's builds (issue 14): one Dagster instance on PostgreSQL, its daemon and
webserver on the writer machine, and `kb build` in queue mode (KB_BUILD_MODE=queue) from the
writer and from another machine at the same moment. Both runs queue on the `kb_writer` pool,
execute one after the other on the writer's KB_HOME, and each command prints its own run's
summary read from the shared instance; the other machine's KB_HOME gets no KB files."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.ui_stack import UIStack

KB = [sys.executable, "-m", "dagster_project.cli"]
REPO = Path(__file__).resolve().parents[1]


def machine_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_HOME", "KB_INBOX", "MLFLOW_TRACKING_URI", "KB_BUILD_MODE")}
    return {**env, "KB_HOME": str(home), **extra}


def test_queue_mode_without_a_reachable_dagster_says_so(tmp_path):
    from tests.serve_thread import free_port

    env = machine_env(tmp_path / "kb", KB_BUILD_MODE="queue",
                      KB_DAGSTER_URL=f"http://127.0.0.1:{free_port()}")
    done = subprocess.run([*KB, "build"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the Dagster webserver at http://127.0.0.1:" in done.stderr, done.stderr
    assert "unreachable" in done.stderr and "unset KB_BUILD_MODE" in done.stderr, done.stderr
    assert not (tmp_path / "kb" / "kb.duckdb").exists()


@pytest.mark.slow
def test_builds_queued_from_two_machines_run_one_at_a_time_on_the_writer(tmp_path, pg_url):
    from dagster import DagsterInstance

    writer, other = tmp_path / "writer", tmp_path / "other"
    init = subprocess.run([*KB, "init", "--samples"], cwd=REPO, capture_output=True, text=True,
                          env=machine_env(writer, KB_DAGSTER_PG_URL=pg_url), timeout=120)
    assert init.returncode == 0, init.stderr
    stack = UIStack(writer, tmp_path / "ui.log", KB_DAGSTER_PG_URL=pg_url, KB_SENSOR="off")
    stack.start(wait_for_sensor=False)
    try:
        queue = {"KB_DAGSTER_PG_URL": pg_url, "KB_BUILD_MODE": "queue",
                 "KB_DAGSTER_URL": stack.url}
        procs = [subprocess.Popen([*KB, "build", "--select", "index", "--json"], cwd=REPO,
                                  env=machine_env(home, **queue), stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
                 for home in (writer, other)]
        outs = [p.communicate(timeout=900) for p in procs]
        for p, (out, err) in zip(procs, outs):
            assert p.returncode == 0, out[-3000:] + err[-3000:]
        builds = [json.loads(out) for out, _ in outs]
        assert all(b["succeeded"] and not b["skipped"] for b in builds), builds
        assert all("submitted to " + stack.url in err for _, err in outs), outs[1][1]

        # One instance holds both runs, and they did not overlap.
        os.environ["KB_DAGSTER_PG_URL"] = pg_url
        try:
            from kb_core.paths import Paths

            os.environ["KB_HOME"] = str(other)
            Paths.from_env().ensure()  # the other machine's dagster.yaml: PostgreSQL
            with DagsterInstance.get() as instance:
                recs = sorted((instance.get_run_record_by_id(b["run_id"]) for b in builds),
                              key=lambda r: r.start_time)
                assert all(r.dagster_run.status.value == "SUCCESS" for r in recs)
                assert recs[1].start_time >= recs[0].end_time - 0.5, "the two builds overlapped"
                assert all(r.dagster_run.tags.get("kb/trigger") == "cli-queue" for r in recs)
        finally:
            os.environ.pop("KB_DAGSTER_PG_URL", None)
            os.environ.pop("KB_HOME", None)
            os.environ.pop("DAGSTER_HOME", None)

    finally:
        leftovers = stack.stop()
    assert leftovers == [], leftovers

    # Both executed on the writer: it published version 1 (the second run found it current);
    # the other machine wrote no KB state of its own.
    published = {b["materialized"]["faiss_index"].get("kb_version") for b in builds}
    assert published == {1}, [b["materialized"]["faiss_index"] for b in builds]
    assert (writer / "versions" / "1").is_dir() and (writer / "kb.duckdb").exists()
    assert not (other / "kb.duckdb").exists()
    assert not any((other / "versions").glob("*"))
