"""cleaned_chunks: normalised, PII-masked text split by the configured chunker. Only
documents whose content or chunker settings changed are re-chunked; an edited document's
old chunks are replaced, never kept beside the new ones."""


import json
import statistics
import time
from dataclasses import dataclass, field

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from kb_core.clock import utc_now
from resources import persistence
from resources.config import KBConfig
from resources.embedder import Embedder
from resources.store import KBStore, fetch_one

from .budget import BudgetExceeded, Deadline, budget_for
from kb_core.chunking import UNICODE, ChunkerConfig, chunk_id, chunk_text
from .ingest import raw_docs
from .parsing import Problem
from .report import bar_chart, histogram, md_table
from kb_core.text import PII_LABELS, mask_pii, normalise, sha256_text
from kb_core.writer_lock import KB_WRITER_POOL

LENGTH_BINS = [0, 25, 50, 100, 150, 200, 300, 500]


def index_text(title: str, body: str) -> str:
    """What is embedded and indexed: the title gives a chunk its topic."""
    title = (title or "").strip()
    return body if not title or body.startswith(title) else f"{title}\n{body}"


@dataclass
class ChunkedDoc:
    rows: list = field(default_factory=list)  # (chunk_id, ordinal, text, text_hash, n_tokens)
    pii: dict = field(default_factory=dict)    # masked matches per kind (body and title)


def chunk_document(doc_key: str, title: str, text: str, cfg: ChunkerConfig,
                   tokenizer=UNICODE, deadline: Deadline | None = None) -> ChunkedDoc:
    """Normalise, mask PII, prefix the title and chunk. The title is chunked with the body
    (not added afterwards) so the first chunk, too, stays within the embedder's tokens."""
    check = deadline.check if deadline else None
    cleaned = normalise(text)
    clean_title = normalise(title)
    out = ChunkedDoc()
    if cfg.mask_pii:
        cleaned, counts = mask_pii(cleaned, check)
        clean_title, title_counts = mask_pii(clean_title)
        for k, v in list(counts.items()) + list(title_counts.items()):
            out.pii[k] = out.pii.get(k, 0) + v
    for c in chunk_text(index_text(clean_title, cleaned), cfg, tokenizer, check):
        h = sha256_text(c.text)
        out.rows.append((chunk_id(doc_key, c.ordinal, h), c.ordinal, c.text, h, c.n_tokens))
    return out


def rechunk(store: KBStore, cfg: ChunkerConfig, run_id: str, tokenizer=UNICODE,
            budget_s: float | None = None) -> dict:
    with store.transaction() as con:
        stale = con.execute("""
            SELECT d.doc_key, d.title, d.text, d.content_hash, d.source_path, d.line,
                   d.file_sha256 FROM documents d
            LEFT JOIN doc_chunk_state s USING (doc_key)
            WHERE d.active AND (s.doc_key IS NULL OR s.content_hash <> d.content_hash
                                OR s.chunker_version <> ?)""", [cfg.version]).fetchall()
        dropped = con.execute("""
            SELECT s.doc_key FROM doc_chunk_state s LEFT JOIN documents d USING (doc_key)
            WHERE d.doc_key IS NULL OR NOT d.active""").fetchall()
        before = fetch_one(con, "SELECT count(*) FROM chunks")[0]
        rows, states, problems, pii_by_doc, shas = [], [], [], {}, {}
        for doc_key, title, text, chash, path, line, file_sha in stale:
            try:
                doc = chunk_document(doc_key, title, text, cfg, tokenizer,
                                     Deadline(budget_for(len(text or ""), budget_s)))
            except BudgetExceeded as exc:
                # Recorded as done (0 chunks) for this content and chunker, so later runs do
                # not stall on it again; editing the file resolves the quarantine entry.
                problems.append(Problem(path, line, f"{doc_key}: {exc}"))
                shas[path] = file_sha
                doc = ChunkedDoc()
            total_pii = sum(doc.pii.values())
            rows.extend((cid, doc_key, ordn, body, h, ntok, chash, cfg.version, total_pii, run_id)
                        for cid, ordn, body, h, ntok in doc.rows)
            states.append((doc_key, chash, cfg.version, len(doc.rows), json.dumps(doc.pii)))
            if doc.pii:
                pii_by_doc[doc_key] = doc.pii
        # Two docs with identical content hash get distinct chunk ids (doc_key is in the id).
        persistence.replace_chunks(
            con, [s[0] for s in states] + [d[0] for d in dropped],
            pd.DataFrame(rows, columns=[
                "chunk_id", "doc_key", "ordinal", "text", "text_hash", "n_tokens",
                "doc_content_hash", "chunker_version", "pii_masked", "created_run_id"]),
            pd.DataFrame(states, columns=[
                "doc_key", "content_hash", "chunker_version", "n_chunks", "pii_counts"]))
        if problems:
            at = utc_now()
            persistence.quarantine(con, pd.DataFrame(
                [(run_id, at, p.source_path, p.line, p.reason, shas[p.source_path], True, None)
                 for p in problems],
                columns=["run_id", "event_at", "source_path", "line", "reason", "file_sha256",
                         "active", "resolved_at"]))
        lengths = [r[0] for r in con.execute("SELECT n_tokens FROM chunks").fetchall()]
        masked = con.execute("""
            SELECT d.doc_id, s.pii_counts FROM doc_chunk_state s JOIN documents d USING (doc_key)
            WHERE d.active AND s.pii_counts IS NOT NULL AND s.pii_counts <> '{}'
            ORDER BY d.doc_id""").fetchall()
        after = len(lengths)
    pii_docs = [(doc_id, json.loads(c) if isinstance(c, str) else c) for doc_id, c in masked]
    return {"docs_rechunked": len(stale), "docs_dropped": len(dropped),
            "chunks_written": len(rows), "chunks_before": before, "chunks_total": after,
            "lengths": lengths, "pii_masked": sum(sum(p.values()) for p in pii_by_doc.values()),
            "pii_docs": pii_docs, "problems": problems}


@asset(
    pool=KB_WRITER_POOL,
    deps=[raw_docs],
    group_name="ingest",
    kinds={"duckdb", "python"},
    description="Normalised, PII-masked text split into chunks measured in the embedder's "
                "own tokens (CJK-aware); only changed documents are re-chunked.",
    tags={"kb/writer": "true"},
)
def cleaned_chunks(context: AssetExecutionContext, store: KBStore, kb_config: KBConfig,
                   embedder: Embedder) -> MaterializeResult:
    t0 = time.perf_counter()
    tokenizer = kb_config.chunk_tokenizer(embedder)
    cfg = kb_config.chunker(tokenizer)
    r = rechunk(store, cfg, context.run_id, tokenizer, kb_config.doc_time_budget_s)
    lengths = r.pop("lengths")
    problems, pii_docs = r.pop("problems"), r.pop("pii_docs")
    for p in problems:
        context.log.warning(f"quarantined {p.describe()}")
    context.log.info(f"re-chunked {r['docs_rechunked']} documents into {r['chunks_written']} "
                     f"chunks; {r['chunks_total']} chunks active")
    return MaterializeResult(metadata={
        **r,
        "dagster/row_count": r["chunks_total"],  # active chunks
        "chunker": cfg.as_dict(),
        "chunker_version": cfg.version,
        "mean_tokens": round(statistics.fmean(lengths), 1) if lengths else 0.0,
        "median_tokens": float(statistics.median(lengths)) if lengths else 0.0,
        "chunk_length_distribution": MetadataValue.md(
            "Tokens per chunk (all active chunks)\n\n"
            + bar_chart(histogram(lengths, LENGTH_BINS))),
        "quarantined_this_run": len(problems),
        "pii_masked_by_kind": {k: sum(c.get(k, 0) for _, c in pii_docs) for k in PII_LABELS},
        "pii_masked_documents": MetadataValue.md(md_table(
            [(doc_id, *(c.get(k, 0) for k in PII_LABELS)) for doc_id, c in pii_docs[:200]],
            ["doc_id", *PII_LABELS]) if pii_docs else "No PII was masked."),
        "duration_s": round(time.perf_counter() - t0, 3),
    })
