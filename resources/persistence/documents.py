"""Writes of the document side: ingest (source files, documents, events, quarantine), chunks
and their per-document state, and the KB's synthetic evaluation questions. Bulk rows come
as DataFrames whose column names are table columns."""

from __future__ import annotations

import pandas as pd

from resources.persistence.writer import delete_in, insert_frame, registered, values_in


def deactivate_documents(con, doc_keys: list[str], at, run_id: str) -> None:
    """Documents gone from their file stay, inactive, for lineage."""
    if not doc_keys:
        return
    with values_in(con, doc_keys) as keys:
        con.execute("UPDATE documents SET active = false, updated_at = ?, updated_run_id = ? "
                    f"WHERE doc_key IN {keys}", [at, run_id])


def replace_documents(con, docs: pd.DataFrame) -> None:
    """Write these documents' current rows (new or re-parsed), replacing any older row."""
    if len(docs):
        delete_in(con, "documents", "doc_key", docs["doc_key"].tolist())
        insert_frame(con, "documents", docs)


def record_document_events(con, events: pd.DataFrame) -> None:
    insert_frame(con, "document_events", events)


def resolve_quarantine(con, source_paths: list[str], at) -> None:
    """Re-reading or removing a file resolves its open quarantine entries."""
    if not source_paths:
        return
    with values_in(con, source_paths) as paths:
        con.execute("UPDATE quarantine SET active = false, resolved_at = ? WHERE active AND "
                    f"source_path IN {paths}", [at])


def quarantine(con, problems: pd.DataFrame) -> None:
    insert_frame(con, "quarantine", problems)


def forget_source_files(con, paths: list[str]) -> None:
    delete_in(con, "source_files", "path", paths)


def upsert_source_files(con, files: pd.DataFrame) -> None:
    """Record files as read now; a file seen before keeps its first_seen_at."""
    if not len(files):
        return
    with registered(con, files) as view:
        con.execute(f"""
            INSERT INTO source_files (path, size, mtime_ns, sha256, n_docs, n_problems,
                                      first_seen_at, updated_at, updated_run_id)
            SELECT f.path, f.size, f.mtime_ns, f.sha256, f.n_docs, f.n_problems,
                   COALESCE(s.first_seen_at, f.first_seen_at), f.updated_at, f.updated_run_id
            FROM {view} f LEFT JOIN source_files s USING (path)
            ON CONFLICT (path) DO UPDATE SET size = excluded.size,
                mtime_ns = excluded.mtime_ns, sha256 = excluded.sha256,
                n_docs = excluded.n_docs, n_problems = excluded.n_problems,
                updated_at = excluded.updated_at, updated_run_id = excluded.updated_run_id""")


def touch_source_file(con, path: str, size: int, mtime_ns: int) -> None:
    """Same content, new stat (a touch, a copy): remember the stat so the next scan skips it."""
    con.execute("UPDATE source_files SET size = ?, mtime_ns = ? WHERE path = ?",
                [size, mtime_ns, path])


def replace_chunks(con, doc_keys: list[str], chunks: pd.DataFrame,
                   states: pd.DataFrame) -> None:
    """These documents' chunks and chunk state, replacing what they had (a document that
    lost all its chunks is in `doc_keys` with no rows)."""
    delete_in(con, "chunks", "doc_key", doc_keys)
    delete_in(con, "doc_chunk_state", "doc_key", doc_keys)
    insert_frame(con, "chunks", chunks)
    insert_frame(con, "doc_chunk_state", states)


def retire_eval_questions(con, qids: list[str], at) -> None:
    if not qids:
        return
    with values_in(con, qids) as selected:
        con.execute("UPDATE eval_questions SET active = false, retired_at = ? "
                    f"WHERE qid IN {selected}", [at])


def replace_eval_questions(con, questions: pd.DataFrame) -> None:
    if len(questions):
        delete_in(con, "eval_questions", "qid", questions["qid"].tolist())
        insert_frame(con, "eval_questions", questions)
