"""Which KB version serves queries. The registry (MLflow alias `production`) is the record;
`$KB_HOME/serving.json` mirrors it so that search and serve resolve it without importing
MLflow or opening DuckDB. Before anything was ever promoted, the latest version serves."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from kb_core.paths import Paths

POINTER_FILE = "serving.json"


@dataclass(frozen=True)
class Serving:
    version: int | None
    source: str  # "production" | "latest (nothing promoted yet)" | "none"


def version_numbers(root: Path) -> list[int]:
    """Complete KB versions under `root` (a version dir appears, complete, by one rename)."""
    if not root.exists():
        return []
    return sorted(int(p.name) for p in root.iterdir()
                  if p.name.isdigit() and (p / "version.json").exists())


def pointer_path(paths: Paths) -> Path:
    return paths.home / POINTER_FILE


def write_pointer(paths: Paths, version: int, alias: str = "production", **extra) -> None:
    """Atomically replace the serving pointer (write temp + rename)."""
    target = pointer_path(paths)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"alias": alias, "version": version, **extra}), encoding="utf-8")
    os.replace(tmp, target)


def resolve(paths: Paths) -> Serving:
    p = pointer_path(paths)
    if p.exists():
        try:
            return Serving(int(json.loads(p.read_text(encoding="utf-8"))["version"]), "production")
        except (ValueError, KeyError, json.JSONDecodeError):
            pass
    numbers = version_numbers(paths.versions)
    latest = numbers[-1] if numbers else None
    if latest is None:
        return Serving(None, "none")
    return Serving(latest, "latest (nothing promoted yet)")
