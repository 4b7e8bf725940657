"""Issue 8 load: `kb serve` under N concurrent clients for S seconds on loopback while a new
KB version is built, published and promoted mid-run by a separate `kb_job` process. Every
response is checked: no failed request, and every answer names a complete version whose
manifest contains each returned document.

    .venv/bin/python benchmarks/bench_serve_load.py [--clients 50] [--seconds 60]
        [--mid-run build|rollback]

`--mid-run rollback` switches with `kb rollback` (v2 -> v1, a new process) at half time
instead: a switch that surely lands inside the window on a loaded machine, where the
build may outlast it. Writes the `load` (build) or `load-rollback` section of
RELIABILITY.md."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_registry import setup, start_serve  # noqa: E402
from benchmarks.common import REPO, md_row, pct, write_section  # noqa: E402

NEW_DOC = ("hr/sabbatical_en.md", "# Sabbatical leave\nAfter seven years of service employees may "
           "take a sabbatical of up to twelve weeks, half of it paid, once approved by HR.\n")
BUILD_V3 = """
from resources.release_config import ReleaseConfig
from kb_core.paths import Paths
from tests.kbtest import materialized, run_job
# Latency SLO relaxed: 50 clients saturate this 2-core machine on purpose.
r = run_job(Paths.from_env(), "kb_job",
            release_config=ReleaseConfig(max_p95_latency_ms=600_000, max_latency_regression=1e6))
m = materialized(r)
assert r.success and m["kb_promotion"]["promoted"], m.get("kb_promotion")
"""


async def load(url: str, questions: list[str], clients: int, seconds: float,
               manifests: dict[int, set[str]], versions_dir: Path) -> dict:
    import httpx

    from resources.vector_index import VersionStore

    store = VersionStore(root=str(versions_dir))
    lat, errors, bad_version, seen, timeline = [], [], 0, {}, []
    t_start = time.perf_counter()
    stop = t_start + seconds

    def docs_of(v: int) -> set[str]:
        if v not in manifests:  # first answer from a new version: it must be complete on disk
            manifests[v] = set(store.load(v).manifest["doc_id"])
        return manifests[v]

    async def client(n: int) -> None:
        nonlocal bad_version
        i = n
        async with httpx.AsyncClient(timeout=60) as c:
            while time.perf_counter() < stop:
                q = questions[i % len(questions)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = await c.get(f"{url}/search", params={"q": q, "k": 5})
                    if r.status_code != 200:
                        errors.append(f"HTTP {r.status_code}")
                    else:
                        body = r.json()
                        v = body["version"]
                        if v not in seen:
                            seen[v] = time.perf_counter() - t_start
                        if not {h["doc_id"] for h in body["hits"]} <= docs_of(v):
                            bad_version += 1
                except (httpx.HTTPError, FileNotFoundError, KeyError, ValueError) as exc:
                    errors.append(type(exc).__name__)
                lat.append((time.perf_counter() - t0) * 1000)
                timeline.append(time.perf_counter() - t_start)

    await asyncio.gather(*(client(n) for n in range(clients)))
    return {"requests": len(lat), "errors": errors, "bad_version": bad_version, "lat": lat,
            "seen": seen, "elapsed": time.perf_counter() - t_start}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=60)
    ap.add_argument("--mid-run", choices=["build", "rollback"], default="build")
    args = ap.parse_args()
    from tests.serve_thread import free_port
    from kb_assets.golden import load_golden

    root = Path(tempfile.mkdtemp(prefix="bench-load-"))
    proc = builder = None
    try:
        paths = setup(root)  # v1 and v2, both promoted
        port = free_port()
        proc = start_serve(paths, port)
        url = f"http://127.0.0.1:{port}"
        questions = [q.question for q in load_golden(None).queries]

        async def scenario():
            nonlocal builder
            task = asyncio.create_task(load(url, questions, args.clients, args.seconds, {},
                                            paths.versions))
            at = args.seconds / (2 if args.mid_run == "rollback" else 6)
            await asyncio.sleep(at)
            t0 = time.perf_counter()
            if args.mid_run == "rollback":
                builder = subprocess.Popen(
                    [sys.executable, "-m", "dagster_project.cli", "rollback", "--reason",
                     "bench mid-run"], cwd=REPO, env={**os.environ, "PYTHONPATH": str(REPO)},
                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            else:
                (paths.inbox / NEW_DOC[0]).write_text(NEW_DOC[1], encoding="utf-8")
                builder = subprocess.Popen([sys.executable, "-c", BUILD_V3], cwd=REPO,
                                           env=dict(os.environ), stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, text=True)
            while builder.poll() is None:
                await asyncio.sleep(0.5)
            build_s = time.perf_counter() - t0
            if builder.returncode != 0:
                raise SystemExit(f"mid-run {args.mid_run} failed: {builder.stderr.read()[-2000:]}")
            return await task, build_s, at

        result, build_s, started_at = asyncio.run(scenario())
    finally:
        for p in (builder, proc):
            if p and p.poll() is None:
                p.terminate()
                p.wait(timeout=60)
        shutil.rmtree(root, ignore_errors=True)

    lat = result["lat"]
    seen = ", ".join(f"v{v} from {t:.1f}s" for v, t in sorted(result["seen"].items()))
    if args.mid_run == "rollback":
        head = [f"## Load: `kb serve`, {args.clients} clients x {args.seconds:.0f} s, rollback "
                "v2 -> v1 mid-run (`benchmarks/bench_serve_load.py --mid-run rollback`)", "",
                f"`kb rollback` (a new process) started at {started_at:.0f} s; the command took "
                f"{build_s:.1f} s (serving switches before its MLflow/Dagster imports).", ""]
    else:
        head = [f"## Load: `kb serve`, {args.clients} clients x {args.seconds:.0f} s, new version "
                "published and promoted mid-run (`benchmarks/bench_serve_load.py`)", "",
                f"A separate process ran `kb_job` (ingest -> index -> register -> evaluate -> "
                f"promote) for one added document starting at {started_at:.0f} s; it took "
                f"{build_s:.1f} s (the load window ends at {args.seconds:.0f} s: a version "
                "promoted after it is not in 'versions served').", ""]
    text = "\n".join(head + [
        md_row("requests", "req/s", "failed", "answers not from a complete version", "p50 ms",
               "p95 ms", "max ms", "versions served"),
        md_row(*["---"] * 8),
        md_row(result["requests"], f"{result['requests'] / result['elapsed']:.1f}",
               len(result["errors"]), result["bad_version"], f"{pct(lat, 50):.0f}",
               f"{pct(lat, 95):.0f}", f"{max(lat):.0f}", seen),
        "", f"Load average at the end: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores; the "
            "build and the server share them, so latency here is queueing under saturation.",
    ])
    print(text)
    if result["errors"]:
        print("errors:", sorted(set(result["errors"])))
    write_section("load" if args.mid_run == "build" else "load-rollback", text,
                  path=REPO / "RELIABILITY.md")


if __name__ == "__main__":
    main()
