"""embeddings: a vector for every active chunk, from a DuckDB cache keyed by (embedding model
id, chunk text hash). Only texts the cache lacks are encoded; each batch is committed as it
finishes, so a crashed run loses at most one batch of work."""


import time

import numpy as np
import pandas as pd
from dagster import AssetExecutionContext, MaterializeResult, asset

from kb_core import progress, settings
from kb_core.clock import utc_now
from resources import persistence
from resources.embedder import Embedder
from resources.store import KBStore, fetch_one

from . import embed_fanout
from .chunks import cleaned_chunks
from kb_core.hooks import fault_point
from kb_core.writer_lock import KB_WRITER_POOL

PROGRESS_EVERY = 128  # texts per encode call: how often a terminal progress bar moves


def encode_slices(embedder: Embedder, texts: list[str], done: int, total: int) -> np.ndarray:
    """`embedder.encode(texts)` in slices, reporting progress after each (same vectors)."""
    out = []
    for i in range(0, len(texts), PROGRESS_EVERY):
        out.append(embedder.encode(texts[i:i + PROGRESS_EVERY]))
        progress.report("embedding", done + i + len(out[-1]), total, "chunks")
    return np.concatenate(out) if out else embedder.encode([])


def missing_texts(store: KBStore, model_id: str) -> tuple[list[tuple[str, str]], int]:
    with store.connect() as con:
        todo = con.execute("""
            SELECT text_hash, any_value(text) FROM chunks
            WHERE text_hash NOT IN (SELECT text_hash FROM embedding_cache WHERE model_id = ?)
            GROUP BY text_hash""", [model_id]).fetchall()
        total = fetch_one(con, "SELECT count(DISTINCT text_hash) FROM chunks")[0]
    return todo, total


def encode_batches(n: int, commit_every: int) -> list[list[tuple[int, int]]]:
    """The commit batches of a backlog of `n` texts, each as its encode calls ([start, end)
    slices of PROGRESS_EVERY texts, as encode_slices makes them): the fan-out's workers encode
    exactly these slices, so they give the encoder the batches (and padding) the in-process
    path gives it."""
    return [[(a, min(start + commit_every, n, a + PROGRESS_EVERY))
             for a in range(start, min(start + commit_every, n), PROGRESS_EVERY)]
            for start in range(0, n, commit_every)]


def embed_missing(store: KBStore, embedder: Embedder, log=None) -> dict:
    """Encode the chunk texts the cache lacks for this embedder and commit them batch by
    batch: in this process, or (KB_EMBED_WORKERS > 1 and at least KB_EMBED_FANOUT_MIN of
    them) in worker processes whose shards are merged here (kb_assets/embed_fanout.py)."""
    embed_fanout.clean_leftovers(store, log)
    model_id = embedder.model_id
    todo, total = missing_texts(store, model_id)
    # Similar lengths per batch waste less padding; ties by hash, so the batches (and with
    # them the vectors, to the last bit) do not depend on the order DuckDB returns rows in.
    todo.sort(key=lambda r: (len(r[1]), r[0]))
    embedder = embedder.for_backlog(len(todo))  # same vectors; torch for a large backlog
    commit_every = settings.get("KB_EMBED_COMMIT_EVERY")
    workers = embed_fanout.fanout_workers(len(todo))
    base = {"embedding_model": model_id, "chunks_reused_from_cache": total - len(todo),
            "distinct_chunk_texts": total, "embed_workers": workers,
            "encoder_backend": embedder.active_backend if todo else None}
    if workers > 1:
        r = embed_fanout.embed_in_workers(store, embedder, todo,
                                          encode_batches(len(todo), commit_every), workers, log)
        return {**base, **r}
    t0 = time.perf_counter()
    encode_s = 0.0
    for start in range(0, len(todo), commit_every):
        part = todo[start:start + commit_every]
        t1 = time.perf_counter()
        vecs = encode_slices(embedder, [t for _, t in part], start, len(todo))
        encode_s += time.perf_counter() - t1
        df = pd.DataFrame({"model_id": model_id, "text_hash": [h for h, _ in part],
                           "vector": [v.tobytes() for v in vecs], "created_at": utc_now()})
        with store.connect() as con:
            persistence.cache_embeddings(con, df)
        fault_point("embedding:after_first_batch")
        if log:
            done = start + len(part)
            log.info(f"embedded {done}/{len(todo)} chunks "
                     f"({done / max(time.perf_counter() - t0, 1e-9):.0f}/s)")
    return {**base, "dim": embedder.dim if todo else None, "chunks_embedded": len(todo),
            "encode_s": round(encode_s, 3),
            "texts_per_s": round(len(todo) / encode_s, 1) if encode_s else None}


def load_vectors(store: KBStore, model_id: str, text_hashes: list[str], dim: int) -> np.ndarray:
    """Vectors for `text_hashes`, in that order; raises if any is missing from the cache."""
    if not text_hashes:
        return np.zeros((0, dim), np.float32)
    with store.connect() as con:
        con.register("wanted", pd.DataFrame({"text_hash": list(dict.fromkeys(text_hashes))}))
        rows = con.execute("""
            SELECT e.text_hash, e.vector FROM embedding_cache e JOIN wanted w USING (text_hash)
            WHERE e.model_id = ?""", [model_id]).fetchall()
    found = {h: i for i, (h, _) in enumerate(rows)}
    missing = [h for h in text_hashes if h not in found]
    if missing:
        raise RuntimeError(f"{len(missing)} chunk texts have no cached embedding for "
                           f"{model_id}; materialize `embeddings` first")
    matrix = np.frombuffer(b"".join(v for _, v in rows), dtype=np.float32).reshape(len(rows), dim)
    return matrix[[found[h] for h in text_hashes]]


QUESTION_CACHE_SUFFIX = "#questions"  # kept apart from chunk vectors (the checks count those)


def encode_cached(store: KBStore, embedder: Embedder, texts: list[str]) -> np.ndarray:
    """Question vectors through the embedding cache: calibration encodes the same unrelated
    questions and mostly the same synthetic questions for every version, so a publish encodes
    only the new ones (the cost of a change, not of the KB)."""
    from kb_core.text import sha256_text as text_hash

    key = embedder.model_id + QUESTION_CACHE_SUFFIX
    hashes = [text_hash(t) for t in texts]
    found: dict[str, bytes] = {}
    if hashes:
        with store.connect() as con:
            con.register("wanted", pd.DataFrame({"text_hash": list(dict.fromkeys(hashes))}))
            found = dict(con.execute("""
                SELECT e.text_hash, e.vector FROM embedding_cache e JOIN wanted w USING (text_hash)
                WHERE e.model_id = ?""", [key]).fetchall())
    todo = list(dict.fromkeys(t for t, h in zip(texts, hashes) if h not in found))
    if todo:
        vecs = embedder.encode_questions(todo)
        new = {text_hash(t): v.astype(np.float32).tobytes() for t, v in zip(todo, vecs)}
        with store.transaction() as con:
            persistence.cache_embeddings(con, pd.DataFrame({
                "model_id": key, "text_hash": list(new), "vector": list(new.values()),
                "created_at": utc_now()}))
        found.update(new)
    if not texts:
        return np.zeros((0, embedder.dim), np.float32)
    return np.stack([np.frombuffer(found[h], dtype=np.float32) for h in hashes])


@asset(
    pool=KB_WRITER_POOL,
    deps=[cleaned_chunks],
    group_name="index",
    kinds={"duckdb", "pytorch"},
    description="Chunk vectors from an embedding cache keyed by (model id, text hash); "
                "only uncached chunks are encoded.",
    tags={"kb/writer": "true"},
)
def embeddings(context: AssetExecutionContext, store: KBStore,
               embedder: Embedder) -> MaterializeResult:
    t0 = time.perf_counter()
    r = embed_missing(store, embedder, log=context.log)
    r["duration_s"] = round(time.perf_counter() - t0, 3)
    context.log.info(f"{r['chunks_embedded']} chunks embedded, "
                     f"{r['chunks_reused_from_cache']} reused from cache")
    r["dagster/row_count"] = r["distinct_chunk_texts"]  # vectors the KB needs, all cached
    return MaterializeResult(metadata={k: v for k, v in r.items() if v is not None})
