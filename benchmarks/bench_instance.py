"""The fixed Dagster cost of an incremental run: SQLite instance vs PostgreSQL instance.

Two KB_HOMEs built from the sample documents (`kb init --samples`, `kb build --select
index`): one with the default SQLite instance under $KB_HOME/dagster, one with
KB_DAGSTER_PG_URL pointing at a local PostgreSQL started like the tests' (tests/pg_server.py:
127.0.0.1, trust, fsync and synchronous_commit off). Then, alternating which goes first,
each pair changes one sample document in both homes and runs `kb build --select index
--force` in a fresh process for each. Measured per run: the whole process's wall time, the
run (execute_in_process) and the time the instance spent storing events
(DagsterInstance.handle_new_event), in total and for the four check steps.

    .venv/bin/python benchmarks/bench_instance.py               # 3 pairs, writes BENCHMARKS.md
    .venv/bin/python benchmarks/bench_instance.py --pairs 5 --no-write
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
CHANGED_DOC = "hr/annual_leave_en.md"  # one sample document, edited before every run
BUILD = ["build", "--select", "index", "--force"]

# The child: `kb ARGS` with the instance's event writes timed, written to a JSON file.
CHILD = r"""
import json, sys, time
t_start = time.perf_counter()
from dagster import DagsterInstance
from dagster._core.definitions.job_definition import JobDefinition

out, args = sys.argv[1], sys.argv[2:]
events = {"all_s": 0.0, "all_n": 0, "checks_s": 0.0, "checks_n": 0, "run_s": 0.0}
CHECKS = %r
original = DagsterInstance.handle_new_event

def timed(self, event, **kw):
    t = time.perf_counter()
    try:
        return original(self, event, **kw)
    finally:
        dt = time.perf_counter() - t
        events["all_s"] += dt
        events["all_n"] += 1
        if event.step_key in CHECKS:
            events["checks_s"] += dt
            events["checks_n"] += 1

DagsterInstance.handle_new_event = timed
run = JobDefinition.execute_in_process

def timed_run(self, *a, **kw):
    t = time.perf_counter()
    try:
        return run(self, *a, **kw)
    finally:
        events["run_s"] += time.perf_counter() - t

JobDefinition.execute_in_process = timed_run
from dagster_project.cli import main
rc = main(args)
events["rc"] = rc
events["process_s"] = time.perf_counter() - t_start
json.dump(events, open(out, "w"))
sys.exit(rc)
""" % (CHECK_STEPS,)


def kb_env(home: Path, pg_url: str | None, model_cache: Path) -> dict:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KB_", "MLFLOW_TRACKING")) and k != "DAGSTER_HOME"}
    env.update(KB_HOME=str(home), KB_MODEL_CACHE=str(model_cache), PYTHONPATH=str(REPO))
    if pg_url:
        env["KB_DAGSTER_PG_URL"] = pg_url
    return env


def kb(env: dict, *args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "dagster_project.cli", *args], env=env,
                          cwd=REPO, capture_output=True, text=True)
    if done.returncode:
        raise RuntimeError(f"kb {' '.join(args)} failed:\n{done.stdout[-2000:]}"
                           f"{done.stderr[-3000:]}")


def timed_build(env: dict, tmp: Path) -> dict:
    out = tmp / "child.json"
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", CHILD, str(out), *BUILD], env=env, cwd=REPO,
                          capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if done.returncode:
        raise RuntimeError(f"kb build failed:\n{done.stdout[-2000:]}{done.stderr[-3000:]}")
    row = json.loads(out.read_text())
    row["wall_s"] = wall
    return row


def edit(home: Path, i: int) -> None:
    doc = home / "inbox" / CHANGED_DOC
    doc.write_text(doc.read_text(encoding="utf-8").rstrip("\n")
                   + f"\n\nRevision note {i}: checked against the {i}th policy review.\n",
                   encoding="utf-8")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--pairs", type=int, default=3)
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()
    from benchmarks.common import median
    from tests.pg_server import PgServer, find_bin_dir

    bin_dir = find_bin_dir()
    if bin_dir is None:
        print("bench_instance: no PostgreSQL server binaries (scripts/ensure_postgres.sh)",
              file=sys.stderr)
        return 1
    t_all = time.perf_counter()
    tmp = Path(tempfile.mkdtemp(prefix="bench-instance-"))
    pg = PgServer(bin_dir).start()
    try:
        homes = {"sqlite": (tmp / "sqlite" / "kb", None),
                 "postgres": (tmp / "postgres" / "kb", pg.dagster_url())}
        envs = {}
        for name, (home, url) in homes.items():
            # One model cache for both homes (the ONNX export is made once).
            cache = Path(os.environ.get("KB_MODEL_CACHE") or tmp / "models")
            envs[name] = env = kb_env(home, url, cache)
            kb(env, "init", "--samples")
            t = time.perf_counter()
            kb(env, "build", "--select", "index")
            print(f"{name}: first build {time.perf_counter() - t:.1f} s", flush=True)
        rows: dict[str, list[dict]] = {"sqlite": [], "postgres": []}
        for i in range(args.pairs):
            order = ["sqlite", "postgres"] if i % 2 == 0 else ["postgres", "sqlite"]
            for name in order:
                edit(homes[name][0], i)
                row = timed_build(envs[name], tmp)
                rows[name].append(row)
                print(f"pair {i + 1} {name:<8}: process {row['wall_s']:.1f} s, run "
                      f"{row['run_s']:.1f} s, event writes {row['all_s']:.2f} s "
                      f"({row['all_n']} events), check steps' {row['checks_s']:.2f} s "
                      f"({row['checks_n']})", flush=True)
        load = os.getloadavg()
    finally:
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)

    def med(name: str, key: str) -> float:
        return median([r[key] for r in rows[name]])

    keys = [("wall_s", "whole `kb build` process s"), ("run_s", "the run (execute_in_process) s"),
            ("all_s", "all event writes s"), ("checks_s", "check steps' event writes s")]
    from benchmarks.common import md_row

    lines = [md_row("median of " + str(args.pairs) + " runs", "SQLite instance",
                    "PostgreSQL instance", "PostgreSQL / SQLite"), md_row(*["---"] * 4)]
    for key, label in keys:
        s, p = med("sqlite", key), med("postgres", key)
        lines.append(md_row(label, f"{s:.2f}", f"{p:.2f}", f"{p / s:.2f}" if s else "-"))
    lines.append(md_row("events stored (all / check steps)",
                        f"{med('sqlite', 'all_n'):.0f} / {med('sqlite', 'checks_n'):.0f}",
                        f"{med('postgres', 'all_n'):.0f} / {med('postgres', 'checks_n'):.0f}",
                        ""))
    share = {n: med(n, "all_s") / med(n, "wall_s") for n in rows}
    per_event = {n: 1000 * med(n, "all_s") / max(1.0, med(n, "all_n")) for n in rows}
    runs = "; ".join(f"{n}: " + ", ".join(f"{r['wall_s']:.1f}" for r in rows[n]) for n in rows)
    md = ("## Dagster instance: SQLite vs PostgreSQL, fixed cost of an incremental run "
          "(`benchmarks/bench_instance.py`)\n\n"
          f"`kb build --select index --force` after editing one sample document "
          f"(`{CHANGED_DOC}`; 32 documents, ~116 chunks), each in a fresh process, the two "
          f"instances alternating ({args.pairs} pairs, the order swapped every pair).\n\n"
          + "\n".join(lines) +
          f"\n\nEvent writes are {share['sqlite']:.1%} of the process on SQLite "
          f"({per_event['sqlite']:.1f} ms per event) and {share['postgres']:.1%} on PostgreSQL "
          f"({per_event['postgres']:.1f} ms per event). Process times per run (s): {runs}. "
          "'Event writes' is the time `DagsterInstance.handle_new_event` took in the build "
          "process (storing each event, plus the instance's bookkeeping for it). The "
          "PostgreSQL server is local (loopback) with fsync and synchronous_commit off, "
          "like the tests' (tests/pg_server.py): a networked server with durable commits "
          "adds a round trip and a WAL flush per write; the SQLite instance uses Dagster's "
          f"defaults. Load average (1/5/15 min) at the end: {load[0]:.1f} / {load[1]:.1f} / "
          f"{load[2]:.1f} on {os.cpu_count()} cores, shared with other work.")
    print("\n" + md)
    if not args.no_write:
        from benchmarks.common import write_section

        write_section("instance", md)
        print("\nwrote the instance section of BENCHMARKS.md")
    print(f"(benchmark took {time.perf_counter() - t_all:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
