"""Fine-tuning benchmark: local LoRA training time per 100 examples per epoch, and the
ft_eval scores of the fine-tune vs its base model on the held-out split of the sample
documents. Same code paths as the assets (dataset builder, LocalLoRAFineTuner, LLM,
scoring), without Dagster around them. Writes the `finetune` section of BENCHMARKS.md.

    .venv/bin/python benchmarks/bench_finetune.py            # kb build defaults (30 steps)
    .venv/bin/python benchmarks/bench_finetune.py --steps 60 --eval-questions 40
    .venv/bin/python benchmarks/bench_finetune.py --quick    # 5 steps, 6 questions
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

from dagster_project.settings import apply_offline_env  # noqa: E402

apply_offline_env()

from benchmarks.common import REPO, md_row, write_section  # noqa: E402
from kb_assets.ft_data import DatasetSettings, SourceDoc, build_examples, eligible  # noqa: E402
from kb_assets.ft_plan import plan_dataset  # noqa: E402
from kb_assets.ft_scoring import fact_coverage, gate, key_facts, pick_eval, summarize  # noqa: E402
from kb_assets.parsing import parse_file  # noqa: E402
from resources.embedder import Embedder  # noqa: E402
from resources.finetuner import LocalLoRAFineTuner, TrainJob  # noqa: E402
from resources.llm import LLM, AssistantRef  # noqa: E402


def sample_dataset(settings: DatasetSettings):
    root = REPO / "sample_data" / "inbox"
    docs = []
    for p in sorted(root.rglob("*")):
        if p.is_file():
            for d in parse_file(str(p.relative_to(root)), p.read_bytes()).docs:
                docs.append(SourceDoc(d.doc_key, d.doc_id, d.title, d.text, d.content_hash, d.flags))
    examples = [x for d in docs if eligible(d, settings) for x in build_examples(d, settings)]
    return docs, plan_dataset(examples, settings, None, None, None)


class Log:
    def info(self, msg):
        print("   ", msg, flush=True)

    warning = info


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=30, help="training steps (kb build default 30)")
    ap.add_argument("--batch-size", type=int, default=4)
    ap.add_argument("--eval-questions", type=int, default=24)
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--quick", action="store_true", help="5 steps, 6 questions")
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()
    if args.quick:
        args.steps, args.eval_questions = 5, 6
    load0 = os.getloadavg()[0]
    settings = DatasetSettings()
    docs, plan = sample_dataset(settings)
    print(f"sample dataset: {len(docs)} documents, {len(plan.pool)} training and "
          f"{len(plan.eval)} held-out examples")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name, xs in (("train", plan.pool), ("eval", plan.eval)):
            (tmp / f"{name}.jsonl").write_text("".join(x.line() + "\n" for x in xs), "utf-8")
        tuner = LocalLoRAFineTuner(max_steps=args.steps, batch_size=args.batch_size, log_every=5)
        print(f"training {args.steps} steps x {args.batch_size} examples ...")
        res = tuner.train(TrainJob(str(tmp / "train.jsonl"), str(tmp / "eval.jsonl"),
                                   str(tmp / "adapter")), Log())
        m = res.metrics
        items = [(x.doc_id, x) for x in plan.eval]
        chosen = [items[i][1] for i in pick_eval(items, args.eval_questions)]
        convs = [list(x.messages[:2]) for x in chosen]
        refs = [x.messages[2]["content"] for x in chosen]
        print(f"answering {len(convs)} held-out questions with the fine-tune and its base ...")
        t0 = time.perf_counter()
        tuned, base = LLM(batch_size=8).chat_pair(
            convs, AssistantRef("local", tuner.base_model(), str(tmp / "adapter")),
            AssistantRef("local", tuner.base_model()), args.max_new_tokens)
        gen_s = time.perf_counter() - t0
    emb = Embedder()
    vr = emb.encode(refs)

    def cos(ans):
        return [float(v) for v in (emb.encode([a or "(empty)" for a in ans]) * vr).sum(axis=1)]
    facts = [key_facts(r) for r in refs]
    st = summarize(cos(tuned), [fact_coverage(a, f) for a, f in zip(tuned, facts)], 0.75)
    sb = summarize(cos(base), [fact_coverage(a, f) for a, f in zip(base, facts)], 0.75)
    passed, reason = gate(st, sb, 0.02)
    load1 = os.getloadavg()[0]

    train_rows = [
        "| steps x batch | examples seen | mean tokens/example | train s | s/step | "
        "s per 100 examples per epoch | CPU s per 100 examples | train loss first -> last | "
        "held-out loss before -> after | model load s |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        md_row(f"{m['steps']} x {args.batch_size}", m["examples_seen"],
               m["mean_tokens"], m["train_s"], m["s_per_step"], m["s_per_100_examples"],
               round(m["train_cpu_s"] / m["examples_seen"] * 100, 1),
               f"{m['train_loss_first']} -> {m['train_loss_last']}",
               f"{m['eval_loss_before']} -> {m['eval_loss_after']}", m["load_s"])]
    score_rows = ["| metric | base | fine-tuned | delta |", "| --- | --- | --- | --- |"]
    for label, k in (("similarity (cosine) mean", "cosine_mean"),
                     ("key-fact coverage mean", "fact_coverage_mean"),
                     ("score mean (gate metric)", "score_mean"),
                     ("share with similarity >= 0.75", "share_above_threshold")):
        b, t = getattr(sb, k), getattr(st, k)
        score_rows.append(md_row(label, f"{b:.3f}", f"{t:.3f}", f"{t - b:+.3f}"))
    ex_i = next((i for i, f in enumerate(facts) if len(f) > 1), 0)  # one with facts to get
    example = chosen[ex_i]
    text = "\n".join([
        "## Fine-tuning (`benchmarks/bench_finetune.py`)",
        "",
        f"Sample documents: {len(docs)}; dataset: {len(plan.pool)} training / {len(plan.eval)} "
        f"held-out examples (held out by document family). Local LoRA (r={tuner.lora_rank}, "
        f"{tuner.target_modules}) on {tuner.base_model()}, loss on answer tokens only.",
        "",
        "### Local LoRA training", "", *train_rows, "",
        f"### ft_eval on {st.n} held-out questions (greedy, max {args.max_new_tokens} new tokens; "
        f"generation {gen_s:.0f} s for both models)", "", *score_rows, "",
        f"Gate (margin +0.02): **{'pass' if passed else 'FAIL'}** — {reason}.", "",
        f"Example — Q: {example.question}  ",
        f"reference: {refs[ex_i]}  ",
        f"base: {' '.join(base[ex_i].split())[:200]}  ",
        f"fine-tuned: {' '.join(tuned[ex_i].split())[:200]}", "",
        f"Load average during the run: {load0:.1f} at start, {load1:.1f} at end on "
        f"{os.cpu_count()} cores; other jobs were running, so wall times are upper bounds. CPU "
        "seconds are robust to that: with both cores free, wall time is about CPU s / 2.",
    ])
    print("\n" + text)
    if not args.no_write:
        write_section("finetune", text)
        print("\nwrote the finetune section of BENCHMARKS.md")
    print(json.dumps({"metrics": m, "tuned": st.as_dict(), "base": sb.as_dict()}, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
