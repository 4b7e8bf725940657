"""Issue 2 benchmark: incremental builds, no-change runs over many files, embedding
throughput, query latency at 100k chunks and retrieval quality (dense / lexical / hybrid).

    .venv/bin/python benchmarks/bench_kb.py [--dataset ../shared/datasets/scifact] [--quick]

Datasets are read from their path and never copied into the repository."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchmarks.common import (DATASETS, load_beir, machine, md_row, median, pct,  # noqa: E402
                               write_section)
from kb_core.paths import Paths  # noqa: E402


def fresh_paths(root: Path, name: str) -> Paths:
    home = root / name
    os.environ["KB_HOME"] = str(home)
    os.environ.pop("DAGSTER_HOME", None)
    os.environ.pop("KB_INBOX", None)
    return Paths.from_env().ensure()


def write_jsonl(inbox: Path, name: str, docs: list[tuple[str, str, str]]) -> None:
    with open(inbox / name, "w", encoding="utf-8") as f:
        for did, title, text in docs:
            f.write(json.dumps({"id": did, "title": title, "text": text}, ensure_ascii=False) + "\n")


def timed_build(paths: Paths) -> tuple[float, dict]:
    from tests.kbtest import materialized, run_job

    t0 = time.perf_counter()
    result = run_job(paths, "index_job")
    elapsed = time.perf_counter() - t0
    if not result.success:
        raise RuntimeError(f"build failed in {paths.home}")
    return elapsed, materialized(result)


# --- 1. full vs incremental ------------------------------------------------------------------
def bench_incremental(root: Path, label: str, docs: list[tuple[str, str, str]]) -> dict:
    n_new = max(1, len(docs) // 100)
    base, extra = docs[:-n_new], docs[-n_new:]
    paths = fresh_paths(root, f"incr-{label}")
    for i in range(0, len(base), 100):
        write_jsonl(paths.inbox, f"part-{i // 100:05d}.jsonl", base[i:i + 100])
    full_s, md_full = timed_build(paths)
    write_jsonl(paths.inbox, "added.jsonl", extra)
    incr_s, md_incr = timed_build(paths)
    return {"label": label, "docs": len(base), "added": n_new, "full_s": full_s, "incr_s": incr_s,
            "chunks": md_full["faiss_index"]["n_chunks"],
            "embedded_incr": md_incr["embeddings"]["chunks_embedded"], "paths": paths}


# --- 2. nothing changed over many files -----------------------------------------------------
def kb_cli(code_root: Path, *args: str) -> tuple[float, str]:
    """`kb ARGS` of the checkout at `code_root` in a new process: (seconds, stdout)."""
    env = {**os.environ, "PYTHONPATH": str(code_root)}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "dagster_project.cli", *args], cwd=code_root,
                       env=env, capture_output=True, text=True)
    elapsed = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"kb {' '.join(args)} ({code_root}) failed: {r.stdout[-2000:]}"
                           f"{r.stderr[-2000:]}")
    return elapsed, r.stdout


def bench_noop(root: Path, n_files: int, repeats: int = 3,
               compare_with: Path | None = None, full_repeats: int | None = None) -> dict:
    """`kb build --select index` in a new process over `n_files` unchanged files: skipped
    (this checkout), alternated with `--force` (the same no-change work done in full); then,
    if given, another checkout's `kb build` (which knows no skip) on the same KB."""
    from benchmarks.common import REPO

    paths = fresh_paths(root, "noop")
    rng = random.Random(7)
    words = "leave overtime vpn expense travel laptop password parking visitor training".split()
    for i in range(n_files):
        d = paths.inbox / f"d{i // 1000:02d}"
        d.mkdir(exist_ok=True)
        (d / f"doc{i:05d}.txt").write_text(
            f"Policy {i}. " + " ".join(rng.choice(words) for _ in range(40)), encoding="utf-8")
    first_s, _ = kb_cli(REPO, "build", "--select", "index")
    full_repeats = repeats if full_repeats is None else full_repeats
    skip, force = [], []
    for i in range(repeats):  # a forced run re-records, so the next plain build skips again
        s, out = kb_cli(REPO, "build", "--select", "index")
        assert "nothing changed since" in out, out
        skip.append(s)
        if i < full_repeats:
            force.append(kb_cli(REPO, "build", "--select", "index", "--force")[0])
    other = []
    if compare_with is not None:  # after ours: its runs write DuckDB, which ends our skipping
        other = [kb_cli(compare_with, "build", "--select", "index")[0]
                 for _ in range(full_repeats)]
    return {"files": n_files, "first_s": first_s, "skip_s": skip, "force_s": force,
            "other_s": other, "compare_with": compare_with, "loadavg": os.getloadavg()}


def noop_lines(noop: dict) -> list[str]:
    def row(label, runs):
        return md_row(label, ", ".join(f"{x:.2f}" for x in runs), f"{median(runs):.2f}", "<= 3 s")
    lines = [f"### Nothing changed, {noop['files']:,} unchanged files: `kb build --select index` "
             "in a new process", "",
             md_row("how", "runs s (each)", "median s", "target"), md_row(*["---"] * 4),
             row("skipped: nothing changed since the last build (this checkout)", noop["skip_s"]),
             row("`--force`: the no-change run done in full, alternated", noop["force_s"])]
    if noop["other_s"]:
        lines.append(row(f"`{noop['compare_with']}` (no skip), after", noop["other_s"]))
    la = noop["loadavg"]
    lines += ["", f"First build {noop['first_s']:.0f} s. A skip reads the inbox listing (hashing "
              "only files whose size or mtime moved), the KB_* settings, the code files and "
              "library versions, and the DuckDB, versions and serving-pointer state left by the "
              "last successful build (`$KB_HOME/last_build.json`); no Dagster run, no Great "
              "Expectations import, no model load. Load average (1/5/15 min) at the end: "
              f"{la[0]:.1f} / {la[1]:.1f} / {la[2]:.1f} on {os.cpu_count()} cores."]
    return lines


# --- 3. embedding throughput: pipeline vs bare encode ---------------------------------------
def bench_throughput(paths: Paths, n: int, repeats: int = 2) -> dict:
    from kb_assets.embed import embed_missing
    from resources import persistence
    from resources.embedder import Embedder
    from resources.store import KBStore

    store, embedder = KBStore(db_path=str(paths.db)), Embedder()
    with store.connect() as con:
        rows = con.execute("SELECT DISTINCT text_hash, text FROM chunks ORDER BY text_hash LIMIT ?",
                           [n]).fetchall()
    texts = [t for _, t in rows]
    model = embedder.model()
    bare, pipe = [], []
    for _ in range(repeats):  # alternate, side by side
        t0 = time.perf_counter()
        model.encode(texts, batch_size=embedder.batch_size, normalize_embeddings=True,
                     convert_to_numpy=True, show_progress_bar=False)
        bare.append(time.perf_counter() - t0)
        with store.connect() as con:
            persistence.delete_in(con, "embedding_cache", "text_hash", [h for h, _ in rows])
        t0 = time.perf_counter()
        r = embed_missing(store, embedder)
        pipe.append(time.perf_counter() - t0)
        assert r["chunks_embedded"] == len(rows)
    return {"texts": len(texts), "bare_s": median(bare), "pipeline_s": median(pipe),
            "bare_tps": len(texts) / median(bare), "pipeline_tps": len(texts) / median(pipe)}


# --- 4. query latency at 100k chunks ----------------------------------------------------------
def bench_latency(n_chunks: int, queries: list[str], vocab_texts: list[str]) -> dict:
    import faiss

    from kb_core.lexical import BM25Index
    from kb_assets.retrieval import RetrievalConfig, hybrid_search
    from resources.embedder import Embedder
    from resources.vector_index import KBVersion, build_faiss_index

    import torch

    faiss.omp_set_num_threads(1)
    torch.set_num_threads(1)  # as `kb search` and `kb serve` do for single queries
    rng = np.random.default_rng(0)
    words = " ".join(vocab_texts).split()
    texts = [" ".join(words[j] for j in rng.integers(0, len(words), 60)) for _ in range(n_chunks)]
    t0 = time.perf_counter()
    lexical = BM25Index.build(texts)
    bm25_s = time.perf_counter() - t0
    vecs = rng.standard_normal((n_chunks, 384), dtype=np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    ids = np.arange(1, n_chunks + 1, dtype=np.int64)
    manifest = pd.DataFrame({"chunk_id": ids, "doc_id": [f"d{i}" for i in ids], "source_path": "s",
                             "title": "", "text": texts})
    version = KBVersion(0, Path("."), {}, build_faiss_index(vecs, ids, 384), manifest, lexical)
    embedder = Embedder()
    cfg = RetrievalConfig(min_dense_score=-1.0)  # never short-circuit: time the full path
    for q in queries[:10]:
        hybrid_search(version, q, embedder.encode_query(q), 5, cfg)
    total, embed, search = [], [], []
    for q in queries:
        t0 = time.perf_counter()
        v = embedder.encode_query(q)
        t1 = time.perf_counter()
        hybrid_search(version, q, v, 5, cfg)
        t2 = time.perf_counter()
        total.append((t2 - t0) * 1e3)
        embed.append((t1 - t0) * 1e3)
        search.append((t2 - t1) * 1e3)
    return {"chunks": n_chunks, "queries": len(queries), "bm25_build_s": bm25_s,
            "p50": pct(total, 50), "p95": pct(total, 95), "embed_p50": pct(embed, 50),
            "search_p50": pct(search, 50), "search_p95": pct(search, 95)}


# --- 5. retrieval quality ------------------------------------------------------------------------
def bench_quality(paths: Paths, queries: dict[str, str], qrels: dict, label: str) -> list[dict]:
    from kb_assets.metrics import ndcg_at_k, recall_at_k
    from kb_assets.retrieval import RetrievalConfig
    from kb_assets.searcher import Searcher

    from kb_core.serving import resolve

    searcher = Searcher.open(paths, resolve(paths).version)
    ungated = RetrievalConfig(min_dense_score=-1.0, min_lexical_score=0.0, min_lexical_coverage=0.0)
    qids = [q for q in qrels if q in queries]
    texts = [queries[q] for q in qids]
    rows = []
    for mode, cfg, name in [("dense", ungated, "dense"), ("lexical", ungated, "lexical"),
                            ("hybrid", ungated, "hybrid"), ("hybrid", searcher.config,
                                                            "hybrid + relevance gate (served)")]:
        searcher.config = cfg
        results = searcher.search_batch(texts, k=10, mode=mode)
        ranked = [[h.doc_id for h in res] for res in results]
        rows.append({"dataset": label, "mode": name, "queries": len(qids),
                     "recall@10": float(np.mean([recall_at_k(r, qrels[q], 10) for r, q in zip(ranked, qids)])),
                     "ndcg@10": float(np.mean([ndcg_at_k(r, qrels[q], 10) for r, q in zip(ranked, qids)])),
                     "zero_hit": float(np.mean([len(r) == 0 for r in ranked]))})
    return rows


def beir_subset(folder: Path, max_docs: int, seed: int = 1):
    corpus, queries, qrels = load_beir(folder)
    relevant = {d for rel in qrels.values() for d in rel if d in corpus}
    rng = random.Random(seed)
    others = [d for d in corpus if d not in relevant]
    rng.shuffle(others)
    chosen = list(relevant)[:max_docs] + others[:max(0, max_docs - len(relevant))]
    rng.shuffle(chosen)
    kept = set(chosen)
    qrels = {q: rel for q, rel in qrels.items() if set(rel) <= kept}
    return [(d, *corpus[d]) for d in chosen], queries, qrels


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dataset", type=Path, default=DATASETS / "scifact")
    ap.add_argument("--max-docs", type=int, default=2000)
    ap.add_argument("--generated-docs", type=int, default=2000)
    ap.add_argument("--noop-files", type=int, default=10_000)
    ap.add_argument("--latency-chunks", type=int, default=100_000)
    ap.add_argument("--throughput-texts", type=int, default=600)
    ap.add_argument("--quick", action="store_true", help="small sizes, for a smoke run")
    ap.add_argument("--only", choices=["noop"], default=None,
                    help="run one part and update only its table in BENCHMARKS.md")
    ap.add_argument("--noop-full-runs", type=int, default=None,
                    help="forced / other-checkout no-change runs (default: as many as skips)")
    ap.add_argument("--compare-with", type=Path, default=None,
                    help="another checkout whose `kb build` is timed on the same no-change KB")
    args = ap.parse_args()
    if args.quick:
        args.max_docs, args.generated_docs, args.noop_files = 300, 300, 1000
        args.latency_chunks, args.throughput_texts = 10_000, 100
    if args.only == "noop":
        from benchmarks.common import write_subsection

        root = Path(tempfile.mkdtemp(prefix="kb-bench-"))
        try:
            noop = bench_noop(root, args.noop_files, compare_with=args.compare_with,
                              full_repeats=args.noop_full_runs)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        text = "\n".join(noop_lines(noop)) + f"\n\n_Measured {machine()}_\n"
        write_subsection("kb", "### Nothing changed", text)
        print(text)
        return

    from resources.embedder import Embedder

    t0 = time.perf_counter()
    Embedder().model()
    print(f"model load {time.perf_counter() - t0:.1f}s (excluded from the timings below)")
    root = Path(tempfile.mkdtemp(prefix="kb-bench-"))
    try:
        rng = random.Random(3)
        beir_docs, queries, qrels = beir_subset(args.dataset, args.max_docs)
        vocab = [t for _, _, t in beir_docs[:500]]
        gen_words = " ".join(vocab).split()
        generated = [(f"gen-{i}", f"Generated {i}",
                      " ".join(rng.choice(gen_words) for _ in range(rng.randint(80, 250))))
                     for i in range(args.generated_docs)]
        incr = [bench_incremental(root, "generated", generated)]
        print("incremental (generated):", {k: v for k, v in incr[0].items() if k != "paths"})
        incr.append(bench_incremental(root, args.dataset.name, beir_docs))
        print(f"incremental ({args.dataset.name}):", {k: v for k, v in incr[1].items() if k != "paths"})
        quality = bench_quality(incr[1]["paths"], queries, qrels, f"{args.dataset.name} ({len(beir_docs)} docs)")
        faq = DATASETS / "stackfaq_en"
        if faq.exists():
            fdocs, fq, fqrels = beir_subset(faq, 10_000)
            paths = fresh_paths(root, "stackfaq")
            write_jsonl(paths.inbox, "faq.jsonl", fdocs)
            timed_build(paths)
            quality += bench_quality(paths, fq, fqrels, "stackfaq_en")
        for row in quality:
            print("quality:", row)
        thr = bench_throughput(incr[1]["paths"], args.throughput_texts)
        print("throughput:", thr)
        noop = bench_noop(root, args.noop_files, compare_with=args.compare_with)
        print("no-op:", noop)
        lat_queries = [queries[q] for q in list(qrels)[:150]] + [
            json.loads(x)["question"] for x in (Path(__file__).resolve().parents[1] /
                                               "sample_data/golden.jsonl").read_text().splitlines()][:100]
        lat = bench_latency(args.latency_chunks, lat_queries, vocab)
        print("latency:", lat)
    finally:
        shutil.rmtree(root, ignore_errors=True)

    lines = ["## Knowledge-base build and retrieval (`benchmarks/bench_kb.py`)", "",
             "### Full vs incremental build (+1% documents), in-process `index_job`, model preloaded", "",
             md_row("corpus", "docs", "chunks", "full build s", "+docs", "incremental s",
                    "chunks embedded", "incremental / full", "target"),
             md_row(*["---"] * 9)]
    for r in incr:
        lines.append(md_row(r["label"], r["docs"], r["chunks"], f"{r['full_s']:.1f}", r["added"],
                            f"{r['incr_s']:.2f}", r["embedded_incr"],
                            f"{100 * r['incr_s'] / r['full_s']:.1f}%", "<= 5%"))
    lines += [""] + noop_lines(noop) + [
              "", "### Embedding throughput: pipeline (cache lookups, batching, DuckDB writes) vs bare "
              "`SentenceTransformer.encode`, same chunks, alternated", "",
              md_row("texts", "bare texts/s", "pipeline texts/s", "pipeline / bare", "target"),
              md_row(*["---"] * 5),
              md_row(thr["texts"], f"{thr['bare_tps']:.1f}", f"{thr['pipeline_tps']:.1f}",
                     f"{100 * thr['pipeline_tps'] / thr['bare_tps']:.0f}%", ">= 90%"),
              "", f"### Query latency: embed + hybrid search at {lat['chunks']:,} chunks "
              f"(one thread, {lat['queries']} EN + zh queries)", "",
              md_row("p50 ms", "p95 ms", "embed p50 ms", "search p50 ms", "search p95 ms", "target"),
              md_row(*["---"] * 6),
              md_row(f"{lat['p50']:.1f}", f"{lat['p95']:.1f}", f"{lat['embed_p50']:.1f}",
                     f"{lat['search_p50']:.1f}", f"{lat['search_p95']:.1f}", "p95 <= 20 ms"),
              "", "### Retrieval quality", "",
              md_row("dataset", "mode", "queries", "recall@10", "nDCG@10", "zero-hit"),
              md_row(*["---"] * 6)]
    for q in quality:
        lines.append(md_row(q["dataset"], q["mode"], q["queries"], f"{q['recall@10']:.3f}",
                            f"{q['ndcg@10']:.3f}", f"{q['zero_hit']:.3f}"))
    lines += ["", "The scifact corpus is a subset (all documents relevant to the kept queries plus "
              "random others), so its absolute numbers are not comparable with full-corpus "
              "BEIR figures; the modes are comparable with each other."]
    write_section("kb", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
