"""`kb init` and `kb build`: materialize the graph in-process, recorded in the Dagster
instance under $KB_HOME/dagster so the UI shows the run."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from kb_core.paths import Paths
from kb_core.writer_lock import instance_init_lock, writer_lock

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "sample_data"
SAMPLE_INBOX = SAMPLE_DATA / "inbox"
SAMPLE_GOLDEN = SAMPLE_DATA / "golden.jsonl"
SELECTIONS = {"kb": "kb_job", "index": "index_job", "all": "all_job"}


def register(sub) -> None:
    p = sub.add_parser("init", help="create KB_HOME (and copy the sample documents)")
    p.add_argument("--samples", action="store_true",
                   help="copy the bundled sample documents into an empty inbox (and their "
                        "golden questions into $KB_HOME/golden/)")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("build", help="refresh and release the KB once, in-process")
    p.add_argument("--select", choices=sorted(SELECTIONS), default="kb",
                   help="kb: ingest, index, evaluate, release (default); index: up to the "
                        "published version; all: kb plus fine-tuning")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("finetune", help="build the fine-tuning dataset, fine-tune, evaluate "
                                        "and release the assistant (the KB is not rebuilt)")
    p.set_defaults(func=cmd_finetune)


def cmd_init(args) -> int:
    paths = Paths.from_env().ensure()
    if args.samples:
        if any(paths.inbox.iterdir()):
            print(f"inbox {paths.inbox} is not empty: sample documents not copied")
        else:
            shutil.copytree(SAMPLE_INBOX, paths.inbox, dirs_exist_ok=True)
            n = sum(1 for p in paths.inbox.rglob("*") if p.is_file())
            print(f"copied {n} sample files into {paths.inbox}")
            golden = paths.home / "golden" / "golden.jsonl"
            if not golden.exists():
                golden.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(SAMPLE_GOLDEN, golden)
                print(f"copied the samples' golden questions into {golden}")
    print(f"KB_HOME={paths.home}\nKB_INBOX={paths.inbox}\nDAGSTER_HOME={paths.dagster_home}")
    return 0


def run_job(paths: Paths, job_name: str, tags: dict | None = None):
    from dagster import DagsterInstance

    from dagster_project.definitions import build_definitions

    defs = build_definitions(paths)
    job = defs.resolve_job_def(job_name)
    with instance_init_lock(paths.home):
        instance = DagsterInstance.get()
    with instance, writer_lock(paths.home):
        return job.execute_in_process(instance=instance, raise_on_error=False,
                                      tags={"kb/trigger": "cli", **(tags or {})})


def summarize(result) -> tuple[list[str], bool]:
    """Lines describing what happened, and whether everything that should pass did."""
    lines, ok = [], result.success
    for ev in result.get_asset_materialization_events():
        mat = ev.event_specific_data.materialization
        md = {k: getattr(v, "value", v) for k, v in mat.metadata.items()}
        keep = [f"{k}={md[k]}" for k in (
            "documents_active", "documents_added", "documents_changed", "documents_removed",
            "quarantined_items", "chunks_total", "docs_rechunked", "chunks_embedded",
            "chunks_reused_from_cache", "kb_version", "new_version",
            "dataset_version", "assistant_version", "steps", "train_loss_last", "ft_score_mean",
            "base_score_mean", "production_version", "duration_s") if k in md]
        lines.append(f"  materialized {mat.asset_key.to_user_string():<18} " + " ".join(keep))
    for ev in result.get_asset_check_evaluations():
        status = "passed" if ev.passed else f"FAILED ({ev.severity.value})"
        desc = ev.description or ""
        lines.append(f"  check {ev.asset_key.to_user_string()}:{ev.check_name} {status} {desc}".rstrip())
        if not ev.passed and ev.blocking:
            ok = False
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE":
            err = ev.event_specific_data.error
            msg = err.cause.message if err and err.cause else (err.message if err else "")
            lines.append(f"  step {ev.step_key} FAILED: {msg.strip().splitlines()[-1] if msg else ''}")
            ok = False
        elif ev.event_type_value == "STEP_SKIPPED":
            lines.append(f"  step {ev.step_key} skipped (an upstream step or blocking check failed)")
    # Steps behind a failure are abandoned with a log line only (no event): list them.
    started = {ev.step_key for ev in result.all_events
               if ev.event_type_value in ("STEP_START", "STEP_SKIPPED")}
    not_run = [n.name for n in result.job_def.graph.nodes_in_topological_order
               if n.name not in started]
    if not_run and not ok:
        lines.append(f"  not run (an upstream step or blocking check failed): {', '.join(not_run)}")
    return lines, ok


def cmd_finetune(args) -> int:
    args.select = "finetune"
    return cmd_build(args, job="ft_job")


def cmd_build(args, job: str | None = None) -> int:
    paths = Paths.from_env().ensure()
    t0 = time.perf_counter()
    result = run_job(paths, job or SELECTIONS[args.select])
    lines, ok = summarize(result)
    print(f"kb {'build (' + args.select + ')' if job is None else args.select} run {result.run_id}: "
          f"{'succeeded' if ok else 'FAILED'} in {time.perf_counter() - t0:.1f}s")
    print("\n".join(lines))
    if not ok:
        print("The last good KB version keeps serving. Fix the cause above and run `kb build` again.")
    return 0 if ok else 1
