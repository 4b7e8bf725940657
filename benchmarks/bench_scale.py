"""Cost of a change at 10k / 100k (/ 1M) chunks: a `kb build --select index` adding 10 documents.

Per scale, in a temporary KB_HOME: a synthetic corpus (benchmarks/bench_checks.py's random-word
documents) is ingested and chunked, the embedding cache is seeded with clustered unit vectors
for those chunks (`--seed-vectors random` for uniform ones; embedding 100k chunks for real would
take hours here), and version 1 is published (exact, or HNSW past KB_ANN_MIN_CHUNKS).
Then, as whole `kb build --select index` processes (what a user runs), three times: 10 new
documents (embedded for real) are dropped into the inbox and the build is timed: wall time of
the process, the `faiss_index` (publish) step, and the bytes written under `versions/`. Query
latency (embed + hybrid search, one thread, the serving process's view) is measured on the last
version, then after one more +10 build that compacts the version into one segment
(KB_COMPACT_MAX_SEGMENTS=2 for that build; exact or HNSW by size).

    .venv/bin/python benchmarks/bench_scale.py                  # 10k and 100k, writes BENCHMARKS.md
    .venv/bin/python benchmarks/bench_scale.py --scales 10000 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.bench_checks import CHUNKS_PER_DOC, corpus, seed_cache, write_jsonl  # noqa: E402
from benchmarks.common import md_row, median, pct  # noqa: E402

# The benchmark's own modules (above) come from this checkout; the platform's from the
# checkout under test (--compare).
if "--child" in sys.argv and os.environ.get("PYTHONPATH"):
    sys.path.insert(0, os.environ["PYTHONPATH"])

NEW_DOCS = 10
INCREMENTS = 3
QUERIES = 200
KB = [sys.executable, "-m", "dagster_project.cli"]


def dir_bytes(path: Path) -> dict[str, int]:
    return {str(p): p.stat().st_size for p in path.rglob("*") if p.is_file()}


def setup_scale(chunks: int) -> dict:
    """Child process: ingest + chunk + seed + publish version 1 without checks."""
    from dagster import AssetSelection, DagsterInstance, Definitions, define_asset_job

    from kb_assets.chunks import cleaned_chunks
    from kb_assets.embed import embeddings
    from kb_assets.index import faiss_index
    from kb_assets.ingest import raw_docs
    from kb_core.paths import Paths
    from resources import default_resources

    paths = Paths.from_env().ensure()
    res = default_resources(paths)

    def run(keys):
        defs = Definitions(assets=[raw_docs, cleaned_chunks, embeddings, faiss_index],
                           jobs=[define_asset_job("j", selection=AssetSelection.assets(*keys))],
                           resources=res)
        with DagsterInstance.get() as instance:
            defs.resolve_job_def("j").execute_in_process(instance=instance, raise_on_error=True)

    t0 = time.perf_counter()
    write_jsonl(paths.inbox / "base", "base", corpus(max(1, round(chunks / CHUNKS_PER_DOC)), 1, "base"))
    run(("raw_docs", "cleaned_chunks"))
    seed_cache(res["store"], res["embedder"].model_id, res["embedder"].dim,
               os.environ.get("BENCH_SEED_VECTORS", "clustered"))
    run(("embeddings", "faiss_index"))
    with res["store"].connect() as con:
        n = con.execute("SELECT count(*) FROM chunks").fetchall()[0][0]
    return {"chunks": int(n), "setup_s": round(time.perf_counter() - t0, 1)}


def evict_from_page_cache(folder: Path) -> int:
    """Drop `folder`'s files from the page cache (clean pages; no root needed): the next
    reader finds them cold, as after a reboot. Returns the number of files."""
    n = 0
    for p in folder.rglob("*"):
        if p.is_file():
            fd = os.open(p, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
                n += 1
            finally:
                os.close(fd)
    return n


def query_latency(home: str, cold: str = "") -> dict:
    """Child process: the serving version, embed + hybrid per query, one thread. `cold`:
    "new-process" evicts the version files from the page cache first (a `kb search` after a
    reboot); "serve" evicts them too, then reads them in as `kb serve` does before a swap."""
    import faiss
    import numpy as np

    from kb_assets.searcher import Searcher
    from kb_core.paths import Paths
    from kb_core.serving import version_numbers
    from resources.segments import read_into_page_cache

    faiss.omp_set_num_threads(1)
    paths = Paths.from_env()
    number = version_numbers(paths.versions)[-1]
    if cold:
        evict_from_page_cache(paths.versions)
    t0 = time.perf_counter()
    searcher = Searcher.open(paths, number)
    if cold == "serve":
        read_into_page_cache(searcher.version.path, searcher.version.info)
    searcher.search("warm up the model", k=5)
    load_s = time.perf_counter() - t0
    rng = np.random.default_rng(7)
    texts = searcher.version.manifest["text"].sample(QUERIES, random_state=3).tolist()
    queries = [" ".join(rng.choice(t.split(), size=min(6, len(t.split())), replace=False))
               for t in texts]
    took = []
    for q in queries:
        t = time.perf_counter()
        searcher.search(q, k=10)
        took.append((time.perf_counter() - t) * 1000)
    return {"version": number, "load_s": round(load_s, 2), "p50_ms": round(pct(took, 50), 1),
            "p95_ms": round(pct(took, 95), 1),
            "segments": len(searcher.version.info.get("segments") or [None]),
            "search": search_kind(searcher.version)}


def search_kind(version) -> str:
    """What the query searched: one index (flat or hnsw) or shards (hnsw + flat, ...)."""
    from resources.ann_index import index_kind

    sharded = getattr(version, "sharded", None)  # older checkouts (--compare) lack it
    if sharded is not None:
        return "+".join(sharded.kinds)
    return index_kind(version.index)


def code_env(home: str, code: Path) -> dict:
    env = dict(os.environ, KB_HOME=home, PYTHONPATH=str(code))
    env.pop("KB_INBOX", None)
    env.pop("DAGSTER_HOME", None)
    return env


def child(mode: str, home: str, code: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", mode, "--home", home],
                         capture_output=True, text=True, cwd=code, env=code_env(home, code))
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise RuntimeError(f"{mode} failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(line[len("RESULT "):])


def kb(home: str, code: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(KB + list(args), capture_output=True, text=True, cwd=code,
                          env={**code_env(home, code), **env})


def timed_build(home: str, code: Path, tag: str, seed: int) -> tuple[float, dict, dict]:
    """Drop NEW_DOCS documents, run `kb build --select index --json` with `code`: (wall s,
    step durations, the --json result)."""
    write_jsonl(Path(home) / "inbox" / tag, tag, corpus(NEW_DOCS, seed, tag))
    t = time.perf_counter()
    p = kb(home, code, "build", "--select", "index", "--json")
    wall = time.perf_counter() - t
    if p.returncode:
        raise RuntimeError(f"kb build failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    out = json.loads(p.stdout)
    return wall, {s["step"]: s["duration_s"] for s in out["steps"]}, out


def one_scale(chunks: int, code: Path, compact: bool = True, keep: bool = False) -> dict:
    home = tempfile.mkdtemp(prefix=f"bench-scale-{chunks}-")
    os.environ["KB_HOME"] = home
    try:
        r = {"target": chunks, **child(f"setup:{chunks}", home, code)}
        versions = Path(home) / "versions"
        builds = []
        for i in range(INCREMENTS):
            before = dir_bytes(versions)
            wall, steps, _ = timed_build(home, code, f"new{i}", 10 + i)
            after = dir_bytes(versions)
            written = sum(s for f, s in after.items() if before.get(f) != s)
            builds.append({"wall_s": wall, "publish_s": steps.get("faiss_index"),
                           "written_mb": written / 2**20})
            print(f"  {chunks:,}: +{NEW_DOCS} docs build {wall:.1f} s, publish "
                  f"{steps.get('faiss_index')} s, wrote {written / 2**20:.1f} MB", file=sys.stderr)
        r["builds"] = builds
        r["query"] = child("query", home, code)
        r["disk_mb"] = sum(dir_bytes(versions).values()) / 2**20
        if not compact:
            return r
        # One more +10 build with a segment limit of 2: this publish compacts (segmented
        # code) into one segment, exact or HNSW by size; the old code rebuilds as always.
        write_jsonl(Path(home) / "inbox" / "compact", "compact", corpus(NEW_DOCS, 99, "compact"))
        t = time.perf_counter()
        p = kb(home, code, "build", "--select", "index", "--json", KB_COMPACT_MAX_SEGMENTS="2")
        r["compact_build_s"] = round(time.perf_counter() - t, 1)
        if p.returncode:
            raise RuntimeError(f"compacting build failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
        idx = json.loads(p.stdout)["materialized"].get("faiss_index", {})
        r["compact_index"] = idx.get("vector_index_kind", "flat")
        r["query_compacted"] = child("query", home, code)
        r["disk_mb"] = sum(dir_bytes(versions).values()) / 2**20
        return r
    finally:
        if keep:
            print(f"  kept KB_HOME {home}", file=sys.stderr)
        else:
            shutil.rmtree(home, ignore_errors=True)


def alternating(chunks: int, other: Path, pairs: int) -> dict:
    """One KB_HOME (set up by this checkout), then +10-document builds alternating between
    `other` and this checkout: both sides meet the same KB and the same machine load, which
    sequential sides on a shared machine do not (a 6 s swing between sides was seen here)."""
    home = tempfile.mkdtemp(prefix=f"bench-alt-{chunks}-")
    os.environ["KB_HOME"] = home
    try:
        out = {"target": chunks, **child(f"setup:{chunks}", home, REPO), "runs": []}
        for i in range(2 * pairs):
            label, code = ("before", other) if i % 2 == 0 else ("this", REPO)
            wall, steps, res = timed_build(home, code, f"alt{i}", 50 + i)
            number = res["materialized"].get("faiss_index", {}).get("kb_version")
            info = json.loads((Path(home) / "versions" / str(number) / "version.json").read_text())
            compacted = bool(info.get("compacted"))
            out["runs"].append({"code": label, "wall_s": wall, "steps": steps,
                                "compacted": compacted})
            print(f"  {label}: {wall:.1f} s " + " ".join(f"{k}={v}" for k, v in steps.items()),
                  file=sys.stderr)
        return out
    finally:
        shutil.rmtree(home, ignore_errors=True)


def alternating_table(r: dict) -> str:
    runs = [x for x in r["runs"] if not x["compacted"]]  # a compaction is another cost
    steps = list(dict.fromkeys(k for x in runs for k in x["steps"]))
    lines = [md_row("code", "builds", "wall s (median)", *[f"{s} s" for s in steps]),
             md_row(*["---"] * (3 + len(steps)))]
    for label in ("before", "this"):
        mine = [x for x in runs if x["code"] == label]
        lines.append(md_row(label, len(mine), round(median([x["wall_s"] for x in mine]), 1),
                            *[round(median([x["steps"].get(s, 0) for x in mine]), 2)
                              for s in steps]))
    return "\n".join(lines)


def table(rows: list[dict]) -> str:
    head = ["code", "chunks", "+docs per build", "build wall s (median of 3)", "publish step s",
            "written per version MB", "versions/ total MB", "query p50 / p95 ms",
            "after compaction p50 / p95 ms", "targets"]
    lines = [md_row(*head), md_row(*["---"] * len(head))]
    for r in rows:
        b = r["builds"]
        q, qc = r["query"], r.get("query_compacted")
        target = ("build <= 10 s, publish <= 1 s, p95 <= 20 ms" if r["chunks"] < 500_000
                  else "build <= 20 s, p95 <= 50 ms")
        lines.append(md_row(
            r["code"], f"{r['chunks']:,}", NEW_DOCS, round(median([x["wall_s"] for x in b]), 1),
            round(median([x["publish_s"] or 0 for x in b]), 2),
            round(median([x["written_mb"] for x in b]), 2), round(r["disk_mb"], 1),
            f"{q['p50_ms']} / {q['p95_ms']} ({q['segments']} segments: {q['search']})",
            f"{qc['p50_ms']} / {qc['p95_ms']} ({qc['search']}; that build "
            f"{r['compact_build_s']} s)" if qc else "not run (--no-compact)", target))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--seed-vectors", choices=("clustered", "random"), default="clustered",
                    help="vectors standing in for the base corpus's embeddings (random ones "
                         "have no neighbourhoods: HNSW cannot reach its recall on them)")
    ap.add_argument("--compare", type=Path,
                    help="another checkout (e.g. a worktree of the previous release) run side "
                         "by side, scale by scale, before this one")
    ap.add_argument("--alternate", type=Path,
                    help="another checkout: one KB, builds alternating between it and this one "
                         "(printed, not written)")
    ap.add_argument("--pairs", type=int, default=3, help="alternating builds per side")
    ap.add_argument("--no-compact", action="store_true",
                    help="skip the compacting build (at 1M chunks it rebuilds the whole index)")
    ap.add_argument("--keep", action="store_true",
                    help="keep each scale's KB_HOME (printed) for profiling afterwards")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        os.environ["KB_HOME"] = args.home
        mode, _, n = args.child.partition(":")
        res = setup_scale(int(n)) if mode == "setup" else query_latency(args.home, cold=n)
        print("RESULT " + json.dumps(res))
        return 0
    os.environ["BENCH_SEED_VECTORS"] = args.seed_vectors  # read by the setup child
    t0 = time.perf_counter()
    if args.alternate:
        for n in args.scales:
            r = alternating(n, args.alternate.resolve(), args.pairs)
            print(f"\n{r['chunks']:,} chunks, +{NEW_DOCS} documents per build, builds alternating "
                  f"(1-minute load average at the end: {os.getloadavg()[0]:.1f}):\n"
                  + alternating_table(r))
        print(f"(benchmark took {time.perf_counter() - t0:.0f} s)")
        return 0
    rows = []
    for n in args.scales:
        for label, code in ([("before", args.compare.resolve())] if args.compare else []) + [
                ("this", REPO)]:
            rows.append({"code": label, **one_scale(n, code, not args.no_compact, args.keep)})
    load = os.getloadavg()[0]
    md = ("## Cost of a change: +10 documents at scale (`benchmarks/bench_scale.py`)\n\n"
          + table(rows) + f"\n\nEach build is a whole `kb build --select index` process (model "
          f"load, checks, publish) after dropping {NEW_DOCS} new documents; the cache was seeded "
          f"with {args.seed_vectors} unit vectors for the base corpus, the new documents are "
          f"embedded for real. 'Written per version' counts files created or changed under `versions/` by "
          f"one build. Query: {QUERIES} queries of 6 words drawn from KB chunks, embed + hybrid "
          f"search, one thread. 1-minute load average at the end: {load:.1f}.")
    print("\n" + md)
    if not args.no_write:
        from benchmarks.common import write_section

        write_section("scale", md)
    print(f"(benchmark took {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
