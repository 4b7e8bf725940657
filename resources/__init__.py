"""ConfigurableResources: store (DuckDB), embedder, KB versions on disk, pipeline config,
registry (MLflow), fine-tuner and LLM. Importing the package is free: names are loaded on
first use, so light commands such as `kb search` do not pay for MLflow or peft imports."""

import importlib

_LAZY = {
    "default_resources": ".defaults",
    "KBConfig": ".config",
    "Embedder": ".embedder",
    "KBStore": ".store",
    "VersionStore": ".vector_index",
}


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module 'resources' has no attribute {name!r}")
