"""`kb versions|promote|rollback --model kb-assistant`: the same registry mechanics as the
KB (MLflow alias `production`, every move in DuckDB alias_history, the gate's status
respected unless --force), for the fine-tuned assistant. `commands/registry.py` delegates
here when `--model kb-assistant` is given."""

from __future__ import annotations

import json
import sys

MODEL = "kb-assistant"


def _evals(store) -> dict[int, dict]:
    with store.connect(read_only=True) as con:
        rows = con.execute("SELECT version, metrics, passed FROM eval_results WHERE model_name = ? "
                           "ORDER BY created_at", [MODEL]).fetchall()
    return {v: {"metrics": json.loads(m), "passed": p} for v, m, p in rows}


def cmd_versions(args) -> int:
    from dagster_project.cli.registry import _context, _guard
    from kb_assets.report import md_table

    _, store, registry = _context()
    rows = _guard(registry.versions, MODEL, store)
    evals = _evals(store)
    for r in rows:
        r.update(evals.get(r["version"], {}))
    production = next((r["version"] for r in rows if "production" in r["aliases"]), None)
    if args.json:
        print(json.dumps({"model": MODEL, "production": production, "versions": rows},
                         default=str, indent=2))
        return 0
    if not rows:
        print("No kb-assistant version is registered yet: run `kb build`.")
        return 0

    def score(r, key):
        m = r.get("metrics") or {}
        return f"{m[key]:.3f}" if key in m else ""
    table = [(r["version"], ",".join(r["aliases"]), r["created_at"], r["status"],
              r["tags"].get("provider", ""), r["tags"].get("dataset_version", ""),
              r["tags"].get("kb_version", ""), r["tags"].get("training_mode", ""),
              score(r, "ft_score_mean"), score(r, "base_score_mean"),
              score(r, "extractive_score_mean"))
             for r in rows]
    print(md_table(table, ["version", "aliases", "created (UTC)", "status", "provider", "dataset",
                           "KB", "mode", "score", "base score", "extractive score"], limit=1000))
    print(f"\nproduction: {production if production is not None else 'none (the base model answers)'}")
    return 0


def _check(store, version: int, force: bool, served_before: bool = False) -> None:
    from kb_core.errors import CLIError
    from resources.registry import registered_versions

    rows = {r["version"]: r for r in registered_versions(store, MODEL)}
    if version not in rows:
        raise CLIError(f"kb-assistant version {version} does not exist "
                       f"(registered: {sorted(rows) or 'none'})")
    status = rows[version]["status"]
    if status == "rejected" and not force:
        raise CLIError(f"kb-assistant version {version} did not beat its base model and the "
                       "extractive answer: refused "
                       "(use --force to promote anyway; it is recorded as forced)")
    if status == "registered" and not force and not served_before:
        raise CLIError(f"kb-assistant version {version} has not been evaluated yet: refused "
                       "(run `kb build`, or use --force; it is recorded as forced)")


def _move(store, registry, version: int, reason: str, force: bool) -> int:
    from dagster_project.cli.registry import _guard
    from resources.registry import default_actor

    move = _guard(registry.move_alias, store, MODEL, "production", version,
                  actor=default_actor(), reason=reason, forced=force)
    print(f"kb-assistant production: {move.from_version} -> {move.to_version}"
          f"{' (forced)' if move.forced else ''}; recorded in alias_history by {move.actor}")
    try:  # visible in the Dagster UI next to the automatic promotions
        from dagster import AssetObservation, DagsterInstance

        with DagsterInstance.get() as instance:
            instance.report_runless_asset_event(AssetObservation(
                asset_key="assistant_release",
                description=f"production: {move.from_version} -> {move.to_version} by {move.actor}",
                metadata={"from_version": move.from_version, "to_version": move.to_version,
                          "actor": move.actor, "reason": move.reason, "forced": move.forced}))
    except Exception as exc:  # the move itself is done and recorded in DuckDB
        print(f"warning: move not reported to Dagster ({str(exc).splitlines()[0]})",
              file=sys.stderr)
    return 0


def cmd_promote(args) -> int:
    from dagster_project.cli.registry import _context, _guard

    _, store, registry = _context()
    _check(store, args.version, args.force)
    if _guard(registry.get_alias, MODEL, "production") == args.version:
        print(f"kb-assistant version {args.version} is already production")
        return 0
    return _move(store, registry, args.version, args.reason or "manual promote", args.force)


def cmd_rollback(args) -> int:
    from dagster_project.cli.registry import (_context, _guard, rollback_choice,
                                                   rollback_reason)

    _, store, registry = _context()
    current = _guard(registry.get_alias, MODEL, "production")
    target = rollback_choice(store, MODEL, current, args.to, "kb-assistant version",
                             "no kb-assistant version")
    _check(store, target, args.force, served_before=args.to is None)
    return _move(store, registry, target, rollback_reason(args.reason, current), args.force)
