"""`kb build` in queue mode (KB_BUILD_MODE=queue) without a reachable Dagster: a one-line
error. The queued build itself, from another machine at the same moment as the writer's
sensor run, is tested end to end in tests/test_team_cluster.py."""

import os
import subprocess
import sys
from pathlib import Path

from tests.serve_thread import free_port

KB = [sys.executable, "-m", "dagster_project.cli"]
REPO = Path(__file__).resolve().parents[1]


def machine_env(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_HOME", "KB_INBOX", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "KB_BUILD_MODE")}
    return {**env, "KB_HOME": str(home), **extra}


def test_queue_mode_without_a_reachable_dagster_says_so(tmp_path):
    env = machine_env(tmp_path / "kb", KB_BUILD_MODE="queue",
                      KB_DAGSTER_URL=f"http://127.0.0.1:{free_port()}")
    done = subprocess.run([*KB, "build"], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "the Dagster webserver at http://127.0.0.1:" in done.stderr, done.stderr
    assert "unreachable" in done.stderr and "unset KB_BUILD_MODE" in done.stderr, done.stderr
    assert not (tmp_path / "kb" / "kb.duckdb").exists()
