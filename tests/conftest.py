"""Fixtures shared by every test module.

- `kb_paths`: a fresh, empty KB_HOME per test (the default; any test that writes uses it).
- `registry_kb` (session): two KB versions of tests/registry_fixtures.py's corpus built once
  through kb_job, shared READ-ONLY by the modules that only inspect them (pages, serving).
- For a module's own built KB shared by its read-only tests, see `module_home` and `use_home`
  in tests/kbtest.py.
- `pg_server` (session): a real PostgreSQL server of this worker (tests/pg_server.py);
  `pg_url`: a fresh, empty database on it per test, as KB_DAGSTER_PG_URL takes it.
Building a KB costs 20-60 s on 2 shared cores: share a built one only where tests read it."""

import os
import tempfile
import uuid
from pathlib import Path

import pytest

from kb_core.paths import Paths
from tests.kbtest import MLFLOW_URI_VARS, mlflow_uris_kept

# One model cache for the whole session (and the processes tests start, which inherit the
# environment): the ONNX export of the embedder takes seconds, and most tests use a fresh
# KB_HOME whose default cache ($KB_HOME/models) would export again. The export key holds the
# model's file hashes, and exports are renamed into place, so sharing it is safe.
os.environ.setdefault("KB_MODEL_CACHE", str(Path(tempfile.gettempdir()) / "kb-test-model-cache"))


@pytest.fixture(autouse=True)
def _mlflow_uris_restored():
    """After each test (test files share worker processes in any order under pytest-xdist).
    Session fixtures set up before this one keep their own block (`registry_kb`)."""
    with mlflow_uris_kept():
        yield


@pytest.fixture
def kb_paths(tmp_path, monkeypatch) -> Paths:
    """A fresh KB_HOME (inbox, DuckDB, versions, Dagster instance, MLflow) per test."""
    for var in ("KB_INBOX", "DAGSTER_HOME", *MLFLOW_URI_VARS, "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KB_HOME", str(tmp_path / "kb"))
    paths = Paths.from_env().ensure()
    yield paths


@pytest.fixture(scope="session")
def registry_kb(tmp_path_factory):
    """Two published, evaluated KB versions built once per session through kb_job on
    tests/registry_fixtures.py's corpus (sqlite MLflow, that golden set): version 1, then
    version 2 adds NEW_DOC and changes policies/parking.md; both are auto-promoted.
    Returns (paths, [run 1 result, run 2 result]).

    Two kb_job runs cost ~2 min on 2 shared cores, so the modules that only READ such a KB
    share it (tests/test_pages.py, tests/test_mlflow_serve.py): never build, promote or roll
    back on it; a test that writes builds its own KB under `kb_paths`. The environment points
    at it only while it is built: a user sets it again with `registry_kb_env(paths)`."""
    from tests.kbtest import registry_kb_env, run_job, write
    from tests.registry_fixtures import NEW_DOC, write_corpus, write_golden

    home = tmp_path_factory.mktemp("registry_kb") / "kb"
    # Kept: CI's cluster test once inherited MLFLOW_REGISTRY_URI pointing at this KB's
    # registry and loaded this corpus as its own "KB version 2".
    with mlflow_uris_kept(), registry_kb_env(home):
        from resources.registry import ReleaseConfig

        paths = Paths.from_env().ensure()
        cfg = ReleaseConfig(golden_path=str(write_golden(paths.home / "golden.jsonl")),
                            max_p95_latency_ms=10_000, max_latency_regression=50.0)
        write_corpus(paths.inbox)
        r1 = run_job(paths, release_config=cfg)
        write(paths, *NEW_DOC)
        write(paths, "policies/parking.md", "# Car parking\nThe office car park has 55 spaces; "
              "book one in the parking app the day before. Charging points are on level one.")
        r2 = run_job(paths, release_config=cfg)
    return paths, [r1, r2]



@pytest.fixture(scope="session")
def pg_server():
    """A PostgreSQL server for this session (worker): its own temporary folder and free port,
    127.0.0.1 only, trust authentication; stopped and removed at the end. Without Debian's
    server binaries the tests using it skip, or fail under CI (`make test` installs them:
    scripts/ensure_postgres.sh)."""
    from tests.pg_server import PgServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        reason = ("no PostgreSQL server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin: "
                  "run scripts/ensure_postgres.sh or apt-get install postgresql")
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must install them)", pytrace=False)
        pytest.skip(reason)
    server = PgServer(bin_dir).start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def pg_url(pg_server) -> str:
    """A fresh, empty database on the session's server: its KB_DAGSTER_PG_URL."""
    return pg_server.create_database(f"kb_{uuid.uuid4().hex[:12]}")

