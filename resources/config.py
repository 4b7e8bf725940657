"""Pipeline settings as a resource: where the inbox is and how text is chunked."""

from __future__ import annotations

import subprocess
from functools import lru_cache
from pathlib import Path

from dagster import ConfigurableResource

from kb_core.chunking import TOKENIZER_NAME, ChunkerConfig


class KBConfig(ConfigurableResource):
    """Inbox location and chunker settings (the chunker settings version every chunk)."""

    inbox: str
    chunk_size: int = 200          # in the embedder's tokens (see Embedder.tokenizer)
    chunk_overlap: int = 40
    mask_pii: bool = True
    doc_time_budget_s: float = 30.0  # per document and step, per started MB; 0: none
    # "model": chunks counted in the embedder's own tokens (no truncation); "unicode": the
    # pre-issue-16 unit (words / CJK characters), only to reproduce an old KB's chunks.
    token_unit: str = "model"

    def chunk_tokenizer(self, embedder):
        """What the chunker counts with this setting (kb_core.token_units)."""
        from kb_core.chunking import UNICODE

        if self.token_unit not in ("model", "unicode"):
            raise ValueError(f"token_unit must be 'model' or 'unicode', got {self.token_unit!r}")
        return embedder.tokenizer() if self.token_unit == "model" else UNICODE

    def chunker(self, tokenizer=None) -> ChunkerConfig:
        """The chunker settings for `tokenizer` (token_units; the Unicode unit if None). A
        chunk size the embedder cannot read whole is refused here, not truncated later."""
        limit = getattr(tokenizer, "max_tokens", None)
        if limit is not None and self.chunk_size > limit:
            raise ValueError(f"chunk_size={self.chunk_size} is more than the embedder reads "
                             f"({limit} tokens after [CLS]/[SEP]): lower it")
        return ChunkerConfig(size=self.chunk_size, overlap=self.chunk_overlap,
                             mask_pii=self.mask_pii,
                             tokenizer=tokenizer.name if tokenizer is not None else TOKENIZER_NAME)

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
