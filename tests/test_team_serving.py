"""Stateless `kb serve` replicas (issue 14): the writer publishes to shared storage (moto's S3
server, KB_VERSIONS_URL), and a `kb serve` on an empty KB_HOME, sharing nothing else with the
writer, serves the production version, follows a promotion and a rollback made on the writer
without dropping a request, and keeps answering when the storage goes away."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from tests.serve_thread import free_port
from tests.team_services import object_store, stop
from tests.test_registry_e2e import Hammer, _top_doc, _wait_for_version

KB = [sys.executable, "-m", "dagster_project.cli"]
REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def kb(env: dict, *args: str) -> dict:
    done = subprocess.run([*KB, *args, "--json"], cwd=REPO, env=env, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return json.loads(done.stdout)


def test_a_replica_follows_the_writer_through_shared_storage_alone(tmp_path):
    with object_store(tmp_path) as s3:
        base = {k: v for k, v in os.environ.items()
                if k not in ("DAGSTER_HOME", "KB_INBOX", "MLFLOW_TRACKING_URI")}
        shared = {**s3.env, "KB_VERSIONS_URL": f"s3://{s3.bucket}/kb"}
        writer, replica = tmp_path / "writer", tmp_path / "replica"
        w_env = {**base, **shared, "KB_HOME": str(writer)}
        kb(w_env, "init", "--samples")
        first = kb(w_env, "build")
        assert first["materialized"]["kb_promotion"]["production_version"] == 1, first
        assert "remote_objects_written" in first["materialized"]["faiss_index"]

        port = free_port()
        url = f"http://127.0.0.1:{port}"
        replica.mkdir()
        serve = subprocess.Popen([*KB, "serve", "--port", str(port)], cwd=replica,
                                 env={**base, **shared, "KB_HOME": str(replica)},
                                 stdout=(tmp_path / "serve.log").open("wb"),
                                 stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.monotonic() + 180
            while True:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                assert serve.poll() is None and time.monotonic() < deadline, \
                    (tmp_path / "serve.log").read_text()[-3000:]
                time.sleep(0.3)
            assert _top_doc(url, "How many days of annual leave do I get?")[0] == 1

            with Hammer(url) as hammer:
                (writer / "inbox" / "hr" / "zorblax.md").write_text(
                    "# Zorblax stipend\nEvery employee may claim a zorblax stipend of 4242 "
                    "credits per year for ergonomic equipment.\n", encoding="utf-8")
                second = kb(w_env, "build")
                assert second["materialized"]["kb_promotion"]["production_version"] == 2
                _wait_for_version(url, 2, timeout=30)
                version, doc = _top_doc(url, "zorblax stipend credits")
                assert version == 2 and doc and "zorblax" in doc, doc

                back = kb(w_env, "rollback", "--reason", "drill")
                assert back["changed"] is True, back
                _wait_for_version(url, 1, timeout=30)

                stop(s3.proc)  # the storage goes away: the replica keeps answering v1
                time.sleep(5)
                assert _top_doc(url, "annual leave")[0] == 1
                health = httpx.get(f"{url}/healthz", timeout=10).json()
                assert health["status"] == "ok" and "KB_VERSIONS_URL" in health["remote_error"]
            assert hammer.codes and set(hammer.codes) == {200}, sorted(set(hammer.codes))
        finally:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(30)
    # The replica holds the pulled versions and its pointer, and no DuckDB or MLflow.
    assert sorted(p.name for p in (replica / "versions").iterdir()) == ["1", "2", "segments"]
    assert not (replica / "kb.duckdb").exists() and not (replica / "mlflow.db").exists()
