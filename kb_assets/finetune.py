"""ft_dataset and fine_tuned_model: chat examples derived from the current KB version,
versioned by content (incremental with replay), and a fine-tune of them registered in MLflow
as `kb-assistant`. The evaluation and promotion assets live in ft_release.py."""


import hashlib
import json
import os
import shutil
import time
from collections import Counter

import pandas as pd
from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from kb_core.clock import utc_now
from kb_core.models import ASSISTANT_MODEL as ASSISTANT
from resources import persistence
from resources.embedder import Embedder
from resources.finetuner import FineTuneError, FineTuner, TrainJob
from resources.ft_config import FTConfig
from resources.llm import LLM, redact
from resources.registry import Registry, RegistryError, registered_versions
from resources.store import KBStore, fetch_one
from resources.vector_index import VersionStore

from kb_core.ft_data import SourceDoc, eligible, split_group, split_sections
from kb_core.writer_lock import KB_WRITER_POOL

from .asset_pages import loss_metadata
from .ft_plan import plan_questions
from .ft_questions import build_question_examples, kb_questions
from .index import faiss_index
from .release import eval_set
from .report import md_table

EVAL_ITEMS = "eval_items.jsonl"  # held-out items with contexts, references and key facts

DOCS_SQL = """
    SELECT d.doc_key, d.doc_id, d.title, d.text, d.content_hash, d.flags
    FROM documents d
    JOIN (SELECT DISTINCT doc_key, doc_content_hash FROM kb_version_members WHERE version = ?) m
      ON m.doc_key = d.doc_key AND m.doc_content_hash = d.content_hash
    WHERE d.active ORDER BY d.doc_key"""


def latest_dataset(con) -> dict | None:
    row = fetch_one(con, "SELECT dataset_version, content_sha256, kb_version, path, info "
                         "FROM ft_datasets ORDER BY dataset_version DESC LIMIT 1")
    if row is None:
        return None
    return {"dataset_version": row[0], "content_sha256": row[1], "kb_version": row[2],
            "path": row[3], "info": json.loads(row[4]) if row[4] else {}}


def llm_questions(llm: LLM, n_max: int = 2):
    """questions_fn that asks the assistant LLM for questions a section answers."""
    def fn(title, section, n):
        prompt = (f"Write {n} short questions an employee could ask that this passage of "
                  f"'{title}' answers. One question per line.\n\n{section.body[:800]}")
        out = llm.chat([[{"role": "user", "content": prompt}]], max_new_tokens=24 * n)[0]
        qs = [q.strip(" -*0123456789.") for q in out.splitlines()]
        return [q for q in qs if 8 <= len(q) <= 200 and q.endswith(("?", "？"))][:min(n, n_max)]
    return fn


def _write_jsonl(path, examples) -> None:
    with open(path, "w", encoding="utf-8") as f:
        for x in examples:
            f.write(x.line() + "\n")


def build_dataset(store: KBStore, cfg: FTConfig, run_id: str, questions_fn=None, log=None,
                  searcher=None) -> dict:
    """`searcher` (kb_assets.searcher.Searcher over the KB version) retrieves each question's
    context as `kb ask` would; tests and benchmarks may pass their own."""
    s = cfg.dataset_settings()
    with store.connect() as con:
        kb = fetch_one(con, "SELECT max(version) FROM kb_versions")[0]
        if kb is None:
            raise Failure("no KB version yet: materialize faiss_index first")
        rows = con.execute(DOCS_SQL, [kb]).fetchall()
        prev = latest_dataset(con)
        prev_lines = con.execute(
            "SELECT example_id, doc_key FROM ft_dataset_lines WHERE dataset_version = ? "
            "AND split IN ('train', 'full')", [prev["dataset_version"]]).fetchall() if prev else []
    docs = [SourceDoc(k, i, t or "", x or "", h, tuple(f or ())) for k, i, t, x, h, f in rows]
    excluded = [d.doc_id for d in docs if not eligible(d, s)]
    if searcher is None:
        raise Failure("no searcher over the KB version was given")
    if searcher.version.number != kb:
        raise Failure(f"the searcher serves KB version {searcher.version.number}, not {kb}")
    try:
        kind, questions = kb_questions(store, docs, cfg.golden_path or None, s, questions_fn,
                                       searcher.version)
    except ValueError as exc:
        raise Failure(description=str(exc)) from None
    built = build_question_examples(docs, questions, kind, searcher, s,
                                    embed_fn=searcher.embedder.encode)
    plan = plan_questions(
        built.train, built.eval, s, {r[0] for r in prev_lines} if prev else None,
        {r[1] for r in prev_lines} if prev else None,
        prev["info"].get("settings_version") if prev else None)
    base = {"kb_version": kb, "documents": len(docs), "excluded_docs": excluded,
            "examples_generated": len(built.train) + len(built.eval), "plan": plan,
            "questions": built}
    if prev and prev["content_sha256"] == plan.content_sha256:
        return {**base, "new_version": False, "dataset_version": prev["dataset_version"],
                "path": prev["path"]}
    n_groups = len({split_group(d.doc_id) for d in docs if eligible(d, s)})
    if len(plan.pool) < s.min_examples:
        raise Failure(
            f"only {len(plan.pool)} training examples from {len(docs) - len(excluded)} usable "
            f"documents and {built.n_train_questions} training-side {built.kind} questions "
            f"(minimum {s.min_examples}): add documents or questions, or lower "
            "KB_FT_MIN_EXAMPLES; nothing was trained")
    if not plan.eval:
        raise Failure(f"no held-out evaluation examples ({n_groups} document group(s), "
                      f"{built.n_eval_questions} held-out {built.kind} questions): the "
                      "evaluation split needs documents on at least two different topics")
    root = cfg.root_path
    root.mkdir(parents=True, exist_ok=True)
    existing = [int(p.name) for p in root.iterdir() if p.name.isdigit()]
    number = max(existing + [prev["dataset_version"] if prev else 0]) + 1
    tmp = root / f".tmp-{number}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    files = {"train": plan.train, "eval": plan.eval}
    if plan.mode == "incremental":
        files["full"] = plan.pool
    for split, xs in files.items():
        _write_jsonl(tmp / f"{split}.jsonl", xs)
    with open(tmp / EVAL_ITEMS, "w", encoding="utf-8") as f:  # what ft_eval scores
        for x in plan.eval:
            f.write(json.dumps({**x.meta, "example_id": x.example_id,
                                "messages": list(x.messages)}, ensure_ascii=False) + "\n")
    info = {"settings_version": s.version, "settings": {k: v for k, v in s.__dict__.items()},
            "mode": plan.mode, "reason": plan.reason,
            "parent_dataset_version": prev["dataset_version"] if prev else None,
            "n_pool": len(plan.pool), "n_fresh": len(plan.fresh), "n_replay": len(plan.replay),
            "removed_examples": len(plan.removed_ids), "removed_docs": plan.removed_docs,
            "excluded_docs": excluded, "leaks_dropped": len(plan.leaks_dropped),
            "question_source": cfg.question_source, "questions_kind": built.kind,
            "questions": {"total": built.n_questions, "train": built.n_train_questions,
                          "held_out": built.n_eval_questions,
                          "mixed_dropped": built.n_mixed_dropped,
                          "refusal_examples_train": built.n_refusals_train,
                          "refusal_items_eval": built.n_refusals_eval,
                          "retrieval_misses_eval": built.n_retrieval_misses},
            "created_at": utc_now().isoformat()}
    (tmp / "dataset.json").write_text(json.dumps(info, indent=2, ensure_ascii=False), "utf-8")
    target = cfg.dataset_dir(number)
    shutil.rmtree(target, ignore_errors=True)  # a leftover of a crash before registration
    os.replace(tmp, target)
    lines = [(number, split, i, x.example_id, x.doc_key, x.doc_id, x.doc_content_hash)
             for split, xs in files.items() for i, x in enumerate(xs, start=1)]
    with store.transaction() as con:
        persistence.register_ft_dataset(con, {
            "dataset_version": number, "created_at": utc_now(), "run_id": run_id,
            "kb_version": kb, "content_sha256": plan.content_sha256,
            "n_train": len(plan.train), "n_eval": len(plan.eval), "path": str(target),
            "info": json.dumps(info, ensure_ascii=False)}, pd.DataFrame(lines, columns=[
                "dataset_version", "split", "line_no", "example_id", "doc_key", "doc_id",
                "doc_content_hash"]))
    if log:
        log.info(f"dataset version {number} ({plan.mode}: {plan.reason}) at {target}")
    return {**base, "new_version": True, "dataset_version": number, "path": str(target)}


@asset(
    pool=KB_WRITER_POOL,
    deps=[faiss_index, eval_set],
    group_name="fine_tune",
    kinds={"duckdb", "python"},
    description="Chat-format fine-tuning examples from the KB's evaluation questions (train-side "
                "document families), each with the context `kb ask` would retrieve and the "
                "answering sentences as target, a quarter refusals on context without the "
                "answer; held-out items for ft_eval; versioned by content, no leakage.",
    tags={"kb/writer": "true"},
)
def ft_dataset(context: AssetExecutionContext, store: KBStore, ft_config: FTConfig,
               llm: LLM, versions: VersionStore, embedder: Embedder) -> MaterializeResult:
    from .searcher import Searcher

    t0 = time.perf_counter()
    qfn = llm_questions(llm) if ft_config.question_source == "llm" else None
    with store.connect(read_only=True) as con:
        kb = fetch_one(con, "SELECT max(version) FROM kb_versions")[0]
    if kb is None:
        raise Failure("no KB version yet: materialize faiss_index first")
    searcher = Searcher(versions.load(kb), embedder)
    r = build_dataset(store, ft_config, context.run_id, qfn, context.log, searcher)
    plan, qb = r["plan"], r["questions"]
    per_doc = Counter(x.doc_id for x in plan.pool + plan.eval)
    sample = plan.eval[0] if plan.eval else (plan.pool[0] if plan.pool else None)
    md = {
        "dataset_version": r["dataset_version"], "new_version": r["new_version"],
        "kb_version": r["kb_version"], "content_sha256": plan.content_sha256,
        "mode": plan.mode, "mode_reason": plan.reason,
        "n_train": len(plan.train), "n_eval": len(plan.eval), "n_pool": len(plan.pool),
        "n_fresh": len(plan.fresh), "n_replay": len(plan.replay),
        "removed_examples": len(plan.removed_ids), "removed_docs": len(plan.removed_docs),
        "excluded_docs": MetadataValue.json({"prompt_injection_or_flagged": r["excluded_docs"]}),
        "leaks_dropped": len(plan.leaks_dropped),
        "questions_kind": qb.kind, "questions_total": qb.n_questions,
        "questions_train": qb.n_train_questions, "questions_held_out": qb.n_eval_questions,
        "refusal_examples": sum(1 for x in plan.pool if x.paraphrase_of.endswith("#r")),
        "refusal_items_eval": sum(1 for x in plan.eval if x.paraphrase_of.endswith("#r")),
        "retrieval_misses_eval": qb.n_retrieval_misses,
        "path": MetadataValue.path(r["path"]),
        "duration_s": round(time.perf_counter() - t0, 3),
        "examples_per_document": MetadataValue.md(md_table(
            sorted(per_doc.items(), key=lambda kv: -kv[1])[:15], ["document", "examples"])),
        "summary": MetadataValue.md(
            (f"Dataset **version {r['dataset_version']}** ({plan.mode}: {plan.reason}): "
             f"{len(plan.fresh)} fresh + {len(plan.replay)} replayed training examples, "
             f"{len(plan.eval)} held out." if r["new_version"] else
             f"No change since dataset version {r['dataset_version']}: no new version.")),
    }
    if sample is not None:
        md["sample_example"] = MetadataValue.md(md_table(
            [(m["role"], m["content"].replace("\n", " ")[:300]) for m in sample.messages],
            ["role", "content"]))
    return MaterializeResult(metadata=md)


# -- fine_tuned_model -------------------------------------------------------------------------
def ft_fingerprint(tuner: FineTuner, ds: dict) -> str:
    blob = json.dumps([tuner.provider, tuner.base_model(), tuner.settings(),
                       ds["dataset_version"], ds["content_sha256"]], sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def find_parent(versions: list[dict], tuner: FineTuner, dataset_version: int,
                cfg: FTConfig) -> dict | None:
    """The newest fine-tune of the parent dataset by the same provider and base model."""
    for v in sorted(versions, key=lambda r: -r["version"]):
        t = v["tags"]
        if (t.get("dataset_version") == str(dataset_version) and t.get("provider") == tuner.provider
                and t.get("base_model") == tuner.base_model()
                and (tuner.provider != "local" or os.path.isdir(cfg.adapter_path(t)))):
            return v
    return None


def train_and_register(store: KBStore, cfg: FTConfig, tuner: FineTuner, registry: Registry,
                       run_id: str, log=None) -> dict:
    from kb_core.packaging import ASSISTANT_DISTS, pinned_requirements, project_code_paths
    from resources.assistant_model import AssistantModel, assistant_signature, write_assistant_card
    from resources.registry_pages import publish_assistant_page

    with store.connect(read_only=True) as con:
        ds = latest_dataset(con)
    if ds is None:
        raise Failure("no fine-tuning dataset yet: materialize ft_dataset first")
    fp = ft_fingerprint(tuner, ds)
    versions = registered_versions(store, ASSISTANT)
    for v in versions:
        if v["tags"].get("ft_fingerprint") == fp:
            return {"reused": True, "assistant_version": v["version"], "dataset": ds,
                    "mlflow_version": v["mlflow_version"], "tags": v["tags"]}
    info, folder = ds["info"], cfg.dataset_dir(ds["dataset_version"])
    parent = None
    if info.get("mode") == "incremental":
        parent = find_parent(versions, tuner, info["parent_dataset_version"], cfg)
    if parent:
        mode, train_file = "incremental", folder / "train.jsonl"
    else:
        mode = "full"
        train_file = folder / ("full.jsonl" if info.get("mode") == "incremental" else "train.jsonl")
    key = max([v["version"] for v in versions] + [0]) + 1
    out = cfg.model_dir(key)
    shutil.rmtree(out, ignore_errors=True)  # a previous attempt with this number crashed
    job = TrainJob(str(train_file), str(folder / "eval.jsonl"), str(out / "adapter"),
                   parent=(cfg.adapter_path(parent["tags"]) if tuner.provider == "local"
                           else parent["tags"]["model_ref"]) if parent else None,
                   state_dir=str(cfg.root_path / "jobs"))  # survives the rmtree above
    if log:
        log.info(f"fine-tuning kb-assistant version {key} ({tuner.provider}, {mode}) on "
                 f"dataset version {ds['dataset_version']} from {train_file.name}")
    try:
        result = tuner.train(job, log)
    except FineTuneError as exc:
        raise Failure(description=redact(str(exc))) from None
    card = write_assistant_card(out, result, cfg.system_prompt, ds["dataset_version"])
    tags = {"provider": result.provider, "base_model": result.base_model,
            "model_ref": cfg.ref_tag(result.provider, result.model_ref),
            "dataset_version": ds["dataset_version"],
            "dataset_sha256": ds["content_sha256"], "kb_version": ds["kb_version"],
            "training_mode": mode, "parent_version": parent["version"] if parent else "",
            "train_split": train_file.stem,  # which ft_dataset_lines split it trained on
            "ft_fingerprint": fp, **{f"job_{k}": v for k, v in result.details.items()}}
    artifacts = {"assistant": str(card)}
    if result.provider == "local":
        artifacts["adapter"] = result.model_ref
    metrics = {k: v for k, v in result.metrics.items() if isinstance(v, (int, float))}
    try:
        mv = registry.register_version(
            store, ASSISTANT, key, python_model=AssistantModel(), artifacts=artifacts, tags=tags,
            run_id=run_id, metrics=metrics, signature=assistant_signature(),
            pip_requirements=pinned_requirements(ASSISTANT_DISTS),
            code_paths=project_code_paths())
    except RegistryError as exc:
        raise Failure(description=f"fine-tune trained but not registered: {exc}") from None
    try:  # the reviewer's page: description, hyperparameters as params, loss curve, tags
        publish_assistant_page(registry, store, key, tags, result.params, result.loss_curve,
                               run_id)
    except RegistryError as exc:
        if log:
            log.warning(f"kb-assistant version {key} registered; its MLflow page is "
                        f"incomplete: {exc}")
    return {"reused": False, "assistant_version": key, "mlflow_version": mv, "dataset": ds,
            "tags": tags, "result": result, "mode": mode}


@asset(
    pool=KB_WRITER_POOL,
    deps=[ft_dataset],
    group_name="fine_tune",
    kinds={"pytorch", "mlflow"},
    description="Fine-tune of the assistant on the dataset (local LoRA or OpenAI), registered "
                "in MLflow as kb-assistant; continues from the parent fine-tune when incremental.",
    tags={"kb/writer": "true"},
)
def fine_tuned_model(context: AssetExecutionContext, store: KBStore, ft_config: FTConfig,
                     finetuner: FineTuner, registry: Registry) -> MaterializeResult:
    t0 = time.perf_counter()
    r = train_and_register(store, ft_config, finetuner, registry, context.run_id, context.log)
    tags = r["tags"]
    md = {"assistant_version": r["assistant_version"], "mlflow_version": r["mlflow_version"],
          "reused": r["reused"], "provider": tags.get("provider"),
          "base_model": tags.get("base_model"), "model_ref": tags.get("model_ref"),
          "dataset_version": r["dataset"]["dataset_version"],
          "kb_version": r["dataset"]["kb_version"],
          "duration_s": round(time.perf_counter() - t0, 2)}
    if r["reused"]:
        context.log.info(f"dataset version {md['dataset_version']} was already fine-tuned with "
                         f"these settings: kb-assistant version {md['assistant_version']}")
        md["summary"] = MetadataValue.md(
            f"No new fine-tune: dataset version {md['dataset_version']} is already "
            f"kb-assistant version {md['assistant_version']}.")
        return MaterializeResult(metadata=md)
    res = r["result"]
    md.update({"training_mode": r["mode"], "parent_version": tags["parent_version"] or "none",
               **{k: v for k, v in res.metrics.items() if v is not None},
               "hyperparameters": MetadataValue.json(res.params)})
    md.update(loss_metadata(res.loss_curve))  # numbers the UI plots + the curve as a table
    md["summary"] = MetadataValue.md(
        f"Registered **kb-assistant version {r['assistant_version']}** ({tags['provider']}, "
        f"{r['mode']}) from dataset version {md['dataset_version']} (KB version "
        f"{md['kb_version']}).")
    return MaterializeResult(metadata=md)


__all__ = ["ft_dataset", "fine_tuned_model", "build_dataset", "train_and_register",
           "split_sections", "ASSISTANT"]
