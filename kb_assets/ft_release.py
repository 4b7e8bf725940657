"""ft_eval and assistant_release: the fine-tune and its base model answer the held-out
questions; scores go to MLflow, DuckDB (eval_results) and the asset's metadata; a blocking
check (checks/ft_checks.py) keeps a fine-tune that does not beat its base from being promoted."""


import hashlib
import json
import time

from dagster import AssetExecutionContext, AssetKey, Failure, MaterializeResult, MetadataValue, asset

from resources import persistence
from resources.embedder import Embedder
from resources.ft_config import FTConfig
from resources.llm import LLM, AssistantRef, LLMError
from kb_core.models import ASSISTANT as SPEC
from kb_core.models import ASSISTANT_MODEL as ASSISTANT
from kb_core.writer_lock import KB_WRITER_POOL
from resources.registry import Registry, RegistryError, registered_versions
from resources.registry_pages import log_evaluation
from resources.store import KBStore, fetch_one

from .finetune import EVAL_ITEMS, fine_tuned_model, ft_dataset
from .ft_answer import (ContenderSummary, extractive_answer, judge, summarize_contender,
                        table_rows, three_way_gate)
from .ft_scoring import pick_eval
from .promotion import promotion_step
from .report import md_table


def upstream_value(context, asset_name: str, key: str):
    """A metadata value of the latest materialization of `asset_name` (this run's, when it
    ran in this run): how downstream assets learn which version was produced."""
    ev = context.instance.get_latest_materialization_event(AssetKey(asset_name))
    if ev is None or ev.asset_materialization is None:
        return None
    v = ev.asset_materialization.metadata.get(key)
    return getattr(v, "value", v)


def assistant_refs(tags: dict, cfg: FTConfig) -> tuple[AssistantRef, AssistantRef]:
    """(fine-tuned, its base) for a registered version's tags."""
    if tags.get("provider") == "openai":
        return (AssistantRef("openai", tags["model_ref"], None, f"OpenAI {tags['model_ref']}"),
                AssistantRef("openai", tags["base_model"], None, f"OpenAI {tags['base_model']}"))
    return (AssistantRef("local", tags["base_model"], cfg.adapter_path(tags), "fine-tuned adapter"),
            AssistantRef("local", tags["base_model"], None, "base model"))


def load_eval_items(cfg: FTConfig, dataset_version: int, n: int) -> list[dict]:
    """Up to n held-out items ({question, answerable, passages, reference, facts, messages}),
    round-robin across documents, answerable and unanswerable ones alike."""
    path = cfg.dataset_dir(dataset_version) / EVAL_ITEMS
    if not path.is_file():
        raise Failure(f"held-out items {path} are missing (dataset version {dataset_version}): "
                      "rebuild the dataset with this version of the platform")
    with open(path, encoding="utf-8") as f:
        items = [json.loads(line) for line in f if line.strip()]
    return stratified_pick(items, n)


def stratified_pick(items: list[dict], n: int) -> list[dict]:
    """Up to n items keeping the file's share of unanswerable items (at least one when there
    is one), each part round-robin across documents: a plain round-robin would take every
    document's first (answerable) item and hardly measure refusals."""
    una = [it for it in items if not it["answerable"]]
    ans = [it for it in items if it["answerable"]]
    k_una = min(len(una), max(1 if una else 0, round(n * len(una) / max(1, len(items)))))
    k_ans = min(len(ans), n - k_una)
    k_una = min(len(una), n - k_ans)

    def pick(xs, k):
        keyed = [((it["relevant"] or ["?"])[0], it) for it in xs]
        return [xs[i] for i in pick_eval(keyed, k)]
    chosen = {id(it) for it in pick(ans, k_ans) + pick(una, k_una)}
    return [it for it in items if id(it) in chosen]


def extractive_answers(items: list[dict], embedder: Embedder, cfg: FTConfig) -> list[str]:
    """The retrieval-only contender on the same contexts (no generation)."""
    return [extractive_answer(it["question"], [(p["doc_id"], p["text"]) for p in it["passages"]],
                              cfg.max_answer_tokens, embedder.encode,
                              cfg.extractive_min_score).answer for it in items]


def three_way(items: list[dict], answers: dict[str, list[str]],
              seconds: dict[str, float]) -> tuple[list[ContenderSummary], list[list[dict]]]:
    """(summary per contender, verdicts per contender) in the order of `answers`."""
    judged = [{"answerable": it["answerable"], "facts": it["facts"],
               "context": {p["doc_id"]: p["text"] for p in it["passages"]}} for it in items]
    summaries, verdicts = [], []
    for name, outs in answers.items():
        v = [judge(a, j) for a, j in zip(outs, judged)]
        verdicts.append(v)
        summaries.append(summarize_contender(name, v, judged, seconds[name]))
    return summaries, verdicts


def evaluate(store, cfg: FTConfig, llm: LLM, embedder: Embedder, registry: Registry,
             version: int, run_id: str, log=None) -> dict:
    row = next((v for v in registered_versions(store, ASSISTANT) if v["version"] == version), None)
    if row is None:
        raise Failure(f"kb-assistant version {version} is not registered")
    tags = row["tags"]
    settings = ["three-way-v1", cfg.eval_max_questions, cfg.eval_max_new_tokens,
                cfg.extractive_min_score, cfg.max_answer_tokens, cfg.gate_margin,
                embedder.model_id, version]
    fp = hashlib.sha256(json.dumps(settings).encode()).hexdigest()[:16]
    with store.connect(read_only=True) as con:
        prev = fetch_one(con, "SELECT metrics, passed, details FROM eval_results WHERE "
                              "model_name = ? AND version = ? ORDER BY created_at DESC LIMIT 1",
                         [ASSISTANT, version])
    if prev and json.loads(prev[2]).get("eval_fingerprint") == fp:
        return {"reused": True, "version": version, "metrics": json.loads(prev[0]),
                "passed": bool(prev[1]), "details": json.loads(prev[2])}
    items = load_eval_items(cfg, int(tags["dataset_version"]), cfg.eval_max_questions)
    convs = [it["messages"][:2] for it in items]
    tuned_ref, base_ref = assistant_refs(tags, cfg)
    if log:
        log.info(f"answering {len(convs)} held-out questions with kb-assistant version "
                 f"{version}, its base model and the extractive baseline")
    seconds: dict[str, float] = {}
    try:
        tuned, base = llm.chat_pair(convs, tuned_ref, base_ref, cfg.eval_max_new_tokens, seconds)
    except LLMError as exc:
        raise Failure(description=str(exc)) from None
    t0 = time.perf_counter()
    extractive = extractive_answers(items, embedder, cfg)
    seconds["extractive"] = time.perf_counter() - t0
    answers = {"fine-tuned": tuned, "base": base, "extractive": extractive}
    seconds = {"fine-tuned": seconds.get("tuned", 0.0), "base": seconds.get("base", 0.0),
               "extractive": seconds["extractive"]}
    (st, sb, sx), (vt, vb, vx) = three_way(items, answers, seconds)
    passed, reason = three_way_gate(st, [sb, sx], cfg.gate_margin)
    metrics = {**st.as_dict("ft_"), **sb.as_dict("base_"), **sx.as_dict("extractive_"),
               "ft_score_mean": st.score, "base_score_mean": sb.score,
               "extractive_score_mean": sx.score,
               "score_delta": round(st.score - max(sb.score, sx.score), 4),
               "generation_s": round(seconds["fine-tuned"] + seconds["base"], 2)}
    examples = [{"doc_id": (it["relevant"] or [""])[0], "question": it["question"],
                 "answerable": it["answerable"], "case": it["case"],
                 "reference": it["reference"], "fine_tuned": a, "base": b, "extractive": x,
                 "ft_verdict": ja, "base_verdict": jb, "extractive_verdict": jx}
                for it, a, b, x, ja, jb, jx in zip(items, tuned, base, extractive, vt, vb, vx)]
    table = [list(r) for r in table_rows([st, sb, sx])]
    details = {"eval_fingerprint": fp, "reason": reason, "dataset_version": tags["dataset_version"],
               "tuned": tuned_ref.label, "base": base_ref.label, "examples": examples,
               "table": table, "contenders": ["fine-tuned", "base", "extractive"],
               "worth_it": passed}
    with store.transaction() as con:
        persistence.record_eval_result(con, model_name=ASSISTANT, version=version,
                                       run_id=run_id, metrics=metrics, passed=passed,
                                       details=details)
    try:
        # On the run and on the logged model (the MLflow 3 model page shows the latter).
        log_evaluation(registry, store, ASSISTANT, version, metrics, None, None)
        log_table(registry, row["run_id"], details)
    except RegistryError as exc:
        if log:
            log.warning(f"metrics not logged to MLflow: {exc}")
    return {"reused": False, "version": version, "metrics": metrics, "passed": passed,
            "details": details}


TABLE_HEADER = ["metric", "fine-tuned", "base", "extractive"]


def three_way_markdown(details: dict) -> str:
    return md_table([tuple(r) for r in details["table"]], TABLE_HEADER)


def log_table(registry: Registry, mlflow_run_id: str, details: dict) -> None:
    """The three-way table as MLflow artifacts of the version's run: a table (JSON, shown in
    the MLflow UI's artifact view), the markdown, and the per-question answers."""
    client = registry.client()
    try:
        import pandas as pd

        client.log_table(mlflow_run_id, pd.DataFrame(details["table"], columns=TABLE_HEADER),
                         "ft_eval/three_way_table.json")
        client.log_text(mlflow_run_id, three_way_markdown(details) + "\n\n" + details["reason"]
                        + "\n", "ft_eval/three_way.md")
        client.log_dict(mlflow_run_id, {"examples": details["examples"]},
                        "ft_eval/answers.json")
    except Exception as exc:  # noqa: BLE001 - MLflow errors vary; the eval is recorded in DuckDB
        raise RegistryError(f"three-way table not logged to MLflow: {exc}") from None


def _clip(text: str, n: int = 120) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[:n - 1] + "…"


@asset(
    pool=KB_WRITER_POOL,
    deps=[fine_tuned_model],
    group_name="fine_tune",
    kinds={"python", "mlflow"},
    description="Was fine-tuning worth it? The fine-tune, its base model and a retrieval-only "
                "extractive answer on the same held-out questions and retrieved contexts: "
                "correctness, faithfulness, refusal accuracy, latency. The fine-tune may become "
                "production only if it beats both.",
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
    ex = [(_clip(e["question"], 60), "yes" if e["answerable"] else "no", _clip(e["reference"], 80),
           _clip(e["fine_tuned"], 90), _clip(e["base"], 90), _clip(e["extractive"], 90))
          for e in d["examples"][:8]]
    verdict = ("**Fine-tuning was worth it**" if r["passed"] else
               "**Fine-tuning was not worth it**")
    numeric = {k: v for k, v in m.items() if isinstance(v, (int, float)) and k not in
               ("ft_n", "base_n", "extractive_n")}
    return MaterializeResult(metadata={
        "assistant_version": r["version"], "reused": r["reused"], "gate_passed": r["passed"],
        "gate_reason": d["reason"], "n_questions": m["ft_n"],
        "n_answerable": m["ft_n_answerable"], "n_unanswerable": m["ft_n_unanswerable"],
        **numeric,
        "three_way": MetadataValue.md(
            f"{verdict} on {m['ft_n']} held-out questions ({m['ft_n_unanswerable']} without the "
            f"answer in their context): {d['reason']}.\n\n" + three_way_markdown(d)),
        "examples": MetadataValue.md(md_table(
            ex, ["question", "answerable", "reference", "fine-tuned", "base", "extractive"])),
    })


@asset(
    pool=KB_WRITER_POOL,
    deps=[ft_eval],
    group_name="fine_tune",
    kinds={"mlflow"},
    description="Moves the kb-assistant `production` alias to the evaluated fine-tune when its "
                "gate passed (recorded in alias_history).",
    tags={"kb/writer": "true"},
)
def assistant_release(context: AssetExecutionContext, store: KBStore, ft_config: FTConfig,
                      registry: Registry) -> MaterializeResult:
    return promotion_step(context, SPEC, store, registry, ft_config.auto_promote,
                          lambda ev: ev["details"]["reason"])


FT_ASSETS = [ft_dataset, fine_tuned_model, ft_eval, assistant_release]
