"""`kb versions`, `kb promote VERSION`, `kb rollback`: the registry from the command line.
Every alias move is recorded in DuckDB `alias_history` and reported to Dagster as an
observation of the kb_promotion asset; MLflow is the record of where `production` points,
and `kb versions` repairs the serving pointer when it disagrees."""

from __future__ import annotations

import json
import sys

from kb_core.serving import pointer_path, write_pointer
from kb_core.paths import Paths

MODEL = "kb"


def register(sub) -> None:
    p = sub.add_parser("versions", help="list KB versions in the registry (and repair the "
                                        "serving pointer if it disagrees with MLflow)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_versions)
    p = sub.add_parser("promote", help="move alias production to a KB version")
    p.add_argument("version", type=int)
    p.add_argument("--force", action="store_true",
                   help="promote even if the version failed (or never ran) its gate; recorded")
    p.add_argument("--reason", default="", help="why (recorded in alias_history)")
    p.set_defaults(func=cmd_promote)
    p = sub.add_parser("rollback", help="move production back to the previous production version")
    p.add_argument("--to", type=int, default=None, help="roll back to this version instead")
    p.add_argument("--force", action="store_true", help="allow a version that failed its gate")
    p.add_argument("--reason", default="", help="why (recorded in alias_history)")
    p.set_defaults(func=cmd_rollback)
    for name in ("versions", "promote", "rollback"):  # the fine-tuned assistant: same mechanics
        sub.choices[name].add_argument("--model", choices=[MODEL, "kb-assistant"], default=MODEL,
                                       help="registered model (default kb)")


def _context():
    from resources.registry import registry_resources
    from resources.store import KBStore

    paths = Paths.from_env().ensure()
    return paths, KBStore(db_path=str(paths.db)), registry_resources(paths)["registry"]


def _guard(fn, *args, **kwargs):
    """Registry errors become one-line CLI errors."""
    from kb_core.errors import CLIError
    from resources.registry import RegistryError

    try:
        return fn(*args, **kwargs)
    except RegistryError as exc:
        raise CLIError(str(exc)) from None


def pointer_version(paths: Paths) -> int | None:
    try:
        return int(json.loads(pointer_path(paths).read_text(encoding="utf-8"))["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def repair_pointer(paths: Paths, production: int | None) -> str | None:
    """MLflow wins: make the serving pointer say what the `production` alias says."""
    if production is None:
        return None
    pointed = pointer_version(paths)
    if pointed == production:
        return None
    write_pointer(paths, production)
    return (f"serving pointer said {pointed if pointed is not None else 'nothing'}, "
            f"MLflow production is {production}: pointer repaired")


def _eval_summary(store) -> dict[int, dict]:
    """Latest gate evaluation (Dagster-triggered) per KB version."""
    with store.connect(read_only=True) as con:
        rows = con.execute("""
            SELECT version, metrics, passed FROM eval_results
            WHERE model_name = ? AND json_extract_string(details, '$.trigger') = 'dagster'
            ORDER BY created_at""", [MODEL]).fetchall()
        counts = {r[0]: (r[1], r[2]) for r in con.execute(
            "SELECT version, n_docs, n_chunks FROM kb_versions").fetchall()}
    out = {v: {"n_docs": c[0], "n_chunks": c[1]} for v, c in counts.items()}
    for version, metrics, passed in rows:
        out.setdefault(version, {}).update(metrics=json.loads(metrics), passed=passed)
    return out


def _assistant(args):
    """`--model kb-assistant`: handled by commands/assistant_registry.py."""
    if getattr(args, "model", MODEL) == MODEL:
        return None
    from dagster_project.cli import assistant_registry

    return getattr(assistant_registry, args.func.__name__)(args)


def cmd_versions(args) -> int:
    if (rc := _assistant(args)) is not None:
        return rc
    from kb_assets.report import md_table
    from resources.vector_index import VersionStore

    paths, store, registry = _context()
    rows = _guard(registry.versions, MODEL, store)
    production = next((r["version"] for r in rows if "production" in r["aliases"]), None)
    repaired = repair_pointer(paths, production)
    evals = _eval_summary(store)
    for r in rows:
        r.update(evals.get(r["version"], {}))
    on_disk = VersionStore(root=str(paths.versions)).numbers()
    unregistered = sorted(set(on_disk) - {r["version"] for r in rows})
    if args.json:
        print(json.dumps({"production": production, "serving_pointer": pointer_version(paths),
                          "pointer_repaired": bool(repaired), "versions": rows,
                          "unregistered_on_disk": unregistered}, default=str, indent=2))
        return 0
    if repaired:
        print(f"NOTE: {repaired}")
    if not rows:
        print("No KB version is registered yet: run `kb build`.")
    else:
        def fmt(m: dict | None, key: str, spec: str) -> str:
            return format(m[key], spec) if m and key in m else ""
        table = [(r["version"], ",".join(r["aliases"]), r["created_at"], r.get("n_docs", ""),
                  r.get("n_chunks", ""), r["status"], fmt(r.get("metrics"), "recall_at_3", ".3f"),
                  fmt(r.get("metrics"), "mrr", ".3f"), fmt(r.get("metrics"), "zero_hit_rate", ".3f"),
                  fmt(r.get("metrics"), "latency_p95_ms", ".0f")) for r in rows]
        print(md_table(table, ["version", "aliases", "created (UTC)", "docs", "chunks", "status",
                               "recall@3", "MRR", "zero-hit", "p95 ms"], limit=1000))
    print(f"\nproduction: {production if production is not None else 'none (nothing promoted)'}"
          f"; serving pointer: {pointer_version(paths)}")
    if unregistered:
        print(f"on disk but not registered: {unregistered} (the next `kb build` registers the latest)")
    return 0


def report_move(move) -> None:
    """Make a CLI alias move visible in Dagster (an observation of kb_promotion)."""
    try:
        from dagster import AssetObservation, DagsterInstance, MetadataValue

        with DagsterInstance.get() as instance:
            instance.report_runless_asset_event(AssetObservation(
                asset_key="kb_promotion",
                description=f"{move.alias}: {move.from_version} -> {move.to_version} by {move.actor}",
                metadata={"alias": move.alias, "from_version": move.from_version,
                          "to_version": move.to_version, "actor": move.actor,
                          "reason": move.reason, "forced": move.forced,
                          "summary": MetadataValue.md(
                              f"`{move.alias}` moved {move.from_version} -> **{move.to_version}** "
                              f"by {move.actor}: {move.reason}")}))
    except Exception as exc:  # the move itself is done and recorded in DuckDB
        print(f"warning: move not reported to Dagster ({str(exc).splitlines()[0]})",
              file=sys.stderr)


def _check_promotable(paths: Paths, store, version: int, force: bool,
                      served_before: bool = False) -> None:
    from kb_core.errors import CLIError
    from resources.registry import registered_versions
    from resources.vector_index import VersionStore

    rows = {r["version"]: r for r in registered_versions(store, MODEL)}
    if version not in rows:
        where = ("exists on disk but is not registered in MLflow: run `kb build`"
                 if version in VersionStore(root=str(paths.versions)).numbers()
                 else "does not exist")
        raise CLIError(f"KB version {version} {where} (registered: {sorted(rows) or 'none'})")
    status = rows[version]["status"]
    if status == "rejected" and not force:
        raise CLIError(f"KB version {version} failed its evaluation gate: refused "
                       "(use --force to promote anyway; it is recorded as forced)")
    if status == "registered" and not force and not served_before:
        raise CLIError(f"KB version {version} has not passed an evaluation gate yet: refused "
                       "(run `kb build`, or use --force; it is recorded as forced)")


def _move(paths, store, registry, version: int, reason: str, force: bool) -> int:
    from resources.registry import default_actor

    move = _guard(registry.move_alias, store, MODEL, "production", version,
                  actor=default_actor(), reason=reason, forced=force)
    print(f"production: {move.from_version} -> {move.to_version}"
          f"{' (forced)' if move.forced else ''}; serving pointer updated; "
          f"recorded in alias_history by {move.actor}")
    report_move(move)
    return 0


def cmd_promote(args) -> int:
    if (rc := _assistant(args)) is not None:
        return rc
    paths, store, registry = _context()
    _check_promotable(paths, store, args.version, args.force)
    current = _guard(registry.get_alias, MODEL, "production")
    if current == args.version:
        repaired = repair_pointer(paths, current)
        print(f"KB version {current} is already production" + (f" ({repaired})" if repaired else ""))
        return 0
    return _move(paths, store, registry, args.version, args.reason or "manual promote", args.force)


def rollback_choice(store, model: str, current: int | None, to: int | None, label: str,
                    none_yet: str) -> int:
    """The version a rollback of `model` goes to (`--to` or the previous production one);
    one-line errors for nothing in production, no earlier version, or already there."""
    from kb_core.errors import CLIError
    from resources.registry import alias_history, rollback_target

    if current is None:
        raise CLIError(f"{none_yet} is in production yet: nothing to roll back")
    target = to if to is not None else rollback_target(
        alias_history(store, model, "production"), current)
    if target is None:
        raise CLIError(f"{model} production ({current}) has no earlier production version to "
                       "roll back to (use --to VERSION)")
    if target == current:
        raise CLIError(f"{label} {target} is already production")
    return target


def rollback_reason(reason: str | None, current: int) -> str:
    return "rollback" + (f": {reason}" if reason else f" from {current}")


def cmd_rollback(args) -> int:
    if (rc := _assistant(args)) is not None:
        return rc
    from kb_core.serving import resolve

    paths, store, registry = _context()
    # Read production from the serving pointer (the mirror of the MLflow alias) so the
    # switch below happens before MLflow is even imported.
    serving = resolve(paths)
    current = serving.version if serving.source == "production" else None
    target = rollback_choice(store, MODEL, current, args.to, "KB version", "nothing")
    # A previous production version already served: being unevaluated does not block it.
    _check_promotable(paths, store, target, args.force, served_before=args.to is None)
    reason = rollback_reason(args.reason, current)
    # An emergency: serving switches first (kb serve follows within its poll interval), then
    # the MLflow alias and alias_history record it. If recording fails, serving switches back.
    write_pointer(paths, target)
    try:
        return _move(paths, store, registry, target, reason, args.force)
    except BaseException:
        write_pointer(paths, current)
        raise
