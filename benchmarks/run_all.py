"""`make bench`: every benchmark, one after another (never in parallel: the machine is
small and shared), each writing its own section of BENCHMARKS.md / RELIABILITY.md.

    .venv/bin/python benchmarks/run_all.py [--only kb,checks,...] [--quick]"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHES = {  # name -> (script, extra args for --quick)
    "kb": ("bench_kb.py", ["--quick"]),
    "checks": ("bench_checks.py", ["--scales", "10000"]),
    "registry": ("bench_registry.py", ["--trials", "1", "--seconds", "10"]),
    "load": ("bench_serve_load.py", ["--seconds", "20"]),
    "replicas": ("bench_replicas.py", ["--seconds", "15", "--rounds", "1"]),
    "finetune": ("bench_finetune.py", ["--quick"]),
    "freshness": ("bench_freshness.py", ["--intervals", "5", "--trials", "1"]),
    "new_user": ("bench_new_user.py", ["--quick"]),
    "scale": ("bench_scale.py", ["--scales", "10000"]),
    "vs_script": ("bench_vs_script.py", ["--docs", "300"]),
    # 100k only: a 1M HNSW build takes far longer than ~10 min on 2 shared cores
    # (run `bench_ann.py --sizes 1000000 --no-hybrid` by hand; BENCHMARKS.md quotes it).
    "ann": ("bench_ann.py", ["--quick"]),
    "encoder": ("bench_encoder.py", ["--quick"]),
    "fanout": ("bench_fanout.py", ["--quick"]),
    "instance": ("bench_instance.py", []),  # 3 pairs of ~20 s builds either way
}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--only", default=",".join(BENCHES))
    ap.add_argument("--quick", action="store_true", help="small sizes: a smoke run")
    args = ap.parse_args()
    failed = []
    for name in args.only.split(","):
        script, quick = BENCHES[name]
        cmd = [sys.executable, str(HERE / script), *(quick if args.quick else [])]
        print(f"\n=== {name}: {' '.join(cmd[1:])}", flush=True)
        t0 = time.perf_counter()
        if subprocess.run(cmd).returncode != 0:
            failed.append(name)
        print(f"=== {name} took {time.perf_counter() - t0:.0f} s", flush=True)
    if failed:
        print(f"failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
