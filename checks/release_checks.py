"""The KB promotion gate: a blocking check on retrieval_eval that decides from the scores the
asset stored (this run's `eval_results` row) and the release_config thresholds. When it fails,
kb_promotion does not run and `production` stays where it is; either way the version's
registry status records the verdict."""

from dagster import (AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity,
                     MetadataValue, asset_check)

from kb_assets.evals import eval_for_run
from kb_assets.release import gate_table, retrieval_eval
from kb_assets.release_gate import floors_of, passed, stored_verdict, thresholds_of
from kb_core.models import KB
from kb_core.writer_lock import KB_WRITER_POOL
from resources import persistence
from resources.registry import Registry, RegistryError
from resources.registry_pages import tag_validation
from resources.release_config import ReleaseConfig
from resources.store import KBStore



@asset_check(asset=retrieval_eval, name=KB.gate_check, blocking=True,
             pool=KB_WRITER_POOL,
             description="Blocks promotion unless the candidate meets the SLOs (recall@3, "
                         "zero-hit rate, p95 latency) and does not regress against production.")
def promotion_gate(context: AssetCheckExecutionContext, store: KBStore, registry: Registry,
                   release_config: ReleaseConfig) -> AssetCheckResult:
    run_id = context.run.run_id
    ev = eval_for_run(store, KB, run_id)
    if ev is None:
        return AssetCheckResult(passed=True, description="no new candidate evaluated in this run",
                                metadata={"evaluated": False})
    results = stored_verdict(ev["metrics"], ev["details"], thresholds_of(release_config),
                             floors_of(release_config))
    ok, version = passed(results), ev["version"]
    failed = [r for r in results if not r.passed]
    desc = (f"KB version {version} passed all {len(results)} gate checks" if ok else
            f"KB version {version} failed: " + "; ".join(
                f"{r.name} = {r.value} (needs {r.threshold})" for r in failed))
    gate = [r.__dict__ for r in results]
    metadata = {"kb_version": version, "evaluated": True,
                "production_version": ev["details"].get("production_version"),
                "gate": MetadataValue.md(gate_table(gate))}
    with store.transaction() as con:  # the audit trail of every check, beside the others'
        persistence.record_check_result(
            con, run_id=run_id, asset=KB.eval_asset, check_name=KB.gate_check, passed=ok,
            description=desc[:500], kb_version=version, metadata={"gate": gate})
    try:
        registry.set_status(store, KB.name, version, "passed" if ok else "rejected")
        tag_validation(registry, store, KB.name, version, ok)  # the MLflow page says it too
    except RegistryError as exc:  # the verdict stands (check_results); MLflow lags behind
        context.log.warning(f"registry status not updated: {exc}")
    return AssetCheckResult(passed=ok, severity=AssetCheckSeverity.ERROR,
                            description=desc[:1000], metadata=metadata)


RELEASE_CHECKS = [promotion_gate]
