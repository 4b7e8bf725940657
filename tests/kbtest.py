"""Shared test helpers: temporary KB_HOMEs, real Dagster runs, file drops."""

from __future__ import annotations

import os
import sys
import shutil
from contextlib import contextmanager
from pathlib import Path

from dagster import DagsterInstance

from kb_core.paths import Paths

REPO = Path(__file__).resolve().parents[1]
SAMPLE_INBOX = REPO / "sample_data" / "inbox"
GOLDEN = REPO / "sample_data" / "golden.jsonl"


def run_job(paths: Paths, job_name: str = "kb_job", **resource_overrides):
    """Materialize a job in-process against a real Dagster instance in $KB_HOME/dagster."""
    from dagster_project.definitions import build_definitions

    defs = build_definitions(paths, **resource_overrides)
    job = defs.resolve_job_def(job_name)
    with DagsterInstance.get() as instance:
        return job.execute_in_process(instance=instance, raise_on_error=False)


def materialized(result) -> dict[str, dict]:
    """asset key -> metadata values of the run's materializations."""
    out = {}
    for ev in result.get_asset_materialization_events():
        mat = ev.event_specific_data.materialization
        out[mat.asset_key.to_user_string()] = {k: getattr(v, "value", v)
                                               for k, v in mat.metadata.items()}
    return out


def write(paths: Paths, rel: str, content: str | bytes) -> Path:
    p = paths.inbox / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


def copy_samples(paths: Paths) -> None:
    shutil.copytree(SAMPLE_INBOX, paths.inbox, dirs_exist_ok=True)


@contextmanager
def env_vars(**values: str | None):
    """Set (or, for None, unset) environment variables for the block; restore them after.
    For fixtures wider than a test, where pytest's monkeypatch is not available."""
    saved = {k: os.environ.get(k) for k in values}
    try:
        for k, v in values.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# -- KB_HOMEs built once per module -------------------------------------------------------
# Building a KB (a real Dagster run, the real embedder) costs 20-40 s on 2 shared cores. Tests
# that only READ a built KB (search, ask, pages, JSON shapes) share one built per module:
#
#     @pytest.fixture(scope="module")
#     def built_home(tmp_path_factory):
#         with module_home(tmp_path_factory, "ask") as paths:
#             ...write documents, run_job(paths, ...) / run_assets(paths, ...)...
#             yield paths
#
#     @pytest.fixture
#     def kb_built(built_home, monkeypatch):
#         return use_home(built_home, monkeypatch)
#
# A test that writes (a build, a promotion, a rollback) must not use a shared home: it takes
# the function-scoped `kb_paths` (tests/conftest.py) and builds its own.

MLFLOW_URI_VARS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def _mlflow_uris() -> tuple:
    if "mlflow" not in sys.modules:
        return None, None
    from mlflow.tracking._model_registry import utils as registry_utils
    from mlflow.tracking._tracking_service import utils as tracking_utils

    return tracking_utils._tracking_uri, registry_utils._registry_uri


@contextmanager
def mlflow_uris_kept():
    """MLflow keeps its tracking and registry URIs in module globals and copies them into
    os.environ (set_registry_uri sets MLFLOW_REGISTRY_URI): put both back after the block, so
    that no test (or process it starts) reads another test's registry."""
    env = {k: os.environ.get(k) for k in MLFLOW_URI_VARS}
    before = _mlflow_uris()
    try:
        yield
    finally:
        if _mlflow_uris() != before:
            import mlflow

            mlflow.set_tracking_uri(before[0])
            mlflow.set_registry_uri(before[1])
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


_KB_ENV = ("KB_INBOX", "DAGSTER_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI",
           "OPENAI_API_KEY")


@contextmanager
def module_home(tmp_path_factory, name: str):
    """A fresh, empty KB_HOME with the environment pointed at it for the block (the whole
    module when a module-scoped fixture yields inside it); restored after."""
    home = tmp_path_factory.mktemp(name) / "kb"
    with env_vars(KB_HOME=str(home), **{var: None for var in _KB_ENV}):
        yield Paths.from_env().ensure()  # ensure() also sets DAGSTER_HOME, restored after


def use_home(paths: Paths, monkeypatch) -> Paths:
    """Point this test's environment at an already built KB_HOME (as `kb_paths` does for a
    fresh one)."""
    for var in _KB_ENV:
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KB_HOME", str(paths.home))
    monkeypatch.setenv("DAGSTER_HOME", str(paths.dagster_home))
    return paths


# The Dagster UI address the session's shared registry KB (`registry_kb` in tests/conftest.py)
# records in its versions' tags.
REGISTRY_KB_DAGSTER_URL = "http://dagster.example:3000"


def registry_kb_env(home):
    """The environment of `registry_kb` (a context manager): KB_HOME and its Dagster
    instance, MLflow from KB_HOME, the recorded Dagster UI address."""
    home = Path(home)
    return env_vars(KB_HOME=str(home), DAGSTER_HOME=str(home / "dagster"), KB_INBOX=None,
                    MLFLOW_TRACKING_URI=None, MLFLOW_REGISTRY_URI=None, OPENAI_API_KEY=None,
                    KB_DAGSTER_URL=REGISTRY_KB_DAGSTER_URL)
