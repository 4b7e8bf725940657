"""Writes of what builds produce: the embedding cache, KB versions with their row-level
lineage, and fine-tuning dataset versions with theirs."""

from __future__ import annotations

import json

import pandas as pd

from resources.persistence.writer import delete, insert, insert_frame

MEMBER_COLUMNS = ["chunk_id", "doc_key", "doc_id", "doc_content_hash", "text_hash", "n_tokens"]


def cache_embeddings(con, vectors: pd.DataFrame) -> None:
    """Add vectors (model_id, text_hash, vector, created_at); a vector already cached wins."""
    insert_frame(con, "embedding_cache", vectors, on_conflict="ignore")


def register_kb_version(con, number: int, path: str, info: dict, members: pd.DataFrame,
                        sources: list[dict]) -> None:
    """Version `number`'s row, members and sources, replacing any earlier registration of
    the same number (a publish re-run after a crash)."""
    for table in ("kb_versions", "kb_version_members", "kb_version_sources"):
        delete(con, table, version=number)
    insert(con, "kb_versions", {
        "version": number, "created_at": info["created_at"], "run_id": info["run_id"],
        "path": path, "fingerprint": info["fingerprint"], "n_docs": info["n_docs"],
        "n_chunks": info["n_chunks"], "embedding_model": info["embedding_model"],
        "dim": info["dim"], "chunker": json.dumps(info["chunker"]),
        "index_sha256": info["index_sha256"], "manifest_sha256": info["manifest_sha256"],
        "source_manifest_sha256": info["source_manifest_sha256"],
        "code_version": info["code_version"], "info": json.dumps(info)})
    insert_frame(con, "kb_version_members", members[MEMBER_COLUMNS].assign(version=number))
    if sources:
        insert_frame(con, "kb_version_sources", pd.DataFrame(sources)[
            ["path", "sha256", "n_docs"]].assign(version=number))


def register_ft_dataset(con, row: dict, lines: pd.DataFrame) -> None:
    """A fine-tuning dataset version (ft_datasets columns) and its lines, replacing any
    earlier registration of the same number."""
    number = row["dataset_version"]
    delete(con, "ft_datasets", dataset_version=number)
    delete(con, "ft_dataset_lines", dataset_version=number)
    insert(con, "ft_datasets", row)
    insert_frame(con, "ft_dataset_lines", lines)
