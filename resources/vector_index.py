"""Immutable, numbered KB versions on disk: `versions/<n>/` holds the FAISS index, the chunk
manifest, the lexical index and `version.json`. A version is written into a temporary
directory and renamed into place, so a reader sees a complete version or none."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
from dagster import ConfigurableResource

from kb_core.serving import version_numbers
from kb_core.hooks import fault_point
from kb_core.lexical import BM25Index
from resources.ann_index import build_vector_index, read_vector_index

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.parquet"
INFO_FILE = "version.json"
SOURCES_FILE = "sources.json"
TMP_PREFIX = ".tmp-"


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync_tree(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class KBVersion:
    """A loaded, read-only KB version."""

    number: int
    path: Path
    info: dict
    index: faiss.Index
    manifest: pd.DataFrame  # sorted by chunk_id; row i is BM25 row i
    lexical: BM25Index

    @cached_property
    def chunk_ids(self) -> np.ndarray:
        return self.manifest["chunk_id"].to_numpy(dtype=np.int64)

    def rows_for_ids(self, ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.chunk_ids, ids)


class VersionStore(ConfigurableResource):
    """Directory of numbered KB versions."""

    root: str

    @property
    def path(self) -> Path:
        return Path(self.root)

    def numbers(self) -> list[int]:
        return version_numbers(self.path)

    def latest(self) -> int | None:
        nums = self.numbers()
        return nums[-1] if nums else None

    def info(self, number: int) -> dict:
        return json.loads((self.path / str(number) / INFO_FILE).read_text(encoding="utf-8"))

    def clean_stale_tmp(self) -> list[str]:
        """Remove half-written versions left by a crashed publisher."""
        removed = []
        if self.path.exists():
            for p in self.path.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        return removed

    def publish(self, number: int, index: faiss.Index, manifest: pd.DataFrame,
                lexical: BM25Index, info: dict, sources: list[dict]) -> Path:
        """Write a version into a temporary directory, then rename it into place atomically."""
        self.path.mkdir(parents=True, exist_ok=True)
        final = self.path / str(number)
        if final.exists():
            raise FileExistsError(f"KB version {number} already exists at {final}")
        tmp = self.path / f"{TMP_PREFIX}{number}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            faiss.write_index(index, str(tmp / INDEX_FILE))
            manifest.to_parquet(tmp / MANIFEST_FILE, index=False)
            lexical.save(tmp)
            (tmp / SOURCES_FILE).write_text(json.dumps(sources, ensure_ascii=False, indent=1),
                                            encoding="utf-8")
            info = dict(info, version=number,
                        index_sha256=file_sha256(tmp / INDEX_FILE),
                        manifest_sha256=file_sha256(tmp / MANIFEST_FILE))
            (tmp / INFO_FILE).write_text(json.dumps(info, ensure_ascii=False, indent=1),
                                         encoding="utf-8")
            _fsync_tree(tmp)
            fault_point("publish:before_rename")
            os.rename(tmp, final)  # atomic on POSIX within one filesystem
            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def load(self, number: int) -> KBVersion:
        path = self.path / str(number)
        if not (path / INFO_FILE).exists():
            raise FileNotFoundError(f"KB version {number} does not exist under {self.path}")
        info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
        index = read_vector_index(path / INDEX_FILE, info)
        manifest = pd.read_parquet(path / MANIFEST_FILE)
        return KBVersion(number, path, info, index, manifest, BM25Index.load(path))


def build_faiss_index(vectors: np.ndarray, ids: np.ndarray, dim: int) -> faiss.Index:
    """The exact index (a published version chooses with ann_index.build_version_index)."""
    return build_vector_index(vectors, ids, dim, "flat")
