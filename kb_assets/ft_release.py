"""ft_eval and assistant_release: the fine-tune and its base model answer the held-out
questions; scores go to MLflow, DuckDB (eval_results) and the asset's metadata; a blocking
check (checks/ft_checks.py) keeps a fine-tune that does not beat its base from being promoted."""


import hashlib
import json
import time

import numpy as np
from dagster import AssetExecutionContext, AssetKey, Failure, MaterializeResult, MetadataValue, asset

from resources.embedder import Embedder
from resources.ft_config import FTConfig
from resources.llm import LLM, AssistantRef, LLMError
from resources.registry import Registry, RegistryError, registered_versions
from resources.store import KBStore, fetch_one

from .finetune import ASSISTANT, fine_tuned_model, ft_dataset
from .ft_scoring import fact_coverage, gate, item_score, key_facts, pick_eval, summarize
from .ingest import now
from .report import md_table


def upstream_value(context, asset_name: str, key: str):
    """A metadata value of the latest materialization of `asset_name` (this run's, when it
    ran in this run): how downstream assets learn which version was produced."""
    ev = context.instance.get_latest_materialization_event(AssetKey(asset_name))
    if ev is None or ev.asset_materialization is None:
        return None
    v = ev.asset_materialization.metadata.get(key)
    return getattr(v, "value", v)


def assistant_refs(tags: dict, llm: LLM) -> tuple[AssistantRef, AssistantRef]:
    """(fine-tuned, its base) for a registered version's tags."""
    if tags.get("provider") == "openai":
        return (AssistantRef("openai", tags["model_ref"], None, f"OpenAI {tags['model_ref']}"),
                AssistantRef("openai", tags["base_model"], None, f"OpenAI {tags['base_model']}"))
    return (AssistantRef("local", tags["base_model"], tags["model_ref"], "fine-tuned adapter"),
            AssistantRef("local", tags["base_model"], None, "base model"))


def load_eval_set(store: KBStore, cfg: FTConfig, dataset_version: int, n: int):
    """[(doc_id, messages)] for up to n held-out examples, spread across documents."""
    with store.connect(read_only=True) as con:
        docs = [r[0] for r in con.execute(
            "SELECT doc_id FROM ft_dataset_lines WHERE dataset_version = ? AND split = 'eval' "
            "ORDER BY line_no", [dataset_version]).fetchall()]
    path = cfg.dataset_dir(dataset_version) / "eval.jsonl"
    if not path.is_file():
        raise Failure(f"held-out file {path} is missing (dataset version {dataset_version})")
    with open(path, encoding="utf-8") as f:
        msgs = [json.loads(line)["messages"] for line in f if line.strip()]
    if len(docs) != len(msgs):
        raise Failure(f"{path} has {len(msgs)} lines but DuckDB records {len(docs)}")
    items = list(zip(docs, msgs))
    return [items[i] for i in pick_eval(items, n)]


def cosines(embedder: Embedder, answers: list[str], refs: list[str]) -> list[float]:
    if not answers:
        return []
    a = embedder.encode([x or "(empty)" for x in answers])
    r = embedder.encode(refs)
    return [round(float(x), 4) for x in np.sum(a * r, axis=1)]


def evaluate(store, cfg: FTConfig, llm: LLM, embedder: Embedder, registry: Registry,
             version: int, run_id: str, log=None) -> dict:
    row = next((v for v in registered_versions(store, ASSISTANT) if v["version"] == version), None)
    if row is None:
        raise Failure(f"kb-assistant version {version} is not registered")
    tags = row["tags"]
    settings = [cfg.eval_max_questions, cfg.eval_max_new_tokens, cfg.eval_threshold,
                cfg.gate_margin, embedder.model_id, version]
    fp = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    with store.connect(read_only=True) as con:
        prev = fetch_one(con, "SELECT metrics, passed, details FROM eval_results WHERE "
                              "model_name = ? AND version = ? ORDER BY created_at DESC LIMIT 1",
                         [ASSISTANT, version])
    if prev and json.loads(prev[2]).get("eval_fingerprint") == fp:
        return {"reused": True, "version": version, "metrics": json.loads(prev[0]),
                "passed": bool(prev[1]), "details": json.loads(prev[2])}
    items = load_eval_set(store, cfg, int(tags["dataset_version"]), cfg.eval_max_questions)
    convs = [m[:2] for _, m in items]
    refs = [m[2]["content"] for _, m in items]
    tuned_ref, base_ref = assistant_refs(tags, llm)
    t0 = time.perf_counter()
    if log:
        log.info(f"answering {len(convs)} held-out questions with kb-assistant version "
                 f"{version} and its base model")
    try:
        tuned, base = llm.chat_pair(convs, tuned_ref, base_ref, cfg.eval_max_new_tokens)
    except LLMError as exc:
        raise Failure(description=str(exc)) from None
    gen_s = time.perf_counter() - t0
    facts = [key_facts(r) for r in refs]
    cos_t, cos_b = cosines(embedder, tuned, refs), cosines(embedder, base, refs)
    cov_t = [fact_coverage(a, f) for a, f in zip(tuned, facts)]
    cov_b = [fact_coverage(a, f) for a, f in zip(base, facts)]
    st = summarize(cos_t, cov_t, cfg.eval_threshold)
    sb = summarize(cos_b, cov_b, cfg.eval_threshold)
    passed, reason = gate(st, sb, cfg.gate_margin)
    metrics = {**st.as_dict("ft_"), **sb.as_dict("base_"),
               "score_delta": round(st.score_mean - sb.score_mean, 4),
               "generation_s": round(gen_s, 2)}
    examples = [{"doc_id": d, "question": m[1]["content"].rsplit("Question:", 1)[-1].strip(),
                 "reference": r, "fine_tuned": a, "base": b,
                 "ft_score": round(item_score(ct, vt), 3), "base_score": round(item_score(cb, vb), 3)}
                for (d, m), r, a, b, ct, vt, cb, vb
                in zip(items, refs, tuned, base, cos_t, cov_t, cos_b, cov_b)]
    details = {"eval_fingerprint": fp, "reason": reason, "dataset_version": tags["dataset_version"],
               "tuned": tuned_ref.label, "base": base_ref.label, "examples": examples}
    with store.transaction() as con:
        con.execute("INSERT INTO eval_results VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [ASSISTANT, version, run_id, now(), json.dumps(metrics), passed,
                     json.dumps(details, ensure_ascii=False)])
    try:
        registry.log_metrics(store, ASSISTANT, version, metrics)
    except RegistryError as exc:
        if log:
            log.warning(f"metrics not logged to MLflow: {exc}")
    registry.set_status(store, ASSISTANT, version, "passed" if passed else "rejected")
    return {"reused": False, "version": version, "metrics": metrics, "passed": passed,
            "details": details}


def eval_for_run(store: KBStore, run_id: str) -> dict | None:
    """The kb-assistant evaluation this Dagster run made, if any."""
    with store.connect(read_only=True) as con:
        row = fetch_one(con, "SELECT version, passed, metrics, details FROM eval_results WHERE "
                             "model_name = ? AND run_id = ? ORDER BY created_at DESC LIMIT 1",
                        [ASSISTANT, run_id])
    if row is None:
        return None
    return {"version": row[0], "passed": bool(row[1]), "metrics": json.loads(row[2]),
            "details": json.loads(row[3])}


def _clip(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 1] + "…"


@asset(
    deps=[fine_tuned_model],
    group_name="fine_tune",
    kinds={"python", "mlflow"},
    description="Fine-tune vs its base model on held-out questions (embedding similarity and "
                "key-fact coverage); decides whether it may become production.",
    tags={"kb/writer": "true"},
)
def ft_eval(context: AssetExecutionContext, store: KBStore, ft_config: FTConfig, llm: LLM,
            embedder: Embedder, registry: Registry) -> MaterializeResult:
    version = upstream_value(context, "fine_tuned_model", "assistant_version")
    if version is None:
        raise Failure("fine_tuned_model has not produced a kb-assistant version yet")
    r = evaluate(store, ft_config, llm, embedder, registry, int(version), context.run_id,
                 context.log)
    m, d = r["metrics"], r["details"]
    rows = [(name, m[f"base_{k}"], m[f"ft_{k}"], round(m[f"ft_{k}"] - m[f"base_{k}"], 4))
            for name, k in (("similarity (cosine) mean", "cosine_mean"),
                            ("key-fact coverage mean", "fact_coverage_mean"),
                            ("score mean", "score_mean"),
                            (f"share with similarity >= {ft_config.eval_threshold}",
                             "share_above_threshold"))]
    ex = [(_clip(e["question"], 70), _clip(e["reference"]), _clip(e["base"]),
           _clip(e["fine_tuned"]), e["base_score"], e["ft_score"]) for e in d["examples"][:6]]
    return MaterializeResult(metadata={
        "assistant_version": r["version"], "reused": r["reused"], "gate_passed": r["passed"],
        "gate_reason": d["reason"], "n_questions": m["ft_n"],
        **{k: v for k, v in m.items() if k not in ("ft_n", "base_n")},
        "scores": MetadataValue.md(md_table(rows, ["metric", "base", "fine-tuned", "delta"])),
        "examples": MetadataValue.md(md_table(
            ex, ["question", "reference", "base answer", "fine-tuned answer", "base", "ft"])),
    })


@asset(
    deps=[ft_eval],
    group_name="fine_tune",
    kinds={"mlflow"},
    description="Moves the kb-assistant `production` alias to the evaluated fine-tune when its "
                "gate passed (recorded in alias_history).",
    tags={"kb/writer": "true"},
)
def assistant_release(context: AssetExecutionContext, store: KBStore, ft_config: FTConfig,
                      registry: Registry) -> MaterializeResult:
    ev = eval_for_run(store, context.run_id)
    try:
        current = registry.get_alias(ASSISTANT, "production")
        promoted = False
        if ev is None:
            action = f"No fine-tune evaluated in this run: production stays {current or 'none'}."
        elif not ev["passed"]:
            action = (f"kb-assistant version {ev['version']} failed its gate: production stays "
                      f"{current or 'none'}.")
        elif current == ev["version"]:
            action = f"kb-assistant version {current} is already production."
        elif not ft_config.auto_promote:
            action = (f"kb-assistant version {ev['version']} passed; automatic promotion is off: "
                      f"run `kb promote {ev['version']} --model kb-assistant`.")
        else:
            move = registry.move_alias(store, ASSISTANT, "production", ev["version"],
                                       actor=f"dagster:{context.run_id}",
                                       reason=ev["details"]["reason"], run_id=context.run_id)
            promoted, current = True, move.to_version
            action = (f"Promoted **kb-assistant version {move.to_version}** to production "
                      f"(was {move.from_version or 'none'}).")
    except RegistryError as exc:
        raise Failure(description=str(exc)) from None
    context.log.info(action.replace("**", ""))
    return MaterializeResult(metadata={
        "production_version": current or 0, "promoted": promoted,
        "auto_promote": ft_config.auto_promote, "summary": MetadataValue.md(action)})


FT_ASSETS = [ft_dataset, fine_tuned_model, ft_eval, assistant_release]
