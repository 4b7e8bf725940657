"""`kb versions`, `kb promote VERSION`, `kb rollback`, each with `--model {kb,kb-assistant}`
(default kb): the registry from the command line, one code path for both models; what differs
is in their ModelSpec (kb_core/models.py). Every alias move is recorded in DuckDB
`alias_history` and reported to Dagster as an observation of the model's promotion asset;
MLflow is the record of where `production` points, and for the KB (whose `production` is
mirrored by the serving pointer) `kb versions` repairs the pointer when it disagrees."""

from __future__ import annotations

import json
import sys

from kb_core.serving import pointer_path, write_pointer
from kb_core.paths import Paths
from kb_core.models import ASSISTANT, KB, MODELS, ModelSpec, spec_of
from resources.remote_versions import push_pointer

DEFAULT_MODEL = KB.name


def register(sub) -> None:
    p = sub.add_parser("versions", help="list a model's versions in the registry (and repair "
                                        "the KB's serving pointer if it disagrees with MLflow)")
    p.add_argument("--json", action="store_true", help="print a JSON list")
    p.set_defaults(func=cmd_versions)
    p = sub.add_parser("promote", help="move alias production to a version")
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
    for name in ("versions", "promote", "rollback"):
        sub.choices[name].add_argument("--model", choices=list(MODELS), default=DEFAULT_MODEL,
                                       help="registered model (default kb)")
    for name in ("promote", "rollback"):
        sub.choices[name].add_argument("--json", action="store_true",
                                       help="print the alias move as a JSON object (see README)")


def _spec(args) -> ModelSpec:
    return spec_of(getattr(args, "model", DEFAULT_MODEL))


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


# -- the serving pointer (the KB's production mirror) ----------------------------------------
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


# -- versions ---------------------------------------------------------------------------------
def _fmt(m: dict | None, key: str, spec: str = ".3f") -> str:
    return format(m[key], spec) if m and key in m else ""


def _kb_table(rows: list[dict]) -> tuple[list[tuple], list[str]]:
    return ([(r["version"], ",".join(r["aliases"]), r["created_at"], r.get("n_docs", ""),
              r.get("n_chunks", ""), r["status"], _fmt(r.get("metrics"), "recall_at_3"),
              _fmt(r.get("metrics"), "mrr"), _fmt(r.get("metrics"), "zero_hit_rate"),
              _fmt(r.get("metrics"), "latency_p95_ms", ".0f")) for r in rows],
            ["version", "aliases", "created (UTC)", "docs", "chunks", "status", "recall@3", "MRR",
             "zero-hit", "p95 ms"])


def _assistant_table(rows: list[dict]) -> tuple[list[tuple], list[str]]:
    return ([(r["version"], ",".join(r["aliases"]), r["created_at"], r["status"],
              r["tags"].get("provider", ""), r["tags"].get("dataset_version", ""),
              r["tags"].get("kb_version", ""), r["tags"].get("training_mode", ""),
              _fmt(r.get("metrics"), "ft_score_mean"), _fmt(r.get("metrics"), "base_score_mean"),
              _fmt(r.get("metrics"), "extractive_score_mean")) for r in rows],
            ["version", "aliases", "created (UTC)", "status", "provider", "dataset", "KB", "mode",
             "score", "base score", "extractive score"])


# The columns `kb versions` shows per model: what each model's evaluation measures.
VERSION_TABLES = {KB.name: _kb_table, ASSISTANT.name: _assistant_table}


def _kb_counts(store) -> dict[int, dict]:
    with store.connect(read_only=True) as con:
        return {v: {"n_docs": d, "n_chunks": c} for v, d, c in con.execute(
            "SELECT version, n_docs, n_chunks FROM kb_versions").fetchall()}


def cmd_versions(args) -> int:
    from kb_assets.evals import gate_evals
    from kb_assets.report import md_table

    spec = _spec(args)
    paths, store, registry = _context()
    rows = _guard(registry.versions, spec.name, store)
    evals = gate_evals(store, spec)
    counts = _kb_counts(store) if spec.serving_pointer else {}
    for r in rows:
        r.update(counts.get(r["version"], {}))
        r.update(evals.get(r["version"], {}))
    production = next((r["version"] for r in rows if "production" in r["aliases"]), None)
    out: dict = {"model": spec.name, "production": production}
    unregistered: list[int] = []
    removed: list[int] = []
    repaired = None
    if spec.serving_pointer:
        from resources.vector_index import VersionStore

        repaired = repair_pointer(paths, production)
        on_disk = VersionStore(root=str(paths.versions)).numbers()
        unregistered = sorted(set(on_disk) - {r["version"] for r in rows})
        for r in rows:  # retention removes old versions' files; their lineage stays
            r["servable"] = r["version"] in on_disk
        removed = [r["version"] for r in rows if not r["servable"]]
        out.update(serving_pointer=pointer_version(paths), pointer_repaired=bool(repaired))
    if args.json:
        out["versions"] = rows
        if spec.serving_pointer:
            out["unregistered_on_disk"] = unregistered
        print(json.dumps(out, default=str, indent=2))
        return 0
    if repaired:
        print(f"NOTE: {repaired}")
    if not rows:
        builder = "kb build" if spec.name == "kb" else "kb finetune"
        print(f"No {spec.label} is registered yet: run `{builder}`.")
        if not spec.serving_pointer:
            return 0
    else:
        table, header = VERSION_TABLES[spec.name](rows)
        print(md_table(table, header, limit=1000))
    line = f"\nproduction: {production if production is not None else f'none ({spec.no_production})'}"
    if spec.serving_pointer:
        line += f"; serving pointer: {pointer_version(paths)}"
    print(line)
    if unregistered:
        print(f"on disk but not registered: {unregistered} (the next `kb build` registers the latest)")
    if spec.serving_pointer and removed:
        print(f"files removed by retention (lineage kept; cannot be served or rolled back to): "
              f"{removed}")
    return 0


# -- promote / rollback -----------------------------------------------------------------------
def report_move(spec: ModelSpec, move) -> None:
    """Make a CLI alias move visible in Dagster (an observation of the promotion asset)."""
    try:
        from dagster import AssetObservation, MetadataValue

        from resources.dagster_instance import open_instance

        with open_instance() as instance:
            instance.report_runless_asset_event(AssetObservation(
                asset_key=spec.promotion_asset,
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


def check_promotable(spec: ModelSpec, paths: Paths, version: int, force: bool,
                     served_before: bool = False) -> None:
    """Refuse a version that is not registered, failed its gate, or never ran one (unless
    forced, or a rollback to a version that already served). Reads the DuckDB mirror only
    (no MLflow or Dagster import): a rollback runs it before switching serving."""
    from kb_core.errors import CLIError
    from resources.registry_mirror import registered_versions

    rows = {r["version"]: r for r in registered_versions(paths.db, spec.name)}
    if version not in rows:
        where = "does not exist"
        if spec.serving_pointer:
            from kb_core.serving import version_numbers

            if version in version_numbers(paths.versions):
                where = "exists on disk but is not registered in MLflow: run `kb build`"
        raise CLIError(f"{spec.label} {version} {where} (registered: {sorted(rows) or 'none'})")
    status = rows[version]["status"]
    if status == "rejected" and not force:
        raise CLIError(f"{spec.label} {version} {spec.rejected_means}: refused "
                       "(use --force to promote anyway; it is recorded as forced)")
    if status == "registered" and not force and not served_before:
        raise CLIError(f"{spec.label} {version} {spec.unevaluated_means}: refused "
                       "(run `kb build`, or use --force; it is recorded as forced)")
    if spec.serving_pointer:
        from kb_core.serving import version_numbers  # not vector_index: it imports Dagster

        if version not in version_numbers(paths.versions):
            raise CLIError(f"{spec.label} {version} has no files under {paths.versions} "
                           "(removed by retention: KB_RETAIN_LAST / KB_RETAIN_DAYS): it cannot "
                           f"be served; its lineage stays (`kb audit version {version}`)")


def move_json(model: str, move=None, current: int | None = None) -> str:
    """`kb promote|rollback --json`: {model, alias, from_version, to_version, changed, forced,
    actor, reason}; `changed` false (and no actor) when the version already was production."""
    if move is None:
        return json.dumps({"model": model, "alias": "production", "from_version": current,
                           "to_version": current, "changed": False, "forced": False,
                           "actor": None, "reason": None})
    return json.dumps({"model": model, "alias": move.alias, "from_version": move.from_version,
                       "to_version": move.to_version, "changed": True, "forced": move.forced,
                       "actor": move.actor, "reason": move.reason})


def move_production(spec: ModelSpec, store, registry, version: int, reason: str,
                    force: bool, as_json: bool = False) -> int:
    """The one guarded `production` move of the CLI: MLflow alias, alias_history (and, for
    the KB, the serving pointer: Registry.move_alias does it), then the Dagster observation."""
    from resources.registry import default_actor

    move = _guard(registry.move_alias, store, spec.name, "production", version,
                  actor=default_actor(), reason=reason, forced=force)
    prefix = "" if spec.serving_pointer else f"{spec.name} "
    pointer = "; serving pointer updated" if spec.serving_pointer else ""
    print(move_json(spec.name, move) if as_json else
          f"{prefix}production: {move.from_version} -> {move.to_version}"
          f"{' (forced)' if move.forced else ''}{pointer}; "
          f"recorded in alias_history by {move.actor}")
    report_move(spec, move)
    return 0


def cmd_promote(args) -> int:
    spec = _spec(args)
    paths, store, registry = _context()
    check_promotable(spec, paths, args.version, args.force)
    current = _guard(registry.get_alias, spec.name, "production")
    if current == args.version:
        repaired = repair_pointer(paths, current) if spec.serving_pointer else None
        print(move_json(spec.name, current=current) if args.json else
              f"{spec.label} {current} is already production"
              + (f" ({repaired})" if repaired else ""))
        return 0
    return move_production(spec, store, registry, args.version,
                           args.reason or "manual promote", args.force, args.json)


def rollback_choice(paths: Paths, spec: ModelSpec, current: int | None, to: int | None) -> int:
    """The version a rollback goes to (`--to` or the previous production one); one-line
    errors for nothing in production, no earlier version, or already there. Reads the DuckDB
    mirror only."""
    from kb_core.errors import CLIError
    from resources.registry_mirror import alias_history, rollback_target

    if current is None:
        raise CLIError(f"{spec.none_in_production} is in production yet: nothing to roll back")
    target = to if to is not None else rollback_target(
        alias_history(paths.db, spec.name, "production"), current)
    if target is None:
        raise CLIError(f"{spec.name} production ({current}) has no earlier production version "
                       "to roll back to (use --to VERSION)")
    if target == current:
        raise CLIError(f"{spec.label} {target} is already production")
    return target


def rollback_reason(reason: str | None, current: int) -> str:
    return "rollback" + (f": {reason}" if reason else f" from {current}")


def _serving_production(paths: Paths) -> int | None:
    """Production as the serving pointer says (the mirror of the MLflow alias): read without
    importing MLflow, so a rollback switches serving first."""
    from kb_core.serving import resolve

    serving = resolve(paths)
    return serving.version if serving.source == "production" else None


def cmd_rollback(args) -> int:
    """For the KB, serving switches before anything slow happens: the decision reads the
    serving pointer and the DuckDB mirror (kb_core + duckdb, well under a second), the
    pointer is rewritten, and only then are MLflow and Dagster imported to move the alias,
    record it in alias_history and report it (seconds of imports). `kb serve` follows within
    its poll interval. If recording fails, serving switches back."""
    spec = _spec(args)
    if not spec.serving_pointer:
        paths, store, registry = _context()
        current = _guard(registry.get_alias, spec.name, "production")
        target = rollback_choice(paths, spec, current, args.to)
        check_promotable(spec, paths, target, args.force, served_before=args.to is None)
        return move_production(spec, store, registry, target,
                               rollback_reason(args.reason, current), args.force, args.json)
    paths = Paths.from_env().ensure()
    current = _serving_production(paths)
    target = rollback_choice(paths, spec, current, args.to)
    # A previous production version already served: being unevaluated does not block it.
    check_promotable(spec, paths, target, args.force, served_before=args.to is None)
    write_pointer(paths, target)
    push_pointer(paths.home)  # replicas (KB_VERSIONS_URL) switch before MLflow is imported
    try:
        _, store, registry = _context()
        return move_production(spec, store, registry, target,
                               rollback_reason(args.reason, current), args.force, args.json)
    except BaseException:
        write_pointer(paths, current)
        push_pointer(paths.home)
        raise
