"""What a publish writes: the membership diff against the previous KB version (ids, hashes and
chunk metadata only: no texts, no vectors of old chunks), the one new segment for added or
edited rows, and compaction of a version's segments into one (resources/segments.py)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from kb_core import settings
from kb_core.lexical import LEXICAL_VERSION, merge_counts, term_counts
from resources.segments import merged_parts, no_deletions, segment_info, write_segment
from resources.store import KBStore
from resources.ann_index import IndexPolicy, build_version_index
from resources.vector_index import VersionStore

from .embed import load_vectors

MANIFEST_COLUMNS = ["chunk_id", "doc_key", "doc_id", "source_path", "title", "ordinal", "text",
                    "n_tokens", "text_hash", "doc_content_hash"]
META_COLUMNS = [c for c in MANIFEST_COLUMNS if c != "text"]
NO_DELETIONS = no_deletions()


@dataclass
class Diff:
    """Rows to add (chunk metadata rows) and (segment, chunk_id) rows to delete, and how many
    chunks came or went (a chunk id hashes its text; a row re-added only because its
    document's metadata changed is not among them)."""

    added: pd.DataFrame
    deleted: pd.DataFrame = field(default_factory=lambda: NO_DELETIONS)
    content_changes: int = 0


def _as_text(frame: pd.DataFrame) -> np.ndarray:
    """Cells as comparable strings: DuckDB and parquet may spell a missing value differently."""
    obj = frame.astype(object)
    return obj.where(frame.notna(), "").astype(str).to_numpy()


def same_rows(a: pd.DataFrame, b: pd.DataFrame) -> np.ndarray:
    """Row-wise equality of two frames with the same index and columns: equal values, or both
    missing, column by column (fast); the rows that differ there are compared again as text
    (DuckDB and parquet may spell a missing value or a number's type differently)."""
    same = np.ones(len(a), dtype=bool)
    for col in a.columns:
        x, y = a[col].to_numpy(), b[col].to_numpy()
        eq = np.asarray(x == y, dtype=bool) | (pd.isna(x) & pd.isna(y))
        same &= eq
    if not same.all():
        rows = np.flatnonzero(~same)
        same[rows] = (_as_text(a.iloc[rows]) == _as_text(b.iloc[rows])).all(axis=1)
    return same


def membership_diff(previous: pd.DataFrame, current: pd.DataFrame) -> Diff:
    """`previous`: live rows of the previous version (META_COLUMNS + segment); `current`: the
    active rows now (META_COLUMNS). A row whose metadata changed under the same chunk_id is
    deleted from its segment and added again."""
    prev = previous.set_index("chunk_id")
    cur = current.set_index("chunk_id")
    common = cur.index.intersection(prev.index)
    cols = [c for c in META_COLUMNS if c != "chunk_id"]
    same = same_rows(cur.loc[common, cols], prev.loc[common, cols])
    unchanged = common[same]
    added = current[~current["chunk_id"].isin(unchanged)]
    gone = previous[~previous["chunk_id"].isin(unchanged)]
    content = int((~current["chunk_id"].isin(prev.index)).sum()
                  + (~previous["chunk_id"].isin(cur.index)).sum())
    return Diff(added.reset_index(drop=True),
                gone[["segment", "chunk_id"]].astype({"segment": str, "chunk_id": "int64"})
                .reset_index(drop=True), content)


def needs_compaction(n_segments: int, deleted_rows: int, segment_rows: int,
                     max_segments: int, max_deleted: float) -> bool:
    """Too many segments, or too large a share of the segments' rows deleted."""
    share = deleted_rows / segment_rows if segment_rows else 0.0
    return n_segments > max_segments or share > max_deleted


def compaction_limits() -> tuple[int, float]:
    return (int(settings.get("KB_COMPACT_MAX_SEGMENTS")),
            float(settings.get("KB_COMPACT_MAX_DELETED")))


def incremental_base(versions: VersionStore, latest: int | None, damaged: bool,
                     expect: dict) -> int | None:
    """The version a publish may add a segment to: the latest one, on disk, segmented, not
    damaged, and built with the same embedding model, dimension, chunker and lexical version.
    Otherwise (first build, an older full-copy version, a model change) it writes one segment
    of everything."""
    if latest is None or damaged or latest not in versions.numbers():
        return None
    info = versions.info(latest)
    built = {"embedding_model": info.get("embedding_model"), "dim": info.get("dim"),
             "lexical": info.get("lexical"),
             "chunker_version": (info.get("chunker") or {}).get("version")}
    if "segments" not in info or built != expect:
        return None
    return latest


def expected_build(model_id: str, dim: int, chunker_version: str) -> dict:
    return {"embedding_model": model_id, "dim": dim, "lexical": LEXICAL_VERSION,
            "chunker_version": chunker_version}


def rows_with_texts(store: KBStore, rows: pd.DataFrame) -> pd.DataFrame:
    """`rows` (META_COLUMNS) with their texts from DuckDB, in manifest column order."""
    with store.connect() as con:
        con.register("wanted_ids", rows[["chunk_id"]].astype("int64"))
        texts = con.execute("SELECT chunk_id, text FROM chunks WHERE chunk_id IN "
                            "(SELECT chunk_id FROM wanted_ids)").df()
    out = rows.merge(texts, on="chunk_id", how="left", validate="one_to_one")
    return out[MANIFEST_COLUMNS].sort_values("chunk_id", kind="stable").reset_index(drop=True)


@dataclass
class SegmentParts:
    chunks: pd.DataFrame  # MANIFEST_COLUMNS, sorted by chunk_id
    vectors: np.ndarray
    counts: object  # scipy CSR, rows aligned with chunks
    terms: list[str]


def new_parts(store: KBStore, model_id: str, dim: int, rows: pd.DataFrame) -> SegmentParts:
    """Texts, cached vectors and term counts of the added rows only."""
    chunks = rows_with_texts(store, rows)
    vectors = load_vectors(store, model_id, chunks["text_hash"].tolist(), dim)
    counts, terms = term_counts(chunks["text"].tolist())
    return SegmentParts(chunks, vectors, counts, terms)


def compacted_parts(versions: VersionStore, segments: list[str], deleted: pd.DataFrame,
                    dim: int, extra: SegmentParts | None) -> SegmentParts:
    """The live rows of `segments` (minus `deleted`) plus `extra`, as one segment's parts:
    read from the segment files (no re-tokenising, no embedding cache)."""
    pending = Path(versions.path) / ".pending"  # segment_dir looks beside it: versions/segments
    manifest, counts, terms, (ids, vectors), _ = merged_parts(
        pending, {"segments": segments, "dim": dim}, True, deleted)
    if not np.array_equal(ids, manifest["chunk_id"].to_numpy(np.int64)):
        raise ValueError(f"cannot compact segments {segments}: their index ids differ from "
                         "their chunk rows (run the faiss_index checks)")
    if extra is not None and len(extra.chunks):
        manifest = pd.concat([manifest[MANIFEST_COLUMNS], extra.chunks], ignore_index=True)
        vectors = np.concatenate([vectors, extra.vectors])
        counts, terms = merge_counts([(counts, terms), (extra.counts, extra.terms)])
        order = np.argsort(manifest["chunk_id"].to_numpy(np.int64), kind="stable")
        manifest, vectors, counts = manifest.iloc[order].reset_index(drop=True), vectors[order], \
            counts[order]
    df = np.bincount(counts.indices, minlength=counts.shape[1])
    keep = np.flatnonzero(df)  # drop terms only deleted rows held
    return SegmentParts(manifest[MANIFEST_COLUMNS], vectors, counts[:, keep],
                        [terms[j] for j in keep.tolist()])


def write_parts(versions: VersionStore, parts: SegmentParts, dim: int) -> tuple[str, dict]:
    """One segment from its parts, and what its vector index is: exact or HNSW by size
    (KB_ANN_*), an HNSW index with its measured recall@10 (resources/ann_index.py, the one
    place a segment's index is constructed)."""
    index, record = build_version_index(parts.vectors,
                                        parts.chunks["chunk_id"].to_numpy(np.int64), dim,
                                        IndexPolicy.from_settings())
    return write_segment(Path(versions.path), index, parts.chunks, parts.counts,
                         parts.terms, record), record


def segments_record(versions: VersionStore, segments: list[str]) -> dict:
    """The vector search of a version of several segments (its info "vector_index"): HNSW
    segments are searched as they are beside one exact index of the others, so the version's
    recall@10 is the lowest of its HNSW segments' (each measured when written)."""
    per = [segment_info(Path(versions.path), seg).get("vector_index") or {"kind": "flat"}
           for seg in segments]
    approximate = [r for r in per if r.get("kind") == "hnsw"]
    kinds = [r.get("kind", "flat") for r in per]
    if not approximate:
        return {"kind": "flat", "requested": "merged", "params": {}, "recall_at_10": 1.0,
                "segment_kinds": kinds,
                "note": f"{len(segments)} exact segments merged into one exact index when "
                        "loaded; a compaction rebuilds one segment (HNSW past KB_ANN_MIN_CHUNKS)"}
    worst = min(approximate, key=lambda r: r.get("recall_at_10", 0.0))
    return {"kind": "hnsw", "requested": "sharded", "params": worst.get("params", {}),
            "recall_at_10": worst.get("recall_at_10"), "n_queries": worst.get("n_queries"),
            "segment_kinds": kinds,
            "note": f"{len(approximate)} HNSW segment(s) searched as written, beside one exact "
                    f"index of the other {len(segments) - len(approximate)}; answers merged by "
                    "score (recall@10: the lowest HNSW segment's, vs exact)"}


ALIAS_TARGETS_SQL = """
    SELECT alias, to_version FROM alias_history WHERE model_name = ?
    QUALIFY row_number() OVER (PARTITION BY alias ORDER BY event_at DESC) = 1"""


def apply_retention(store: KBStore, versions: VersionStore, newest: int) -> list[int]:
    """Remove the files of versions retention lets go (kb_core/retention.py). Aliases come from
    the DuckDB mirror of alias moves and the serving pointer from serving.json: no MLflow."""
    import json
    from datetime import datetime, timezone

    from kb_core.clock import utc_now
    from kb_core.retention import removable_versions
    from kb_core.serving import POINTER_FILE

    with store.connect() as con:
        protected = {int(v) for _, v in con.execute(ALIAS_TARGETS_SQL, ["kb"]).fetchall()
                     if v is not None}
    pointer = Path(versions.path).parent / POINTER_FILE
    if pointer.exists():
        try:
            protected.add(int(json.loads(pointer.read_text(encoding="utf-8"))["version"]))
        except (ValueError, KeyError, TypeError):
            pass
    created = {}
    for n in versions.numbers():
        at = datetime.fromisoformat(versions.info(n)["created_at"])
        created[n] = at.astimezone(timezone.utc).replace(tzinfo=None) if at.tzinfo else at
    gone = removable_versions(created, protected | {newest},
                              int(settings.get("KB_RETAIN_LAST")),
                              float(settings.get("KB_RETAIN_DAYS")), utc_now())
    for n in gone:
        versions.remove(n)
    return gone

