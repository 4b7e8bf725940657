"""Carried zero-hit thresholds vs thresholds recalibrated on the new version, on corpora nobody
here wrote (KB_CALIBRATION_CARRY_MAX, kb_assets/relevance.carried_calibration).

Per corpus: version 1 is built (`kb build --select index`, whole process, default settings) on
the corpus's first documents; then, for each share, a copy of that KB_HOME gets that share more
documents and version 2 is built calibrated on its own data (KB_CALIBRATION_CARRY_MAX=0). On
version 2, three sets of queries are judged with version 1's thresholds (what carrying would
serve) and with version 2's own: the 159 bundled unrelated questions (the calibration's null
sample), the corpus's own test queries, and queries of the other datasets (out of domain).
Printed and written to BENCHMARKS.md: the refused shares under each, and how many decisions
differ.

    .venv/bin/python benchmarks/bench_calibration_carry.py            # ~10 min here
    .venv/bin/python benchmarks/bench_calibration_carry.py --quick --no-write
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from benchmarks.bench_new_user import kb_env, open_searcher  # noqa: E402
from benchmarks.common import DATASETS, load_beir, md_row, write_section  # noqa: E402

# corpus -> (documents in version 1, qrels split)
CORPORA = {"scifact": (2000, "test"), "stackfaq_en": (None, "test"),
           "tipo_faq_zh_tw": (None, "test")}
SHARES = (0.01, 0.05)
OOD_PER_DATASET = 100


def write_docs(path: Path, docs: list[tuple[str, str, str]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        for did, title, text in docs:
            f.write(json.dumps({"_id": did, "title": title, "text": text}, ensure_ascii=False)
                    + "\n")


def build(home: Path, **env: str) -> float:
    """A whole `kb build --select index` process: the caller's environment without platform
    settings (a new user's defaults), plus `env`."""
    t0 = time.perf_counter()
    p = subprocess.run([sys.executable, "-m", "dagster_project.cli", "build", "--select",
                        "index"], cwd=REPO, env={**kb_env(home, REPO), **env},
                       capture_output=True, text=True, timeout=7200)
    if p.returncode:
        raise RuntimeError(f"kb build failed in {home}:\n{(p.stdout + p.stderr)[-3000:]}")
    return time.perf_counter() - t0


def judged(searcher, texts: list[str], calibrations: list) -> list[list[bool]]:
    """For each calibration, whether each query is refused (no evidence beats the threshold)."""
    from kb_assets.relevance import evidence

    version = searcher.version
    vecs = searcher.embedder.encode_questions(texts)
    ev = [evidence(version, q, v) for q, v in zip(texts, vecs)]
    return [[not c.accepts(e) for e in ev] for c in calibrations]


def one_corpus(name: str, root: Path, quick: bool) -> list[dict]:
    from kb_assets.relevance import Calibration, null_questions
    from resources.embedder import Embedder

    n_base, split = CORPORA[name]
    corpus, queries, qrels = load_beir(DATASETS / name, split)
    docs = [(did, t, x) for did, (t, x) in corpus.items()]
    n_base = min(n_base or len(docs), len(docs))
    if quick:
        n_base = min(n_base, 300)
    extra_max = max(1, math.ceil(max(SHARES) * n_base))
    n_base = min(n_base, len(docs) - extra_max)
    base = root / f"{name}-v1"
    write_docs(base / "inbox" / "corpus.jsonl", docs[:n_base])
    t1 = build(base)
    own = [queries[q] for q in qrels if q in queries][: 60 if quick else None]
    ood = []
    for other in CORPORA:
        if other != name:
            qs = load_beir(DATASETS / other, CORPORA[other][1])[1]
            ood += list(qs.values())[:OOD_PER_DATASET // (3 if quick else 1)]
    null = null_questions()
    embedder = Embedder()
    rows = []
    for share in SHARES:
        home = root / f"{name}-{share}"
        shutil.copytree(base, home)
        add = max(1, math.ceil(share * n_base))
        write_docs(home / "inbox" / "more.jsonl", docs[n_base:n_base + add])
        t2 = build(home, KB_CALIBRATION_CARRY_MAX="0")
        searcher = open_searcher(home, 2, embedder)
        v1 = json.loads((home / "versions" / "1" / "version.json").read_text("utf-8"))
        v2 = searcher.version.info
        cals = [Calibration.from_dict(v1["relevance"]), Calibration.from_dict(v2["relevance"])]
        row = {"corpus": name, "docs_v1": n_base, "docs_added": add, "share": share,
               "chunks_v1": v1["n_chunks"], "chunks_v2": v2["n_chunks"],
               "build_v1_s": round(t1, 1), "build_v2_s": round(t2, 1),
               "thresholds": {k: (c.latin.dense, c.latin.lexical, c.cjk.lexical)
                              for k, c in zip(("carried", "own"), cals)}}
        for label, texts in (("null", null), ("own", own), ("ood", ood)):
            carried, mine = judged(searcher, texts, cals)
            row[label] = {"n": len(texts), "refused_carried": sum(carried) / len(texts),
                          "refused_own": sum(mine) / len(texts),
                          "differ": sum(a != b for a, b in zip(carried, mine))}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def table(rows: list[dict]) -> str:
    out = [md_row("corpus", "v1 docs / chunks", "+docs (chunks, share)", "queries",
                  "refused, carried thresholds", "refused, own thresholds", "decisions differ"),
           md_row(*["---"] * 7)]
    for r in rows:
        added = r["chunks_v2"] - r["chunks_v1"]
        for label, name in (("null", "unrelated (null sample)"), ("own", "corpus test queries"),
                            ("ood", "other datasets' queries")):
            x = r[label]
            out.append(md_row(r["corpus"], f"{r['docs_v1']:,} / {r['chunks_v1']:,}",
                              f"+{r['docs_added']} ({added:+,}, {added / r['chunks_v1']:.1%})",
                              f"{name}: {x['n']}", f"{x['refused_carried']:.1%}",
                              f"{x['refused_own']:.1%}",
                              f"{x['differ']} ({x['differ'] / x['n']:.1%})"))
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--corpora", nargs="+", default=list(CORPORA), choices=list(CORPORA))
    ap.add_argument("--quick", action="store_true", help="at most 300 documents, fewer queries")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="bench-carry-"))
    try:
        rows = [r for name in args.corpora for r in one_corpus(name, root, args.quick)]
    finally:
        shutil.rmtree(root, ignore_errors=True)
    md = ("## Carried vs recalibrated zero-hit thresholds (`benchmarks/bench_calibration_carry.py`)"
          "\n\n" + table(rows) + "\n\nVersion 1 is built on the corpus's first documents "
          "(default settings, whole `kb build --select index` processes); version 2 adds the "
          "next documents and is calibrated on its own data. Every query is judged on version 2 "
          "twice: with version 1's thresholds (what `KB_CALIBRATION_CARRY_MAX` keeps for a change "
          "within its bound, default 1%) and with version 2's own. 'Decisions differ': queries "
          "answered under one and refused under the other. Thresholds (latin dense, latin "
          "lexical, CJK lexical), carried -> own: " + "; ".join(
              f"{r['corpus']} +{r['share']:.0%}: "
              + ", ".join(f"{a:.3f}->{b:.3f}" for a, b in zip(r["thresholds"]["carried"],
                                                            r["thresholds"]["own"])
                          if not (math.isinf(a) and math.isinf(b)))
              for r in rows) + f". Took {(time.perf_counter() - t0) / 60:.1f} min.")
    print("\n" + md)
    if not args.no_write:
        write_section("calibration-carry", md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
