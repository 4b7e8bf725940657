"""Release assets: kb_release (register the new KB version in MLflow as model `kb`, alias
`staging`), retrieval_eval (score it on the golden set, next to production) and kb_promotion
(move `production` to it when its blocking gate check passed and auto-promotion is on)."""

import json
import tempfile
from pathlib import Path

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from kb_core.hooks import fault_point
from kb_core.models import KB
from resources import persistence
from resources.embedder import Embedder
from kb_core.packaging import project_code_paths
from kb_core.writer_lock import KB_WRITER_POOL
from resources.registry import Registry, RegistryError, ReleaseConfig
from resources.registry_pages import log_evaluation, per_question_frame, publish_kb_page
from resources.store import KBStore, fetch_one
from resources.segments import materialize
from resources.vector_index import VersionStore

from .asset_pages import table_preview
from .eval_set import EvalSet, curated_location, load_curated, load_synthetic, refresh_synthetic
from .golden import GoldenError
from .index import faiss_index
from .metrics import comparison_rows
from .promotion import promotion_step
from .release_eval import ReleaseEvaluation, evaluate_release
from .release_gate import GateResult, floors_of, thresholds_of
from .report import md_table
from .retrieval import RetrievalConfig
from .searcher import Searcher



# -- plain helpers (also used by `kb eval`) ---------------------------------------------------
def open_version(versions: VersionStore, embedder: Embedder, number: int) -> Searcher:
    version = versions.load(number)
    built_with = version.info.get("embedding_model")
    if built_with != embedder.model_id:
        raise FileNotFoundError(f"KB version {number} was built with {built_with}, "
                                f"but the configured embedder is {embedder.model_id}")
    return Searcher(version, embedder, RetrievalConfig())


def curated_set(cfg: ReleaseConfig, override: str | None = None) -> EvalSet | None:
    """The user's curated golden set (--golden, KB_GOLDEN, `$KB_HOME/golden/`), or None."""

    location = curated_location(override or cfg.golden_path or None,
                                Path(cfg.kb_home) if cfg.kb_home else None)
    if location is None:
        return None
    if not location.exists():
        raise GoldenError(f"golden set {location} does not exist")
    return load_curated(location)


def evaluate_release_of(versions: VersionStore, embedder: Embedder, store: KBStore,
                        cfg: ReleaseConfig, k: int, candidate: int, production: int | None,
                        golden_override: str | None = None) -> ReleaseEvaluation:
    cand = open_version(versions, embedder, candidate)
    prod = (open_version(versions, embedder, production)
            if production is not None and production != candidate
            and production in versions.numbers() else None)
    return evaluate_release(cand, prod, curated_set(cfg, golden_override), load_synthetic(store),
                            k, thresholds_of(cfg), floors_of(cfg), cfg.latency_sample)


def save_eval(store: KBStore, version: int, run_id: str, trigger: str, ev: ReleaseEvaluation,
              k: int) -> bool:
    passed = ev.passed
    details = {"trigger": trigger, "golden_path": ev.eval_set.source,
               "golden_sha256": ev.eval_set.sha256, "golden_format": ev.eval_set.fmt, "k": k,
               "eval_set": ev.details(),
               "production_version": ev.production.version if ev.production else None,
               "production_metrics": ev.production.metrics if ev.production else None,
               "candidate_shared_metrics": (ev.candidate_shared.metrics
                                            if ev.candidate_shared else None),
               "gate": [r.__dict__ for r in ev.gate],
               "per_query": ev.candidate.per_query if ev.candidate else []}
    metrics = dict(ev.candidate.metrics) if ev.candidate else {}
    with store.transaction() as con:
        persistence.record_eval_result(con, model_name=KB.name, version=version, run_id=run_id,
                                       metrics=metrics, passed=passed, details=details)
    return passed


def gate_table(rows: list[dict] | list[GateResult]) -> str:
    rows = [r if isinstance(r, dict) else r.__dict__ for r in rows]
    return md_table([(r["name"], "pass" if r["passed"] else "**FAIL**", r["value"],
                      r["threshold"], r["detail"]) for r in rows],
                    ["check", "result", "value", "threshold", "kind"])


def _latest_kb_version(store: KBStore) -> dict | None:
    with store.connect(read_only=True) as con:
        row = fetch_one(con, "SELECT version, run_id, info FROM kb_versions "
                             "ORDER BY version DESC LIMIT 1")
    return None if row is None else {"version": row[0], "run_id": row[1], **json.loads(row[2])}


def _candidate(store: KBStore) -> int | None:
    """The latest registered KB version, unless a Dagster run already evaluated it."""
    with store.connect(read_only=True) as con:
        row = fetch_one(con, """
            SELECT r.version FROM registry_versions r WHERE r.model_name = ?
            AND NOT EXISTS (SELECT 1 FROM eval_results e WHERE e.model_name = r.model_name
                            AND e.version = r.version
                            AND json_extract_string(e.details, '$.trigger') = 'dagster')
            AND r.version = (SELECT max(version) FROM registry_versions WHERE model_name = ?)
            """, [KB.name, KB.name])
    return None if row is None else int(row[0])


def _tags(info: dict, run_id: str) -> dict:
    chunker = info.get("chunker") or {}
    return {"kb_version": info["version"], "embedding_model": info.get("embedding_model"),
            "embedding_dim": info.get("dim"), "chunker_version": chunker.get("version"),
            "chunk_size": chunker.get("size"), "chunk_overlap": chunker.get("overlap"),
            "chunker": json.dumps(chunker, sort_keys=True), "n_docs": info.get("n_docs"),
            "n_chunks": info.get("n_chunks"), "index_sha256": info.get("index_sha256"),
            "manifest_sha256": info.get("manifest_sha256"), "lexical": info.get("lexical"),
            "source_manifest_sha256": info.get("source_manifest_sha256"),
            "code_version": info.get("code_version"), "built_by_run_id": info.get("run_id"),
            "registered_by_run_id": run_id,
            "relevance_calibration": json.dumps(info.get("relevance"), sort_keys=True)
            if info.get("relevance") else None,
            "duplicates_indexed_once": len(info.get("duplicates") or {})}


# -- assets -----------------------------------------------------------------------------------
@asset(deps=[faiss_index], group_name="release", kinds={"mlflow", "duckdb"},
       pool=KB_WRITER_POOL,
       description="Registers each new KB version in MLflow as a version of model `kb` "
                   "(pyfunc search model) with alias `staging`.")
def kb_release(context: AssetExecutionContext, store: KBStore, versions: VersionStore,
               registry: Registry) -> MaterializeResult:
    latest = _latest_kb_version(store)
    if latest is None:
        return MaterializeResult(metadata={"registered": False, "summary": MetadataValue.md(
            "No KB version exists yet: nothing to register.")})
    n = latest["version"]
    try:
        existing = [r for r in registry_rows(store) if r["version"] == n]
        if existing:
            mv = existing[0]["mlflow_version"]
            context.log.info(f"KB version {n} already registered (MLflow kb v{mv}): nothing to do")
            return MaterializeResult(metadata={
                "kb_version": n, "mlflow_version": mv, "registered": False,
                "summary": MetadataValue.md(f"No new KB version: version {n} is already "
                                            f"registered as MLflow `kb` version {mv}.")})
        from .kb_model import ARTIFACT_KEY, PIP_REQUIREMENTS, KBSearchModel, signature

        tags = _tags(latest, context.run_id)
        fault_point("release:before_register")
        # The artifact must serve on its own: the version's files and the segments it names.
        with tempfile.TemporaryDirectory(prefix=f"kb-version-{n}-") as tmp:
            artifact = materialize(versions.path / str(n), Path(tmp) / str(n))
            mv = registry.register_version(
                store, KB.name, n, KBSearchModel(), {ARTIFACT_KEY: str(artifact)},
                tags, run_id=context.run_id, pip_requirements=PIP_REQUIREMENTS,
                signature=signature(), code_paths=project_code_paths())
        move = registry.move_alias(store, KB.name, KB.candidate_alias, n,
                                   actor=f"dagster:{context.run_id}",
                                   reason="new candidate registered", run_id=context.run_id)
    except RegistryError as exc:
        raise Failure(description=f"{exc}; KB version {n} on disk is intact") from None
    try:  # the reviewer's page: description, params, tags (the version is registered anyway)
        publish_kb_page(registry, store, n, latest, context.run_id)
    except RegistryError as exc:
        context.log.warning(f"KB version {n} registered; its MLflow page is incomplete: {exc}")
    from kb_assets.release_metadata import release_metadata  # audit links for the UI

    return MaterializeResult(metadata={
        **release_metadata(store, n),
        "kb_version": n, "mlflow_version": mv, "registered": True,
        "model_uri": f"models:/{KB.name}/{mv}",
        "summary": MetadataValue.md(f"Registered **KB version {n}** as MLflow `kb` version "
                                    f"{mv}; alias `staging` moved {move.from_version} -> {n}."),
        "tags": MetadataValue.md(md_table(sorted((k, v) for k, v in tags.items()
                                                 if k not in ("chunker", "relevance_calibration")),
                                          ["tag", "value"], limit=40)),
    })


def registry_rows(store: KBStore) -> list[dict]:
    from resources.registry import registered_versions

    return registered_versions(store, KB.name)


@asset(deps=[faiss_index], group_name="release", kinds={"duckdb", "python"},
       pool=KB_WRITER_POOL,
       description="The KB's own evaluation questions (known-item questions made from its "
                   "documents, labelled synthetic), refreshed incrementally; a curated golden "
                   "set takes precedence when there is one.")
def eval_set(context: AssetExecutionContext, store: KBStore, versions: VersionStore,
             release_config: ReleaseConfig) -> MaterializeResult:
    latest = versions.latest()
    if latest is None:
        return MaterializeResult(metadata={"questions": 0, "summary": MetadataValue.md(
            "No KB version exists yet: no questions to make.")})
    r = refresh_synthetic(store, versions.load(latest), context.run_id,
                          release_config.synthetic_questions)
    syn = load_synthetic(store)
    try:
        curated = curated_set(release_config)
    except GoldenError as exc:
        raise Failure(description=str(exc)) from None
    used = curated if curated is not None else syn
    return MaterializeResult(metadata={
        "kb_version": latest, "set_used_by_gate": used.kind,
        "synthetic_questions": r["questions"], "synthetic_added": r["added"],
        "synthetic_kept": r["kept"], "synthetic_retired": r["retired"],
        "synthetic_sha256": syn.sha256,
        "curated_questions": len(curated.questions) if curated else 0,
        "curated_source": curated.source if curated else "none",
        "dagster/row_count": len(syn.questions),
        "summary": MetadataValue.md(
            (f"The gate uses the **curated** golden set `{curated.source}` "
             f"({len(curated.questions)} questions)." if curated else
             "No curated golden set (`KB_GOLDEN` or `$KB_HOME/golden/`): the gate uses the "
             f"**synthetic** set made from the KB ({len(syn.questions)} questions).")
            + f" Synthetic set: {r['added']} new, {r['kept']} kept, {r['retired']} retired."),
        "sample": MetadataValue.md(md_table(
            [(q.qid, q.question, ",".join(q.relevant), (q.answer or "")[:80])
             for q in syn.questions[:10]], ["qid", "question", "document", "made from"])),
    })


@asset(deps=[kb_release, eval_set], group_name="release", kinds={"mlflow", "duckdb"},
       pool=KB_WRITER_POOL,
       description="Scores the candidate KB version on its evaluation set (curated golden set, "
                   "else synthetic) next to production: recall@k, MRR, nDCG, zero-hit, latency.")
def retrieval_eval(context: AssetExecutionContext, store: KBStore, versions: VersionStore,
                   registry: Registry, embedder: Embedder,
                   release_config: ReleaseConfig) -> MaterializeResult:
    candidate = _candidate(store)
    if candidate is None:
        return MaterializeResult(metadata={"evaluated": False, "summary": MetadataValue.md(
            "No new candidate: the latest registered KB version was already evaluated.")})
    try:
        production = registry.get_alias(KB.name, "production")
        ev = evaluate_release_of(versions, embedder, store, release_config,
                                 release_config.eval_k, candidate, production)
    except (GoldenError, FileNotFoundError, RegistryError) as exc:
        raise Failure(description=str(exc)) from None
    # The scores, and the rule's verdict beside them; the promotion_gate check decides
    # (and records the registry status) from these stored scores.
    passed = save_eval(store, candidate, context.run_id, "dagster", ev, release_config.eval_k)
    metrics = dict(ev.candidate.metrics) if ev.candidate else {}
    try:
        # The dataset first: the metrics below link to it (and to the logged model).
        registry.log_eval_dataset(store, KB.name, candidate, ev.eval_set.frame(),
                                  f"kb-eval-{ev.kind}", ev.eval_set.sha256, ev.eval_set.source)
        log_evaluation(registry, store, KB.name, candidate,
                       {k: v for k, v in metrics.items() if k != "n_queries"},
                       f"kb-eval-{ev.kind}", ev.eval_set.sha256,
                       per_question_frame(ev.candidate.per_query if ev.candidate else []))
    except RegistryError as exc:
        context.log.warning(f"evaluation not fully logged to MLflow: {exc}")
    prod = ev.production
    prod_label = f"production v{prod.version}" if prod else "production (none)"
    per_query = ev.candidate.per_query if ev.candidate else []
    misses = [q for q in per_query if q["first_relevant_rank"] == 0 or
              q["first_relevant_rank"] > 3]
    d = ev.details()
    return MaterializeResult(metadata={
        "kb_version": candidate, "evaluated": True, "gate_passed": passed,
        "eval_set_kind": ev.kind, "eval_questions": d["n_questions"],
        "not_applicable": d["not_applicable"], "golden_coverage": d["coverage"],
        "production_version": prod.version if prod else None,
        **{k: float(v) for k, v in metrics.items()},
        "golden": ev.eval_set.source, "golden_sha256": ev.eval_set.sha256,
        "eval_set": MetadataValue.md(
            f"Scored on the **{ev.kind}** set `{ev.eval_set.source}`: {d['n_questions']} "
            f"questions apply to this version, {d['not_applicable']} do not (their documents are "
            f"not in it; not counted as misses); they cover {d['coverage']:.0%} of its "
            f"documents." + (f"\n\n{ev.fallback_reason}." if ev.fallback_reason else "")
            + (f"\n\nLatency vs production: each question timed on both versions side by "
               f"side, fastest of {ev.latency_rounds} round(s) compared."
               if ev.latency_rounds else "")),
        "metrics": MetadataValue.md(md_table(comparison_rows(
            ev.candidate_shared.metrics if ev.candidate_shared else metrics,
            prod.metrics if prod else None),
            ["metric", f"candidate v{candidate}", prod_label, "delta", "verdict"])),
        "gate": MetadataValue.md(gate_table(ev.gate)),
        "per_question": table_preview(
            [{**q, "expected": ",".join(q["expected"])} for q in per_query],
            [("qid", "string"), ("question", "string"), ("expected", "string"),
             ("top_doc", "string"), ("first_relevant_rank", "int")], limit=100),
        "misses_at_3": MetadataValue.md(md_table(
            [(q["qid"], q["question"], q["expected"], q["top_doc"], q["first_relevant_rank"])
             for q in misses], ["qid", "question", "expected", "top hit", "rank"], limit=20)),
    })


@asset(deps=[retrieval_eval], group_name="release", kinds={"mlflow"},
       pool=KB_WRITER_POOL,
       description="Moves alias `production` to the candidate when its blocking gate check "
                   "passed (auto-promotion on); every move recorded in alias_history.")
def kb_promotion(context: AssetExecutionContext, store: KBStore, registry: Registry,
                 release_config: ReleaseConfig) -> MaterializeResult:
    return promotion_step(context, KB, store, registry, release_config.auto_promote,
                          promotion_reason)


def promotion_reason(ev: dict) -> str:
    m = ev["metrics"]
    kind = ev["details"].get("eval_set", {}).get("kind", "curated")
    return (f"gate passed on the {kind} set (recall@3={m['recall_at_3']:.3f}, "
            f"zero-hit={m['zero_hit_rate']:.3f}, p95={m['latency_p95_ms']:.0f} ms)")


RELEASE_ASSETS = [kb_release, eval_set, retrieval_eval, kb_promotion]
