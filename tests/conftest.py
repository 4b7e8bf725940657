import os
import tempfile
from pathlib import Path

import pytest

from kb_core.paths import Paths

# One model cache for the whole session (and the processes tests start, which inherit the
# environment): the ONNX export of the embedder takes seconds, and most tests use a fresh
# KB_HOME whose default cache ($KB_HOME/models) would export again. The export key holds the
# model's file hashes, and exports are renamed into place, so sharing it is safe.
os.environ.setdefault("KB_MODEL_CACHE", str(Path(tempfile.gettempdir()) / "kb-test-model-cache"))


@pytest.fixture
def kb_paths(tmp_path, monkeypatch) -> Paths:
    """A fresh KB_HOME (inbox, DuckDB, versions, Dagster instance, MLflow) per test."""
    for var in ("KB_INBOX", "DAGSTER_HOME", "MLFLOW_TRACKING_URI", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KB_HOME", str(tmp_path / "kb"))
    paths = Paths.from_env().ensure()
    yield paths
