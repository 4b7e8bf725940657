"""Issue 4 benchmark: rollback time and `kb serve` throughput.

    .venv/bin/python benchmarks/bench_registry.py [--trials 3] [--clients 20] [--seconds 30]

Setup: a fresh KB_HOME with the sample documents, two real `kb_job` runs (v1, then v2 with one
more document, each registered, evaluated and promoted), and `kb serve` started as its own
process on 127.0.0.1.
1. Rollback: from launching `kb rollback` (a new process, as the on-call engineer would)
   to the first /search answer served from the old version, polled every 20 ms; then
   `kb promote 2` restores the state for the next trial. The same switch driven from a warm
   Python process (Registry.move_alias) shows the floor without interpreter + import start-up.
2. Throughput: N concurrent clients (asyncio, one connection each) query /search with the
   golden questions for S seconds; requests/s, p50/p95 latency, errors.
Writes the `registry` section of BENCHMARKS.md."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, md_row, median, pct, write_section  # noqa: E402

KB = str(Path(sys.executable).parent / "kb")
EXTRA_DOC = ("hr/bicycle_storage_en.md",
             "# Bicycle storage\nThe secure bicycle room in the basement has 60 racks, lockers "
             "and two showers. Register your bike with reception to get a key card.\n")


def setup(root: Path):
    os.environ["KB_HOME"] = str(root / "kb")
    for var in ("DAGSTER_HOME", "KB_INBOX", "MLFLOW_TRACKING_URI"):
        os.environ.pop(var, None)
    from kb_core.paths import Paths
    from resources.registry import ReleaseConfig
    from tests.kbtest import materialized, run_job

    paths = Paths.from_env().ensure()
    shutil.copytree(REPO / "sample_data" / "inbox", paths.inbox, dirs_exist_ok=True)
    # The quality gate as configured; the latency SLO relaxed because this shared machine's
    # load is not the KB's fault, and the benchmark needs both versions promoted.
    cfg = ReleaseConfig(max_p95_latency_ms=60_000, max_latency_regression=100.0)
    for label in ("v1", "v2"):
        if label == "v2":
            (paths.inbox / EXTRA_DOC[0]).write_text(EXTRA_DOC[1], encoding="utf-8")
        t0 = time.perf_counter()
        result = run_job(paths, "kb_job", release_config=cfg)
        m = materialized(result)
        if not result.success or not m.get("kb_promotion", {}).get("promoted"):
            raise SystemExit(f"build {label} was not promoted: {m.get('retrieval_eval')}")
        print(f"built and promoted {label} in {time.perf_counter() - t0:.1f}s", flush=True)
    return paths


def start_serve(paths, port: int) -> subprocess.Popen:
    import httpx

    proc = subprocess.Popen([KB, "serve", "--port", str(port)], env=dict(os.environ),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.kill()
    raise SystemExit("kb serve did not become healthy")


def served_version(client, url: str) -> int:
    return client.get(f"{url}/search", params={"q": "annual leave", "k": 1}).json()["version"]


def time_switch(url: str, target: int, start) -> tuple[float, float]:
    """(seconds until the command finished, seconds until `target` was served)."""
    import httpx

    done = {}
    with httpx.Client(timeout=30) as client:
        t0 = time.perf_counter()
        worker = threading.Thread(target=lambda: done.setdefault("cmd", start()) and None)
        worker.start()
        cmd_s = None
        while True:
            if cmd_s is None and not worker.is_alive():
                cmd_s = time.perf_counter() - t0
            if served_version(client, url) == target:
                served_s = time.perf_counter() - t0
                break
            if time.perf_counter() - t0 > 60:
                raise SystemExit(f"version {target} not served within 60 s")
            time.sleep(0.02)
        worker.join()
        return (cmd_s if cmd_s is not None else time.perf_counter() - t0), served_s


def run_cli(*args: str, cpu: list | None = None):
    """A `kb` command in a new process; its CPU seconds (user + sys) appended to `cpu`."""
    import resource

    def go():
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        r = subprocess.run([KB, *args], capture_output=True, text=True)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if cpu is not None:
            cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        if r.returncode != 0:
            raise SystemExit(f"kb {' '.join(args)} failed: {r.stderr.strip()}")
        return r
    return go


def bench_rollback(paths, url: str, trials: int) -> dict:
    from resources.registry import default_actor, registry_resources
    from resources.store import KBStore

    cli, warm, cpu = [], [], []
    for i in range(trials):
        cli.append(time_switch(url, 1, run_cli("rollback", "--reason", f"bench {i}", cpu=cpu)))
        time_switch(url, 2, run_cli("promote", "2", "--reason", "bench restore"))
    registry = registry_resources(paths)["registry"]
    store = KBStore(db_path=str(paths.db))
    registry.get_alias("kb", "production")  # import MLflow, open the database
    for i in range(trials):
        warm.append(time_switch(url, 1, lambda: registry.move_alias(
            store, "kb", "production", 1, default_actor(), f"rollback: bench warm {i}")))
        registry.move_alias(store, "kb", "production", 2, default_actor(), "bench restore")
        time_switch(url, 2, lambda: None)
    return {"cli": cli, "warm": warm, "cpu": cpu}


async def _load(url: str, questions: list[str], clients: int, seconds: float) -> dict:
    import httpx

    latencies, errors, zero = [], 0, 0
    stop = time.perf_counter() + seconds

    async def client(n: int) -> None:
        nonlocal errors, zero
        i = n
        async with httpx.AsyncClient(timeout=30) as c:
            while time.perf_counter() < stop:
                q = questions[i % len(questions)]
                i += clients
                t0 = time.perf_counter()
                try:
                    r = await c.get(f"{url}/search", params={"q": q, "k": 5})
                    ok = r.status_code == 200
                    if ok and r.json()["zero_hit"]:
                        zero += 1
                except httpx.HTTPError:
                    ok = False
                latencies.append((time.perf_counter() - t0) * 1000)
                errors += not ok

    t0 = time.perf_counter()
    await asyncio.gather(*(client(n) for n in range(clients)))
    return {"requests": len(latencies), "errors": errors, "zero_hits": zero,
            "elapsed": time.perf_counter() - t0, "latencies": latencies}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--clients", type=int, default=20)
    ap.add_argument("--seconds", type=float, default=30)
    args = ap.parse_args()
    from tests.serve_thread import free_port
    from kb_assets.golden import load_golden

    root = Path(tempfile.mkdtemp(prefix="bench-registry-"))
    proc = None
    try:
        paths = setup(root)
        port = free_port()
        proc = start_serve(paths, port)
        url = f"http://127.0.0.1:{port}"
        rb = bench_rollback(paths, url, args.trials)
        questions = [q.question for q in load_golden(None).queries]
        load = asyncio.run(_load(url, questions, args.clients, args.seconds))
        load["loadavg"] = os.getloadavg()[0]
    finally:
        if proc:
            proc.terminate()
            proc.wait(timeout=30)
        shutil.rmtree(root, ignore_errors=True)

    def fmt(pairs, i):
        return ", ".join(f"{p[i]:.2f}" for p in pairs)
    rps = load["requests"] / load["elapsed"]
    lines = [
        "## Registry: rollback and the search API (`benchmarks/bench_registry.py`)", "",
        "Sample corpus (32 docs + 1), two real `kb_job` runs (v1, v2 both promoted), `kb serve` "
        "as its own process on 127.0.0.1 polling the serving pointer every 0.5 s.", "",
        f"### Rollback v2 -> v1: start of the switch to the first answer served from v1 "
        f"({args.trials} trials)", "",
        md_row("how", "command done s (each)", "first v1 answer s (each)", "median s",
               "command CPU s (each)", "target"),
        md_row("---", "---", "---", "---", "---", "---"),
        md_row("`kb rollback` (new process)", fmt(rb["cli"], 0), fmt(rb["cli"], 1),
               f"{median([p[1] for p in rb['cli']]):.2f}",
               ", ".join(f"{c:.2f}" for c in rb["cpu"]), "<= 2 s"),
        md_row("`Registry.move_alias` (warm process)", fmt(rb["warm"], 0), fmt(rb["warm"], 1),
               f"{median([p[1] for p in rb['warm']]):.2f}", "", "<= 2 s"),
        "", f"### `kb serve` under {args.clients} concurrent clients for {args.seconds:.0f} s "
            "(golden questions, k=5, loopback)", "",
        md_row("requests", "req/s", "p50 ms", "p95 ms", "max ms", "errors", "zero-hits"),
        md_row("---", "---", "---", "---", "---", "---", "---"),
        md_row(load["requests"], f"{rps:.1f}", f"{pct(load['latencies'], 50):.0f}",
               f"{pct(load['latencies'], 95):.0f}", f"{max(load['latencies']):.0f}",
               load["errors"], load["zero_hits"]),
        "", f"1-minute load average at the end: {load['loadavg']:.1f} on {os.cpu_count()} cores "
            "(other work shares this machine). Client latency includes queueing: 20 clients share 2 cores with the server, "
            "whose one encoder thread embeds all waiting queries as one batch.",
    ]
    text = "\n".join(lines)
    print(text)
    write_section("registry", text)
    print(json.dumps({"rollback_cli_s": rb["cli"], "rollback_warm_s": rb["warm"],
                      "rps": round(rps, 1), "errors": load["errors"]}))


if __name__ == "__main__":
    main()
