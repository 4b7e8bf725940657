import pytest

from kb_core.paths import Paths


@pytest.fixture
def kb_paths(tmp_path, monkeypatch) -> Paths:
    """A fresh KB_HOME (inbox, DuckDB, versions, Dagster instance, MLflow) per test."""
    for var in ("KB_INBOX", "DAGSTER_HOME", "MLFLOW_TRACKING_URI", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KB_HOME", str(tmp_path / "kb"))
    paths = Paths.from_env().ensure()
    yield paths
