"""Whole processes, side by side: `kb build --select index` vs the append-only script it replaces.

Inbox: N scifact documents (from ../shared/datasets/scifact, read in place, written as JSONL
into a temporary inbox). Rows, each a whole process (model load included), alternated script /
kb in one run:
  full build; +20 documents (median of 3); nothing changed (median of 3);
  one edit and one delete (kb only: the script cannot edit or delete).
Targets (issue 13): every row at most the script's time, the incremental rows at most half.

    .venv/bin/python benchmarks/bench_vs_script.py            # 2,000 documents, writes BENCHMARKS.md
    .venv/bin/python benchmarks/bench_vs_script.py --docs 300 --no-write
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

from benchmarks.common import DATASETS, load_beir, md_row, median  # noqa: E402

SCRIPT = REPO / "benchmarks" / "append_only_baseline.py"
ADD = 20
REPEATS = 3


def write_docs(inbox: Path, name: str, docs: list[dict]) -> None:
    inbox.mkdir(parents=True, exist_ok=True)
    with open(inbox / f"{name}.jsonl", "w", encoding="utf-8") as f:
        f.write("\n".join(json.dumps(d, ensure_ascii=False) for d in docs) + "\n")


def timed(cmd: list[str], env: dict) -> float:
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env)
    took = time.perf_counter() - t
    if p.returncode:
        raise RuntimeError(f"{cmd} failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    corpus, _, _ = load_beir(DATASETS / "scifact")
    ids = sorted(corpus)[: args.docs + ADD * REPEATS]
    docs = [{"id": i, "title": corpus[i][0], "text": corpus[i][1]} for i in ids]
    base, extra = docs[: args.docs], docs[args.docs:]
    work = Path(tempfile.mkdtemp(prefix="bench-vs-script-"))
    home, out = work / "kb", work / "script-out"
    env = dict(os.environ, KB_HOME=str(home))
    env.pop("KB_INBOX", None)
    env.pop("DAGSTER_HOME", None)
    kb = [sys.executable, "-m", "dagster_project.cli", "build", "--select", "index"]
    script = [sys.executable, str(SCRIPT), str(home / "inbox"), str(out)]
    rows: dict[str, dict[str, list[float]]] = {}

    def both(row: str, kb_too: bool = True, script_too: bool = True) -> None:
        r = rows.setdefault(row, {"script": [], "kb": []})
        if script_too:
            r["script"].append(timed(script, env))
        if kb_too:
            r["kb"].append(timed(kb, env))
        print(f"{row}: " + ", ".join(f"{k} {v[-1]:.1f} s" for k, v in r.items() if v),
              file=sys.stderr)

    t0 = time.perf_counter()
    try:
        write_docs(home / "inbox", "base", base)
        both("full build")
        for i in range(REPEATS):
            write_docs(home / "inbox", f"add{i}", extra[i * ADD:(i + 1) * ADD])
            both(f"+{ADD} documents")
        for _ in range(REPEATS):
            both("nothing changed")
        edited = [dict(d) for d in base]
        edited[0]["text"] += " (revised)"
        del edited[1]
        write_docs(home / "inbox", "base", edited)
        both("one edit + one delete", script_too=False)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    head = ["row", "script s", "kb build s", "kb / script", "target"]
    lines = [md_row(*head), md_row(*["---"] * len(head))]
    for row, r in rows.items():
        s, k = median(r["script"]), median(r["kb"])
        limit = 1.0 if row == "full build" else 0.5
        ratio = k / s if r["script"] else None
        ok = "" if ratio is None else (" ✅" if ratio <= limit else " ❌")
        lines.append(md_row(row, f"{s:.1f}" if r["script"] else "cannot", f"{k:.1f}",
                            f"{ratio:.2f}{ok}" if ratio is not None else "-",
                            "<= script" if limit == 1.0 else "<= half the script"))
    md = ("## Whole processes vs the append-only script (`benchmarks/bench_vs_script.py`)\n\n"
          + "\n".join(lines)
          + f"\n\n{args.docs:,} scifact documents as the inbox; medians of {REPEATS} for the "
          f"incremental rows, one full build each. The script "
          f"(`benchmarks/append_only_baseline.py`) embeds whole documents into one flat index "
          f"and cannot edit or delete; `kb build --select index` chunks, checks, embeds only "
          f"new chunks and publishes a version. 1-minute load average at the end: "
          f"{os.getloadavg()[0]:.1f}.")
    print("\n" + md)
    if not args.no_write:
        from benchmarks.common import write_section

        write_section("vs-script", md)
    print(f"(benchmark took {time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
