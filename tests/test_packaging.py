"""The requirements logged with the models cover what loading them imports: every
third-party distribution the load path imports is listed, or required by one that is
(a missing one breaks `mlflow models serve` in a clean environment, tests/test_mlflow_serve.py)."""

import json
import re
import subprocess
import sys

import pytest

from kb_core.packaging import (ASSISTANT_DISTS, KB_MODEL_DISTS, pinned_requirements,
                               project_code_paths)
from tests.kbtest import REPO

LOAD_PATHS = {  # what unpickling the model and its load_context import
    "kb": (KB_MODEL_DISTS, "import kb_assets.kb_model, kb_assets.searcher, resources.embedder, "
                           "resources.vector_index"),
    "kb-assistant": (ASSISTANT_DISTS, "import resources.assistant_model, resources.llm, "
                                      "kb_core.ft_data"),
}
# Imported only if present (try/except), by libraries of the load path: a clean install of
# the requirements lacks it and the model loads.
OPTIONAL_IMPORTS = {"sniffio"}
PROBE = """
import importlib.metadata as md, json, sys
{imports}
found = md.packages_distributions()
print(json.dumps(sorted({{d for m in list(sys.modules) for d in found.get(m.split('.')[0], [])}})))
"""


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _closure(dists: list[str]) -> set[str]:
    """The distributions and everything they require (installed ones), transitively."""
    import importlib.metadata as md

    seen, todo = set(), [_norm(d) for d in dists]
    while todo:
        d = todo.pop()
        if d in seen:
            continue
        seen.add(d)
        try:
            reqs = md.requires(d) or []
        except md.PackageNotFoundError:
            continue
        for r in reqs:
            if "extra ==" in r:
                continue
            todo.append(_norm(re.split(r"[ ;<>=!~\[(]", r, maxsplit=1)[0]))
    return seen


@pytest.mark.parametrize("model", sorted(LOAD_PATHS))
def test_logged_requirements_cover_the_load_path(model):
    dists, imports = LOAD_PATHS[model]
    out = subprocess.run([sys.executable, "-c", PROBE.format(imports=imports)], cwd=REPO,
                         capture_output=True, text=True, timeout=300,
                         env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {_norm(d) for d in json.loads(out.stdout.strip().splitlines()[-1])}
    missing = imported - _closure(dists) - OPTIONAL_IMPORTS - {"kb-platform"}  # code_paths
    assert not missing, f"{model}: add {sorted(missing)} to kb_core/packaging.py"


def test_requirements_are_pinned_and_torch_is_the_cpu_release():
    reqs = pinned_requirements(KB_MODEL_DISTS)
    assert all("==" in r and "+" not in r for r in reqs), reqs
    assert "torch==2.13.0" in reqs
    assert pinned_requirements(["no-such-dist-kb"]) == ["no-such-dist-kb"]


def test_code_paths_are_the_projects_packages():
    names = {p.rsplit("/", 1)[-1] for p in project_code_paths()}
    assert names == {"kb_core", "kb_assets", "resources"}
