"""The team deployment end to end (issue 14), as README's "Team deployment" sections set it up:
Dagster's webserver and daemon on PostgreSQL, an MLflow tracking server on PostgreSQL with an
S3-compatible artifact store (moto's server), KB versions on the same object store, and two
KB_HOMEs standing for two machines that share only those services.

- Files dropped into the writer's inbox are built by the sensor, registered and promoted.
- A `kb serve` on the other machine (empty KB_HOME) serves that version.
- A second drop on the writer and a `kb build` from the other machine at the same moment queue
  on the `kb_writer` pool: their runs never overlap; the replica follows the new production.
- A rollback made on the writer reaches the replica; then the object store stops and the
  replica keeps answering. No search request fails throughout.
- The registry's artifacts are in the bucket, not on any machine."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_thread import free_port
from tests.team_services import listens, mlflow_server, object_store, stop
from tests.test_registry_e2e import Hammer, _top_doc, _wait_for_version
from tests.ui_stack import UIStack

KB = [sys.executable, "-m", "dagster_project.cli"]
REPO = Path(__file__).resolve().parents[1]
SAMPLES = REPO / "sample_data" / "inbox"

pytestmark = pytest.mark.slow
# KB version 2, found by its tag (MLflow numbers its own versions), loaded through the server.
LOAD_AND_QUERY = """
import json, sys
import mlflow, pandas as pd
from mlflow import MlflowClient
tags = {mv.version: mv.tags.get("version_key") for mv in MlflowClient().search_model_versions("name = 'kb'")}
[mlflow_version] = [v for v, key in tags.items() if key == "2"]
model = mlflow.pyfunc.load_model(f"models:/kb/{mlflow_version}")
out = model.predict(pd.DataFrame({"query": [sys.argv[1]]}), params={"k": 3})
print(json.dumps({"registered": tags, "hits": out[["rank", "source", "kb_version"]].to_dict("records")}))
"""


def kb(env: dict, *args: str, timeout: float = 900) -> dict:
    done = subprocess.run([*KB, *args, "--json"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=timeout)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def wait_until(what: str, check, timeout: float, log=None):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(0.5)
    raise AssertionError(f"{what} not within {timeout:.0f}s" + (f":\n{log()[-3000:]}" if log else ""))


def start_serve(env: dict, home: Path, log: Path) -> tuple[subprocess.Popen, str]:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    home.mkdir(exist_ok=True)
    proc = subprocess.Popen([*KB, "serve", "--port", str(port)], cwd=home, env=env,
                            stdout=log.open("wb"), stderr=subprocess.STDOUT,
                            start_new_session=True)

    def healthy():
        assert proc.poll() is None, log.read_text()[-3000:]
        try:
            return httpx.get(f"{url}/healthz", timeout=2).status_code == 200 and listens(proc, url)
        except httpx.TransportError:
            return False
    wait_until("kb serve healthy", healthy, 180)
    return proc, url


def test_two_machines_sharing_only_the_team_services(tmp_path, pg_server):
    from dagster import DagsterInstance

    writer, other = tmp_path / "writer", tmp_path / "other"
    dagster_pg = pg_server.create_database("dagster_team")
    with object_store(tmp_path) as s3, mlflow_server(
            tmp_path, pg_server.create_database("mlflow_team"),
            artifacts_destination=f"s3://{s3.bucket}/mlflow", env=s3.env) as mlflow_url:
        base = {k: v for k, v in os.environ.items()
                if k not in ("DAGSTER_HOME", "KB_INBOX", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "KB_BUILD_MODE")}
        team = {**s3.env, "KB_DAGSTER_PG_URL": dagster_pg, "MLFLOW_TRACKING_URI": mlflow_url,
                "KB_VERSIONS_URL": f"s3://{s3.bucket}/kb"}
        w_env = {**base, **team, "KB_HOME": str(writer)}
        kb(w_env, "init")
        stack = UIStack(writer, tmp_path / "ui.log", KB_SENSOR_INTERVAL_S="4",
                        KB_SENSOR_SETTLE_S="1", **team)
        stack.start()
        serve = None
        try:
            # 1. A drop on the writer: the sensor builds, registers and promotes version 1.
            shutil.copytree(SAMPLES, writer / "inbox", dirs_exist_ok=True)
            wait_until("version 1 on the shared storage",
                       lambda: any(k == "kb/serving.json" for k in s3.keys("kb/")), 600,
                       stack.log)

            # 2. The other machine serves it from an empty KB_HOME.
            o_env = {**base, **s3.env, "KB_HOME": str(other),
                     "KB_VERSIONS_URL": team["KB_VERSIONS_URL"]}
            serve, url = start_serve(o_env, other, tmp_path / "serve.log")
            assert _top_doc(url, "How many days of annual leave do I get?")[0] == 1

            with Hammer(url) as hammer:
                # 3. A second drop on the writer and a build from the other machine at once.
                (writer / "inbox" / "hr" / "zorblax.md").write_text(
                    "# Zorblax stipend\nEvery employee may claim a zorblax stipend of 4242 "
                    "credits per year for ergonomic equipment.\n", encoding="utf-8")
                queued = kb({**o_env, "KB_DAGSTER_PG_URL": dagster_pg, "KB_BUILD_MODE": "queue",
                             "KB_DAGSTER_URL": stack.url}, "build")
                assert queued["succeeded"], queued
                _wait_for_version(url, 2, timeout=300)
                version, doc = _top_doc(url, "zorblax stipend credits")
                assert version == 2 and doc and "zorblax" in doc, doc

                # 4. A rollback on the writer reaches the replica.
                back = kb(w_env, "rollback", "--reason", "drill")
                assert back["changed"] is True, back
                _wait_for_version(url, 1, timeout=30)

                # The registry: version 2's files are in the bucket, and the other machine,
                # with no object-store credentials, loads and queries it through the server.
                keys = s3.keys("mlflow/")
                assert any(k.endswith("MLmodel") for k in keys), keys[:20]
                assert any(k.endswith("chunks.parquet") for k in keys), keys[:20]
                loaded = subprocess.run(
                    [sys.executable, "-c", LOAD_AND_QUERY, "zorblax stipend credits"], cwd=other,
                    env={**base, "KB_HOME": str(other), "MLFLOW_TRACKING_URI": mlflow_url},
                    capture_output=True, text=True, timeout=600)
                assert loaded.returncode == 0, loaded.stderr[-3000:]
                got = json.loads(loaded.stdout.strip().splitlines()[-1])
                keys = sorted(got["registered"].values())
                assert len(keys) == len(set(keys)), f"a KB version registered twice: {got}"
                hits = got["hits"]
                assert hits and hits[0]["kb_version"] == 2, got
                assert "zorblax" in hits[0]["source"].lower(), got

                # 5. The object store goes away: the replica keeps answering.
                stop(s3.proc)
                time.sleep(5)
                assert _top_doc(url, "annual leave")[0] == 1
                health = httpx.get(f"{url}/healthz", timeout=10).json()
                assert "KB_VERSIONS_URL" in (health["remote_error"] or ""), health
            assert hammer.codes and set(hammer.codes) == {200}, sorted(set(hammer.codes))

            # The writer's runs, all in PostgreSQL: none overlapped, the queued one included.
            os.environ.update(KB_DAGSTER_PG_URL=dagster_pg, KB_HOME=str(other))
            try:
                from kb_core.paths import Paths

                Paths.from_env().ensure()
                with DagsterInstance.get() as instance:
                    recs = sorted((r for r in instance.get_run_records()
                                   if r.dagster_run.job_name == "kb_job"),
                                  key=lambda r: r.start_time or 0)
                    assert {r.dagster_run.tags.get("kb/trigger", "sensor") for r in recs} >= {
                        "cli-queue"}, [r.dagster_run.tags for r in recs]
                    assert len(recs) >= 3 and all(r.end_time for r in recs)
                    for a, b in zip(recs, recs[1:]):
                        assert b.start_time >= a.end_time - 0.5, "two writer runs overlapped"
            finally:
                for k in ("KB_DAGSTER_PG_URL", "KB_HOME", "DAGSTER_HOME"):
                    os.environ.pop(k, None)
        finally:
            if serve is not None:
                os.killpg(serve.pid, signal.SIGTERM)
                serve.wait(30)
            leftovers = stack.stop()
        assert leftovers == [], leftovers

        # The registry's versions live in the bucket, not on the machine that made them.
        from mlflow import MlflowClient

        for mv in MlflowClient(tracking_uri=mlflow_url).search_model_versions("name = 'kb'"):
            assert not mv.source.startswith(("file:", "/")), mv.source
        assert not [p for p in (writer / "mlartifacts").rglob("*") if p.is_file()]
    assert not (other / "kb.duckdb").exists() and not (other / "mlflow.db").exists()
