"""`kb eval`: the release evaluation on demand, against production (or --version N).
Prints the metrics, the gate verdict and the questions missed in the top 3; exit 1 when the
gate fails (usable in CI). Reads the serving pointer, so it never imports MLflow."""

from __future__ import annotations

import json

from dagster_project.serving import resolve
from dagster_project.settings import Paths


def register(sub) -> None:
    p = sub.add_parser("eval", help="score a KB version on a golden question set")
    p.add_argument("--golden", default=None,
                   help="project jsonl or BEIR folder (default: $KB_GOLDEN or "
                        "sample_data/golden.jsonl)")
    p.add_argument("--k", type=int, default=10, help="passages retrieved per question (default 10)")
    p.add_argument("--version", type=int, default=None, help="KB version (default: production)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_eval)


def cmd_eval(args) -> int:
    from dagster_project.cli import CLIError
    from kb_assets.golden import GoldenError, load_golden
    from kb_assets.release import (evaluate_against, gate_table, save_eval, thresholds)
    from kb_assets.metrics import comparison_rows
    from kb_assets.report import md_table
    from resources.embedder import Embedder
    from resources.registry import ReleaseConfig, default_actor
    from resources.store import KBStore
    from resources.vector_index import VersionStore

    if args.k < 3:
        raise CLIError("--k must be at least 3 (recall@3 is a gate metric)")
    paths = Paths.from_env().ensure()
    cfg = ReleaseConfig.from_env()
    serving = resolve(paths)
    versions = VersionStore(root=str(paths.versions))
    number = args.version if args.version is not None else serving.version
    if number is None:
        raise CLIError(f"no KB version under {paths.versions}: run `kb build` first")
    if number not in versions.numbers():
        raise CLIError(f"KB version {number} does not exist (versions: {versions.numbers()})")
    baseline = serving.version if serving.source == "production" else None
    try:
        golden = load_golden(args.golden or cfg.golden_path or None)
        cand, prod, results = evaluate_against(versions, Embedder(), golden, args.k, number,
                                               baseline, thresholds(cfg), cfg.latency_sample)
    except (GoldenError, FileNotFoundError) as exc:
        raise CLIError(str(exc)) from None
    passed = save_eval(KBStore(db_path=str(paths.db)), number, f"cli:{default_actor()}", "cli",
                       golden, args.k, cand, prod, results)
    label = "requested" if args.version is not None else serving.source
    if args.json:
        print(json.dumps({"version": number, "source": label, "golden": str(golden.path),
                          "n_queries": len(golden.queries), "k": args.k, "metrics": cand.metrics,
                          "production_version": prod.version if prod else None,
                          "production_metrics": prod.metrics if prod else None,
                          "gate": [r.__dict__ for r in results], "passed": passed,
                          "per_query": cand.per_query}, ensure_ascii=False, indent=2))
        return 0 if passed else 1
    print(f"KB version {number} ({label}) on {golden.path} "
          f"({len(golden.queries)} questions, {golden.format}, k={args.k})\n")
    if prod:
        print(md_table(comparison_rows(cand.metrics, prod.metrics),
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
