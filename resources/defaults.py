"""The embedded, offline default resources, rooted at KB_HOME."""

from __future__ import annotations

from kb_core import settings
from kb_core.paths import Paths

from .config import KBConfig
from .quality_config import QualityThresholds
from .embedder import Embedder
from .ft_config import ft_resources
from .registry import registry_resources
from .store import KBStore
from .vector_index import VersionStore


def default_resources(paths: Paths | None = None, **overrides) -> dict:
    """Every resource the definitions need; tests pass temporary paths and overrides."""
    paths = paths or Paths.from_env()
    resources = {
        "store": KBStore(db_path=str(paths.db), writer_lock_home=str(paths.home)),
        "versions": VersionStore(root=str(paths.versions)),
        "embedder": Embedder(),
        "kb_config": KBConfig(inbox=str(paths.inbox),
                              doc_time_budget_s=settings.get("KB_DOC_TIME_BUDGET_S")),
        **registry_resources(paths),  # registry (MLflow), release_config (gate policy)
        **ft_resources(paths),  # finetuner (local LoRA | OpenAI), llm, ft_config
        "quality": QualityThresholds.from_env(),  # data-quality check thresholds
    }
    resources.update(overrides)
    return resources
