"""Team services failing under a running `kb build` (issue 14): the Dagster instance's
PostgreSQL restarted or gone mid-run, the MLflow tracking server down before the release
steps, the S3 object store behind it stopped while a version is being registered.

Each build is the real `kb` in its own process. To time a fault, the build is paused at a
named point (kb_core/hooks.py; tests/hooks/sitecustomize.py waits there until the test
creates the KB_FAULT_RESUME file), the test stops or restarts the server, then lets the
build go on. The servers are real: PostgreSQL 15 (tests/pg_server.py), `mlflow server`,
moto's S3 server (tests/team_services.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import psycopg2
import pytest

from tests.kbtest import REPO
from tests.team_services import mlflow_server, object_store, stop

KB = [sys.executable, "-m", "dagster_project.cli"]  # `kb` from this checkout
HOOKS = REPO / "tests" / "hooks"
NEW_DOC = ("hr/sabbatical.md", "# Sabbatical leave\n\nAfter five years of service an employee "
           "may take a sabbatical of up to three months, unpaid, agreed with their manager "
           "six months ahead.")


def kb_env(home: Path, **extra: str) -> dict:
    """The environment of one machine's `kb`: KB_HOME and `extra`, no other KB_* or MLflow
    setting of the test process but the session's shared model cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KB_", "MLFLOW_TRACKING", "MLFLOW_REGISTRY", "AWS_"))
           and k != "DAGSTER_HOME"}
    env.update(KB_HOME=str(home), **extra)
    if os.environ.get("KB_MODEL_CACHE"):
        env["KB_MODEL_CACHE"] = os.environ["KB_MODEL_CACHE"]
    return env


def kb(env: dict, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    return subprocess.run([*KB, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


def ok(done: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done


class PausedBuild:
    """A `kb build` subprocess that waits at fault point `point` until `resume()`."""

    def __init__(self, env: dict, args: list[str], point: str, tmp: Path):
        tag = point.replace(":", "_")
        self.reached, self.resume_file = tmp / f"{tag}.reached", tmp / f"{tag}.resume"
        self.log = tmp / f"{tag}.out"
        env = {**env, "KB_FAULT_POINT": point, "KB_FAULT_MARKER": str(self.reached),
               "KB_FAULT_RESUME": str(self.resume_file),
               "PYTHONPATH": os.pathsep.join([str(HOOKS), str(REPO)])}
        self.proc = subprocess.Popen([*KB, *args], env=env, cwd=REPO, start_new_session=True,
                                     stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        self.point = point

    def wait_reached(self, timeout_s: float = 600) -> None:
        deadline = time.monotonic() + timeout_s
        while not self.reached.exists():
            assert self.proc.poll() is None, \
                f"build ended before {self.point}:\n{self.output()[-3000:]}"
            assert time.monotonic() < deadline, f"{self.point} not reached"
            time.sleep(0.2)

    def resume(self) -> None:
        self.resume_file.touch()

    def wait(self, timeout_s: float = 600) -> int:
        try:
            return self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            self.kill()
            pytest.fail(f"kb build hung for {timeout_s:.0f} s after {self.point}:\n"
                        f"{self.output()[-3000:]}")

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, 9)
            self.proc.wait()


@contextmanager
def paused_build(env: dict, args: list[str], point: str, tmp: Path):
    build = PausedBuild(env, args, point, tmp)
    try:
        yield build
    finally:
        build.kill()


def complete_versions(home: Path) -> list[int]:
    """The versions on disk, each checked to load whole (index rows = manifest rows)."""
    from resources.vector_index import VersionStore

    store = VersionStore(root=str(home / "versions"))
    numbers = store.numbers()
    for n in numbers:
        v = store.load(n)
        assert v.index.ntotal == len(v.manifest) == v.info["n_chunks"], n
    assert numbers == list(range(1, len(numbers) + 1)), numbers
    assert not [p.name for p in (home / "versions").iterdir() if p.name.startswith(".tmp")]
    return numbers


def search(env: dict) -> dict:
    return json.loads(ok(kb(env, "search", "annual leave days", "--json")).stdout)


def runs(pg_url: str) -> dict[str, str]:
    with psycopg2.connect(pg_url) as con, con.cursor() as cur:
        cur.execute("SELECT run_id, status FROM runs")
        return dict(cur.fetchall())


def one_line_reason(output: str, needle: str) -> str:
    lines = [ln for ln in output.splitlines() if needle in ln]
    assert lines, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    return lines[0]


# ------------------------------------------------------------------ PostgreSQL
@pytest.fixture
def own_pg():
    """A PostgreSQL server of this test alone (it is restarted and stopped mid-run)."""
    from tests.pg_server import PgServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        pytest.skip("no PostgreSQL server binaries: run scripts/ensure_postgres.sh")
    server = PgServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.mark.slow
def test_postgres_restart_and_outage_mid_run(own_pg, tmp_path):
    """A restart shorter than dagster-postgres's reconnect retries (~6 s) is invisible: the
    run succeeds. An outage longer than that stops the build with one line naming the
    database, leaves only complete versions and the run STARTED; once the server is back the
    next build marks that run failed and completes."""
    env = kb_env(tmp_path / "kb", KB_DAGSTER_PG_URL=own_pg.dagster_url(),
                 KB_EMBED_COMMIT_EVERY="16")
    ok(kb(env, "init", "--samples"))

    # 1. Restarted (down 2 s) while the embeddings step is half done.
    with paused_build(env, ["build", "--select", "index"], "embedding:after_first_batch",
                      tmp_path) as build:
        build.wait_reached()
        own_pg.stop_server()  # every client connection is closed
        build.resume()  # the step goes on (and logs) while the server is down
        time.sleep(2)
        own_pg.start_server()
        assert build.wait() == 0, build.output()[-3000:]
    first = runs(own_pg.url())
    assert list(first.values()) == ["SUCCESS"], first
    assert complete_versions(tmp_path / "kb") == [1]
    assert search(env)["version"] == 1

    # 2. Gone for good while the new version is being published: the build gives up.
    (tmp_path / "kb" / "inbox" / NEW_DOC[0]).write_text(NEW_DOC[1], encoding="utf-8")
    with paused_build(env, ["build", "--select", "index"], "publish:after_rename",
                      tmp_path) as build:
        build.wait_reached()
        own_pg.stop_server()
        build.resume()
        rc = build.wait(300)  # dagster-postgres retries each write ~6 s, then gives up
        out = build.output()
        assert rc == 1, out[-3000:]
        line = one_line_reason(out, "the Dagster instance's database failed")
        assert "Connection refused" in line and "the next `kb build` marks the run failed" in line
    # Nothing half-published: versions on disk are whole, search answers from one of them.
    assert complete_versions(tmp_path / "kb") in ([1], [1, 2])
    assert search(env)["version"] in (1, 2)

    own_pg.start_server()
    stuck = runs(own_pg.url())
    second = next(r for r in stuck if r not in first)
    assert stuck[second] == "STARTED"  # the process died without recording the end

    # 3. Back: the next build marks the orphaned run failed and completes.
    done = ok(kb(env, "build", "--select", "index"))
    assert f"marked the orphaned run {second} failed" in done.stderr
    after = runs(own_pg.url())
    assert after[second] == "FAILURE"
    assert sorted(after.values()) == ["FAILURE", "SUCCESS", "SUCCESS"], after
    assert complete_versions(tmp_path / "kb") == [1, 2]
    hit = json.loads(ok(kb(env, "search", "sabbatical after five years", "--json")).stdout)
    assert hit["version"] == 2 and hit["hits"][0]["doc_id"] == NEW_DOC[0]


# ------------------------------------------------------------------ MLflow and its object store
def registry_state(url: str) -> dict:
    """What the team's MLflow shows of model `kb`: {mlflow version: KB version} and aliases."""
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=url, registry_uri=url)
    versions = {int(mv.version): int(mv.tags["version_key"])
                for mv in client.search_model_versions("name = 'kb'")}
    aliases = dict(client.get_registered_model("kb").aliases)
    return {"versions": versions, "aliases": {k: int(v) for k, v in aliases.items()}}


def serving(home: Path) -> int:
    return json.loads((home / "serving.json").read_text())["version"]


def failed_step_line(out: str, step: str) -> str:
    return one_line_reason(out, f"step {step} FAILED:")


@pytest.mark.slow
def test_mlflow_server_and_its_object_store_failing_during_the_release(tmp_path):
    """v1 is registered and promoted on a team MLflow server whose artifacts go to S3. Then a
    document is added and (a) the MLflow server is stopped before the release steps, (b) with
    the server back, the object store is stopped while the version is being registered. Each
    time the build fails with one line naming the cause, the new KB version stays
    unregistered and unpromoted (no MLflow version points at missing artifacts) and v1 keeps
    serving; (c) with both back, the next build registers and promotes v2."""
    home = tmp_path / "kb"
    backend = f"sqlite:///{tmp_path / 'mlflow-server.db'}"  # outlives each server process
    logs = tmp_path / "servers"
    logs.mkdir()

    def machine(url: str) -> dict:
        return kb_env(home, MLFLOW_TRACKING_URI=url)

    with object_store(logs) as s3:
        dest = f"s3://{s3.bucket}/mlflow"
        # v1, registered and promoted through the server; its files in the bucket.
        with mlflow_server(logs, backend, dest, env=s3.env) as url:
            ok(kb(machine(url), "init", "--samples"))
            ok(kb(machine(url), "build"))
            assert registry_state(url) == {"versions": {1: 1},
                                           "aliases": {"staging": 1, "production": 1}}
            assert serving(home) == 1
            (home / "inbox" / NEW_DOC[0]).write_text(NEW_DOC[1], encoding="utf-8")
            # (a) The index is published; the build waits before kb_release...
            build = PausedBuild(machine(url), ["build"], "release:before_register", tmp_path)
            try:
                build.wait_reached()
            except BaseException:
                build.kill()
                raise
        # ...while the MLflow server stops (its block ended), then goes on.
        try:
            build.resume()
            rc, out = build.wait(600), build.output()
        finally:
            build.kill()
        assert rc == 1, out[-3000:]
        line = failed_step_line(out, "kb_release")
        assert "MLflow" in line and "unreachable" in line, line
        assert "KB version 2 on disk is intact" in line, line
        assert complete_versions(home) == [1, 2]
        assert serving(home) == 1 and search(machine(url))["version"] == 1

        # (b) The server is back (same backend store); the store dies mid-registration.
        with mlflow_server(logs, backend, dest, env=s3.env) as url:
            assert registry_state(url) == {"versions": {1: 1},  # (a) registered nothing
                                           "aliases": {"staging": 1, "production": 1}}
            with paused_build(machine(url), ["build"], "registry:before_log_model",
                              tmp_path) as build:
                build.wait_reached()  # KB v2's MLflow run exists, no artifact uploaded yet
                stop(s3.proc)
                build.resume()
                rc, out = build.wait(600), build.output()
            assert rc == 1, out[-3000:]
            line = failed_step_line(out, "kb_release")
            assert "MLflow" in line and "register kb version 2" in line, line
            assert "artifact store did not take the upload" in line, line
            state = registry_state(url)
            assert state == {"versions": {1: 1}, "aliases": {"staging": 1, "production": 1}}, \
                state  # no model version pointing at artifacts that never arrived
            assert serving(home) == 1 and search(machine(url))["version"] == 1

    # (c) Both back (moto keeps its objects in memory: the restarted store is a new, empty
    # bucket): the next build registers and promotes v2, its files in that bucket.
    with object_store(logs) as s3, mlflow_server(logs, backend, f"s3://{s3.bucket}/mlflow",
                                                 env=s3.env) as url:
        done = ok(kb(machine(url), "build", "--json"))
        summary = json.loads(done.stdout)
        assert summary["materialized"]["kb_release"]["registered"] is True, summary
        state = registry_state(url)
        assert state["versions"] == {1: 1, 2: 2}, state
        assert state["aliases"] == {"staging": 2, "production": 2}, state
        assert serving(home) == 2 and search(machine(url))["version"] == 2
        assert any(k.endswith("MLmodel") for k in s3.keys("mlflow/"))
