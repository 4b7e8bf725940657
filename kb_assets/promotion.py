"""One promotion step for both models: the kb_promotion and assistant_release assets read the
evaluation their run made and the gate check's verdict, take the one decision
(kb_core/promotion.py) and carry it out with one guarded alias move."""

from __future__ import annotations

from dagster import AssetExecutionContext, Failure, MaterializeResult, MetadataValue

from kb_core.models import ModelSpec
from kb_core.promotion import decide_promotion, promoted_summary
from resources.registry import Registry, RegistryError, alias_history
from resources.store import KBStore

from .evals import check_verdict, eval_for_run
from .report import md_table


def moves_table(moves: list[dict], limit: int = 10) -> str:
    return md_table([(str(m["event_at"]), m["alias"], m["from_version"], m["to_version"],
                      m["actor"], m["reason"], m["forced"]) for m in moves[-limit:]][::-1],
                    ["time (UTC)", "alias", "from", "to", "actor", "reason", "forced"])


def promotion_step(context: AssetExecutionContext, spec: ModelSpec, store: KBStore,
                   registry: Registry, auto_promote: bool, move_reason) -> MaterializeResult:
    """`move_reason(ev)` says why the alias moves (recorded in alias_history)."""
    ev = eval_for_run(store, spec, context.run_id)
    # The gate check decides; an evaluation whose check did not run (the asset materialized
    # alone) falls back to the verdict stored with it.
    verdict = check_verdict(store, spec, context.run_id) if ev else None
    gate_passed = ev["passed"] if ev and verdict is None else verdict
    try:
        current = registry.get_alias(spec.name, "production")
        decision = decide_promotion(spec, gate_passed, auto_promote, current,
                                    ev["version"] if ev else None)
        summary = decision.summary
        if decision.promote:
            move = registry.move_alias(store, spec.name, "production", decision.candidate,
                                       actor=f"dagster:{context.run_id}", reason=move_reason(ev),
                                       run_id=context.run_id)
            current = move.to_version
            summary = promoted_summary(spec, move.from_version, move.to_version)
    except RegistryError as exc:
        raise Failure(description=str(exc)) from None
    context.log.info(summary.replace("**", ""))
    return MaterializeResult(metadata={
        "production_version": spec.none_version if current is None else current,
        "promoted": decision.promote, "auto_promote": auto_promote,
        "candidate_version": decision.candidate, "decision": decision.action,
        "gate_passed": gate_passed, "summary": MetadataValue.md(summary),
        "alias_history": MetadataValue.md(moves_table(alias_history(store, spec.name))),
    })
