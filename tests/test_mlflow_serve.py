"""`mlflow models serve -m models:/kb@production` from a clean environment: a fresh venv
(python3 -m venv) that installs only the model's logged requirements, started outside the
repository (so the project's packages come from the model's own `code/` folder), on
loopback against the KB's registry; a query posted to /invocations gets the right document.

Slow: the install of ~2 GB of packages. uv (a dev dependency) installs the requirements file
as a user would with pip, in parallel and without compiling bytecode: 38 s where pip took
19 min (both measured on the same loaded 2-core machine). uv reads no pip configuration, so it is given the machine's pip `find-links`
(where the local CPU wheel of torch==2.13.0 lies; the requirements pin torch, and the test
checks that the CPU build was installed, never a CUDA one).
Set KB_SERVE_VENV=<dir> to reuse an existing venv (it is created there if missing)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import mlflow
import pytest

from tests.kbtest import MLFLOW_URI_VARS, materialized
from tests.registry_fixtures import NEW_DOC, NEW_QUESTION
from tests.serve_thread import free_port
from tests.team_services import stop

pytestmark = pytest.mark.slow

INSTALL_TIMEOUT_S = 1800


def _clean_env(extra: dict) -> dict:
    """The environment of a user's shell: no PYTHONPATH, no virtualenv of this process."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
           and not k.startswith(("PYTEST", "KB_", "DAGSTER_", "MLFLOW_"))}
    env["PATH"] = ":".join(p for p in env.get("PATH", "").split(":")
                           if not p.startswith(str(Path(sys.executable).parent)))
    env.update({"HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "1", **extra})
    return env


def _pip_find_links() -> list[str]:
    """The find-links locations pip is configured with here (environment, then pip config):
    on these machines the local CPU wheel of torch lies there."""
    value = os.environ.get("PIP_FIND_LINKS", "")
    if not value:
        out = subprocess.run([sys.executable, "-m", "pip", "config", "get", "global.find-links"],
                             capture_output=True, text=True, env=_clean_env({}))
        value = out.stdout.strip() if out.returncode == 0 else ""
    return value.split()


def _make_venv(where: Path, requirements: Path, log: Path) -> float:
    """Create the venv (plain `python3 -m venv`; no pip needed in it) and install the
    requirements file alone into it with uv; returns the seconds it took."""
    uv = Path(sys.executable).parent / "uv"
    assert uv.exists(), "uv missing: it is a dev dependency (pip install -e '.[dev]')"
    t0 = time.monotonic()
    if not (where / "bin" / "python").exists():
        subprocess.run(["python3", "-m", "venv", "--without-pip", str(where)], check=True,
                       env=_clean_env({}))
    find_links = [arg for loc in _pip_find_links() for arg in ("--find-links", loc)]
    with log.open("ab") as out:
        r = subprocess.run([str(uv), "pip", "install", "--python", str(where / "bin" / "python"),
                            *find_links, "-r", str(requirements)],
                           env=_clean_env({}), stdout=out, stderr=subprocess.STDOUT,
                           timeout=INSTALL_TIMEOUT_S)
    assert r.returncode == 0, log.read_text()[-4000:]
    return time.monotonic() - t0


def test_mlflow_models_serve_from_a_clean_venv(registry_kb, tmp_path):
    # The session's two-version KB (tests/conftest.py), only read here: version 2 added
    # NEW_DOC, so a query only it can answer shows the production version is what serves.
    paths, (_, r2) = registry_kb
    assert r2.success and materialized(r2)["kb_promotion"]["promoted"]
    production = materialized(r2)["kb_release"]["kb_version"]
    assert production == 2

    mlflow.set_tracking_uri(paths.mlflow_uri)
    mlflow.set_registry_uri(paths.mlflow_uri)  # not one an earlier test set
    model_dir = Path(mlflow.artifacts.download_artifacts("models:/kb@production",
                                                         dst_path=str(tmp_path / "model")))
    requirements = model_dir / "requirements.txt"
    reqs = [r for r in requirements.read_text().split() if not r.startswith("-")]
    assert "torch==2.13.0" in reqs and all("==" in r for r in reqs), reqs

    venv = Path(os.environ.get("KB_SERVE_VENV") or tmp_path / "venv")
    seconds = _make_venv(venv, requirements, tmp_path / "install.log")
    print(f"\nclean venv: installed {len(reqs)} pinned requirements in {seconds:.0f} s")
    torch_version = subprocess.run(
        [str(venv / "bin" / "python"), "-c", "import torch; print(torch.__version__)"],
        capture_output=True, text=True, env=_clean_env({}), cwd=tmp_path).stdout.strip()
    assert torch_version.startswith("2.13.0") and "cu" not in torch_version, torch_version

    port, log = free_port(), tmp_path / "serve.log"
    # As in a shell where the venv is activated (mlflow starts `uvicorn` from PATH).
    serve_env = _clean_env({"MLFLOW_TRACKING_URI": paths.mlflow_uri, "VIRTUAL_ENV": str(venv),
                            "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false"})
    serve_env["PATH"] = f"{venv / 'bin'}:{serve_env['PATH']}"
    workdir = tmp_path / "elsewhere"  # not the repository: the code must come from the model
    workdir.mkdir()
    proc = subprocess.Popen(
        [str(venv / "bin" / "mlflow"), "models", "serve", "-m", "models:/kb@production",
         "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port), "-w", "1"],
        cwd=workdir, env=serve_env,
        stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            assert proc.poll() is None, f"mlflow models serve exited:\n{log.read_text()[-4000:]}"
            try:
                if httpx.get(f"{url}/ping", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            time.sleep(1)
        else:
            raise TimeoutError(f"not serving after 300 s:\n{log.read_text()[-4000:]}")
        r = httpx.post(f"{url}/invocations", timeout=120, json={
            "dataframe_split": {"columns": ["query"],
                                "data": [["Who replaces a broken laptop?"],
                                         ["How many days of paid annual leave do I get?"],
                                         [NEW_QUESTION]]},
            "params": {"k": 2}})
        assert r.status_code == 200, r.text[:2000]
        rows = r.json()["predictions"]
        top = {row["query_index"]: row["doc_id"] for row in rows if row["rank"] == 1}
        assert top == {0: "policies/laptop.md", 1: "policies/leave.md", 2: NEW_DOC[0]}, \
            json.dumps(rows)[:2000]
        assert len(rows) == 6 and {row["kb_version"] for row in rows} == {production}
    finally:
        stop(proc)


def test_the_shared_kb_leaves_no_mlflow_uri_behind(registry_kb):
    """Building the session's KB points MLflow at its registry (MLflow copies the registry URI
    into os.environ); after it, nothing may still point there: CI's cluster test once loaded
    this corpus from it as its own 'KB version 2' through an inherited MLFLOW_REGISTRY_URI."""
    from mlflow.tracking._model_registry import utils as registry_utils

    paths, _ = registry_kb
    left = [os.environ.get(k) for k in MLFLOW_URI_VARS] + [registry_utils._registry_uri]
    assert not [v for v in left if v and str(paths.home) in v], left
