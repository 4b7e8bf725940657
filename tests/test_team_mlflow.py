"""MLflow as a team server (issue 14): a tracking server with an S3-compatible artifact store
(moto's server on loopback). KB versions registered from one machine land in the bucket, not
on the machine that created the experiment, and another machine that has none of the first
one's files loads and queries them through the server alone."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.team_services import mlflow_server, object_store

KB = [sys.executable, "-m", "dagster_project.cli"]
REPO = Path(__file__).resolve().parents[1]
QUERY = "How many days of annual leave do I get per year?"
LOAD_AND_QUERY = """
import json, sys
import mlflow, pandas as pd
from mlflow import MlflowClient
mv = MlflowClient().get_model_version("kb", "1")
model = mlflow.pyfunc.load_model("models:/kb/1")
out = model.predict(pd.DataFrame({"query": [sys.argv[1]]}), params={"k": 3})
print(json.dumps({"source": mv.source, "hits": out[["rank", "source"]].to_dict("records")}))
"""


def machine_env(home: Path, tracking_uri: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_HOME", "KB_INBOX", "MLFLOW_REGISTRY_URI")
           and not k.startswith("AWS_")}
    return {**env, "KB_HOME": str(home), "MLFLOW_TRACKING_URI": tracking_uri}


@pytest.mark.slow
def test_kb_versions_live_on_the_team_server_and_serve_from_another_machine(tmp_path):
    with object_store(tmp_path) as s3, mlflow_server(
            tmp_path, f"sqlite:///{tmp_path / 'mlflow-server.db'}",
            artifacts_destination=f"s3://{s3.bucket}/mlflow", env=s3.env) as url:
        writer = tmp_path / "writer"
        env = machine_env(writer, url)  # the writer has no object-store credentials at all
        for cmd in (["init", "--samples"], ["build", "--json"]):
            done = subprocess.run([*KB, *cmd], cwd=REPO, env=env, capture_output=True,
                                  text=True, timeout=900)
            assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        build = json.loads(done.stdout)
        assert build["succeeded"], build
        assert build["materialized"]["kb_release"]["registered"] is True, build["materialized"]

        # The version's files are in the bucket, under the server's destination...
        keys = s3.keys("mlflow/")
        assert any(k.endswith("MLmodel") for k in keys), keys[:20]
        assert any(k.endswith("chunks.parquet") for k in keys), keys[:20]  # a segment
        # ...and not on the machine that created the experiment.
        local = [p for p in (writer / "mlartifacts").rglob("*") if p.is_file()]
        assert local == [], local[:10]

        # Another machine: its own empty KB_HOME, the writer's versions gone from disk.
        shutil.move(writer / "versions", tmp_path / "versions-moved-away")
        reader = tmp_path / "reader"
        reader.mkdir()
        done = subprocess.run([sys.executable, "-c", LOAD_AND_QUERY, QUERY], cwd=reader,
                              env=machine_env(reader, url), capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, done.stderr[-3000:]
        got = json.loads(done.stdout.strip().splitlines()[-1])
        assert not got["source"].startswith(("file:", "/")), got["source"]
        assert got["hits"] and "leave" in got["hits"][0]["source"].lower(), got["hits"]
