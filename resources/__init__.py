"""ConfigurableResources: store (DuckDB), embedder, KB versions on disk, pipeline config."""

from __future__ import annotations

from dagster_project.settings import Paths

from .config import KBConfig
from .embedder import Embedder
from .finetuner import ft_resources
from .registry import registry_resources
from .store import KBStore
from .vector_index import VersionStore


def default_resources(paths: Paths | None = None, **overrides) -> dict:
    """The embedded, offline defaults, rooted at KB_HOME. Tests pass temporary paths."""
    paths = paths or Paths.from_env()
    resources = {
        "store": KBStore(db_path=str(paths.db)),
        "versions": VersionStore(root=str(paths.versions)),
        "embedder": Embedder(),
        "kb_config": KBConfig(inbox=str(paths.inbox)),
        **registry_resources(paths),  # registry (MLflow), release_config (gate policy)
        **ft_resources(paths),  # finetuner (local LoRA | OpenAI), llm, ft_config
        "quality": __import__("checks.thresholds").thresholds.QualityThresholds.from_env(),
    }
    resources.update(overrides)
    return resources


__all__ = ["KBConfig", "Embedder", "KBStore", "VersionStore", "default_resources"]
