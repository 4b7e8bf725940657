"""How much time the data-quality gates add to an incremental run, at 10k and 100k chunks.

For each scale, in a fresh process (so each pays the GX import like a real `kb build`):
a synthetic corpus of random-word documents is ingested and chunked, the embedding cache is
seeded with random unit vectors (embedding 100k chunks with the real model would take an
hour here; the checks only read the cache), version 1 is published WITHOUT checks; then a
batch of new documents is added and one incremental run of the four KB assets WITH their
checks is timed. The checks' share = the four check steps' durations / the run's wall time
(the embedding model is loaded before the timed run, which makes the share conservative).
Then, on the same KB, whole `kb build` processes with and without the checks, alternated
(process_pairs): what the checks add to the everyday command, GX import and Dagster included.

    .venv/bin/python benchmarks/bench_checks.py            # both scales, writes BENCHMARKS.md
    .venv/bin/python benchmarks/bench_checks.py --scales 10000 --no-write
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

CHECK_STEPS = ("raw_docs_quality", "cleaned_chunks_quality", "embeddings_quality",
               "faiss_index_quality")
ASSET_STEPS = ("raw_docs", "cleaned_chunks", "embeddings", "faiss_index")
DOC_TOKENS = 1000  # ~6.5 chunks of 200 tokens (overlap 40) per document
NEW_DOCS = 10  # the incremental batch: small, so the checks' share is not flattered
TARGET = 0.15
PAIRS = 3  # whole-process builds with and without checks, alternated


# Chunks per synthetic 1,000-word document with the model-token chunker (measured: 462
# documents gave 9,005 chunks): random syllable words split into several word pieces each.
CHUNKS_PER_DOC = 19.5


def corpus(n_docs: int, seed: int, prefix: str) -> list[dict]:
    import numpy as np

    rng = np.random.default_rng(seed)
    syll = ["ka", "lo", "mi", "ne", "ru", "sa", "ti", "vo", "zu", "pe", "da", "gi", "ho", "ya"]
    vocab = sorted({"".join(rng.choice(syll, rng.integers(2, 4))) for _ in range(6000)})
    docs = []
    for i in range(n_docs):
        words = np.asarray(vocab)[rng.integers(0, len(vocab), DOC_TOKENS)]
        cuts = np.cumsum(rng.integers(8, 21, DOC_TOKENS // 8))
        parts, start = [], 0
        for c in cuts[cuts < DOC_TOKENS]:
            parts.append(" ".join(words[start:c]).capitalize() + ".")
            start = c
        parts.append(" ".join(words[start:]).capitalize() + ".")
        docs.append({"id": f"{prefix}-{i}", "title": f"{prefix} document {i}",
                     "text": " ".join(parts)})
    return docs


def write_jsonl(folder: Path, name: str, docs: list[dict], per_file: int = 500) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for k in range(0, len(docs), per_file):
        with open(folder / f"{name}-{k // per_file:04d}.jsonl", "w", encoding="utf-8") as f:
            f.write("\n".join(json.dumps(d) for d in docs[k:k + per_file]) + "\n")


def seed_cache(store, model_id: str, dim: int, kind: str = "random") -> int:
    """Unit vectors for every chunk text the cache lacks (stands in for embedding): "random"
    (uniform on the sphere: no neighbourhoods, the worst case for an approximate index), or
    "clustered" (a gaussian mixture of 200 clusters at cosine ~0.7 from their centre, like
    real embeddings of a corpus; what benchmarks/bench_ann.py measures HNSW on)."""
    import numpy as np
    import pandas as pd

    from kb_core.clock import utc_now
    from resources import persistence

    with store.connect() as con:
        hashes = [r[0] for r in con.execute(
            "SELECT DISTINCT text_hash FROM chunks WHERE text_hash NOT IN "
            "(SELECT text_hash FROM embedding_cache WHERE model_id = ?)", [model_id]).fetchall()]
        rng = np.random.default_rng(0)
        centres = rng.normal(size=(200, dim))
        centres /= np.linalg.norm(centres, axis=1, keepdims=True)
        for k in range(0, len(hashes), 20000):
            part = hashes[k:k + 20000]
            v = rng.normal(size=(len(part), dim)).astype(np.float32)
            if kind == "clustered":
                v = (centres[rng.integers(0, len(centres), len(part))]
                     + v / np.sqrt(dim)).astype(np.float32)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            persistence.cache_embeddings(con, pd.DataFrame({
                "model_id": model_id, "text_hash": part, "vector": [row.tobytes() for row in v],
                "created_at": utc_now()}))
    return len(hashes)


def one_scale(chunks: int, home: str) -> dict:
    """Runs in its own process (see main), in a temporary KB_HOME."""
    os.environ["KB_HOME"] = home
    os.environ.pop("KB_INBOX", None)
    os.environ.pop("DAGSTER_HOME", None)
    from dagster import AssetSelection, DagsterInstance, Definitions, define_asset_job

    from checks.kb_checks import KB_CHECKS
    from kb_core.paths import Paths
    from kb_assets.chunks import cleaned_chunks
    from kb_assets.embed import embeddings
    from kb_assets.index import faiss_index
    from kb_assets.ingest import raw_docs
    from resources import default_resources
    from resources.embedder import Embedder

    paths = Paths.from_env().ensure()
    assets = [raw_docs, cleaned_chunks, embeddings, faiss_index]
    res = default_resources(paths)
    embedder: Embedder = res["embedder"]

    def run(with_checks: bool, keys: tuple[str, ...] = ASSET_STEPS):
        defs = Definitions(assets=assets, asset_checks=KB_CHECKS if with_checks else [],
                           jobs=[define_asset_job("j", selection=AssetSelection.assets(*keys))],
                           resources=res)
        with DagsterInstance.get() as instance:
            t0 = time.perf_counter()
            r = defs.resolve_job_def("j").execute_in_process(instance=instance,
                                                             raise_on_error=True)
            return r, time.perf_counter() - t0

    t_setup = time.perf_counter()
    n_docs = max(1, round(chunks / CHUNKS_PER_DOC))
    write_jsonl(paths.inbox / "base", "base", corpus(n_docs, 1, "base"))
    parts = {"corpus": time.perf_counter() - t_setup}
    parts["ingest_chunk"] = run(False, ("raw_docs", "cleaned_chunks"))[1]
    t = time.perf_counter()
    embedder.encode(["warm up the model before anything is timed"])
    seeded = seed_cache(res["store"], embedder.model_id, embedder.dim)
    parts["model_seed"] = time.perf_counter() - t
    parts["publish_v1"] = run(False, ("embeddings", "faiss_index"))[1]
    setup_s = time.perf_counter() - t_setup
    print("setup", {k: round(v, 1) for k, v in parts.items()}, file=sys.stderr)
    import gc

    gc.collect()

    # Measure what Dagster spends storing each event (SQLite: a few transactions per event):
    # for the check steps that is part of what the checks cost, but not the checks' own code.
    event_s: dict[str, float] = {}
    span: dict[str, list[float]] = {}  # step -> [first event handled from, last handled until]
    original = DagsterInstance.handle_new_event

    def timed_handle(self, event, **kw):
        t = time.perf_counter()
        try:
            return original(self, event, **kw)
        finally:
            key, end = event.step_key or "-", time.perf_counter()
            kind = event.dagster_event_type.value if event.dagster_event_type else ""
            if kind == "STEP_START":
                span[key] = [t, end]
            if key in span:  # events stored while the step runs (not the run's plan events)
                event_s[key] = event_s.get(key, 0.0) + end - t
                span[key][1] = end

    DagsterInstance.handle_new_event = timed_handle
    write_jsonl(paths.inbox / "new", "new", corpus(NEW_DOCS, 2, "new"))
    result, wall = run(True)
    DagsterInstance.handle_new_event = original
    # A step's cost: from storing its STEP_START to storing its STEP_SUCCESS.
    steps = {k: end - start for k, (start, end) in span.items()}
    evals = result.get_asset_check_evaluations()
    with res["store"].connect() as con:
        total = con.execute("SELECT count(*) FROM chunks").fetchall()[0][0]
    checks_s = sum(steps.get(s, 0.0) for s in CHECK_STEPS)
    from checks.gx_suites import import_seconds

    pairs = process_pairs(home, PAIRS)
    return {"pairs": pairs, "target_chunks": chunks, "chunks": int(total), "docs": n_docs + NEW_DOCS,
            "new_docs": NEW_DOCS, "seeded_vectors": seeded, "setup_s": round(setup_s, 1),
            "run_s": round(wall, 2), "checks_s": round(checks_s, 2),
            "share": checks_s / wall, "gx_import_s": round(import_seconds(), 2),
            "check_events_s": round(sum(event_s.get(k, 0.0) for k in CHECK_STEPS), 2),
            "check_events": sum(1 for ev in result.all_events if ev.step_key in CHECK_STEPS
                                and ev.event_type_value != "ASSET_CHECK_EVALUATION_PLANNED"),
            "steps": {k: round(v, 2) for k, v in steps.items()},
            "checks_passed": sum(e.passed for e in evals), "checks_total": len(evals),
            "failed": [e.check_name for e in evals if not e.passed]}


def process_pairs(home: str, pairs: int) -> list[dict]:
    """What the checks add to a real `kb build --select index` process: each pair drops
    NEW_DOCS new documents and runs the real `kb` (checks, Great Expectations preloaded on a
    thread), then drops NEW_DOCS more and runs benchmarks/kb_without_checks.py; the order
    alternates per pair. Whole-process wall times: imports, Dagster, GX and every step."""
    env = dict(os.environ, KB_HOME=home, PYTHONPATH=str(REPO))
    env.pop("KB_INBOX", None)
    env.pop("DAGSTER_HOME", None)
    commands = {"with": [sys.executable, "-m", "dagster_project.cli"],
                "without": [sys.executable, str(REPO / "benchmarks" / "kb_without_checks.py")]}
    out = []
    for i in range(pairs):
        walls = {}
        for k, side in enumerate(("with", "without") if i % 2 == 0 else ("without", "with")):
            tag = f"pair{i}{side}"
            write_jsonl(Path(home) / "inbox" / tag, tag, corpus(NEW_DOCS, 100 + 2 * i + k, tag))
            t = time.perf_counter()
            p = subprocess.run(commands[side] + ["build", "--select", "index", "--json"],
                               capture_output=True, text=True, cwd=REPO, env=env)
            walls[side] = time.perf_counter() - t
            if p.returncode:
                raise RuntimeError(f"kb build ({side} checks) failed:\n{p.stderr[-3000:]}")
            result = json.loads(p.stdout)
            if result.get("skipped") or not result["steps"]:
                raise RuntimeError(f"kb build ({side} checks) did not run: {result}")
        print(f"  pair {i + 1}: with checks {walls['with']:.2f} s, without "
              f"{walls['without']:.2f} s", file=sys.stderr)
        out.append(walls)
    return out


def pair_summary(pairs: list[dict]) -> tuple[float, float, float]:
    """(median wall with checks, median wall without, median of the per-pair differences)."""
    from benchmarks.common import median

    return (median([p["with"] for p in pairs]), median([p["without"] for p in pairs]),
            median([p["with"] - p["without"] for p in pairs]))


def pairs_table(rows: list[dict]) -> str:
    from benchmarks.common import md_row

    head = ["chunks", "pairs", "`kb build` with checks s (median)", "without checks s (median)",
            "checks add s (median of pair differences)", "share of the build", "target"]
    lines = [md_row(*head), md_row(*["---"] * len(head))]
    for r in rows:
        w, wo, d = pair_summary(r["pairs"])
        lines.append(md_row(f"{r['chunks']:,}", len(r["pairs"]), round(w, 2), round(wo, 2),
                            round(d, 2), f"{d / w:.1%}", f"<= {TARGET:.0%}"))
    notes = []
    for r in rows:
        w, wo, d = pair_summary(r["pairs"])
        notes.append(
            f"At {r['chunks']:,} chunks the {TARGET:.0%} target allows {TARGET / (1 - TARGET) * wo:.2f} s "
            f"on top of the {wo:.2f} s build without checks; importing Great Expectations "
            f"alone took {r['gx_import_s']:.2f} s of GIL-bound Python in the in-process run "
            f"(its unused scipy.stats and altair deferred), and Dagster runs the four check "
            f"steps ({r['check_events']} events stored) after their assets.")
    return "\n".join(lines) + "\n\n" + " ".join(notes)


def table(rows: list[dict]) -> str:
    from benchmarks.common import md_row

    head = ["chunks", "docs (+new)", "incremental run s", "checks s", "checks share",
            "of which: GX import s", "Dagster event writes s", "check code s",
            "raw_docs / chunks / embeddings / index check steps s", "checks passed", "target"]
    lines = [md_row(*head), md_row(*["---"] * len(head))]
    for r in rows:
        s = r["steps"]
        lines.append(md_row(
            f"{r['chunks']:,}", f"{r['docs'] - r['new_docs']:,} (+{r['new_docs']})", r["run_s"],
            r["checks_s"], f"{r['share']:.1%}", r["gx_import_s"],
            f"{r['check_events_s']} ({r['check_events']} events)",
            round(r["checks_s"] - r["gx_import_s"] - r["check_events_s"], 2),
            " / ".join(f"{s.get(k, 0):.2f}" for k in CHECK_STEPS),
            f"{r['checks_passed']}/{r['checks_total']}"
            + (f" (not passed: {', '.join(r['failed'])})" if r["failed"] else ""),
            f"<= {TARGET:.0%}"))
    asset = "; ".join(f"{r['chunks']:,} chunks: " + ", ".join(
        f"{k} {r['steps'].get(k, 0):.1f}" for k in ASSET_STEPS) for r in rows)
    return "\n".join(lines) + (
        f"\n\nAsset steps in the same runs (s): {asset}.\n\n"
        f"One incremental run per scale, each in a fresh process, so the checks pay the Great "
        f"Expectations import once, as every `kb build` process does (the first check step "
        f"carries it). The embedding model was loaded before timing (a cold load "
        f"would add to the run, not to the checks). The embedding cache was seeded with random unit vectors "
        f"(the checks only read it); the {NEW_DOCS} new documents were embedded by the real "
        f"model, so the warning-level centroid check may flag them against the random baseline "
        f"(it did not block: warnings never do). A small batch keeps the run short, so the share is not flattered; the "
        f"faiss_index step publishes one new segment (a version names its segments). "
        f"'Dagster event writes' is the time the instance spent storing the check steps' events "
        f"(21 check results, each an output and an evaluation event, plus step start/success; "
        f"the default SQLite storage commits each one); a Postgres instance makes that part "
        f"cheaper. A step's time runs from storing its start event to storing its success "
        f"event.")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scales", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)  # child process: one scale
    args = ap.parse_args()
    if args.one:
        home = tempfile.mkdtemp(prefix=f"bench-checks-{args.one}-")
        try:
            print("RESULT " + json.dumps(one_scale(args.one, home)))
        finally:  # only the temporary KB_HOME made here (~1 GB at 100k chunks)
            shutil.rmtree(home, ignore_errors=True)
        return 0
    t0 = time.perf_counter()
    rows = []
    for n in args.scales:
        out = subprocess.run([sys.executable, __file__, "--one", str(n)], capture_output=True,
                             text=True, cwd=REPO)
        line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
        if out.returncode or line is None:
            print(out.stdout[-2000:], out.stderr[-4000:], file=sys.stderr)
            print(f"bench_checks: the {n:,}-chunk run failed", file=sys.stderr)
            return 1
        rows.append(json.loads(line[len("RESULT "):]))
        r = rows[-1]
        print(f"{r['chunks']:,} chunks: run {r['run_s']} s, checks {r['checks_s']} s "
              f"({r['share']:.1%}); setup {r['setup_s']} s; failed checks: {r['failed'] or 'none'}")
        w, wo, d = pair_summary(r["pairs"])
        print(f"{r['chunks']:,} chunks, whole processes: with checks {w:.2f} s, without "
              f"{wo:.2f} s, checks add {d:.2f} s ({d / w:.1%})")
    md = ("## Data-quality gates: time the checks add to an incremental run "
          "(`benchmarks/bench_checks.py`)\n\n"
          f"Whole `kb build --select index` processes adding {NEW_DOCS} documents, with the "
          "checks (the real `kb`: Great Expectations imported on a thread while Dagster loads) "
          "and without them (`benchmarks/kb_without_checks.py`: the same Definitions minus the "
          "asset checks), alternated in one run:\n\n" + pairs_table(rows)
          + "\n\nInside one run (in-process, each check step's own time):\n\n" + table(rows))
    print("\n" + md)
    if not args.no_write:
        from benchmarks.common import write_section

        write_section("checks", md)
        print("\nwrote the checks section of BENCHMARKS.md")
    print(f"(benchmark took {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
