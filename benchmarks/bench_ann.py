"""Issue 13 item 3: exact (flat) vs approximate (HNSW) vector index, side by side.

For each size: clustered unit vectors (a gaussian mixture on the sphere, n/100 clusters,
points at cosine ~0.7 from their centre), build time of each index, one-thread search
latency (each query timed on flat and HNSW in turn, so load hits both alike) at k=50 (what
`kb search` asks the dense index for) and recall@10 vs exact, for several efSearch; at the
first size also the whole served query (embed + hybrid search over BM25 + the index) with
scifact's queries. Optionally (--scifact N) real vectors: N scifact abstracts encoded by the
packaged model, queried with scifact's real queries.

    .venv/bin/python benchmarks/bench_ann.py [--sizes 100000,1000000] [--scifact 2000] [--quick]

Queries are new draws from the same mixture (not in the index), and separately the pipeline's
own recall measure (the version's vectors turned to cosine 0.7, resources/ann_index.py)."""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import DATASETS, load_beir, md_row, pct, write_section  # noqa: E402
from resources.ann_index import (HNSW_PARAMS, build_vector_index,  # noqa: E402
                                 measure_recall, recall_queries, set_ef_search)

DIM = 384
EF_SEARCH = (32, 64, 128)
SEARCH_K = 50  # RetrievalConfig.candidates: what hybrid search asks the dense index for


def clustered_unit_vectors(n: int, n_clusters: int, seed: int = 0,
                           centres_seed: int = 0) -> np.ndarray:
    centres = np.random.default_rng(centres_seed).standard_normal((n_clusters, DIM))
    centres = (centres / np.linalg.norm(centres, axis=1, keepdims=True)).astype(np.float32)
    rng = np.random.default_rng(seed)
    out = np.empty((n, DIM), dtype=np.float32)
    for start in range(0, n, 100_000):  # in blocks: 1M x 384 float64 noise would be 3 GB
        m = min(100_000, n - start)
        x = centres[rng.integers(0, n_clusters, m)] + \
            rng.standard_normal((m, DIM), dtype=np.float32) / np.sqrt(DIM)
        out[start:start + m] = x / np.linalg.norm(x, axis=1, keepdims=True)
    return out


def timed_build(vectors, ids, kind, params=None) -> tuple[object, float]:
    t0 = time.perf_counter()
    index = build_vector_index(vectors, ids, DIM, kind, params)
    return index, time.perf_counter() - t0


def side_by_side(flat, hnsw, queries: np.ndarray, k: int) -> tuple[list[float], list[float]]:
    """ms per single query, flat and HNSW alternately (one thread)."""
    f_ms, h_ms = [], []
    for q in queries[:20]:  # warm both
        flat.search(q[None], k), hnsw.search(q[None], k)
    for q in queries:
        t0 = time.perf_counter()
        flat.search(q[None], k)
        t1 = time.perf_counter()
        hnsw.search(q[None], k)
        t2 = time.perf_counter()
        f_ms.append((t1 - t0) * 1e3)
        h_ms.append((t2 - t1) * 1e3)
    return f_ms, h_ms


def bench_size(label: str, vectors: np.ndarray, queries: np.ndarray, n_timed: int) -> dict:
    import faiss

    ids = np.random.default_rng(1).choice(2**62, len(vectors), replace=False).astype(np.int64)
    faiss.omp_set_num_threads(os.cpu_count() or 1)  # builds use the cores, as `kb build` does
    load0 = os.getloadavg()[0]
    flat, flat_s = timed_build(vectors, ids, "flat")
    hnsw, hnsw_s = timed_build(vectors, ids, "hnsw", HNSW_PARAMS)
    faiss.omp_set_num_threads(1)  # as `kb search` / `kb serve` query
    own = recall_queries(vectors, 200)
    truth_new = flat.search(queries, 10)[1]
    truth_own = flat.search(own, 10)[1]
    rows = []
    for ef in EF_SEARCH:
        set_ef_search(hnsw, ef)
        f_ms, h_ms = side_by_side(flat, hnsw, queries[:n_timed], SEARCH_K)
        rows.append({"ef": ef, "recall_new": measure_recall(hnsw, vectors, ids, queries, 10,
                                                            truth_new),
                     "recall_own": measure_recall(hnsw, vectors, ids, own, 10, truth_own),
                     "flat_p50": pct(f_ms, 50), "flat_p95": pct(f_ms, 95),
                     "hnsw_p50": pct(h_ms, 50), "hnsw_p95": pct(h_ms, 95)})
        print(label, rows[-1], flush=True)
    set_ef_search(hnsw, HNSW_PARAMS["efSearch"])
    return {"label": label, "n": len(vectors), "flat_build_s": flat_s, "hnsw_build_s": hnsw_s,
            "rows": rows, "load": (load0, os.getloadavg()[0]), "flat": flat, "hnsw": hnsw,
            "ids": ids}


def bench_hybrid(result: dict, query_texts: list[str], vocab_texts: list[str]) -> dict:
    """The served query path (embed + hybrid search) over flat and HNSW, side by side."""
    import faiss
    import pandas as pd
    import torch

    from kb_assets.retrieval import RetrievalConfig, hybrid_search
    from kb_core.lexical import BM25Index
    from resources.embedder import Embedder
    from resources.vector_index import KBVersion

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)
    n, ids = result["n"], result["ids"]
    rng = np.random.default_rng(0)
    words = " ".join(vocab_texts).split()
    texts = [" ".join(words[j] for j in rng.integers(0, len(words), 60)) for _ in range(n)]
    order = np.argsort(ids)  # a manifest is sorted by chunk id
    manifest = pd.DataFrame({"chunk_id": ids[order], "doc_id": [f"d{i}" for i in range(n)],
                             "source_path": "s", "title": "", "text": [texts[i] for i in order]})
    lexical = BM25Index.build(manifest["text"].tolist())
    versions = {kind: KBVersion(0, Path("."), {}, result[kind], manifest, lexical)
                for kind in ("flat", "hnsw")}
    embedder = Embedder()
    cfg = RetrievalConfig(min_dense_score=-1.0)  # never short-circuit: time the full path
    for q in query_texts[:10]:
        for v in versions.values():
            hybrid_search(v, q, embedder.encode_query(q), 5, cfg)
    total = {"flat": [], "hnsw": []}
    for q in query_texts:
        for kind, v in versions.items():
            t0 = time.perf_counter()
            hybrid_search(v, q, embedder.encode_query(q), 5, cfg)
            total[kind].append((time.perf_counter() - t0) * 1e3)
    return {kind: (pct(ms, 50), pct(ms, 95)) for kind, ms in total.items()} | {
        "queries": len(query_texts)}


def scifact_vectors(n_docs: int):
    from resources.embedder import Embedder

    corpus, queries, qrels = load_beir(DATASETS / "scifact")
    docs = list(corpus.values())[:n_docs]
    emb = Embedder()
    t0 = time.perf_counter()
    vectors = emb.encode([f"{t}\n{x}" for t, x in docs])
    qv = emb.encode([queries[q] for q in qrels if q in queries])
    print(f"scifact: encoded {len(docs)} docs and {len(qv)} queries in "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return np.asarray(vectors, dtype=np.float32), np.asarray(qv, dtype=np.float32)


def markdown(results: list[dict], hybrid: dict | None) -> str:
    p = HNSW_PARAMS
    out = [f"Exact `IndexFlatIP` vs `IndexHNSWFlat` (M={p['M']}, efConstruction="
           f"{p['efConstruction']}), both inside `IndexIDMap2`, inner product on unit "
           "vectors, dim 384 (`benchmarks/bench_ann.py`). Synthetic sets: a gaussian mixture on "
           "the sphere (n/100 clusters, points at cosine ~0.7 from their centre); queries are "
           "new draws from the mixture (*recall new*) and, as `kb build` measures it, 200 of the "
           "indexed vectors turned to cosine 0.7 (*recall own*). Search: one thread, k=50 (what "
           "hybrid search asks the dense index for), flat and HNSW timed alternately per query; "
           "recall@10 against exact search. Builds use both cores.", "",
           md_row("set", "vectors", "flat build s", "HNSW build s", "efSearch",
                  "recall@10 new", "recall@10 own", "flat p50 / p95 ms", "HNSW p50 / p95 ms",
                  "load avg (start, end)"),
           md_row(*["---"] * 10)]
    for r in results:
        for i, row in enumerate(r["rows"]):
            out.append(md_row(
                r["label"] if i == 0 else "", f"{r['n']:,}" if i == 0 else "",
                f"{r['flat_build_s']:.2f}" if i == 0 else "",
                f"{r['hnsw_build_s']:.0f}" if i == 0 else "",
                row["ef"], f"{row['recall_new']:.3f}", f"{row['recall_own']:.3f}",
                f"{row['flat_p50']:.2f} / {row['flat_p95']:.2f}",
                f"{row['hnsw_p50']:.2f} / {row['hnsw_p95']:.2f}",
                f"{r['load'][0]:.1f}, {r['load'][1]:.1f}" if i == 0 else ""))
    if hybrid:
        out += ["", f"Served query at {hybrid['n']:,} chunks (embed + hybrid search, one thread, "
                f"{hybrid['queries']} scifact queries, BM25 over random-word texts, each query "
                "on flat then HNSW at efSearch "
                f"{HNSW_PARAMS['efSearch']}): flat p50 {hybrid['flat'][0]:.1f} / p95 "
                f"{hybrid['flat'][1]:.1f} ms, HNSW p50 {hybrid['hnsw'][0]:.1f} / p95 "
                f"{hybrid['hnsw'][1]:.1f} ms."]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--sizes", default="100000", help="comma-separated; empty: none")
    ap.add_argument("--queries", type=int, default=500, help="recall queries per set")
    ap.add_argument("--timed", type=int, default=300, help="latency-timed queries per efSearch")
    ap.add_argument("--scifact", type=int, default=0, help="also N real scifact abstracts")
    ap.add_argument("--no-hybrid", action="store_true")
    ap.add_argument("--quick", action="store_true", help="10k vectors, no hybrid: a smoke run")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    sizes = [10_000] if args.quick else [int(s) for s in args.sizes.split(",") if s.strip()]
    print(f"load average {os.getloadavg()}", flush=True)
    results, hybrid = [], None
    for n in sizes:
        k = max(10, n // 100)
        vectors = clustered_unit_vectors(n, k, seed=0)
        queries = clustered_unit_vectors(args.queries, k, seed=99)  # same centres, new draws
        r = bench_size(f"clustered {n // 1000}k" if n < 10**6 else f"clustered {n / 1e6:g}M",
                       vectors, queries, args.timed)
        if n == sizes[0] and not (args.quick or args.no_hybrid):
            corpus, qtexts, _ = load_beir(DATASETS / "scifact")
            vocab = [t for _, t in list(corpus.values())[:2000]]
            hybrid = {"n": n, **bench_hybrid(r, list(qtexts.values())[:300], vocab)}
            print("hybrid", hybrid, flush=True)
        results.append({k2: v for k2, v in r.items() if k2 not in ("flat", "hnsw", "ids")})
        del r, vectors
    if args.scifact:
        vectors, qv = scifact_vectors(args.scifact)
        r = bench_size(f"scifact {len(vectors)} abstracts (real queries)", vectors, qv,
                       min(args.timed, len(qv)))
        results.append({k2: v for k2, v in r.items() if k2 not in ("flat", "hnsw", "ids")})
    md = markdown(results, hybrid)
    print(md)
    if not (args.no_write or args.quick):
        write_section("ann", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
