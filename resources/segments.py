"""Immutable KB segments and the versions made of them.

Layout under `$KB_HOME/versions/`:

    segments/<id>/            one immutable segment, written as segments/.tmp-<id> and renamed
        index.faiss           the segment's vectors (resources.vector_index.build_faiss_index),
                              row i = chunk row i
        chunks.parquet        the segment's chunk rows (manifest columns), sorted by chunk_id
        bm25_counts.npz       raw term counts per row (CSR), columns = bm25_terms.json
        bm25_terms.json       the segment's own term list
        segment.json          row count, dimension and the sha256 of each file
    <n>/                      version n: appears complete by one rename (the commit point)
        version.json          info, with "segments": [ids, in order]
        deleted.parquet       (segment, chunk_id) rows the version no longer contains
        sources.json          the source files of the version

A row (segment s, chunk c) is live in a version unless (s, c) is in its deleted file, so an
edited chunk that keeps its chunk_id (new title, say) is deleted from its old segment and
added in the new one. Loading a version merges its chunk rows and term counts exactly as one
build would: the live rows sorted by chunk_id and one BM25 index built from the summed raw
counts (N, df and avgdl over live rows only). Its vectors stay in the segments' own index
files, searched segment by segment (resources/vector_index.segmented_version); one exact
index over all live vectors is built only on request (`merged_vectors`).

Older full-copy versions (index.faiss, manifest.parquet and bm25_* directly in `<n>/`) still
load: `load_version_dir` reads them the old way, as a version of one segment."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from pathlib import Path

import faiss
import numpy as np
import pandas as pd
from scipy import sparse

from kb_core.hooks import fault_point
from kb_core.lexical import merge_counts

SEGMENTS_DIR = "segments"
SEG_INDEX = "index.faiss"
SEG_CHUNKS = "chunks.parquet"
SEG_COUNTS = "bm25_counts.npz"
SEG_TERMS = "bm25_terms.json"
SEG_INFO = "segment.json"
DELETED_FILE = "deleted.parquet"
TMP_PREFIX = ".tmp-"
# Segment files are immutable: their vectors are mapped, not read (a 100k-chunk HNSW segment
# opens in ~0.03 s instead of ~0.2-1 s; pages load as searches and checks touch them). A
# truncated file is still refused when opened.
SEG_READ_FLAGS = faiss.IO_FLAG_MMAP_IFC


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def fsync_tree(path: Path) -> None:
    for p in path.iterdir():
        with open(p, "rb") as f:
            os.fsync(f.fileno())
    fsync_dir(path)


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_segment(versions_root: Path, index: faiss.Index, chunks: pd.DataFrame,
                  counts: sparse.spmatrix, terms: list[str],
                  vector_index: dict | None = None) -> str:
    """Write one segment (rows of `chunks` aligned with `index` and `counts`) into a temporary
    directory and rename it into `segments/<id>`; returns the id. Until a version names it,
    a segment is an orphan that `remove_orphans` deletes."""
    root = versions_root / SEGMENTS_DIR
    root.mkdir(parents=True, exist_ok=True)
    seg_id = uuid.uuid4().hex[:16]
    tmp = root / f"{TMP_PREFIX}{seg_id}"
    tmp.mkdir()
    try:
        faiss.write_index(index, str(tmp / SEG_INDEX))
        chunks.to_parquet(tmp / SEG_CHUNKS, index=False)
        sparse.save_npz(tmp / SEG_COUNTS, sparse.csr_matrix(counts, dtype=np.float32),
                        compressed=False)
        (tmp / SEG_TERMS).write_text(json.dumps(terms, ensure_ascii=False), encoding="utf-8")
        info = {"id": seg_id, "rows": len(chunks), "dim": index.d,
                "sha256": {f: file_sha256(tmp / f) for f in (SEG_INDEX, SEG_CHUNKS, SEG_COUNTS,
                                                             SEG_TERMS)},
                "vector_index": vector_index or {"kind": "flat"}}
        (tmp / SEG_INFO).write_text(json.dumps(info, indent=1), encoding="utf-8")
        fsync_tree(tmp)
        os.rename(tmp, root / seg_id)
        fsync_dir(root)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    fault_point("publish:segment_written")
    return seg_id


def segment_info(versions_root: Path, seg_id: str) -> dict:
    """A segment's segment.json (rows, dim, file hashes, and its vector index record)."""
    return json.loads((versions_root / SEGMENTS_DIR / seg_id / SEG_INFO).read_text("utf-8"))


def segment_dir(version_dir: Path, seg_id: str) -> Path:
    """A segment of a version: inside the version dir (a materialized copy, e.g. MLflow's
    artifact) or beside it (the shared `versions/segments/`)."""
    for d in (version_dir / SEGMENTS_DIR / seg_id, version_dir.parent / SEGMENTS_DIR / seg_id):
        if (d / SEG_INFO).exists():
            return d
    raise FileNotFoundError(f"segment {seg_id} of KB version dir {version_dir} is missing "
                            f"(looked in {version_dir / SEGMENTS_DIR} and "
                            f"{version_dir.parent / SEGMENTS_DIR})")


def read_into_page_cache(version_dir: Path | None, info: dict, block: int = 8 << 20,
                         memory: int | None = None) -> int:
    """Read every file of the version's segments once, sequentially, so the memory-mapped
    indexes a query touches are in the page cache: what `kb serve` does before it swaps a
    new version in (the old one serves meanwhile). On a cold cache at 1M chunks an HNSW
    query otherwise faults its graph and vectors in page by page (p95 404 ms against 27 warm,
    BENCHMARKS.md "scale-quiet"). Returns the bytes read: 0 for a version without segments,
    and for one larger than half this machine's memory (reading it would only evict itself)."""
    if version_dir is None or not is_segmented(info):
        return 0
    files = [f for seg_id in info["segments"]
             for f in sorted(segment_dir(version_dir, seg_id).iterdir()) if f.is_file()]
    memory = memory or os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if sum(f.stat().st_size for f in files) > memory // 2:
        return 0
    buf = bytearray(block)
    total = 0
    for f in files:
        with open(f, "rb", buffering=0) as fh:
            while n := fh.readinto(buf):
                total += n
    return total


def is_segmented(info: dict) -> bool:
    return "segments" in info


def no_deletions() -> pd.DataFrame:
    return pd.DataFrame({"segment": pd.Series([], dtype=str),
                         "chunk_id": pd.Series([], dtype="int64")})


def read_deleted(version_dir: Path) -> pd.DataFrame:
    p = version_dir / DELETED_FILE
    return pd.read_parquet(p) if p.exists() else no_deletions()


def write_deleted(version_dir: Path, deleted: pd.DataFrame) -> None:
    deleted[["segment", "chunk_id"]].astype({"segment": str, "chunk_id": "int64"}).to_parquet(
        version_dir / DELETED_FILE, index=False)


def live_mask(seg_id: str, chunk_ids: np.ndarray, deleted: pd.DataFrame) -> np.ndarray:
    gone = deleted.loc[deleted["segment"] == seg_id, "chunk_id"].to_numpy(np.int64)
    return ~np.isin(chunk_ids, gone)


def segment_vectors(index: faiss.Index) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of a segment index, rows in stored order."""
    inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
    ids = segment_ids(index)
    if index.ntotal == 0:
        return ids, np.zeros((0, index.d), np.float32)
    return ids, inner.reconstruct_n(0, inner.ntotal)


def read_chunks(seg: Path, texts: bool = True) -> pd.DataFrame:
    if texts:
        return pd.read_parquet(seg / SEG_CHUNKS)
    import pyarrow.parquet as pq

    cols = [c for c in pq.read_schema(seg / SEG_CHUNKS).names if c != "text"]
    return pd.read_parquet(seg / SEG_CHUNKS, columns=cols).assign(text="")


def read_counts(seg: Path) -> tuple[sparse.csr_matrix, list[str]]:
    terms = json.loads((seg / SEG_TERMS).read_text(encoding="utf-8"))
    return sparse.load_npz(seg / SEG_COUNTS).tocsr(), terms


def live_rows(version_dir: Path, info: dict, columns: list[str]) -> pd.DataFrame:
    """Some chunk columns of the live rows of a segmented version, without reading vectors,
    counts or (unless asked) texts: what a publisher diffs the next version against."""
    deleted = read_deleted(version_dir)
    parts = []
    for seg_id in info["segments"]:
        df = pd.read_parquet(segment_dir(version_dir, seg_id) / SEG_CHUNKS, columns=columns)
        df = df[live_mask(seg_id, df["chunk_id"].to_numpy(np.int64), deleted)]
        parts.append(df.assign(segment=seg_id))
    out = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=columns)
    return out.sort_values("chunk_id", kind="stable").reset_index(drop=True)


def live_vectors(version_dir: Path, seg_id: str, deleted: pd.DataFrame, vectors: bool = True):
    """One segment's index, (ids, vectors) in stored order, and the mask of its live rows.
    `vectors=False`: no copy of the vectors (None), the ids only."""
    index = faiss.read_index(str(segment_dir(version_dir, seg_id) / SEG_INDEX), SEG_READ_FLAGS)
    if vectors:
        seg_ids, vecs = segment_vectors(index)
    else:
        seg_ids, vecs = segment_ids(index), None
    return index, seg_ids, vecs, live_mask(seg_id, seg_ids, deleted)


def segment_ids(index: faiss.Index) -> np.ndarray:
    """The ids a segment index returns, in stored order."""
    if hasattr(index, "id_map"):
        return faiss.vector_to_array(index.id_map).astype(np.int64)
    return np.arange(index.ntotal, dtype=np.int64)


def merged_vectors(version_dir: Path, info: dict, deleted: pd.DataFrame | None = None,
                   ordered: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(ids, vectors) of a segmented version's live rows, sorted by id, as `merged_parts`
    gives them, reading only the segments' indexes: what a drift check needs (0.35 s instead
    of 1.7 s for a version of 100k chunks). `deleted` as in `merged_parts`; `ordered=False`:
    segment after segment, in stored order (a centroid needs no sort)."""
    deleted = read_deleted(version_dir) if deleted is None else deleted
    ids, vecs = [], []
    for seg_id in info["segments"]:
        _, seg_ids, vectors, keep = live_vectors(version_dir, seg_id, deleted)
        ids.append(seg_ids[keep] if not keep.all() else seg_ids)
        vecs.append(vectors[keep] if not keep.all() else vectors)
    if not ordered:
        dim = int(info["dim"])
        if len(vecs) == 1:
            return ids[0], vecs[0]
        return (np.concatenate(ids) if ids else np.zeros(0, np.int64),
                np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32))
    return stack_by_id(ids, vecs, int(info["dim"]))


def sampled_vectors(version_dir: Path, info: dict, max_rows: int, seed: int = 0
                    ) -> np.ndarray:
    """At most `max_rows` live vectors of a segmented version: a uniform random sample without
    replacement (deterministic for a version and `seed`), read by position from the memory-
    mapped segment indexes, so its cost does not grow with the version. All of them, in
    segment order, when the version holds no more."""
    deleted = read_deleted(version_dir)
    parts = []
    for seg_id in info["segments"]:
        index = faiss.read_index(str(segment_dir(version_dir, seg_id) / SEG_INDEX), SEG_READ_FLAGS)
        parts.append((index, np.flatnonzero(live_mask(seg_id, segment_ids(index), deleted))))
    total = sum(len(pos) for _, pos in parts)
    if total <= max_rows:
        return merged_vectors(version_dir, info, deleted, ordered=False)[1]
    chosen = np.sort(np.random.default_rng(seed).choice(total, max_rows, replace=False))
    out, offset = [], 0
    for index, pos in parts:
        mine = chosen[(chosen >= offset) & (chosen < offset + len(pos))] - offset
        offset += len(pos)
        if len(mine):
            inner = faiss.downcast_index(index.index) if hasattr(index, "id_map") else index
            out.append(inner.reconstruct_batch(pos[mine].astype(np.int64)))
    return np.concatenate(out).astype(np.float32, copy=False)


def stack_by_id(ids: list[np.ndarray], vecs: list[np.ndarray], dim: int
                ) -> tuple[np.ndarray, np.ndarray]:
    """Segments' (ids, vectors) as one pair, rows sorted by id."""
    ids_all = np.concatenate(ids) if ids else np.zeros(0, np.int64)
    vec_all = np.concatenate(vecs) if vecs else np.zeros((0, dim), np.float32)
    by_id = np.argsort(ids_all, kind="stable")
    return ids_all[by_id], vec_all[by_id]


def merged_parts(version_dir: Path, info: dict, texts: bool = True,
                 deleted: pd.DataFrame | None = None, shards: list | None = None,
                 vectors: bool = True):
    """The live rows of a segmented version, merged: (chunks sorted by chunk_id, counts in the
    same order, terms, (index ids, vectors) sorted by id, the single segment's index when the
    version is one segment without deletions, else None). `deleted` overrides the version's
    deleted file (a publisher merging the segments of a version not yet written). Vectors are
    taken by the index's own ids, so an index that lost ids stays visible to the checks.
    `shards`, if given, receives (segment index, live ids, deleted ids) per segment.
    `vectors=False`: the vectors are not copied out of the indexes ((ids, None) is returned;
    a reader searching the segments as they are needs no copy)."""
    deleted = read_deleted(version_dir) if deleted is None else deleted
    chunks, counts, ids, vecs = [], [], [], []
    single = None
    want_vectors = vectors
    for seg_id in info["segments"]:
        seg = segment_dir(version_dir, seg_id)
        index, seg_ids, vectors, keep_vec = live_vectors(version_dir, seg_id, deleted,
                                                         want_vectors)
        rows = read_chunks(seg, texts)
        c, terms = read_counts(seg)
        if c.shape[0] != len(rows):
            raise ValueError(f"{seg / SEG_COUNTS}: {c.shape[0]} rows of term counts for "
                             f"{len(rows)} chunks in {seg / SEG_CHUNKS}")
        keep = live_mask(seg_id, rows["chunk_id"].to_numpy(np.int64), deleted)
        if len(info["segments"]) == 1 and keep.all() and keep_vec.all():
            single = index
        if shards is not None:
            shards.append((index, seg_ids[keep_vec], seg_ids[~keep_vec]))
        chunks.append(rows[keep])
        counts.append((c if keep.all() else c[np.flatnonzero(keep)], terms))
        ids.append(seg_ids[keep_vec])
        if want_vectors:
            vecs.append(vectors[keep_vec])
    tf, terms = merge_counts(counts)
    manifest = pd.concat(chunks, ignore_index=True) if chunks else pd.DataFrame()
    order = (np.argsort(manifest["chunk_id"].to_numpy(np.int64), kind="stable")
             if len(manifest) else np.arange(0))
    merged = (stack_by_id(ids, vecs, int(info["dim"])) if want_vectors
              else (np.sort(np.concatenate(ids)) if ids else np.zeros(0, np.int64), None))
    return manifest.iloc[order].reset_index(drop=True), tf[order], terms, merged, single


def referenced_segments(versions_root: Path) -> set[str]:
    refs: set[str] = set()
    for p in versions_root.iterdir() if versions_root.exists() else []:
        info_file = p / "version.json"
        if p.name.isdigit() and info_file.exists():
            refs.update(json.loads(info_file.read_text(encoding="utf-8")).get("segments", []))
    return refs


def remove_orphans(versions_root: Path) -> list[str]:
    """Half-written segments and segments no complete version names (a publisher killed
    between writing its segment and renaming its version). Call under the writer lock."""
    root = versions_root / SEGMENTS_DIR
    if not root.exists():
        return []
    refs = referenced_segments(versions_root)
    removed = []
    for p in root.iterdir():
        if p.name.startswith(TMP_PREFIX) or p.name not in refs:
            shutil.rmtree(p, ignore_errors=True)
            removed.append(f"{SEGMENTS_DIR}/{p.name}")
    return removed


def segment_digest(version_dir: Path, info: dict, which: str) -> str:
    """One digest over the version's segments (their `which` file digests) and its deleted
    rows: the version's index_sha256 / manifest_sha256."""
    h = hashlib.sha256()
    for seg_id in info["segments"]:
        seg_info = json.loads((segment_dir(version_dir, seg_id) / SEG_INFO).read_text("utf-8"))
        h.update(f"{seg_id}:{seg_info['sha256'][which]}\n".encode())
    if (version_dir / DELETED_FILE).exists():
        h.update(f"deleted:{file_sha256(version_dir / DELETED_FILE)}\n".encode())
    return h.hexdigest()


def materialize(version_dir: Path, dest: Path) -> Path:
    """A self-contained copy of a version (its files and the segments it names, under
    dest/segments/), loadable anywhere by `load_version_dir` (the MLflow model artifact)."""
    dest.mkdir(parents=True, exist_ok=True)
    for p in version_dir.iterdir():
        if p.is_file():
            shutil.copy2(p, dest / p.name)
    info = json.loads((version_dir / "version.json").read_text(encoding="utf-8"))
    for seg_id in info.get("segments", []):
        shutil.copytree(segment_dir(version_dir, seg_id), dest / SEGMENTS_DIR / seg_id)
    return dest
