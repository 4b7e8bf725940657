"""A new user's first KB, default settings: each BEIR corpus dropped as-is into an empty inbox of
a fresh KB_HOME, `kb build` (whole process, no golden set, no env var but KB_HOME), then:

* build wall time, exit code, whether `production` was set, and the duration of the
  evaluation steps (`eval_set`, `retrieval_eval`, its gate check) from the Dagster run's
  STEP_SUCCESS events, plus the wall time of a separate `kb eval` process;
* real quality on the published version with the dataset's own queries and qrels: recall@3,
  nDCG@10 and zero-hit rate for hybrid, dense and lexical (`Searcher.search_batch`, k=10,
  the served code path with the version's own relevance calibration);
* the synthetic gate's recall@3 (eval_results, what `retrieval_eval` reported) beside the real
  recall@3;
* refusal of out-of-domain questions: queries of the other two datasets that get no hit from
  hybrid search.

    .venv/bin/python benchmarks/bench_new_user.py [--quick] [--ood-per-dataset 300]
                                                   [--code-root PATH] [--keep]

`--code-root` is the checkout whose code `kb build` runs (PYTHONPATH of the subprocess;
default: this repository). Datasets are read from their path and never copied into the
repository (the inbox is in a temporary KB_HOME)."""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from benchmarks.common import DATASETS, REPO, load_beir, md_row, write_section  # noqa: E402

PY = sys.executable
MODES = ("hybrid", "dense", "lexical")
EVAL_STEPS = ("eval_set", "retrieval_eval", "retrieval_eval_promotion_gate")
# corpus -> the qrels splits scored on it
CORPORA = {"scifact": ["test"], "stackfaq_en": ["test"], "tipo_faq_zh_tw": ["test_a", "test_b"]}
TARGETS = {  # (corpus, split) -> nDCG@10 floor for hybrid
    ("scifact", "test"): 0.68, ("tipo_faq_zh_tw", "test_a"): 0.92,
    ("tipo_faq_zh_tw", "test_b"): 0.88}
MAX_ZERO_HIT, MIN_REFUSAL = 0.02, 0.50
REFERENCES = ("references (nDCG@10, datasets README): scifact MiniLM alone 0.645, BM25 0.659; "
              "stackfaq_en MiniLM 0.970, BM25 0.721; tipo_faq_zh_tw char uni+bigram BM25 0.909 "
              "(test_a) / 0.832 (test_b)")


# --- processes ------------------------------------------------------------------------------------
def kb_env(home: Path, code_root: Path) -> dict:
    """The caller's environment without any platform setting, plus KB_HOME (and the code)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("KB_", "DAGSTER_", "MLFLOW_")) and k != "PYTHONPATH"}
    env.update(KB_HOME=str(home), PYTHONPATH=str(code_root))
    return env


def kb(args: list[str], home: Path, code_root: Path, timeout: float = 7200) -> tuple[int, float, str]:
    t0 = time.perf_counter()
    p = subprocess.run([PY, "-m", "dagster_project.cli", *args], cwd=code_root,
                       env=kb_env(home, code_root), capture_output=True, text=True,
                       timeout=timeout)
    return p.returncode, time.perf_counter() - t0, p.stdout + p.stderr


def excerpt(output: str, n: int = 6) -> str:
    """The lines that say what failed (else the tail of the output)."""
    lines = [ln.rstrip() for ln in output.splitlines() if ln.strip()]
    bad = [ln for ln in lines if "FAILED" in ln or "Error" in ln or "not run" in ln]
    return "\n".join(list(dict.fromkeys(bad or lines))[-n:])


def git(root: Path, *args: str) -> str:
    p = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True)
    return p.stdout.strip() if p.returncode == 0 else ""


PACKAGES = ("kb_assets", "resources", "sensors", "checks", "dagster_project")


def code_differences(code_root: Path) -> list[str]:
    """Files of the platform's packages under `code_root` that differ from this repository's
    HEAD or are not in it (caches excluded)."""
    if code_root.resolve() == REPO.resolve():
        return []
    head = {}
    for line in git(REPO, "ls-tree", "-r", "HEAD", "--", *PACKAGES).splitlines():
        meta, path = line.split("\t", 1)
        head[path] = meta.split()[2]
    files = sorted(str(p.relative_to(code_root)) for pkg in PACKAGES
                   for p in (code_root / pkg).rglob("*")
                   if p.is_file() and "__pycache__" not in p.parts and ".egg-info" not in str(p))
    hashes = subprocess.run(["git", "hash-object", *[str(code_root / f) for f in files]],
                            capture_output=True, text=True).stdout.split()
    out = [f"{f} ({'differs from HEAD' if f in head else 'not in git'})"
           for f, h in zip(files, hashes) if head.get(f) != h]
    out += [f"{f} (missing)" for f in sorted(set(head) - set(files))]
    return out


# --- what the build left behind ----------------------------------------------------------------------
def step_durations(home: Path) -> tuple[str | None, dict[str, float], list[str]]:
    """(run id, step key -> seconds from STEP_SUCCESS, failed step keys) of the last run."""
    from dagster import DagsterEventType, DagsterInstance

    with DagsterInstance.from_config(str(home / "dagster")) as instance:
        runs = instance.get_runs(limit=1)
        if not runs:
            return None, {}, []
        run_id = runs[0].run_id
        out, failed = {}, []
        for rec in instance.all_logs(run_id, of_type={DagsterEventType.STEP_SUCCESS,
                                                      DagsterEventType.STEP_FAILURE}):
            ev = rec.dagster_event
            if ev.event_type == DagsterEventType.STEP_SUCCESS:
                out[ev.step_key] = ev.event_specific_data.duration_ms / 1000
            else:
                failed.append(ev.step_key)
    return run_id, out, failed


def synthetic_metrics(home: Path) -> tuple[dict | None, int | None]:
    """What retrieval_eval recorded for the build: (metrics, questions scored)."""
    import duckdb

    db = home / "kb.duckdb"
    if not db.exists():
        return None, None
    con = duckdb.connect(str(db), read_only=True)
    try:
        row = con.execute("""SELECT metrics, details FROM eval_results WHERE model_name = 'kb'
                             AND json_extract_string(details, '$.trigger') = 'dagster'
                             ORDER BY created_at DESC LIMIT 1""").fetchone()
    finally:
        con.close()
    if row is None:
        return None, None
    return json.loads(row[0]), json.loads(row[1]).get("eval_set", {}).get("n_questions")


def published_version(home: Path) -> tuple[int | None, bool]:
    """(version to measure, is it production): the serving pointer, else the latest version."""
    pointer = home / "serving.json"
    if pointer.exists():
        return int(json.loads(pointer.read_text(encoding="utf-8"))["version"]), True
    versions = sorted(int(p.name) for p in (home / "versions").glob("[0-9]*")
                      if (p / "version.json").exists()) if (home / "versions").exists() else []
    return (versions[-1] if versions else None), False


# --- measuring ------------------------------------------------------------------------------------
def open_searcher(home: Path, version: int, embedder):
    from kb_core.paths import Paths
    from kb_assets.searcher import Searcher

    os.environ["KB_HOME"] = str(home)
    try:
        return Searcher.open(Paths.from_env(), version, embedder)
    finally:
        os.environ.pop("KB_HOME", None)


def quality(searcher, queries: dict, qrels: dict) -> dict[str, dict]:
    from kb_assets.metrics import ndcg_at_k, recall_at_k

    qids = [q for q in qrels if q in queries]
    texts = [queries[q] for q in qids]
    out = {}
    for mode in MODES:
        t0 = time.perf_counter()
        ranked = [[h.doc_id for h in res] for res in searcher.search_batch(texts, k=10, mode=mode)]
        out[mode] = {
            "queries": len(qids), "s": time.perf_counter() - t0,
            "recall@3": float(np.mean([recall_at_k(r, qrels[q], 3) for r, q in zip(ranked, qids)])),
            "ndcg@10": float(np.mean([ndcg_at_k(r, qrels[q], 10) for r, q in zip(ranked, qids)])),
            "zero_hit": float(np.mean([not r for r in ranked]))}
    return out


def refusal(searcher, ood: dict[str, list[str]]) -> dict[str, tuple[int, float]]:
    out = {}
    for name, texts in ood.items():
        res = searcher.search_batch(texts, k=10, mode="hybrid")
        out[name] = (len(texts), float(np.mean([not r for r in res])))
    return out


def inbox_corpus(name: str, inbox: Path, quick_docs: int | None, quick_queries: int,
                 seed: int = 1) -> tuple[int, dict[str, dict]]:
    """Put the corpus into the inbox; (documents, split -> kept qrels)."""
    folder = DATASETS / name
    splits = {s: load_beir(folder, s)[2] for s in CORPORA[name]}
    if quick_docs is None:
        shutil.copyfile(folder / "corpus.jsonl", inbox / "corpus.jsonl")  # as-is
        with open(folder / "corpus.jsonl", encoding="utf-8") as f:
            return sum(1 for line in f if line.strip()), splits
    # --quick: a sample of queries, all their relevant documents, random others.
    rng = random.Random(seed)
    lines = {}
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            if line.strip():
                lines[str(json.loads(line)["_id"])] = line
    keep_q: dict[str, dict] = {}
    for s, qrels in splits.items():
        qids = sorted(qrels)
        rng.shuffle(qids)
        keep_q[s] = {q: qrels[q] for q in qids[:quick_queries] if set(qrels[q]) <= set(lines)}
    relevant = {d for qrels in keep_q.values() for rel in qrels.values() for d in rel}
    others = sorted(set(lines) - relevant)
    rng.shuffle(others)
    chosen = set(relevant) | set(others[:max(0, quick_docs - len(relevant))])
    with open(inbox / "corpus.jsonl", "w", encoding="utf-8") as f:
        for did, line in lines.items():  # original order and bytes
            if did in chosen:
                f.write(line if line.endswith("\n") else line + "\n")
    return len(chosen), keep_q


def ood_questions(name: str, per_dataset: int, seed: int = 7) -> dict[str, list[str]]:
    out = {}
    for other in CORPORA:
        if other == name:
            continue
        with open(DATASETS / other / "queries.jsonl", encoding="utf-8") as f:
            texts = [json.loads(line)["text"] for line in f if line.strip()]
        out[other] = random.Random(f"{seed}:{other}").sample(texts, min(per_dataset, len(texts)))
    return out


def run_corpus(name: str, root: Path, args, embedder) -> dict:
    home = root / name
    (home / "inbox").mkdir(parents=True)
    quick_docs = args.quick_docs if args.quick and name == "scifact" else None
    n_docs, splits = inbox_corpus(name, home / "inbox", quick_docs, args.quick_queries)
    r: dict = {"corpus": name, "docs": n_docs, "subset": quick_docs is not None, "home": home}
    print(f"\n[{name}] {n_docs} documents in {home / 'inbox'}; kb build ...", flush=True)
    load0 = os.getloadavg()[0]
    rc, wall, out = kb(["build"], home, args.code_root)
    r.update(build_rc=rc, build_s=wall, build_excerpt=excerpt(out) if rc else "",
             load=(load0, os.getloadavg()[0]))
    print(f"[{name}] kb build exit {rc} in {wall:.1f}s", flush=True)
    if rc:
        print(excerpt(out, 12), flush=True)
    r["run_id"], r["steps"], r["failed_steps"] = step_durations(home)
    version, is_prod = published_version(home)
    r.update(version=version, production=is_prod)
    vrc, _, vout = kb(["versions", "--json"], home, args.code_root)
    try:
        r["registry_production"] = json.JSONDecoder().raw_decode(vout[vout.index("{"):])[0]["production"]
    except (ValueError, KeyError):
        r["registry_production"] = f"? (kb versions exit {vrc})"
    r["synthetic"], r["synthetic_n"] = synthetic_metrics(home)
    if version is not None:
        erc, ewall, eout = kb(["eval"], home, args.code_root)
        r.update(eval_rc=erc, eval_s=ewall)
        try:
            searcher = open_searcher(home, version, embedder)
            queries = load_beir(DATASETS / name, next(iter(splits)))[1]
            r["quality"] = {s: quality(searcher, queries, qrels) for s, qrels in splits.items()}
            r["refusal"] = refusal(searcher, ood_questions(name, args.ood_per_dataset))
            cal = searcher.version.info.get("relevance") or {}
            r["calibration"] = {c: (cal[c]["quantile"], cal[c]["null_refusal"],
                                    cal[c]["positive_refusal"]) for c in ("latin", "cjk") if c in cal}
        except Exception as exc:  # report it with the other corpora instead of stopping
            r["measure_error"] = f"{type(exc).__name__}: {exc}"
            print(f"[{name}] measuring version {version} failed: {r['measure_error']}", flush=True)
    print(f"[{name}]", {k: v for k, v in r.items() if k not in ("home",)}, flush=True)
    return r


# --- report ---------------------------------------------------------------------------------------
def f3(x) -> str:
    return "-" if x is None else f"{x:.3f}"


def verdict(ok: bool) -> str:
    return "met" if ok else "**missed**"


def report(results: list[dict], args, command: str, total_s: float) -> str:
    head = git(REPO, "rev-parse", "--short", "HEAD")
    diffs = code_differences(args.code_root)
    tracked = bool(git(REPO, "ls-files", "kb_assets/data/unrelated_questions.txt"))
    lines = ["## A new user's first KB, default settings (`benchmarks/bench_new_user.py`)", "",
             f"Command: `{command}` (total {total_s / 60:.1f} min). Each corpus.jsonl was dropped "
             "as-is into the inbox of a fresh temporary KB_HOME and built with `kb build` in its own "
             "process, no golden set, no environment variable but KB_HOME. Quality is measured on "
             "the published version with the dataset's real queries and qrels through "
             "`Searcher.search_batch(..., k=10, mode=...)` (the served path, the version's own "
             "relevance calibration). The machine has 2 cores shared with other engineers: "
             "times are noisy, single runs (1-min load average before / after each build: "
             + ", ".join(f"{r['corpus']} {r['load'][0]:.1f} / {r['load'][1]:.1f}"
                         for r in results if "load" in r) + ").", "",
             f"Code: {head} (`kb` subprocesses: PYTHONPATH=`{args.code_root}`"
             + ("" if not diffs and args.code_root.resolve() == REPO.resolve() else
                f"; its platform packages vs {head}: " + (", ".join(f"`{d}`" for d in diffs)
                                                          or "identical")) + ")."]
    if args.quick:
        lines += ["", "**--quick**: scifact is a subset (all documents relevant to a sample of "
                  "queries plus random others): its numbers are not comparable with full-corpus "
                  "figures and its nDCG target is not judged."]
    if not tracked:
        lines += ["", "**Packaging defect**: `kb_assets/data/unrelated_questions.txt` (the relevance "
                  "calibration's null questions) is not in git: `.gitignore`'s `data/` pattern "
                  "matches `kb_assets/data/`. In a clean checkout `kb build` fails at `faiss_index` "
                  "with `FileNotFoundError: .../kb_assets/data/unrelated_questions.txt`."
                  + ("" if args.code_root.resolve() == REPO.resolve() else
                     f" The builds of this run used `{args.code_root}`: the commit's code plus "
                     "that file (listed above); nothing else differs.")]
    lines += ["", "### Build (`kb build`, whole process)", "",
              md_row("corpus", "docs", "exit", "wall s", "production set", "steps s: embeddings",
                     "eval_set", "retrieval_eval", "gate check", "`kb eval` wall s (exit)"),
              md_row(*["---"] * 10)]
    for r in results:
        st = r["steps"]
        prod = (f"yes (v{r['version']})" if r["production"] else "**no**")
        if r["registry_production"] != (r["version"] if r["production"] else None):
            prod += f"; registry: {r['registry_production']}"
        lines.append(md_row(
            r["corpus"] + (" (subset)" if r["subset"] else ""), r["docs"], r["build_rc"],
            f"{r['build_s']:.1f}", prod,
            *[f"{st[s]:.1f}" if s in st else "-" for s in ("embeddings", *EVAL_STEPS)],
            f"{r['eval_s']:.1f} ({r['eval_rc']})" if "eval_s" in r else "-"))
    for r in results:
        if r.get("measure_error"):
            lines += ["", f"Measuring {r['corpus']} version {r['version']} failed: "
                      f"`{r['measure_error']}`"]
    fails = [r for r in results if r["build_rc"]]
    for r in fails:
        lines += ["", f"`kb build` on {r['corpus']} exited {r['build_rc']} "
                  f"(failed steps: {', '.join(r['failed_steps']) or '-'}):", "", "```",
                  r["build_excerpt"], "```"]

    lines += ["", "### Real queries on the published version (k=10)", "",
              md_row("corpus / split", "queries", "mode", "recall@3", "nDCG@10", "zero-hit"),
              md_row(*["---"] * 6)]
    for r in results:
        for split, q in r.get("quality", {}).items():
            for mode in MODES:
                m = q[mode]
                lines.append(md_row(f"{r['corpus']} / {split}", m["queries"], mode,
                                    f3(m["recall@3"]), f3(m["ndcg@10"]), f"{m['zero_hit']:.1%}"))
    lines += ["", REFERENCES + "."]

    lines += ["", "### Does the synthetic gate predict real quality? (hybrid, recall@3)", "",
              md_row("corpus / split", "synthetic questions", "synthetic recall@3",
                     "synthetic nDCG@10", "synthetic zero-hit", "real recall@3", "real nDCG@10",
                     "real zero-hit", "synthetic - real recall@3"),
              md_row(*["---"] * 9)]
    for r in results:
        syn = r.get("synthetic") or {}
        for split, q in r.get("quality", {}).items():
            h = q["hybrid"]
            lines.append(md_row(
                f"{r['corpus']} / {split}", r.get("synthetic_n") or "-", f3(syn.get("recall_at_3")),
                f3(syn.get("ndcg_at_10")),
                f"{syn['zero_hit_rate']:.1%}" if "zero_hit_rate" in syn else "-",
                f3(h["recall@3"]), f3(h["ndcg@10"]), f"{h['zero_hit']:.1%}",
                f"{syn['recall_at_3'] - h['recall@3']:+.3f}" if "recall_at_3" in syn else "-"))

    others = list(CORPORA)
    lines += ["", f"### Refusal of out-of-domain questions (hybrid, served; up to "
              f"{args.ood_per_dataset} random queries of each other dataset)", "",
              md_row("KB", *[f"from {o}" for o in others], "all", "calibration latin / cjk: "
                     "quantile, null refused, own synthetic refused"),
              md_row(*["---"] * (len(others) + 3))]
    for r in results:
        ref = r.get("refusal")
        if not ref:
            continue
        n = sum(v[0] for v in ref.values())
        allr = sum(v[0] * v[1] for v in ref.values()) / n
        cal = "; ".join(f"{c} q{v[0]}, {v[1]:.0%}, {'-' if v[2] is None else f'{v[2]:.1%}'}"
                        for c, v in r.get("calibration", {}).items())
        lines.append(md_row(r["corpus"], *[f"{ref[o][1]:.1%} of {ref[o][0]}" if o in ref else "(self)"
                                           for o in others], f"{allr:.1%} of {n}", cal))

    # targets
    lines += ["", "### Targets", "", md_row("target", "corpus / split", "value", "verdict"),
              md_row(*["---"] * 4)]
    for r in results:
        if r["build_rc"] or not r["production"]:
            lines.append(md_row("`kb build` exits 0 and sets production", r["corpus"],
                                f"exit {r['build_rc']}, production {r['production']}",
                                verdict(False)))
    for r in results:
        for split, q in r.get("quality", {}).items():
            z = q["hybrid"]["zero_hit"]
            lines.append(md_row(f"zero-hit on answerable questions <= {MAX_ZERO_HIT:.0%}",
                                f"{r['corpus']} / {split}", f"{z:.1%}", verdict(z <= MAX_ZERO_HIT)))
    for r in results:
        if r.get("refusal"):
            n = sum(v[0] for v in r["refusal"].values())
            allr = sum(v[0] * v[1] for v in r["refusal"].values()) / n
            lines.append(md_row(f"refusal of out-of-domain questions >= {MIN_REFUSAL:.0%}",
                                r["corpus"], f"{allr:.1%}", verdict(allr >= MIN_REFUSAL)))
    for r in results:
        for split, q in r.get("quality", {}).items():
            best = max(("dense", "lexical"), key=lambda m: q[m]["ndcg@10"])
            h, b = q["hybrid"]["ndcg@10"], q[best]["ndcg@10"]
            lines.append(md_row("hybrid nDCG@10 >= better of dense / lexical",
                                f"{r['corpus']} / {split}",
                                f"{h:.3f} vs {best} {b:.3f} ({h - b:+.3f})", verdict(h >= b)))
    for r in results:
        for split, q in r.get("quality", {}).items():
            floor = TARGETS.get((r["corpus"], split))
            if floor is None:
                continue
            h = q["hybrid"]["ndcg@10"]
            lines.append(md_row(f"nDCG@10 >= {floor}", f"{r['corpus']} / {split}", f"{h:.3f}",
                                "n/a (subset)" if r["subset"] else verdict(h >= floor)))
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--quick", action="store_true",
                    help="scifact subset (--quick-docs documents incl. all relevant to a sample of "
                         "--quick-queries queries): a smoke run")
    ap.add_argument("--quick-docs", type=int, default=1000)
    ap.add_argument("--quick-queries", type=int, default=100)
    ap.add_argument("--ood-per-dataset", type=int, default=300)
    ap.add_argument("--corpora", default=",".join(CORPORA))
    ap.add_argument("--code-root", type=Path, default=REPO,
                    help="checkout whose code `kb` runs (default: this repository)")
    ap.add_argument("--keep", action="store_true", help="keep the temporary KB_HOMEs")
    ap.add_argument("--no-write", action="store_true", help="do not touch BENCHMARKS.md")
    args = ap.parse_args()
    args.code_root = args.code_root.resolve()
    command = " ".join([".venv/bin/python", "benchmarks/bench_new_user.py",
                        *map(shlex.quote, sys.argv[1:])])

    from resources.embedder import Embedder

    embedder = Embedder()
    t0 = time.perf_counter()
    root = Path(tempfile.mkdtemp(prefix="kb-bench-newuser-"))
    results = []
    try:
        for name in args.corpora.split(","):
            results.append(run_corpus(name, root, args, embedder))
    finally:
        if args.keep:
            print(f"KB_HOMEs kept under {root}")
        else:
            shutil.rmtree(root, ignore_errors=True)
    md = report(results, args, command, time.perf_counter() - t0)
    print("\n" + md)
    if not args.no_write:
        write_section("new_user", md)
    return 1 if any(r["build_rc"] or r.get("measure_error") for r in results) else 0  # a failed build fails `make bench`


if __name__ == "__main__":
    sys.exit(main())
