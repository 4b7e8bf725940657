"""`kb eval`: the release evaluation on demand, against production (or --version N).
Prints the metrics, the gate verdict and the questions missed in the top 3; exit 1 when the
gate fails (usable in CI). Reads the serving pointer, so it never imports MLflow."""

from __future__ import annotations

import json

from dagster_project.cli import kb_version_flag
from kb_core.home import describe
from kb_core.paths import Paths
from kb_core.serving import resolve


def register(sub) -> None:
    p = sub.add_parser("eval", help="score a KB version on its evaluation set")
    p.add_argument("--golden", default=None,
                   help="a curated golden set: project jsonl or BEIR folder (default: "
                        "$KB_GOLDEN, else $KB_HOME/golden/, else the KB's synthetic set)")
    p.add_argument("-k", "--k", dest="k", type=int, default=10,
                   help="passages retrieved per question (default 10)")
    kb_version_flag(p, "KB version (default: production)")
    p.add_argument("--json", action="store_true", help="print a JSON object (see README)")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from kb_core.errors import CLIError, UsageError
    from kb_assets.golden import GoldenError
    from kb_assets.release import evaluate_release_of, gate_table, save_eval
    from kb_assets.metrics import comparison_rows
    from kb_assets.report import md_table
    from resources.embedder import Embedder
    from resources.registry import ReleaseConfig, default_actor
    from resources.store import KBStore
    from resources.vector_index import VersionStore

    if args.k < 3:
        raise UsageError("-k/--k must be at least 3 (recall@3 is a gate metric)")
    paths = Paths.from_env().ensure()
    cfg = ReleaseConfig.from_env(kb_home=str(paths.home))
    serving = resolve(paths)
    versions = VersionStore(root=str(paths.versions))
    number = args.kb_version if args.kb_version is not None else serving.version
    if number is None:
        raise CLIError(f"no KB version under {paths.versions}: run `kb build` first "
                       f"({describe(paths.home)})")
    if number not in versions.numbers():
        raise CLIError(f"KB version {number} does not exist (versions: {versions.numbers()}; "
                       f"{describe(paths.home)})")
    baseline = serving.version if serving.source == "production" else None
    store = KBStore(db_path=str(paths.db))
    try:
        ev = evaluate_release_of(versions, Embedder(), store, cfg, args.k, number, baseline,
                                 golden_override=args.golden)
    except (GoldenError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None
    passed = save_eval(store, number, f"cli:{default_actor()}", "cli", ev, args.k)
    cand, prod, results = ev.candidate, ev.production, ev.gate
    d = ev.details()
    label = "requested" if args.kb_version is not None else serving.source
    if args.json:
        print(json.dumps({"version": number, "source": label, "eval_set": d,
                          "golden": ev.eval_set.source, "kind": ev.kind,
                          "n_queries": d["n_questions"], "k": args.k,
                          "metrics": cand.metrics if cand else None,
                          "production_version": prod.version if prod else None,
                          "production_metrics": prod.metrics if prod else None,
                          "gate": [r.__dict__ for r in results], "passed": passed,
                          "per_query": cand.per_query if cand else []},
                         ensure_ascii=False, indent=2))
        return 0 if passed else 1
    print(f"KB version {number} ({label}) on the {ev.kind} set {ev.eval_set.source} "
          f"({d['n_questions']} questions apply, {d['not_applicable']} not applicable, "
          f"covering {d['coverage']:.0%} of its documents; {ev.eval_set.fmt}, k={args.k})")
    if ev.fallback_reason:
        print(ev.fallback_reason)
    print()
    if cand is None:
        print("Gate: FAILED")
        print(gate_table(results))
        return 1
    if prod:
        shared = ev.candidate_shared.metrics if ev.candidate_shared else cand.metrics
        print(md_table(comparison_rows(shared, prod.metrics),
                       ["metric", f"v{number}", f"production v{prod.version}", "delta", "verdict"],
                       limit=100))
    else:
        print(md_table(list(cand.metrics.items()), ["metric", f"v{number}"], limit=100))
    print("\nGate: " + ("PASSED" if passed else "FAILED"))
    print(gate_table(results))
    misses = [q for q in cand.per_query if not 0 < q["first_relevant_rank"] <= 3]
    if misses:
        print(f"\nNot in the top 3 ({len(misses)}):")
        print(md_table([(q["qid"], q["question"], ",".join(q["expected"]), q["top_doc"],
                         q["first_relevant_rank"] or "-") for q in misses],
                       ["qid", "question", "expected", "top hit", "rank"], limit=30))
    return 0 if passed else 1
