"""raw_docs: what is in the inbox now, one row per document, and what changed since the
last materialization. Unchanged files (same size and mtime) are not re-read; files whose
stat changed are hashed and only re-parsed when their bytes changed. Bad items are
quarantined with file, line and reason; the rest of the batch goes through."""


import json
import time
from dataclasses import dataclass, field

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from kb_core.clock import utc_now
from kb_core.writer_lock import KB_WRITER_POOL
from resources import persistence
from resources.config import KBConfig
from resources.store import KBStore, fetch_one

from .inbox import FileStat, diff_inbox, read_and_hash, scan_inbox
from .parsing import ParseResult, Problem, parse_file
from .report import md_table


@dataclass
class IngestSummary:
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    unchanged: int = 0
    problems: list[Problem] = field(default_factory=list)
    files_read: int = 0
    files_skipped_by_stat: int = 0
    files_touched_only: int = 0
    active_docs: int = 0
    quarantined_active: list[tuple] = field(default_factory=list)  # (path, line, reason)


def ingest_inbox(store: KBStore, cfg: KBConfig, run_id: str, log=None) -> IngestSummary:
    inbox = cfg.inbox_path
    files = scan_inbox(inbox)
    with store.connect() as con:
        known_rows = con.execute("SELECT path, size, mtime_ns, sha256 FROM source_files").fetchall()
    known = {p: (s, m) for p, s, m, _ in known_rows}
    known_sha = {p: h for p, _, _, h in known_rows}
    delta = diff_inbox(files, known)
    summary = IngestSummary(files_skipped_by_stat=len(delta.unchanged))

    parsed: dict[str, tuple[FileStat, str, ParseResult]] = {}
    touched: list[tuple[FileStat, str]] = []
    for rel in delta.new + delta.modified:
        st = files[rel]
        try:
            data, sha = read_and_hash(inbox, st)
        except OSError as exc:  # vanished or unreadable mid-scan: try again next run
            if log:
                log.warning(f"could not read {rel}: {exc}")
            continue
        summary.files_read += 1
        if known_sha.get(rel) == sha:
            touched.append((st, sha))  # touched, not changed
            continue
        if st.is_symlink:
            result = ParseResult(problems=[Problem(
                rel, None, "symbolic link not followed (links may point outside the inbox)")])
        else:
            result = parse_file(rel, data, cfg.doc_time_budget_s)
        parsed[rel] = (st, sha, result)
    summary.files_touched_only = len(touched)

    at = utc_now()
    with store.transaction() as con:
        changed_paths = list(parsed) + delta.removed
        existing: dict[str, tuple] = {}  # doc_key -> (hash, active, path, first_seen, doc_id)
        if changed_paths:
            con.register("changed_paths", pd.DataFrame({"path": changed_paths}))
            for key, *rest in con.execute(
                    "SELECT doc_key, content_hash, active, source_path, first_seen_at, doc_id "
                    "FROM documents WHERE source_path IN (SELECT path FROM changed_paths)"
            ).fetchall():
                existing[key] = tuple(rest)

        claim_ids(con, parsed, changed_paths)
        doc_rows, events, gone = [], [], []
        for rel, (st, sha, result) in parsed.items():
            new_keys = set()
            for d in result.docs:
                new_keys.add(d.doc_key)
                prev = existing.get(d.doc_key)
                if prev is None or not prev[1]:
                    event = "added"
                    summary.added.append(d.doc_id)
                elif prev[0] != d.content_hash:
                    event = "changed"
                    summary.changed.append(d.doc_id)
                else:
                    event = None
                first = prev[3] if prev is not None else at
                doc_rows.append((d.doc_key, d.doc_id, rel, d.line, d.title, d.text, d.content_hash,
                                 sha, json.dumps(d.metadata, ensure_ascii=False), list(d.flags),
                                 True, first, at, run_id))
                if event:
                    events.append((run_id, at, d.doc_key, d.doc_id, rel, event, d.content_hash, sha))
            for key, (h, active, path, _, doc_id) in existing.items():
                if path == rel and active and key not in new_keys:
                    gone.append((key, h, path, doc_id))
            summary.problems.extend(result.problems)
        removed_files = set(delta.removed)
        for key, (h, active, path, _, doc_id) in existing.items():
            if path in removed_files and active:
                gone.append((key, h, path, doc_id))

        for key, h, path, doc_id in gone:
            summary.removed.append(doc_id)
            events.append((run_id, at, key, doc_id, path, "removed", h, None))
        persistence.deactivate_documents(con, [g[0] for g in gone], at, run_id)
        persistence.replace_documents(con, pd.DataFrame(doc_rows, columns=[
            "doc_key", "doc_id", "source_path", "line", "title", "text", "content_hash",
            "file_sha256", "metadata", "flags", "active", "first_seen_at", "updated_at",
            "updated_run_id"]))
        persistence.record_document_events(con, pd.DataFrame(events, columns=[
            "run_id", "event_at", "doc_key", "doc_id", "source_path", "event", "content_hash",
            "file_sha256"]))

        # Quarantine is per file: re-processing or removing a file resolves its old entries.
        persistence.resolve_quarantine(con, changed_paths, at)
        shas = {rel: sha for rel, (_, sha, _) in parsed.items()}
        persistence.quarantine(con, pd.DataFrame(
            [(run_id, at, p.source_path, p.line, p.reason, shas.get(p.source_path), True, None)
             for p in summary.problems],
            columns=["run_id", "event_at", "source_path", "line", "reason", "file_sha256",
                     "active", "resolved_at"]))

        persistence.forget_source_files(con, delta.removed)
        persistence.upsert_source_files(con, pd.DataFrame(
            [(rel, st.size, st.mtime_ns, sha, len(res.docs), len(res.problems), at, at, run_id)
             for rel, (st, sha, res) in parsed.items()],
            columns=["path", "size", "mtime_ns", "sha256", "n_docs", "n_problems",
                     "first_seen_at", "updated_at", "updated_run_id"]))
        for st, sha in touched:
            persistence.touch_source_file(con, st.rel, st.size, st.mtime_ns)
        summary.quarantined_active = con.execute(
            "SELECT source_path, line, reason FROM quarantine WHERE active "
            "ORDER BY source_path, line").fetchall()
        summary.active_docs = fetch_one(con, "SELECT count(*) FROM documents WHERE active")[0]
    summary.unchanged = summary.active_docs - len(summary.added) - len(summary.changed)
    return summary


def claim_ids(con, parsed: dict, changed_paths: list[str]) -> None:
    """A document id belongs to the file that used it first; a later file reusing it gets a
    quarantine entry naming the owner, so ids stay unambiguous for evaluation and audits."""
    owners = {doc_id: (path, line) for doc_id, path, line in con.execute(
        "SELECT doc_id, source_path, line FROM documents WHERE active AND source_path NOT IN "
        "(SELECT path FROM changed_paths)").fetchall()} if changed_paths else {}
    for rel in sorted(parsed):
        result = parsed[rel][2]
        kept = []
        for d in result.docs:
            owner = owners.get(d.doc_id)
            if owner and owner[0] != rel:
                where = owner[0] + (f" line {owner[1]}" if owner[1] else "")
                result.problems.append(Problem(rel, d.line, f"duplicate id {d.doc_id!r}: "
                                                            f"already used by {where}"))
                continue
            owners[d.doc_id] = (rel, d.line)
            kept.append(d)
        result.docs = kept


@asset(
    pool=KB_WRITER_POOL,
    group_name="ingest",
    kinds={"duckdb", "python"},
    description="Documents in the inbox now, with added/changed/removed since the last run; "
                "bad files quarantined.",
    tags={"kb/writer": "true"},
)
def raw_docs(context: AssetExecutionContext, store: KBStore, kb_config: KBConfig) -> MaterializeResult:
    t0 = time.perf_counter()
    s = ingest_inbox(store, kb_config, context.run_id, log=context.log)
    for p in s.problems:
        context.log.warning(f"quarantined {p.describe()}")
    if s.active_docs == 0:
        context.log.warning(f"the inbox {kb_config.inbox} holds no valid documents")
    metadata = {
        "inbox": kb_config.inbox,
        "documents_active": s.active_docs,
        "dagster/row_count": s.active_docs,  # the UI's row count: active documents
        "documents_added": len(s.added),
        "documents_changed": len(s.changed),
        "documents_removed": len(s.removed),
        "documents_unchanged": s.unchanged,
        "quarantined_items": len(s.quarantined_active),
        "quarantined_this_run": len(s.problems),
        "files_read": s.files_read,
        "files_skipped_unchanged_stat": s.files_skipped_by_stat,
        "files_touched_not_changed": s.files_touched_only,
        "duration_s": round(time.perf_counter() - t0, 3),
        "changes": MetadataValue.md(md_table(
            [("added", d) for d in s.added] + [("changed", d) for d in s.changed]
            + [("removed", d) for d in s.removed], ["change", "doc_id"])
            if (s.added or s.changed or s.removed) else "No document changes."),
        "quarantine": MetadataValue.md(md_table(
            [(path, line or "", reason) for path, line, reason in s.quarantined_active],
            ["file", "line", "reason"]) if s.quarantined_active else "Nothing is quarantined."),
    }
    return MaterializeResult(metadata=metadata)
