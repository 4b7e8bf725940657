"""Publishing a small change: full-copy versions (a checkout of main) vs segmented versions
(this checkout), side by side. `--chunks` sizes bench_checks' corpus (documents = chunks / 6.5);
with today's chunker its documents chunk finer: --chunks 10000 gave 30k chunks.

For each side, in its own process importing that side's code, in a fresh KB_HOME: a synthetic
corpus (benchmarks/bench_checks.py) is ingested and chunked, the embedding cache is seeded with
random unit vectors, version 1 is published; then REPS times: +10 new documents are ingested,
chunked and embedded by the real model (untimed), and the `faiss_index` step alone is run and
timed (its own `duration_s`, the step's wall time) along with the bytes it added under
`versions/`. Medians per side.

    .venv/bin/python benchmarks/bench_segments.py --baseline /work/main --reps 5
    .venv/bin/python benchmarks/bench_segments.py --chunks 2000 --reps 2 --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
NEW_DOCS = 10


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.exists() else 0


def one_side(chunks: int, reps: int, home: str) -> dict:
    """Runs in its own process with the side's checkout first on sys.path."""
    os.environ["KB_HOME"] = home
    for var in ("KB_INBOX", "DAGSTER_HOME"):
        os.environ.pop(var, None)
    from dagster import AssetSelection, DagsterInstance, Definitions, define_asset_job

    from benchmarks.bench_checks import corpus, seed_cache, write_jsonl
    from kb_assets.chunks import cleaned_chunks
    from kb_assets.embed import embeddings
    from kb_assets.index import faiss_index
    from kb_assets.ingest import raw_docs
    from kb_core.paths import Paths
    from resources import default_resources

    paths = Paths.from_env().ensure()
    res = default_resources(paths)
    assets = [raw_docs, cleaned_chunks, embeddings, faiss_index]

    def run(keys: tuple[str, ...]):
        defs = Definitions(assets=assets, jobs=[define_asset_job(
            "j", selection=AssetSelection.assets(*keys))], resources=res)
        with DagsterInstance.get() as instance:
            t0 = time.perf_counter()
            r = defs.resolve_job_def("j").execute_in_process(instance=instance,
                                                             raise_on_error=True)
            return r, time.perf_counter() - t0

    write_jsonl(paths.inbox / "base", "base", corpus(max(1, round(chunks / 6.5)), 1, "base"))
    run(("raw_docs", "cleaned_chunks"))
    res["embedder"].encode(["load the model before anything is timed"])
    seed_cache(res["store"], res["embedder"].model_id, res["embedder"].dim)
    run(("embeddings", "faiss_index"))
    out = []
    for i in range(reps):
        write_jsonl(paths.inbox / f"new{i}", f"new{i}", corpus(NEW_DOCS, 100 + i, f"new{i}"))
        run(("raw_docs", "cleaned_chunks", "embeddings"))
        before = tree_bytes(paths.versions)
        result, wall = run(("faiss_index",))
        meta = next(ev.event_specific_data.materialization.metadata
                    for ev in result.get_asset_materialization_events())
        out.append({"step_s": wall, "publish_s": meta["duration_s"].value,
                    "n_chunks": meta["n_chunks"].value,
                    "bytes": tree_bytes(paths.versions) - before})
    # What one version costs as a self-contained MLflow artifact (see kb_assets/release.py).
    latest = paths.versions / str(max(int(p.name) for p in paths.versions.iterdir()
                                      if p.name.isdigit()))
    try:
        from resources.segments import materialize
    except ImportError:  # full-copy versions: the artifact is the version directory
        artifact = tree_bytes(latest)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            artifact = tree_bytes(materialize(latest, Path(tmp) / "v"))
    return {"reps": out, "versions_bytes": tree_bytes(paths.versions), "artifact": artifact}


def run_side(checkout: Path, chunks: int, reps: int) -> dict:
    home = tempfile.mkdtemp(prefix="bench-seg-")
    try:
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        out = subprocess.run([sys.executable, __file__, "--one", str(chunks), "--reps", str(reps),
                              "--home", home], capture_output=True, text=True, cwd=checkout,
                             env=env)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    line = next((x for x in out.stdout.splitlines() if x.startswith("RESULT ")), None)
    if out.returncode or line is None:
        raise RuntimeError(f"{checkout}: {out.stderr[-3000:]}")
    return json.loads(line[len("RESULT "):])


def summary(name: str, r: dict) -> dict:
    reps = r["reps"]
    return {"side": name, "chunks": reps[-1]["n_chunks"],
            "publish_s": statistics.median(x["publish_s"] for x in reps),
            "step_s": statistics.median(x["step_s"] for x in reps),
            "bytes": statistics.median(x["bytes"] for x in reps),
            "versions_bytes": r["versions_bytes"], "artifact": r["artifact"], "runs": len(reps)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--baseline", default="/work/main", help="a checkout with full-copy versions")
    ap.add_argument("--chunks", type=int, default=10_000)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--one", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--home", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one_side(args.one, args.reps, args.home)))
        return 0
    sys.path.insert(0, str(REPO))  # the parent only: each side's process imports its own code
    from benchmarks.common import md_row

    load = os.getloadavg()
    raw = {"baseline": run_side(Path(args.baseline), args.chunks, args.reps)}
    print("baseline", json.dumps(raw["baseline"]), flush=True)
    raw["segmented"] = run_side(REPO, args.chunks, args.reps)
    print("segmented", json.dumps(raw["segmented"]), flush=True)
    rows = [summary("full copy (baseline)", raw["baseline"]),
            summary("segmented (this checkout)", raw["segmented"])]
    load_after = os.getloadavg()

    base, seg = rows
    lines = [md_row("side", "chunks", "publish s (median)", "faiss_index step s (median)",
                    "bytes written under versions/ (median)", "versions/ after all runs",
                    "MLflow artifact per version"),
             md_row(*["---"] * 7)]
    for r in rows:
        lines.append(md_row(r["side"], f"{r['chunks']:,}", round(r["publish_s"], 2),
                            round(r["step_s"], 2), f"{r['bytes'] / 1e6:.2f} MB",
                            f"{r['versions_bytes'] / 1e6:.1f} MB",
                            f"{r['artifact'] / 1e6:.1f} MB"))
    md = ("## Publishing +10 documents: full-copy vs segmented versions "
          "(`benchmarks/bench_segments.py`)\n\n" + "\n".join(lines) + "\n\n"
          f"Ratios segmented / full copy: publish time {seg['publish_s'] / base['publish_s']:.2f}, "
          f"bytes written {seg['bytes'] / max(1, base['bytes']):.3f}. Medians of {args.reps} "
          f"publishes per side (+{NEW_DOCS} documents each), the sides run one after the other "
          f"in fresh processes; load average {load[0]:.1f} before, {load_after[0]:.1f} after. "
          "Both sides calibrate the zero-hit thresholds on the whole new version (part of "
          "publish time).")
    print(md)
    if not args.no_write:
        from benchmarks.common import write_section

        write_section("segments", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
