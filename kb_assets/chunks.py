"""cleaned_chunks: normalised, PII-masked text split by the configured chunker. Only
documents whose content or chunker settings changed are re-chunked; an edited document's
old chunks are replaced, never kept beside the new ones."""


import statistics
import time

import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, MetadataValue, asset

from resources.config import KBConfig
from resources.store import KBStore, fetch_one

from .chunking import ChunkerConfig, chunk_id, chunk_text
from .ingest import raw_docs
from .report import bar_chart, histogram
from .text import mask_pii, normalise, sha256_text

LENGTH_BINS = [0, 25, 50, 100, 150, 200, 300, 500]


def index_text(title: str, body: str) -> str:
    """What is embedded and indexed: the title gives a chunk its topic."""
    title = (title or "").strip()
    return body if not title or body.startswith(title) else f"{title}\n{body}"


def chunk_document(doc_key: str, title: str, text: str, cfg: ChunkerConfig):
    """Yield chunk rows (chunk_id, ordinal, text, text_hash, n_tokens, pii_masked)."""
    cleaned = normalise(text)
    pii_total = 0
    if cfg.mask_pii:
        cleaned, counts = mask_pii(cleaned)
        pii_total = sum(counts.values())
    clean_title, _ = mask_pii(normalise(title)) if cfg.mask_pii else (normalise(title), {})
    for c in chunk_text(cleaned, cfg):
        body = index_text(clean_title, c.text) if c.ordinal == 0 else c.text
        h = sha256_text(body)
        yield chunk_id(doc_key, c.ordinal, h), c.ordinal, body, h, c.n_tokens, pii_total


def rechunk(store: KBStore, cfg: ChunkerConfig, run_id: str) -> dict:
    with store.transaction() as con:
        stale = con.execute("""
            SELECT d.doc_key, d.title, d.text, d.content_hash FROM documents d
            LEFT JOIN doc_chunk_state s USING (doc_key)
            WHERE d.active AND (s.doc_key IS NULL OR s.content_hash <> d.content_hash
                                OR s.chunker_version <> ?)""", [cfg.version]).fetchall()
        dropped = con.execute("""
            SELECT s.doc_key FROM doc_chunk_state s LEFT JOIN documents d USING (doc_key)
            WHERE d.doc_key IS NULL OR NOT d.active""").fetchall()
        before = fetch_one(con, "SELECT count(*) FROM chunks")[0]
        rows, states = [], []
        for doc_key, title, text, chash in stale:
            doc_rows = [(cid, doc_key, ordn, body, h, ntok, chash, cfg.version, pii, run_id)
                        for cid, ordn, body, h, ntok, pii in chunk_document(doc_key, title, text, cfg)]
            rows.extend(doc_rows)
            states.append((doc_key, chash, cfg.version, len(doc_rows)))
        touched = pd.DataFrame({"doc_key": [s[0] for s in states] + [d[0] for d in dropped]})
        if len(touched):
            con.register("touched_docs", touched)
            con.execute("DELETE FROM chunks WHERE doc_key IN (SELECT doc_key FROM touched_docs)")
            con.execute("DELETE FROM doc_chunk_state WHERE doc_key IN (SELECT doc_key FROM touched_docs)")
        if rows:
            con.register("new_chunks", pd.DataFrame(rows, columns=[
                "chunk_id", "doc_key", "ordinal", "text", "text_hash", "n_tokens",
                "doc_content_hash", "chunker_version", "pii_masked", "created_run_id"]))
            # Two docs with identical content hash to distinct ids (doc_key is in the id).
            con.execute("INSERT INTO chunks SELECT * FROM new_chunks")
            con.register("new_states", pd.DataFrame(states, columns=[
                "doc_key", "content_hash", "chunker_version", "n_chunks"]))
            con.execute("INSERT INTO doc_chunk_state SELECT * FROM new_states")
        lengths = [r[0] for r in con.execute("SELECT n_tokens FROM chunks").fetchall()]
        after = len(lengths)
    return {"docs_rechunked": len(stale), "docs_dropped": len(dropped),
            "chunks_written": len(rows), "chunks_before": before, "chunks_total": after,
            "lengths": lengths,
            "pii_masked": sum(r[8] for r in rows if r[2] == 0)}


@asset(
    deps=[raw_docs],
    group_name="ingest",
    kinds={"duckdb", "python"},
    description="Normalised, PII-masked text split into token- and CJK-aware chunks; "
                "only changed documents are re-chunked.",
    tags={"kb/writer": "true"},
)
def cleaned_chunks(context: AssetExecutionContext, store: KBStore,
                   kb_config: KBConfig) -> MaterializeResult:
    t0 = time.perf_counter()
    cfg = kb_config.chunker()
    r = rechunk(store, cfg, context.run_id)
    lengths = r.pop("lengths")
    context.log.info(f"re-chunked {r['docs_rechunked']} documents into {r['chunks_written']} "
                     f"chunks; {r['chunks_total']} chunks active")
    return MaterializeResult(metadata={
        **r,
        "chunker": cfg.as_dict(),
        "chunker_version": cfg.version,
        "mean_tokens": round(statistics.fmean(lengths), 1) if lengths else 0.0,
        "median_tokens": float(statistics.median(lengths)) if lengths else 0.0,
        "chunk_length_distribution": MetadataValue.md(
            "Tokens per chunk (all active chunks)\n\n"
            + bar_chart(histogram(lengths, LENGTH_BINS))),
        "duration_s": round(time.perf_counter() - t0, 3),
    })
