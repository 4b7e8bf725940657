"""Release assets: kb_release (register the new KB version in MLflow as model `kb`, alias
`staging`), retrieval_eval (score it on the golden set, next to production) and kb_promotion
(move `production` to it when its blocking gate check passed and auto-promotion is on)."""

import json
from datetime import datetime, timezone

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue, asset

from resources.embedder import Embedder
from resources.registry import Registry, RegistryError, ReleaseConfig, alias_history
from resources.store import KBStore, fetch_one
from resources.vector_index import VersionStore

from .golden import EvalReport, GoldenError, GoldenSet, evaluate, load_golden
from .index import faiss_index
from .metrics import GateResult, GateThresholds, comparison_rows, gate
from .report import md_table
from .retrieval import RetrievalConfig
from .searcher import Searcher

MODEL = "kb"


def _v(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


# -- plain helpers (also used by `kb eval`) ---------------------------------------------------
def open_version(versions: VersionStore, embedder: Embedder, number: int) -> Searcher:
    version = versions.load(number)
    built_with = version.info.get("embedding_model")
    if built_with != embedder.model_id:
        raise FileNotFoundError(f"KB version {number} was built with {built_with}, "
                                f"but the configured embedder is {embedder.model_id}")
    return Searcher(version, embedder, RetrievalConfig())


def thresholds(cfg: ReleaseConfig) -> GateThresholds:
    return GateThresholds(cfg.min_recall_at_3, cfg.max_zero_hit_rate, cfg.max_p95_latency_ms,
                          cfg.max_regression, cfg.max_latency_regression)


def evaluate_against(versions: VersionStore, embedder: Embedder, golden: GoldenSet, k: int,
                     candidate: int, production: int | None, t: GateThresholds,
                     latency_sample: int = 50
                     ) -> tuple[EvalReport, EvalReport | None, list[GateResult]]:
    """Score `candidate` and (if another version) `production` on the same questions, then
    apply the gate. Both use the same query vectors: one embedding pass."""
    cand = evaluate(open_version(versions, embedder, candidate), golden, k,
                    latency_sample=latency_sample)
    prod = None
    if production is not None and production != candidate and production in versions.numbers():
        prod = evaluate(open_version(versions, embedder, production), golden, k,
                        query_vectors=cand.query_vectors, latency_sample=latency_sample)
    return cand, prod, gate(cand.metrics, prod.metrics if prod else None, t)


def save_eval(store: KBStore, version: int, run_id: str, trigger: str, golden: GoldenSet, k: int,
              cand: EvalReport, prod: EvalReport | None, results: list[GateResult]) -> bool:
    passed = all(r.passed for r in results)
    details = {"trigger": trigger, "golden_path": str(golden.path), "golden_sha256": golden.sha256,
               "golden_format": golden.format, "k": k,
               "production_version": prod.version if prod else None,
               "production_metrics": prod.metrics if prod else None,
               "gate": [r.__dict__ for r in results], "per_query": cand.per_query}
    with store.transaction() as con:
        con.execute("INSERT INTO eval_results VALUES (?, ?, ?, ?, ?, ?, ?)",
                    [MODEL, version, run_id, datetime.now(timezone.utc).replace(tzinfo=None),
                     json.dumps(cand.metrics), passed, json.dumps(details, default=str)])
    return passed


def eval_for_run(store: KBStore, run_id: str) -> dict | None:
    """The gate evaluation a Dagster run made, if any."""
    with store.connect(read_only=True) as con:
        row = fetch_one(con, """
            SELECT version, passed, metrics, details FROM eval_results
            WHERE model_name = ? AND run_id = ? ORDER BY created_at DESC LIMIT 1""",
                        [MODEL, run_id])
    if row is None:
        return None
    return {"version": row[0], "passed": bool(row[1]), "metrics": json.loads(row[2]),
            "details": json.loads(row[3])}


def gate_table(rows: list[dict] | list[GateResult]) -> str:
    rows = [r if isinstance(r, dict) else r.__dict__ for r in rows]
    return md_table([(r["name"], "pass" if r["passed"] else "**FAIL**", r["value"],
                      r["threshold"], r["detail"]) for r in rows],
                    ["check", "result", "value", "threshold", "kind"])


def moves_table(moves: list[dict], limit: int = 10) -> str:
    return md_table([(str(m["event_at"]), m["alias"], m["from_version"], m["to_version"],
                      m["actor"], m["reason"], m["forced"]) for m in moves[-limit:]][::-1],
                    ["time (UTC)", "alias", "from", "to", "actor", "reason", "forced"])


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
            """, [MODEL, MODEL])
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
            "registered_by_run_id": run_id}


# -- assets -----------------------------------------------------------------------------------
@asset(deps=[faiss_index], group_name="release", kinds={"mlflow", "duckdb"},
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
        mv = registry.register_version(
            store, MODEL, n, KBSearchModel(), {ARTIFACT_KEY: str(versions.path / str(n))},
            tags, run_id=context.run_id, pip_requirements=PIP_REQUIREMENTS,
            signature=signature())
        move = registry.move_alias(store, MODEL, "staging", n, actor=f"dagster:{context.run_id}",
                                   reason="new candidate registered", run_id=context.run_id)
    except RegistryError as exc:
        raise Failure(description=f"{exc}; KB version {n} on disk is intact") from None
    from dagster_project.audit_metadata import release_metadata  # audit links for the UI

    return MaterializeResult(metadata={
        **release_metadata(store, n),
        "kb_version": n, "mlflow_version": mv, "registered": True,
        "model_uri": f"models:/{MODEL}/{mv}",
        "summary": MetadataValue.md(f"Registered **KB version {n}** as MLflow `kb` version "
                                    f"{mv}; alias `staging` moved {move.from_version} -> {n}."),
        "tags": MetadataValue.md(md_table(sorted((k, v) for k, v in tags.items() if k != "chunker"),
                                          ["tag", "value"], limit=40)),
    })


def registry_rows(store: KBStore) -> list[dict]:
    from resources.registry import registered_versions

    return registered_versions(store, MODEL)


@asset(deps=[kb_release], group_name="release", kinds={"mlflow", "duckdb"},
       description="Scores the candidate KB version on the golden questions (recall@k, MRR, "
                   "nDCG, zero-hit rate, latency) next to production.")
def retrieval_eval(context: AssetExecutionContext, store: KBStore, versions: VersionStore,
                   registry: Registry, embedder: Embedder,
                   release_config: ReleaseConfig) -> MaterializeResult:
    candidate = _candidate(store)
    if candidate is None:
        return MaterializeResult(metadata={"evaluated": False, "summary": MetadataValue.md(
            "No new candidate: the latest registered KB version was already evaluated.")})
    try:
        golden = load_golden(release_config.golden_path or None)
        production = registry.get_alias(MODEL, "production")
        cand, prod, results = evaluate_against(versions, embedder, golden, release_config.eval_k,
                                               candidate, production, thresholds(release_config),
                                               release_config.latency_sample)
    except (GoldenError, FileNotFoundError, RegistryError) as exc:
        raise Failure(description=str(exc)) from None
    passed = save_eval(store, candidate, context.run_id, "dagster", golden,
                       release_config.eval_k, cand, prod, results)
    registry.set_status(store, MODEL, candidate, "passed" if passed else "rejected")
    try:
        registry.log_metrics(store, MODEL, candidate,
                             {k: v for k, v in cand.metrics.items() if k != "n_queries"})
    except RegistryError as exc:
        context.log.warning(f"metrics not logged to MLflow: {exc}")
    prod_label = f"production v{prod.version}" if prod else "production (none)"
    misses = [q for q in cand.per_query if q["first_relevant_rank"] == 0 or
              q["first_relevant_rank"] > 3]
    return MaterializeResult(metadata={
        "kb_version": candidate, "evaluated": True, "gate_passed": passed,
        "production_version": prod.version if prod else None,
        **{k: float(v) for k, v in cand.metrics.items()},
        "golden": MetadataValue.path(str(golden.path)), "golden_sha256": golden.sha256,
        "metrics": MetadataValue.md(md_table(comparison_rows(cand.metrics, prod.metrics if prod
                                                             else None),
                                             ["metric", f"candidate v{candidate}", prod_label,
                                              "delta", "verdict"])),
        "gate": MetadataValue.md(gate_table(results)),
        "misses_at_3": MetadataValue.md(md_table(
            [(q["qid"], q["question"], q["expected"], q["top_doc"], q["first_relevant_rank"])
             for q in misses], ["qid", "question", "expected", "top hit", "rank"], limit=20)),
    })


@asset(deps=[retrieval_eval], group_name="release", kinds={"mlflow"},
       description="Moves alias `production` to the candidate when its blocking gate check "
                   "passed (auto-promotion on); every move recorded in alias_history.")
def kb_promotion(context: AssetExecutionContext, store: KBStore, registry: Registry,
                 release_config: ReleaseConfig) -> MaterializeResult:
    ev = eval_for_run(store, context.run_id)
    try:
        current = registry.get_alias(MODEL, "production")
        promoted, summary = False, ""
        if ev is None:
            summary = f"No candidate evaluated in this run: production stays {_v(current)}."
        elif not ev["passed"]:
            summary = f"KB version {ev['version']} failed its gate: production stays {_v(current)}."
        elif not release_config.auto_promote:
            summary = (f"KB version {ev['version']} passed its gate; automatic promotion is off: "
                       f"run `kb promote {ev['version']}`. Production stays {_v(current)}.")
        elif current == ev["version"]:
            summary = f"KB version {current} is already production."
        else:
            m = ev["metrics"]
            move = registry.move_alias(
                store, MODEL, "production", ev["version"], actor=f"dagster:{context.run_id}",
                reason=f"gate passed (recall@3={m['recall_at_3']:.3f}, "
                       f"zero-hit={m['zero_hit_rate']:.3f}, p95={m['latency_p95_ms']:.0f} ms)",
                run_id=context.run_id)
            promoted, current = True, move.to_version
            summary = f"Promoted **KB version {move.to_version}** to production (was {_v(move.from_version)})."
    except RegistryError as exc:
        raise Failure(description=str(exc)) from None
    context.log.info(summary.replace("**", ""))
    return MaterializeResult(metadata={
        "production_version": current, "promoted": promoted,
        "auto_promote": release_config.auto_promote,
        "summary": MetadataValue.md(summary),
        "alias_history": MetadataValue.md(moves_table(alias_history(store, MODEL))),
    })


RELEASE_ASSETS = [kb_release, retrieval_eval, kb_promotion]
