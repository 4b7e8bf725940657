"""Immutable, numbered KB versions on disk: `versions/<n>/version.json` names the immutable
segments (resources/segments.py: layout, merge rules) the version is made of and the rows it
deleted from them. A version is written into a temporary directory and renamed into place, so a
reader sees a complete version or none."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from functools import cached_property
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
import pyarrow.parquet as pq
from dagster import ConfigurableResource

from kb_core.serving import version_numbers
from kb_core.hooks import fault_point
from kb_core.lexical import BM25Index, term_counts
from resources.ann_index import ShardedSearch, build_vector_index, read_vector_index

from .segments import (SEG_CHUNKS, SEG_INDEX, fsync_tree, is_segmented, live_rows, merged_parts,
                       merged_vectors, sampled_vectors,
                       no_deletions, remove_orphans, segment_digest, segment_vectors, write_deleted,
                       write_segment)

INDEX_FILE = "index.faiss"
MANIFEST_FILE = "manifest.parquet"
INFO_FILE = "version.json"
SOURCES_FILE = "sources.json"
TMP_PREFIX = ".tmp-"


class KBVersion:
    """A loaded, read-only KB version. `index` may be given as a zero-argument function: the
    one exact index over the live rows is then built on first use (the checks and audits
    that read vectors by id); queries use `search_index`."""

    def __init__(self, number: int, path: Path | None, info: dict,
                 index: faiss.Index | Callable[[], faiss.Index], manifest: pd.DataFrame,
                 lexical: BM25Index, sharded: ShardedSearch | None = None):
        self.number, self.path, self.info = number, path, info
        self.manifest = manifest  # sorted by chunk_id; row i is BM25 row i
        self.lexical = lexical
        # What queries search when it is not `index`: the segments' own indexes (HNSW or
        # exact), each skipping its deleted rows (ann_index.ShardedSearch).
        self.sharded = sharded
        self._index = index

    @property
    def index(self) -> faiss.Index:
        if callable(self._index) and not isinstance(self._index, faiss.Index):
            self._index = self._index()
        return self._index

    @property
    def search_index(self):
        return self.sharded if self.sharded is not None else self.index

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
        """Remove half-written versions and segments, and segments no version names, left by
        a crashed publisher."""
        removed = []
        if self.path.exists():
            for p in self.path.iterdir():
                if p.name.startswith(TMP_PREFIX):
                    shutil.rmtree(p, ignore_errors=True)
                    removed.append(p.name)
        return removed + remove_orphans(self.path)

    def publish(self, number: int, segments: list[str], deleted: pd.DataFrame, info: dict,
                sources: list[dict]) -> Path:
        """Write version `number` (its manifest of `segments`, already written, and the
        (segment, chunk_id) rows it no longer holds) into a temporary directory, then rename
        it into place atomically: the one commit point of a publish."""
        self.path.mkdir(parents=True, exist_ok=True)
        final = self.path / str(number)
        if final.exists():
            raise FileExistsError(f"KB version {number} already exists at {final}")
        tmp = self.path / f"{TMP_PREFIX}{number}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            write_deleted(tmp, deleted)
            (tmp / SOURCES_FILE).write_text(json.dumps(sources, ensure_ascii=False, indent=1),
                                            encoding="utf-8")
            info = dict(info, version=number, segments=list(segments))
            # The tmp dir sits beside versions/segments/, so segment lookups work from it.
            info.update(index_sha256=segment_digest(tmp, info, SEG_INDEX),
                        manifest_sha256=segment_digest(tmp, info, SEG_CHUNKS))
            (tmp / INFO_FILE).write_text(json.dumps(info, ensure_ascii=False, indent=1),
                                         encoding="utf-8")
            fsync_tree(tmp)
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

    def publish_whole(self, number: int, index: faiss.Index, manifest: pd.DataFrame,
                      info: dict, sources: list[dict], lexical_texts: list[str] | None = None
                      ) -> Path:
        """Version `number` as one new segment holding everything (tools and tests that build
        a whole version; `lexical_texts` defaults to the manifest's texts)."""
        texts = manifest["text"].tolist() if lexical_texts is None else lexical_texts
        seg = write_segment(self.path, index, manifest, *term_counts(texts))
        return self.publish(number, [seg], no_deletions(), info, sources)

    def remove(self, number: int) -> list[str]:
        """Remove version `number`'s files (retention): renamed out of sight first, so a
        reader sees the version whole or not at all; then segments no version names."""
        path = self.path / str(number)
        gone = self.path / f"{TMP_PREFIX}removed-{number}-{uuid.uuid4().hex[:8]}"
        os.rename(path, gone)
        shutil.rmtree(gone, ignore_errors=True)
        return remove_orphans(self.path)

    def live_rows(self, number: int, columns: list[str]) -> pd.DataFrame:
        return live_rows(self.path / str(number), self.info(number), columns)

    def load(self, number: int, texts: bool = True) -> KBVersion:
        path = self.path / str(number)
        if not (path / INFO_FILE).exists():
            raise FileNotFoundError(f"KB version {number} does not exist under {self.path}")
        return load_version_dir(path, number, texts)


def load_version_dir(path: Path, number: int | None = None, texts: bool = True) -> KBVersion:
    """A KBVersion from any directory holding a version: a segmented version (segments in
    `path/segments/` or beside it), or an older full-copy version (files directly in `path`).
    `texts=False` leaves the manifest's text column empty (the bulk of its bytes)."""
    info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
    number = int(number if number is not None else info.get("version", 0))
    if not is_segmented(info):
        index = read_vector_index(path / INDEX_FILE, info)
        if texts:
            manifest = pd.read_parquet(path / MANIFEST_FILE)
        else:
            columns = [c for c in pq.read_schema(path / MANIFEST_FILE).names if c != "text"]
            manifest = pd.read_parquet(path / MANIFEST_FILE, columns=columns).assign(text="")
        return KBVersion(number, path, info, index, manifest, BM25Index.load(path))
    return segmented_version(path, info, number, texts)


def segmented_version(path: Path, info: dict, number: int, texts: bool = True,
                      deleted: pd.DataFrame | None = None) -> KBVersion:
    """A segmented version for reading: chunks and BM25 merged (one id-sorted manifest, one
    BM25 over the summed counts), vectors left in the segments' own indexes and searched
    shard by shard (no copy, exact where the segments are exact). A version of one segment
    without deletions is that segment's index; otherwise the one exact index over the live
    rows is built only if something asks for `index`."""
    shards: list = []
    manifest, counts, terms, _, single = merged_parts(path, info, texts, deleted, shards,
                                                      vectors=False)
    lexical = BM25Index.from_counts(counts, terms)
    if single is not None:
        return KBVersion(number, path, info, single, manifest, lexical)
    sharded = ShardedSearch([(index, dead) for index, _, dead in shards])

    def exact_index() -> faiss.Index:
        ids, vectors = merged_vectors(path, info, deleted)
        return build_faiss_index(vectors, ids, int(info["dim"]))

    return KBVersion(number, path, info, exact_index, manifest, lexical, sharded)


def version_vectors(path: Path, ordered: bool = True, max_rows: int | None = None
                    ) -> np.ndarray | None:
    """The vectors of a version's index, in index order (None if empty or missing);
    `ordered=False`: a segmented version's in segment order (no sort); `max_rows`: at most
    that many, a uniform random sample (segments.sampled_vectors) when the version holds more."""
    path = Path(path)
    if not (path / INFO_FILE).exists():
        return None
    info = json.loads((path / INFO_FILE).read_text(encoding="utf-8"))
    if is_segmented(info) and max_rows is not None:
        vectors = sampled_vectors(path, info, max_rows)
    elif is_segmented(info):
        vectors = merged_vectors(path, info, ordered=ordered)[1]
    else:
        vectors = segment_vectors(load_version_dir(path, texts=False).index)[1]
        if max_rows is not None and len(vectors) > max_rows:
            keep = np.sort(np.random.default_rng(0).choice(len(vectors), max_rows, replace=False))
            vectors = vectors[keep]
    return vectors if len(vectors) else None


def build_faiss_index(vectors: np.ndarray, ids: np.ndarray, dim: int) -> faiss.Index:
    """The exact index (a published version chooses with ann_index.build_version_index)."""
    return build_vector_index(vectors, ids, dim, "flat")
