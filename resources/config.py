"""Pipeline settings as a resource: where the inbox is and how text is chunked."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from dagster import ConfigurableResource

from kb_assets.chunking import ChunkerConfig


class KBConfig(ConfigurableResource):
    """Inbox location and chunker settings (the chunker settings version every chunk)."""

    inbox: str
    chunk_size: int = 200
    chunk_overlap: int = 40
    mask_pii: bool = True

    def chunker(self) -> ChunkerConfig:
        return ChunkerConfig(size=self.chunk_size, overlap=self.chunk_overlap,
                             mask_pii=self.mask_pii)

    @property
    def inbox_path(self) -> Path:
        return Path(self.inbox)


@lru_cache(maxsize=1)
def code_version() -> str:
    """The git commit of the platform code (plus '-dirty'), or the package version."""
    root = Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "-C", str(root), "rev-parse", "--short=12", "HEAD"],
                             capture_output=True, text=True, timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return sha + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        from importlib.metadata import PackageNotFoundError, version

        try:
            return "kb-platform==" + version("kb-platform")
        except PackageNotFoundError:
            return "unknown"
