"""The promotion gate: a blocking check on retrieval_eval. When it fails, kb_promotion does
not run and `production` stays where it is."""


from dagster import (AssetCheckExecutionContext, AssetCheckResult, AssetCheckSeverity,
                     MetadataValue, asset_check)

from resources import persistence
from resources.store import KBStore

from .release import eval_for_run, gate_table, retrieval_eval


@asset_check(asset=retrieval_eval, blocking=True,
             description="Blocks promotion unless the candidate meets the SLOs (recall@3, "
                         "zero-hit rate, p95 latency) and does not regress against production.")
def promotion_gate(context: AssetCheckExecutionContext, store: KBStore) -> AssetCheckResult:
    run_id = context.run.run_id
    ev = eval_for_run(store, run_id)
    if ev is None:
        return AssetCheckResult(passed=True, description="no new candidate evaluated in this run",
                                metadata={"evaluated": False})
    failed = [g for g in ev["details"]["gate"] if not g["passed"]]
    desc = (f"KB version {ev['version']} passed all {len(ev['details']['gate'])} gate checks"
            if ev["passed"] else
            f"KB version {ev['version']} failed: " + "; ".join(
                f"{g['name']} = {g['value']} (needs {g['threshold']})" for g in failed))
    metadata = {"kb_version": ev["version"], "evaluated": True,
                "production_version": ev["details"].get("production_version"),
                "gate": MetadataValue.md(gate_table(ev["details"]["gate"]))}
    with store.transaction() as con:  # the audit trail of every check, beside the others'
        persistence.record_check_result(
            con, run_id=run_id, asset="retrieval_eval", check_name="promotion_gate",
            passed=ev["passed"], description=desc[:500], kb_version=ev["version"],
            metadata={"gate": ev["details"]["gate"]})
    return AssetCheckResult(passed=ev["passed"], severity=AssetCheckSeverity.ERROR,
                            description=desc[:1000], metadata=metadata)


RELEASE_CHECKS = [promotion_gate]
