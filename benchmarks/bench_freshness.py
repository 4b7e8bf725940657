"""Freshness: seconds from a file landing in the inbox to its content being served by
`kb search` (the production version, or the latest before anything was promoted), with
the real webserver + daemon (scripts/ui.sh) and the inbox sensor at two intervals.

    .venv/bin/python benchmarks/bench_freshness.py [--intervals 30,5] [--trials 3]
        [--instances sqlite,postgres]

Each configuration gets a fresh KB_HOME seeded with the sample documents (built once by
the sensor's first run), then `--trials` drops of one new document at a random phase of
the sensor cycle. "Served" is polled every 0.25 s with an in-process Searcher on
serving.resolve() (what `kb search` opens); the last drop is confirmed with a real
`kb search --json` subprocess. `--instances` compares the Dagster instance on SQLite (the
default) with one on PostgreSQL (KB_DAGSTER_PG_URL, a local server started as the tests start
theirs: tests/pg_server.py), side by side per interval. Writes the `freshness` section of
BENCHMARKS.md."""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.common import REPO, md_row, median, write_section  # noqa: E402

TARGETS = {30: 60.0, 5: 20.0}
DONE = ("SUCCESS", "FAILURE", "CANCELED")


def doc_text(token: str) -> str:
    return (f"# The {token} allowance\nEvery employee may claim the {token} allowance of "
            f"{len(token) * 37} credits once a year for ergonomic equipment. File the claim "
            f"with the facilities desk.\n")


def sensor_runs_after(instance, t0: float) -> list:
    from dagster import RunsFilter

    records = instance.get_run_records(RunsFilter(tags={"kb/trigger": "inbox_sensor"}))
    return sorted((r for r in records if r.create_timestamp.timestamp() >= t0),
                  key=lambda r: r.create_timestamp)


def wait_run_done(instance, run_id: str, timeout: float = 900):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rec = instance.get_run_record_by_id(run_id)
        if rec.dagster_run.status.value in DONE:
            return rec
        time.sleep(0.5)
    raise TimeoutError(f"run {run_id} not done after {timeout}s")


def published_at(instance, run_id: str) -> float | None:
    """When the run's faiss_index materialization (the new version) was recorded."""
    from dagster import DagsterEventType

    for e in instance.all_logs(run_id, of_type=DagsterEventType.ASSET_MATERIALIZATION):
        if e.dagster_event.asset_key.to_user_string() == "faiss_index":
            return e.timestamp
    return None


def served_contains(paths, embedder, cache: dict, token: str, rel: str) -> tuple[bool, int | None]:
    from kb_core.serving import resolve
    from kb_assets.searcher import Searcher

    number = resolve(paths).version
    if number is None:
        return False, None
    if cache.get("number") != number:
        cache.update(number=number, searcher=Searcher.open(paths, number, embedder=embedder))
    hits = cache["searcher"].search(f"How many credits is the {token} allowance?", k=3)
    return any(h.doc_id == rel for h in hits), number


def run_config(interval: int, trials: int, root: Path, embedder, pg_url: str | None = None) -> dict:
    from dagster import DagsterInstance

    from kb_core.paths import Paths
    from tests.ui_stack import UIStack

    instance_kind = "postgres" if pg_url else "sqlite"
    home = root / f"kb-interval-{interval}-{instance_kind}"
    os.environ.update(KB_HOME=str(home), DAGSTER_HOME=str(home / "dagster"))
    os.environ.pop("KB_INBOX", None)
    if pg_url:
        os.environ["KB_DAGSTER_PG_URL"] = pg_url
    else:
        os.environ.pop("KB_DAGSTER_PG_URL", None)
    paths = Paths.from_env().ensure()
    shutil.copytree(REPO / "sample_data" / "inbox", paths.inbox, dirs_exist_ok=True)
    old = time.time() - 3600
    for p in paths.inbox.rglob("*"):
        os.utime(p, (old, old))
    stack = UIStack(home, root / f"ui-{interval}-{instance_kind}.log",
                    KB_SENSOR_INTERVAL_S=str(interval))
    rows = []
    t_start = time.time()
    stack.start()
    try:
        with DagsterInstance.get() as instance:
            print(f"[interval {interval}s, {instance_kind}] baseline: the sensor builds the "
                  "sample KB ...", flush=True)
            deadline = time.monotonic() + 120
            while not sensor_runs_after(instance, t_start):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"no sensor run for the samples\n{stack.log()[-3000:]}")
                time.sleep(1)
            base = wait_run_done(instance, sensor_runs_after(instance, t_start)[0].dagster_run.run_id)
            print(f"  baseline run {base.dagster_run.status.value} in "
                  f"{base.end_time - base.start_time:.0f}s", flush=True)
            cache: dict = {}
            for trial in range(trials):
                time.sleep(random.uniform(0, interval))  # a random phase of the sensor cycle
                token = f"Quillfeather{interval}x{trial}{random.randint(100, 999)}"
                rel = f"facilities/{token.lower()}.md"
                t0 = time.time()
                (paths.inbox / rel).write_text(doc_text(token), encoding="utf-8")
                served, number = None, None
                while time.time() - t0 < 300:
                    ok, number = served_contains(paths, embedder, cache, token, rel)
                    if ok:
                        served = time.time()
                        break
                    time.sleep(0.25)
                runs = sensor_runs_after(instance, t0)
                if served is None or not runs:
                    raise TimeoutError(f"{rel} not served after 300s\n{stack.log()[-3000:]}")
                rec = wait_run_done(instance, runs[0].dagster_run.run_id)
                pub = published_at(instance, rec.dagster_run.run_id)
                row = {"trial": trial, "served_s": served - t0,
                       "requested_s": rec.create_timestamp.timestamp() - t0,
                       "queued_s": rec.start_time - rec.create_timestamp.timestamp(),
                       "published_s": (pub - rec.start_time) if pub else float("nan"),
                       "to_served_s": (served - pub) if pub else float("nan"),
                       "version": number, "run_s": rec.end_time - rec.start_time,
                       "status": rec.dagster_run.status.value,
                       "load": os.getloadavg()[0]}
                rows.append(row)
                print(f"  drop {trial + 1}/{trials}: served after {row['served_s']:.1f}s "
                      f"(requested {row['requested_s']:.1f}s, version {number}, "
                      f"run {row['status'].lower()} in {row['run_s']:.0f}s)", flush=True)
            kb = [sys.executable, "-m", "dagster_project.cli"]  # `kb`, from this checkout
            out = subprocess.run([*kb, "search", "--json", "-k", "3",
                                  f"How many credits is the {token} allowance?"], cwd=REPO,
                                 capture_output=True, text=True, env=dict(os.environ), timeout=300)
            found = json.loads(out.stdout)["hits"] if out.returncode == 0 else []
            confirmed = any(h["doc_id"] == rel for h in found)
    finally:
        leftovers = stack.stop()
    if leftovers:
        print(f"  WARNING: processes survived the stop: {leftovers}")
    return {"interval": interval, "instance": instance_kind, "rows": rows, "confirmed": confirmed,
            "baseline_s": base.end_time - base.start_time}


def report(results: list[dict], settle_s: str) -> str:
    lines = [
        "## Freshness: inbox drop -> served by `kb search`",
        "",
        "`benchmarks/bench_freshness.py`: real `scripts/ui.sh` (webserver + daemon), sample KB "
        "built first, then single-document drops at a random phase of the sensor cycle. "
        f"Settle time {settle_s} s. Times in seconds from the file landing.",
        "",
        md_row("sensor interval", "Dagster instance", "drops", "median", "max", "target", "drop -> run requested",
               "requested -> run started", "started -> version published",
               "published -> served", "run (s)", "`kb search` confirms", "load avg (1 min)"),
        md_row(*["---"] * 13),
    ]
    for r in results:
        rows = r["rows"]
        served = [x["served_s"] for x in rows]
        target = TARGETS.get(r["interval"])
        verdict = "" if target is None else (" ✅" if max(served) <= target else " ❌")
        lines.append(md_row(
            f"{r['interval']} s", r["instance"], len(rows), f"{median(served):.1f}", f"{max(served):.1f}{verdict}",
            f"<= {target:.0f}" if target else "-",
            f"{median([x['requested_s'] for x in rows]):.1f}",
            f"{median([x['queued_s'] for x in rows]):.1f}",
            f"{median([x['published_s'] for x in rows]):.1f}",
            f"{median([x['to_served_s'] for x in rows]):.1f}",
            f"{median([x['run_s'] for x in rows]):.0f}",
            "yes" if r["confirmed"] else "NO",
            f"{median([x['load'] for x in rows]):.1f} on {os.cpu_count()} cores"))
    lines += [
        "",
        "Where the time goes: the sensor ticks every interval on the daemon's 5 s loop; a "
        "file younger than the settle time is looked at again, within the tick, once it is "
        f"settle-time old (nothing is requested before a file is {settle_s} s old); the run queue is "
        "checked every 2 s; the run worker starts, then ingests, checks, chunks, embeds and "
        "publishes the version; with a `production` pointer, `kb search` sees it only "
        "once the release chain (MLflow registration, retrieval eval, gate) promotes it ("
        "published -> served). The machine is shared: a load average well "
        "above the core count stretches every step after the request several-fold.",
    ]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--intervals", default="30,5", help="comma-separated sensor intervals (s)")
    ap.add_argument("--trials", type=int, default=3, help="drops per interval")
    ap.add_argument("--instances", default="sqlite",
                    help="comma-separated: sqlite (default), postgres (a local server)")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()
    instances = args.instances.split(",")
    # Stopping the benchmark (even as a background job) still stops its UI stack.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    signal.signal(signal.SIGINT, signal.default_int_handler)
    from resources.embedder import Embedder

    embedder = Embedder()
    embedder.encode_query("warm up")
    root = Path(tempfile.mkdtemp(prefix="kb-freshness-"))
    pg = None
    ok = False
    try:
        if "postgres" in instances:
            from tests.pg_server import PgServer, find_bin_dir

            if find_bin_dir() is None:
                raise SystemExit("bench_freshness: no PostgreSQL server binaries "
                                 "(scripts/ensure_postgres.sh)")
            pg = PgServer(find_bin_dir()).start()
        results = []
        for i in args.intervals.split(","):
            for kind in instances:  # side by side: both instances per interval
                url = pg.create_database(f"fresh_{i}_{len(results)}") if kind == "postgres" \
                    else None
                results.append(run_config(int(i), args.trials, root, embedder, pg_url=url))
        ok = True
    finally:
        if pg is not None:
            pg.stop()
        if ok:
            shutil.rmtree(root, ignore_errors=True)
        else:  # the Dagster instance and the UI log say why a drop was not served
            print(f"bench_freshness: kept {root} (KB_HOME and ui-*.log) for inspection",
                  file=sys.stderr)
    text = report(results, os.environ.get("KB_SENSOR_SETTLE_S", "5"))
    print("\n" + text)
    if not args.no_write:
        write_section("freshness", text)
        print("\nwrote the freshness section of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
