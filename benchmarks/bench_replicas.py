"""Issue 14: `kb serve` replicas that share only the version storage (KB_VERSIONS_URL), under
N concurrent clients: one replica taking all of them vs two replicas behind no balancer taking
half each, each replica measured on its own. Rounds alternate (one, two, one, two, ...) on the
same machine; medians over rounds are quoted.

    .venv/bin/python benchmarks/bench_replicas.py [--clients 50] [--seconds 20] [--rounds 2]

The replicas start on empty KB_HOMEs and pull the writer's production version from a shared
folder (file://), as they would from S3. On one 2-core machine two replicas compete for the
same cores as the clients: the figure says what a second process costs or gains here, not
what a second machine would. Writes the `replicas` section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_registry import _load, setup, start_serve  # noqa: E402
from benchmarks.common import md_row, median, pct, write_section  # noqa: E402


def start_replica(home: Path, shared_url: str, port: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "KB_INBOX")}
    env.update(KB_HOME=str(home), KB_VERSIONS_URL=shared_url)
    return start_serve(None, port, env)


async def run_round(urls: list[str], questions: list[str], clients: int, seconds: float):
    share = clients // len(urls)
    return await asyncio.gather(*(_load(u, questions, share, seconds) for u in urls))


def summary(loads: list[dict]) -> dict:
    lat = [x for ld in loads for x in ld["latencies"]]
    return {"rps": sum(ld["requests"] / ld["elapsed"] for ld in loads),
            "p50": pct(lat, 50), "p95": pct(lat, 95), "errors": sum(ld["errors"] for ld in loads),
            "per_replica": [(ld["requests"] / ld["elapsed"], pct(ld["latencies"], 50),
                             pct(ld["latencies"], 95)) for ld in loads]}


def main() -> None:
    from kb_assets.golden import load_golden
    from resources.remote_versions import RemoteVersions
    from tests.serve_thread import free_port

    ap = argparse.ArgumentParser()
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--seconds", type=float, default=20)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()

    root = Path(tempfile.mkdtemp(prefix="kb-bench-replicas-"))
    procs: list[subprocess.Popen] = []
    try:
        paths = setup(root)
        shared = f"file://{root / 'shared'}"
        pushed = RemoteVersions(shared).sync_up(paths.home)
        print(f"pushed versions {pushed['pushed_versions']} to {shared}", flush=True)
        questions = [q.question for q in load_golden(None).queries]
        urls = []
        for name in ("replica-a", "replica-b"):
            port = free_port()
            procs.append(start_replica(root / name, shared, port))
            urls.append(f"http://127.0.0.1:{port}")
        results = {"one": [], "two": []}
        load_before = os.getloadavg()[0]
        for r in range(args.rounds):
            for mode, targets in (("one", urls[:1]), ("two", urls)):
                s = summary(asyncio.run(run_round(targets, questions, args.clients,
                                                  args.seconds)))
                results[mode].append(s)
                print(f"round {r + 1} {mode}: {s['rps']:.1f} req/s p50 {s['p50']:.0f} ms "
                      f"p95 {s['p95']:.0f} ms errors {s['errors']}", flush=True)
        load_after = os.getloadavg()[0]
    finally:
        for p in procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
                p.wait(30)
            except (ProcessLookupError, subprocess.TimeoutExpired):
                p.kill()
        shutil.rmtree(root, ignore_errors=True)

    def med(mode: str, key: str) -> float:
        return median([s[key] for s in results[mode]])

    lines = [f"## `kb serve` replicas sharing only the version storage (`benchmarks/bench_replicas.py`)",
             "", f"{args.clients} concurrent clients for {args.seconds:.0f} s per round, golden "
             f"questions, k=5, loopback; {args.rounds} rounds of each, alternating; medians over "
             "rounds. Replicas started on empty `KB_HOME`s and pulled the production version "
             "from a shared folder (`KB_VERSIONS_URL=file://...`).", "",
             md_row("setup", "req/s (all)", "p50 ms", "p95 ms", "errors"),
             md_row("---", "---", "---", "---", "---")]
    for mode, label in (("one", "one replica, all clients"),
                        ("two", "two replicas, half the clients each")):
        lines.append(md_row(label, f"{med(mode, 'rps'):.1f}", f"{med(mode, 'p50'):.0f}",
                            f"{med(mode, 'p95'):.0f}", sum(s["errors"] for s in results[mode])))
    per = results["two"][-1]["per_replica"]
    lines += ["", "Each replica in the last two-replica round: " + "; ".join(
        f"{chr(65 + i)}: {rps:.1f} req/s, p50 {p50:.0f} ms, p95 {p95:.0f} ms"
        for i, (rps, p50, p95) in enumerate(per)) + ".",
        f"Ratio two/one, throughput: {med('two', 'rps') / med('one', 'rps'):.2f}x; p95: "
        f"{med('two', 'p95') / med('one', 'p95'):.2f}x. Load average "
        f"{load_before:.1f} before, {load_after:.1f} after: the clients, both replicas and "
        "anything else on the machine share 2 cores."]
    text = "\n".join(lines)
    print(text)
    if not args.no_write:
        write_section("replicas", text)


if __name__ == "__main__":
    main()
