"""Fine-tuning benchmark: "was fine-tuning worth it?" on documents nobody here wrote.

Each dataset is used as a new user's inbox (one `corpus.jsonl` of {id, title, text} written
into a temporary KB_HOME, read from ../shared/datasets and never copied into the repo) with
its BEIR queries/qrels as the curated golden set. The real Dagster assets run in-process:
ingest -> chunk -> embed -> index -> ft_dataset -> fine_tuned_model (local LoRA, `kb build
--select all` defaults) -> ft_eval, which answers the same held-out questions on the same
retrieved contexts with the fine-tune, its base model and the retrieval-only extractive
answer. Writes the `finetune` section of BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_finetune.py                       # both datasets
    .venv/bin/python benchmarks/bench_finetune.py --dataset stackfaq_en --eval-questions 40
    .venv/bin/python benchmarks/bench_finetune.py --quick               # 5 steps, 8 questions
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from kb_core.paths import apply_offline_env  # noqa: E402

apply_offline_env()

from benchmarks.common import DATASETS, md_row, write_section  # noqa: E402

FT_ASSETS = ["raw_docs", "cleaned_chunks", "embeddings", "faiss_index", "ft_dataset",
             "fine_tuned_model", "ft_eval"]
CONTENDERS = ("fine-tuned", "base", "extractive")


def write_inbox(inbox: Path, folder: Path, max_docs: int | None) -> int:
    """The BEIR corpus as one JSONL inbox file (documents in file order, first max_docs)."""
    inbox.mkdir(parents=True, exist_ok=True)
    n = 0
    with open(folder / "corpus.jsonl", encoding="utf-8") as src, \
            open(inbox / "corpus.jsonl", "w", encoding="utf-8") as out:
        for line in src:
            if max_docs is not None and n >= max_docs:
                break
            d = json.loads(line)
            out.write(json.dumps({"id": str(d["_id"]), "title": d.get("title") or "",
                                  "text": d["text"]}, ensure_ascii=False) + "\n")
            n += 1
    return n


def run_dataset(name: str, args) -> dict:
    from dagster import AssetSelection, DagsterInstance, Definitions, define_asset_job

    from checks import ALL_CHECKS
    from kb_core.paths import Paths
    from kb_assets.defs import KB_ASSETS
    from resources import default_resources
    from resources.finetuner import LocalLoRAFineTuner
    from resources.ft_config import FTConfig

    folder = DATASETS / name
    with tempfile.TemporaryDirectory(prefix=f"bench-ft-{name}-") as tmp:
        os.environ["KB_HOME"] = str(Path(tmp) / "kb")
        for var in ("KB_INBOX", "DAGSTER_HOME", "MLFLOW_TRACKING_URI"):
            os.environ.pop(var, None)
        paths = Paths.from_env().ensure()
        n_docs = write_inbox(paths.inbox, folder, args.max_docs)
        resources = default_resources(
            paths,
            ft_config=FTConfig(root=str(paths.home / "ft"), golden_path=str(folder),
                               eval_max_questions=args.eval_questions,
                               eval_max_new_tokens=args.max_new_tokens, auto_promote=False),
            finetuner=LocalLoRAFineTuner(max_steps=args.steps, batch_size=args.batch_size,
                                         log_every=10))
        job = define_asset_job("bench_ft", selection=AssetSelection.assets(*FT_ASSETS))
        defs = Definitions(assets=KB_ASSETS, asset_checks=ALL_CHECKS, jobs=[job],
                           resources=resources)
        load0, t0 = os.getloadavg()[0], time.perf_counter()
        with DagsterInstance.get() as instance:
            result = defs.resolve_job_def("bench_ft").execute_in_process(
                instance=instance, raise_on_error=False)
        wall = time.perf_counter() - t0
        md = {}
        for ev in result.get_asset_materialization_events():
            m = ev.step_materialization_data.materialization
            md[m.asset_key.path[-1]] = {k: getattr(v, "value", v) for k, v in m.metadata.items()}
        if "ft_eval" not in md:
            fails = [ev.event_specific_data.error.message for ev in result.all_events
                     if ev.event_type_value == "STEP_FAILURE"]
            raise SystemExit(f"{name}: the run did not reach ft_eval: {fails}")
        ev_row = _eval_details(paths)
    return {"name": name, "n_docs": n_docs, "wall_s": round(wall, 1), "load": (load0, os.getloadavg()[0]),
            "ds": md["ft_dataset"], "ft": md["fine_tuned_model"], "ev": md["ft_eval"],
            "details": ev_row}


def _eval_details(paths) -> dict:
    from resources.store import KBStore

    with KBStore(db_path=str(paths.db)).connect(read_only=True) as con:
        row = con.execute("SELECT details FROM eval_results WHERE model_name = 'kb-assistant' "
                          "ORDER BY created_at DESC LIMIT 1").fetchone()
    return json.loads(row[0])


def section(r: dict, args) -> str:
    ds, ft, ev, d = r["ds"], r["ft"], r["ev"], r["details"]
    table = ["| metric | fine-tuned | base | extractive |", "| --- | --- | --- | --- |"]
    for row in d["table"]:
        table.append(md_row(row[0], *[f"{v:.3f}" for v in row[1:]]))
    verdict = "yes" if ev["gate_passed"] else "no"
    ex = next((e for e in d["examples"] if e["answerable"]), d["examples"][0])
    una = next((e for e in d["examples"] if not e["answerable"]), None)

    def clip(t, n=160):
        t = " ".join(str(t).split())
        return t if len(t) <= n else t[:n - 1] + "…"
    lines = [
        f"### {r['name']} as the inbox ({r['n_docs']} documents)", "",
        f"Questions: the dataset's own queries as the curated set ({ds['questions_total']} "
        f"for these documents); training side {ds['questions_train']} questions -> "
        f"{ds['n_pool']} examples ({ds['refusal_examples']} refusals); held out "
        f"{ds['questions_held_out']} questions -> {ds['n_eval']} items "
        f"({ds['refusal_items_eval']} paired with other documents' passages, "
        f"{ds['retrieval_misses_eval']} retrieval misses: both unanswerable from their "
        f"context); {ev['n_questions']} scored, {ev['n_unanswerable']} of them unanswerable.", "",
        f"Training: {ft.get('steps')} steps x {args.batch_size}, {ft.get('train_s')} s, "
        f"**{ft.get('s_per_100_examples')} s per 100 examples** "
        f"({round(ft['train_cpu_s'] / ft['examples_seen'] * 100, 1) if ft.get('examples_seen') else '?'} "
        f"CPU s), loss {ft.get('train_loss_first')} -> {ft.get('train_loss_last')}, held-out loss "
        f"{ft.get('eval_loss_before')} -> {ft.get('eval_loss_after')}.", "",
        *table, "",
        f"**Was fine-tuning worth it? {verdict}.** {ev['gate_reason']}.", "",
        f"Example — Q: {clip(ex['question'], 100)}  ",
        f"fine-tuned: {clip(ex['fine_tuned'])}  ", f"base: {clip(ex['base'])}  ",
        f"extractive: {clip(ex['extractive'])}",
    ]
    if una:
        lines += ["", f"Unanswerable ({una['case']}) — Q: {clip(una['question'], 100)}  ",
                  f"fine-tuned: {clip(una['fine_tuned'])}  ", f"base: {clip(una['base'])}  ",
                  f"extractive: {clip(una['extractive'])}"]
    lines += ["", f"Whole run (ingest to ft_eval) {r['wall_s']} s; load average "
                  f"{r['load'][0]:.1f} -> {r['load'][1]:.1f} on {os.cpu_count()} cores."]
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dataset", action="append", choices=["stackfaq_en", "tipo_faq_zh_tw"],
                    help="default: both")
    ap.add_argument("--max-docs", type=int, default=None, help="first N corpus documents")
    ap.add_argument("--steps", type=int, default=30, help="training steps (kb build default 30)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-questions", type=int, default=40)
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--quick", action="store_true", help="5 steps, 8 questions, 60 documents")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.eval_questions, args.max_docs = 5, 8, args.max_docs or 60
    names = args.dataset or ["stackfaq_en", "tipo_faq_zh_tw"]
    intro = "\n".join([
        "## Fine-tuning: was it worth it? (`benchmarks/bench_finetune.py`)", "",
        "Each dataset is a new user's inbox with its queries as the curated golden set; the real "
        "assets run (`kb build --select all` defaults: LoRA r=8 on q_proj/v_proj of the packaged "
        f"SmolLM2-135M-Instruct, {args.steps} steps x {args.batch_size}). `ft_eval` answers the "
        "same held-out questions on the same retrieved contexts (top 2 passages, as `kb ask`) "
        "with the fine-tune, its base model and the retrieval-only extractive answer (best-"
        f"matching sentences of the top passage, no generation); greedy, max {args.max_new_tokens} "
        "new tokens. Correctness = share of the reference's key facts (numbers, names, "
        "distinctive words) in the answer, over answerable items; faithfulness = share of "
        "non-refused answers whose every sentence is supported by a cited passage of the "
        "context; refusal accuracy = share of unanswerable items refused; latency = generation "
        "seconds per answer (batched by 8, model load excluded). Score = mean of correctness, "
        "faithfulness and refusal accuracy; the gate needs the fine-tune to beat both others "
        "by 0.02. The CPU is shared with other engineers' jobs: times are upper bounds.",
        "One section per dataset follows (each written by its own run)."])
    if not args.no_write:
        write_section("finetune", intro)
    for name in names:
        print(f"== {name}", flush=True)
        r = run_dataset(name, args)
        text = section(r, args)
        print(text, flush=True)
        if not args.no_write:
            write_section(f"finetune-{name}", text)
            print(f"\nwrote the finetune-{name} section of BENCHMARKS.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
