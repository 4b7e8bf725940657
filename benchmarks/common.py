"""Shared benchmark plumbing: machine description, percentiles, BEIR loading and writing
one section of BENCHMARKS.md between `<!-- bench:NAME -->` markers."""

from __future__ import annotations

import json
import os
import platform
import re
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
BENCHMARKS_MD = REPO / "BENCHMARKS.md"
DATASETS = REPO.parent / "shared" / "datasets"


def machine() -> str:
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    cpu = platform.processor() or platform.machine()
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{platform.machine()}, {os.cpu_count()} cores ({cpu}), {mem_gb:.0f} GiB, "
            f"Python {sys.version.split()[0]}, {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC")


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    s = sorted(values)
    return s[min(len(s) - 1, max(0, round(q / 100 * (len(s) - 1))))]


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def write_section(name: str, markdown: str, path: Path = BENCHMARKS_MD) -> None:
    """Replace (or append) the section for `name`, leaving the others intact."""
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    block = f"{start}\n{markdown.strip()}\n\n_Machine: {machine()}_\n{end}"
    text = path.read_text(encoding="utf-8") if path.exists() else (
        "# Benchmarks\n\nWritten by `make bench` (scripts in `benchmarks/`). Machines are shared "
        "and noisy: comparisons are side by side in one run; medians are quoted.\n")
    pattern = re.compile(re.escape(start) + r".*?" + re.escape(end), re.S)
    text = pattern.sub(lambda _: block, text) if pattern.search(text) else text.rstrip() + "\n\n" + block + "\n"
    path.write_text(text, encoding="utf-8")


def load_beir(folder: Path, split: str = "test"):
    """(corpus {id: (title, text)}, queries {id: text}, qrels {qid: {doc_id: score}})."""
    corpus = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            d = json.loads(line)
            corpus[str(d["_id"])] = (d.get("title") or "", d["text"])
    queries = {}
    with open(folder / "queries.jsonl", encoding="utf-8") as f:
        for line in f:
            q = json.loads(line)
            queries[str(q["_id"])] = q["text"]
    qrels: dict[str, dict[str, int]] = {}
    with open(folder / "qrels" / f"{split}.tsv", encoding="utf-8") as f:
        next(f)
        for line in f:
            qid, did, score = line.rstrip("\n").split("\t")
            if int(score) > 0:
                qrels.setdefault(qid, {})[did] = int(score)
    return corpus, queries, qrels


def md_row(*cells) -> str:
    return "| " + " | ".join(str(c) for c in cells) + " |"


def write_subsection(name: str, heading_prefix: str, markdown: str,
                     path: Path = BENCHMARKS_MD) -> None:
    """Replace one `### ...` subsection (the one whose heading starts with `heading_prefix`)
    of section `name`, for a script that re-ran only that part; the rest stays as it was."""
    text = path.read_text(encoding="utf-8")
    start, end = f"<!-- bench:{name} -->", f"<!-- /bench:{name} -->"
    head, sep, rest = text.partition(start)
    body, sep2, tail = rest.partition(end)
    if not sep or not sep2:
        raise ValueError(f"{path}: no section {name!r} to update")
    i = body.find(heading_prefix)
    if i < 0:
        raise ValueError(f"{path}: section {name!r} has no subsection {heading_prefix!r}")
    nexts = [j for j in (body.find("\n### ", i + 1), body.find("\n_Machine:", i + 1)) if j >= 0]
    j = min(nexts) if nexts else len(body)
    body = body[:i] + markdown.strip() + "\n" + body[j:]
    path.write_text(head + start + body + end + tail, encoding="utf-8")
