"""faiss_index: an immutable, numbered KB version published atomically, with its members
recorded in DuckDB. Nothing changed -> no version. A change writes one new segment (the added
or edited chunks) and a version naming its segments (kb_assets/segment_publish.py,
resources/segments.py); too many segments or deletions -> one compacted segment."""


import hashlib
import json
import math
import time
from dataclasses import asdict

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from kb_core import settings
from kb_core.clock import utc_now
from resources import persistence
from resources.config import KBConfig, code_version
from resources.embedder import Embedder
from resources.store import KBStore, fetch_one
from resources.segments import read_deleted
from resources.vector_index import (SOURCES_FILE, KBVersion, VersionStore,
                                    segmented_version)

from .embed import embeddings, encode_cached
from kb_core.hooks import fault_point
from .eval_set import synthetic_questions
from .synthetic_questions import SyntheticQuestion
from kb_core.lexical import LEXICAL_VERSION, BM25Index
from kb_core.writer_lock import KB_WRITER_POOL
from .relevance import (Calibration, calibrate_version, carried_calibration,
                        null_questions_digest, own_calibration)
from .report import md_table
from .segment_publish import (META_COLUMNS, NO_DELETIONS, apply_retention, compacted_parts,
                              compaction_limits,
                              expected_build, incremental_base, membership_diff,
                              needs_compaction, new_parts, segments_record, write_parts)

# Duplicate documents are indexed once (see the indexed_documents view).
FINGERPRINT_SQL = """
    SELECT c.chunk_id, c.text_hash FROM chunks c JOIN indexed_documents d USING (doc_key)
    ORDER BY c.chunk_id"""
# Chunk rows without their texts: a publish reads texts of added rows only.
MEMBER_SQL = """
    SELECT c.chunk_id, c.doc_key, d.doc_id, d.source_path, d.title, c.ordinal,
           c.n_tokens, c.text_hash, c.doc_content_hash
    FROM chunks c JOIN indexed_documents d USING (doc_key)
    ORDER BY c.chunk_id"""
# Copies of an indexed document: copy doc_id -> the doc_id whose chunks stand for it.
DUPLICATES_SQL = """
    SELECT d.doc_id, i.doc_id FROM documents d JOIN indexed_documents i USING (content_hash)
    WHERE d.active AND d.doc_key <> i.doc_key ORDER BY d.doc_id"""


def fingerprint(model_id: str, chunker_version: str, members: pd.DataFrame) -> str:
    h = hashlib.sha256(f"{model_id}\n{chunker_version}\n{LEXICAL_VERSION}\n".encode())
    # One "id:hash" line per chunk, hashed as one string (the same digest as line by line).
    h.update("".join(f"{cid}:{th}\n" for cid, th in zip(members["chunk_id"].tolist(),
                                                          members["text_hash"].tolist())).encode())
    return h.hexdigest()


def recover_unregistered(con, versions: VersionStore) -> list[int]:
    """A publisher killed after the atomic rename but before its DuckDB commit leaves a
    complete version directory without lineage rows: register it from its own files."""
    known = {r[0] for r in con.execute("SELECT version FROM kb_versions").fetchall()}
    recovered = []
    for n in versions.numbers():
        if n in known:
            continue
        v = versions.load(n)
        sources = json.loads((v.path / SOURCES_FILE).read_text(encoding="utf-8"))
        persistence.register_kb_version(con, n, str(v.path), v.info, v.manifest, sources)
        recovered.append(n)
    return recovered


def calibrate_new_version(manifest: pd.DataFrame, index, lexical: BM25Index, info: dict,
                          embedder: Embedder, store: KBStore | None = None,
                          previous: list[dict] | None = None) -> dict:
    """The version's zero-hit thresholds, calibrated on its own data before it is published
    (kb_assets/relevance.py): unrelated questions vs the KB's own synthetic questions.
    `previous`: the base version's questions, reused for documents whose content is unchanged
    (writing a question reads every sentence of its document), and the question vectors come
    through the embedding cache: a publish pays for what changed. Sets
    info["calibration_questions"] for the next publish."""
    version = KBVersion(0, None, info, index, manifest, lexical)
    keep = {q["content_hash"]: SyntheticQuestion(**q) for q in previous or []}
    questions = synthetic_questions(version, keep=keep)
    info["calibration_questions"] = [asdict(q) for q in questions]
    encode = (embedder.encode_questions if store is None
              else lambda texts: encode_cached(store, embedder, texts))
    return calibrate_version(version, encode, [q.question for q in questions]).as_dict()


def calibrate_or_carry(versions: VersionStore, base_version: int | None, changed: int | None,
                       number: int, info: dict, embedder: Embedder, store: KBStore,
                       segments: list[str], deleted: pd.DataFrame) -> None:
    """Set info["relevance"] (the zero-hit thresholds) and its provenance: the base version's
    when the chunks changed by at most KB_CALIBRATION_CARRY_MAX since they were calibrated
    (relevance.carried_calibration says why that bounds the error; no version is loaded), else
    calibrated on the new version's own data."""
    carry_max = settings.get("KB_CALIBRATION_CARRY_MAX")
    digest = null_questions_digest()
    base_info = versions.info(base_version) if base_version is not None else None
    carried = (carried_calibration(base_info, changed, info["n_chunks"], carry_max, digest)
               if changed is not None else None)
    if carried:
        info["relevance"] = base_info["relevance"]
        info["calibration_questions"] = base_info.get("calibration_questions") or []
        info["relevance_provenance"] = carried
        return
    pending = load_pending(versions, segments, deleted, info)
    previous = base_info.get("calibration_questions") if base_info else None
    info["relevance"] = calibrate_new_version(pending.manifest, pending.search_index,
                                              pending.lexical, info, embedder, store, previous)
    info["relevance_provenance"] = own_calibration(number, info["n_chunks"], carry_max, digest)


def write_segments(store: KBStore, versions: VersionStore, model_id: str, dim: int,
                   members: pd.DataFrame, base_version: int | None
                   ) -> tuple[list[str], pd.DataFrame, bool, dict, int | None]:
    """The segments and deleted rows of the next version: the base version's segments plus
    one segment of the added rows, or one segment of everything (no base, or compaction).
    Then: what the version's vector search is (resources/ann_index.py: a one-segment version
    serves its segment's index, exact or HNSW by size; several are searched segment by
    segment), and how many chunks the change added or removed (None: no base version)."""
    if base_version is None:
        seg, record = write_parts(versions, new_parts(store, model_id, dim, members), dim)
        return [seg], NO_DELETIONS, False, record, None
    base_segments = versions.info(base_version)["segments"]
    previous = versions.live_rows(base_version, META_COLUMNS)
    old_deleted = read_deleted(versions.path / str(base_version))
    diff = membership_diff(previous, members)
    deleted = pd.concat([old_deleted, diff.deleted], ignore_index=True)
    added = new_parts(store, model_id, dim, diff.added) if len(diff.added) else None
    n_segments = len(base_segments) + (added is not None)
    segment_rows = len(previous) + len(old_deleted) + len(diff.added)
    changed = diff.content_changes
    if needs_compaction(n_segments, len(deleted), segment_rows, *compaction_limits()):
        parts = compacted_parts(versions, base_segments, deleted, dim, added)
        seg, record = write_parts(versions, parts, dim)
        return [seg], NO_DELETIONS, True, record, changed
    segments = base_segments + ([write_parts(versions, added, dim)[0]] if added is not None else [])
    return segments, deleted, False, segments_record(versions, segments), changed


def load_pending(versions: VersionStore, segments: list[str], deleted: pd.DataFrame,
                 info: dict) -> KBVersion:
    """The version about to be published, merged from its segments (for calibration)."""
    return segmented_version(versions.path / ".pending", {"segments": segments, "dim": info["dim"]},
                             0, True, deleted)


def publish_if_changed(store: KBStore, versions: VersionStore, embedder: Embedder,
                       kb_config: KBConfig, run_id: str, log=None) -> dict:
    t0 = time.perf_counter()
    removed_tmp = versions.clean_stale_tmp()
    chunker = kb_config.chunker(kb_config.chunk_tokenizer(embedder))
    model_id = embedder.model_id
    with store.transaction() as con:
        recovered = recover_unregistered(con, versions)
        # Fingerprint from ids and hashes only: a no-change run never loads chunk texts.
        keys = con.execute(FINGERPRINT_SQL).df()
        latest = fetch_one(
            con, "SELECT version, fingerprint FROM kb_versions ORDER BY version DESC LIMIT 1")
        # A version whose blocking index checks failed (damaged files) is superseded, not kept.
        damaged = latest is not None and fetch_one(con, (
            "SELECT 1 FROM check_results WHERE kb_version = ? AND asset = 'faiss_index' "
            "AND blocking AND NOT passed LIMIT 1"), [latest[0]]) is not None
    fp = fingerprint(model_id, chunker.version, keys)
    base = {"stale_tmp_removed": removed_tmp, "versions_recovered": recovered}
    if latest and latest[1] == fp and not damaged:
        return {**base, "new_version": False, "kb_version": latest[0],
                "n_chunks": len(keys), "duration_s": round(time.perf_counter() - t0, 3)}
    with store.connect() as con:
        members = con.execute(MEMBER_SQL).df()
        sources = con.execute("""
            SELECT path, sha256, n_docs FROM source_files
            WHERE path IN (SELECT DISTINCT source_path FROM documents WHERE active)
            ORDER BY path""").df().to_dict("records")
        duplicates = dict(con.execute(DUPLICATES_SQL).fetchall())
    if not (np.array_equal(members["chunk_id"].to_numpy(), keys["chunk_id"].to_numpy())
            and np.array_equal(members["text_hash"].to_numpy(), keys["text_hash"].to_numpy())):
        fp = fingerprint(model_id, chunker.version, members)  # the rows moved in between

    dim = embedder.dim
    t1 = time.perf_counter()
    number = max(versions.numbers() + [latest[0] if latest else 0]) + 1
    base_version = incremental_base(versions, latest[0] if latest else None, damaged,
                                    expected_build(model_id, dim, chunker.version))
    segments, deleted, compacted, vector_index, changed = write_segments(
        store, versions, model_id, dim, members, base_version)
    build_s = time.perf_counter() - t1
    source_manifest = json.dumps(sources, sort_keys=True).encode()
    info = {
        "created_at": utc_now().isoformat(), "run_id": run_id, "fingerprint": fp,
        "n_docs": int(members["doc_key"].nunique()), "n_chunks": len(members),
        "embedding_model": model_id, "dim": dim, "chunker": chunker.as_dict(),
        "lexical": LEXICAL_VERSION, "code_version": code_version(),
        "source_manifest_sha256": hashlib.sha256(source_manifest).hexdigest(),
        "previous_version": latest[0] if latest else None,
        "duplicates": duplicates,
        # Read by retrieval: dense evidence on CJK text only counts when the model reads it.
        "embedder_reads_cjk": embedder.reads_cjk,
        # Which version the new segment was added to (None: one segment of everything).
        "base_version": base_version, "compacted": compacted, "deleted_rows": len(deleted),
        "vector_index": vector_index,
    }
    t2 = time.perf_counter()
    calibrate_or_carry(versions, base_version, changed, number, info, embedder, store,
                       segments, deleted)
    calibration_s = time.perf_counter() - t2
    path = versions.publish(number, segments, deleted, info, sources)
    info = versions.info(number)
    fault_point("publish:after_rename")
    with store.transaction() as con:
        persistence.register_kb_version(con, number, str(path), info, members, sources)
    removed = apply_retention(store, versions, number)
    if log:
        log.info(f"published KB version {number} at {path} ({len(members)} chunks)")
    return {**base, "new_version": True, "kb_version": number, "path": str(path),
            "versions_removed": removed,
            "n_chunks": len(members), "n_docs": info["n_docs"],
            "index_sha256": info["index_sha256"], "build_s": round(build_s, 3),
            "calibration_s": round(calibration_s, 3),
            "duration_s": round(time.perf_counter() - t0, 3), "info": info}


def push_to_shared_storage(versions: VersionStore, current: int | None, log) -> dict:
    """With KB_VERSIONS_URL: push every version the shared store lacks (this one, and any an
    earlier failed push missed), then the serving pointer. A failure fails the step: the
    version stays published here, replicas keep what they serve, the next run pushes it."""
    from resources.remote_versions import RemoteStoreError, from_settings

    remote = from_settings()
    if remote is None:
        return {}
    t0 = time.perf_counter()
    try:
        sync = remote.sync_up(versions.path.parent)
    except RemoteStoreError as exc:
        raise Failure(description=f"{exc}. KB version {current} is published on this machine; "
                                  "replicas keep serving what they have; the next run pushes "
                                  "it.") from None
    log.info(f"shared storage {remote.url}: pushed versions {sync['pushed_versions'] or 'none'}"
             f" ({sync['objects_written']} objects), pointer "
             f"{'written' if sync['pointer_written'] else 'unchanged'}; removed versions "
             f"{sync['removed_versions'] or 'none'} (retention)")
    return {"remote_url": remote.url, "remote_pushed_versions": str(sync["pushed_versions"]),
            "remote_removed_versions": str(sync["removed_versions"]),
            "remote_objects_written": sync["objects_written"],
            "remote_push_s": round(time.perf_counter() - t0, 3)}


def vector_index_metadata(vi: dict | None) -> dict:
    """The faiss_index metadata entries describing which vector index a version got."""
    if not vi:
        return {}
    fell_back = vi.get("requested") != "flat" and bool(vi.get("efsearch_tried")) \
        and vi["kind"] == "flat"
    return {
        "vector_index_kind": vi["kind"],
        "vector_index_recall_at_10": vi.get("recall_at_10"),
        "vector_index": MetadataValue.md(
            f"**{vi['kind']}** index ({vi.get('note', '')}"
            + (", FELL BACK TO EXACT" if fell_back else "") + ").\n\n"
            + md_table([(k, json.dumps(v) if isinstance(v, (dict, list)) else v)
                        for k, v in vi.items()], ["field", "value"])),
    }


@asset(
    pool=KB_WRITER_POOL,
    deps=[embeddings],
    group_name="index",
    kinds={"faiss", "duckdb"},
    description="Immutable numbered KB version (FAISS + manifest + BM25), published "
                "atomically; no new version when nothing changed.",
    tags={"kb/writer": "true"},
)
def faiss_index(context: AssetExecutionContext, store: KBStore, versions: VersionStore,
                embedder: Embedder, kb_config: KBConfig) -> MaterializeResult:
    r = publish_if_changed(store, versions, embedder, kb_config, context.run_id, context.log)
    if not r["new_version"]:
        context.log.info(f"no content change: KB version {r['kb_version']} stays current")
    remote = push_to_shared_storage(versions, r["kb_version"], context.log)
    info = r.pop("info", None)
    metadata = {
        "kb_version": r["kb_version"],
        "new_version": r["new_version"],
        "n_chunks": r["n_chunks"],
        "dagster/row_count": r["n_chunks"],  # vectors in the served index
        "duration_s": r["duration_s"],
        "summary": MetadataValue.md(
            f"Published **KB version {r['kb_version']}**." if r["new_version"] else
            f"No content change since KB version {r['kb_version']}: no new version."),
    }
    if info:
        metadata.update({
            "path": MetadataValue.path(r["path"]), "n_docs": r["n_docs"],
            "index_sha256": r["index_sha256"], "build_s": r["build_s"],
            "embedding_model": info["embedding_model"], "chunker_version": info["chunker"]["version"],
            "version_info": MetadataValue.md(md_table(
                [(k, v) for k, v in info.items()
                 if k not in ("chunker", "relevance", "duplicates", "vector_index",
                            "calibration_questions", "relevance_provenance")],
                ["field", "value"])),
            "duplicates_indexed_once": len(info.get("duplicates") or {}),
            "calibration_s": r["calibration_s"],
        })
        metadata.update(vector_index_metadata(info.get("vector_index")))
        cal = info.get("relevance")
        if cal:
            c = Calibration.from_dict(cal)
            prov = info.get("relevance_provenance") or {}
            where = (f"Zero-hit thresholds of KB version {prov['calibrated_on']}, kept: the chunks "
                     f"changed by {prov['changed_since']} rows since it was calibrated on "
                     f"{prov['chunks']} (at most {prov['carry_max']:.1%} keeps them)"
                     if prov.get("carried") else "Zero-hit thresholds calibrated on this version")
            metadata.update({
                "relevance_calibrated_on": prov.get("calibrated_on", r["kb_version"]),
                "relevance_carried": bool(prov.get("carried")),
                "relevance_threshold_dense": None if math.isinf(c.latin.dense) else round(c.latin.dense, 4),
                "relevance_threshold_lexical_latin": round(c.latin.lexical, 4),
                "relevance_threshold_lexical_cjk": round(c.cjk.lexical, 4),
                "relevance_calibration": MetadataValue.md(
                    f"{where}: unrelated questions "
                    f"(target refusal {c.target_refusal:.0%}) vs the KB's own synthetic "
                    "questions.\n\n" + md_table(c.summary_rows(), [
                        "queries", "dense >", "lexical >", "null quantile",
                        "unrelated refused", "own questions refused"])),
            })
    if remote:
        metadata.update(remote)
    if r["versions_recovered"]:
        metadata["versions_recovered"] = str(r["versions_recovered"])
    if r.get("versions_removed"):
        metadata["versions_removed"] = str(r["versions_removed"])  # retention: files only
    return MaterializeResult(metadata=metadata)
