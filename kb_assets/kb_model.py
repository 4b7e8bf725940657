"""The MLflow pyfunc form of a KB version (registered model `kb`): its artifacts are the
version directory materialized with the segments it names (resources/segments.py:
materialize), so the artifact is self-contained, and `predict`
answers search queries with the same hybrid retrieval as `kb search`.

    model = mlflow.pyfunc.load_model("models:/kb@production")
    model.predict(pd.DataFrame({"query": ["annual leave days"]}), params={"k": 3})

Imports MLflow, so only the release asset and users of the registry import this module."""

from __future__ import annotations

from pathlib import Path

import mlflow.pyfunc
import pandas as pd

from kb_core.packaging import KB_MODEL_DISTS, pinned_requirements

ARTIFACT_KEY = "kb_version"
# Pinned to what built it, so `mlflow models serve` works from a clean environment that
# installs the logged requirements (the project's code travels as code_paths).
PIP_REQUIREMENTS = pinned_requirements(KB_MODEL_DISTS)


def load_version_dir(path: Path, number: int | None = None):
    """A KBVersion from any directory holding a version's files (e.g. MLflow's copy: the
    version's files with its segments under `segments/`)."""
    from resources.vector_index import load_version_dir as load_dir

    return load_dir(path, number)


def signature():
    """Input: a `query` column; params: k (passages per query)."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, ParamSchema, ParamSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "query")]),
                          params=ParamSchema([ParamSpec("k", "long", 5)]))


class KBSearchModel(mlflow.pyfunc.PythonModel):
    """Hybrid search over one KB version. Input: a DataFrame with a `query` column (or a
    list of strings); params: k (default 5). Output: one row per hit."""

    def load_context(self, context) -> None:
        from resources.embedder import Embedder

        from .searcher import Searcher

        version = load_version_dir(Path(context.artifacts[ARTIFACT_KEY]))
        model = version.info.get("embedding_model")
        embedder = Embedder.for_model_id(model)
        self._searcher = Searcher(version, embedder)

    def predict(self, context, model_input, params=None) -> pd.DataFrame:
        k = int((params or {}).get("k", 5))
        if isinstance(model_input, pd.DataFrame):
            queries = model_input["query"].astype(str).tolist()
        elif isinstance(model_input, str):
            queries = [model_input]
        else:
            queries = [str(q) for q in model_input]
        rows = []
        for i, hits in enumerate(self._searcher.search_batch(queries, k=k)):
            rows += [{"query_index": i, "kb_version": self._searcher.version.number,
                      "rank": h.rank, "score": h.score, "doc_id": h.doc_id,
                      "source": h.source, "text": h.text} for h in hits]
        return pd.DataFrame(rows, columns=["query_index", "kb_version", "rank", "score",
                                           "doc_id", "source", "text"])
