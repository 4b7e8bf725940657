"""`kb init` and `kb build`: materialize the graph in-process, recorded in the Dagster
instance under $KB_HOME/dagster so the UI shows the run."""

from __future__ import annotations

import json
import shutil
import socket
import sys
import time
from pathlib import Path

from kb_core import settings
from kb_core.home import find_home, mark_home
from kb_core.paths import Paths
from kb_core.writer_lock import HOST_TAG, instance_init_lock, writer_lock

SAMPLE_DATA = Path(__file__).resolve().parents[2] / "sample_data"
SAMPLE_INBOX = SAMPLE_DATA / "inbox"
SAMPLE_GOLDEN = SAMPLE_DATA / "golden.jsonl"
SELECTIONS = {"kb": "kb_job", "index": "index_job", "all": "all_job"}


def register(sub) -> None:
    p = sub.add_parser("init", help="create KB_HOME (and copy the sample documents)")
    p.add_argument("--samples", action="store_true",
                   help="copy the bundled sample documents into an empty inbox (and their "
                        "golden questions into $KB_HOME/golden/)")
    p.add_argument("--json", action="store_true", help="print a JSON object (see README)")
    p.set_defaults(func=cmd_init)
    p = sub.add_parser("build", help="refresh and release the KB once, in-process")
    p.add_argument("--select", choices=sorted(SELECTIONS), default="kb",
                   help="kb: ingest, index, evaluate, release (default); index: up to the "
                        "published version; all: kb plus fine-tuning")
    run_flags(p)
    p.add_argument("--force", action="store_true",
                   help="run even when nothing changed since the last successful build")
    p.set_defaults(func=cmd_build)
    p = sub.add_parser("finetune", help="build the fine-tuning dataset, fine-tune, evaluate "
                                        "and release the assistant (the KB is not rebuilt)")
    run_flags(p)
    p.set_defaults(func=cmd_finetune)


def run_flags(p) -> None:
    p.add_argument("--json", action="store_true",
                   help="print a JSON object instead of the summary (see README)")
    p.add_argument("-v", "--verbose", action="store_true",
                   help="also print Dagster's event stream and third-party log lines")


def cmd_init(args) -> int:
    paths = Paths.from_env().ensure()
    mark_home(paths.home)
    out = {"kb_home": str(paths.home), "kb_home_found": find_home()[1],
           "inbox": str(paths.inbox), "dagster_home": str(paths.dagster_home),
           "samples_copied": None, "golden_copied": None}
    say = (lambda *_: None) if args.json else print
    if args.samples:
        if any(paths.inbox.iterdir()):
            say(f"inbox {paths.inbox} is not empty: sample documents not copied")
        else:
            shutil.copytree(SAMPLE_INBOX, paths.inbox, dirs_exist_ok=True)
            n = sum(1 for p in paths.inbox.rglob("*") if p.is_file())
            out["samples_copied"] = n
            say(f"copied {n} sample files into {paths.inbox}")
            golden = paths.home / "golden" / "golden.jsonl"
            if not golden.exists():
                golden.parent.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(SAMPLE_GOLDEN, golden)
                out["golden_copied"] = str(golden)
                say(f"copied the samples' golden questions into {golden}")
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(f"KB_HOME={paths.home}\nKB_INBOX={paths.inbox}\nDAGSTER_HOME={paths.dagster_home}")
    return 0


def run_job(paths: Paths, job_name: str, tags: dict | None = None, run_id: str | None = None,
            logger_defs: dict | None = None):
    from dagster_project.definitions import build_definitions
    from resources.dagster_instance import open_instance

    defs = build_definitions(paths)
    job = defs.resolve_job_def(job_name)
    run_config = None
    if logger_defs is not None:  # replaces Dagster's console logger (its DEBUG stream)
        job = job.with_logger_defs(logger_defs)
        # Dagster's console logger defaults to INFO when configured; its stream is DEBUG.
        run_config = {"loggers": {name: {"config": {"log_level": "DEBUG"}} if name == "console"
                                  else {} for name in logger_defs}}
    with instance_init_lock(paths.home):
        instance = open_instance()
    with instance, writer_lock(paths.home, announce=lambda msg: print(msg, file=sys.stderr)):
        reap_orphaned_runs(instance)
        return job.execute_in_process(run_config=run_config, instance=instance,
                                      raise_on_error=False, run_id=run_id,
                                      tags={"kb/trigger": "cli", HOST_TAG: socket.gethostname(),
                                            **(tags or {})})


def reap_orphaned_runs(instance) -> None:
    """A run whose process died (SIGKILL, or the instance's database went away mid-run) stays
    STARTED in the run storage; on a shared instance it would look in progress forever. The
    next build on this host marks this host's such runs failed (sensors/stale_runs.py)."""
    from sensors.stale_runs import KB_BUILD, fail_orphaned_runs

    for run_id in fail_orphaned_runs(instance, message=KB_BUILD, untagged=False):
        print(f"marked the orphaned run {run_id} failed (its process is gone)", file=sys.stderr)


def instance_storage_error(exc: BaseException) -> str | None:
    """One line when `exc` is the Dagster instance's database failing (dagster-postgres gives
    up reconnecting after ~6 s; SQLAlchemy's OperationalError), else None."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        name, module = type(exc).__name__, type(exc).__module__
        if name == "DagsterPostgresException" or (
                module.startswith("sqlalchemy") and name == "OperationalError"):
            cause = exc.__cause__ or exc
            text = str(cause).strip().splitlines()
            return text[0][:200] if text else name
        exc = exc.__cause__ or exc.__context__
    return None


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


def summary_json(result, ok: bool, label: str, seconds: float) -> dict:
    """`kb build --json` / `kb finetune --json`: the shape README documents."""
    materialized = {}
    for ev in result.get_asset_materialization_events():
        mat = ev.event_specific_data.materialization
        materialized[mat.asset_key.to_user_string()] = {
            k: getattr(v, "value", v) for k, v in mat.metadata.items()
            if isinstance(getattr(v, "value", v), (str, int, float, bool, type(None)))}
    checks = [{"asset": ev.asset_key.to_user_string(), "check": ev.check_name,
               "passed": ev.passed, "severity": ev.severity.value, "blocking": ev.blocking,
               "description": ev.description or ""}
              for ev in result.get_asset_check_evaluations()]
    steps = []
    for ev in result.all_events:
        if ev.event_type_value in ("STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED"):
            data = ev.event_specific_data
            status = {"STEP_SUCCESS": "ok", "STEP_FAILURE": "failed",
                      "STEP_SKIPPED": "skipped"}[ev.event_type_value]
            step = {"step": ev.step_key, "status": status,
                    "duration_s": round(data.duration_ms / 1000, 3)
                    if getattr(data, "duration_ms", None) is not None else None}
            if status == "failed":
                err = data.error
                msg = err.cause.message if err and err.cause else (err.message if err else "")
                step["error"] = msg.strip().splitlines()[-1] if msg.strip() else ""
            steps.append(step)
    done = {s["step"] for s in steps} | {ev.step_key for ev in result.all_events
                                          if ev.event_type_value == "STEP_START"}
    not_run = [n.name for n in result.job_def.graph.nodes_in_topological_order
               if n.name not in done]
    return {"command": label, "run_id": result.run_id, "job": result.job_def.name,
            "succeeded": ok, "duration_s": round(seconds, 3), "kb_home": None,
            "steps": steps, "not_run": not_run, "materialized": materialized,
            "checks": checks}


def cmd_finetune(args) -> int:
    args.select = "finetune"
    return cmd_build(args, job="ft_job")


def unchanged_since_last_build(paths: Paths, job_name: str):
    """(reason to run or None, the snapshot taken now): the no-change check, under the
    writer lock so that a run in progress elsewhere is never mistaken for nothing to do."""
    from dagster_project.cli import build_skip
    from kb_core.writer_lock import writer_lock

    record = build_skip.read_record(paths)
    try:
        with writer_lock(paths.home, wait_s=0, announce=lambda _msg: None):
            now = build_skip.take_snapshot(paths, job_name, previous=record)
    except TimeoutError:
        return "another build is writing the knowledge base", None
    return build_skip.reason_to_run(record, now), now


def print_skipped(paths: Paths, label: str, job_name: str, record, seconds: float,
                  as_json: bool) -> int:
    version = record.kb_version
    since = f"KB version {version}" if version is not None else "the last build (no KB version yet)"
    if as_json:
        print(json.dumps({"command": label, "run_id": None, "job": job_name, "succeeded": True,
                          "skipped": True, "kb_version": version,
                          "reason": f"nothing changed since {since}",
                          "duration_s": round(seconds, 3), "kb_home": str(paths.home),
                          "steps": [], "not_run": [], "materialized": {}, "checks": [],
                          "warnings": []}, indent=2))
    else:
        print(f"kb {label}: nothing changed since {since} (inbox, settings, code, the KB "
              f"state and the last run {record.run_id or 'recorded'} checked in "
              f"{seconds:.2f}s); `kb build --force` runs anyway")
    return 0


def preload_checks_library() -> None:
    """Great Expectations takes ~1.1 s to import (its unused modules deferred) and the run's
    first check needs it: import it on a thread while Dagster loads the code and starts the run. The checks wait for it
    (checks/gx_suites.gx_context holds a lock), and import it themselves if this failed."""
    import threading

    from checks.gx_suites import gx_context

    def load() -> None:
        try:
            gx_context()
        except Exception:  # noqa: BLE001 - the first check imports it again and reports
            pass

    threading.Thread(target=load, name="gx-preload", daemon=True).start()


def cmd_build(args, job: str | None = None) -> int:
    import uuid

    from dagster_project.cli import build_skip

    t0 = time.perf_counter()
    paths = Paths.from_env().ensure()
    mark_home(paths.home)
    label = f"build ({args.select})" if job is None else args.select
    job_name = job or SELECTIONS[args.select]
    verbose, as_json = getattr(args, "verbose", False), getattr(args, "json", False)
    if settings.get("KB_BUILD_MODE") == "queue":
        return build_queued(label, job_name, as_json)
    before = None
    if job_name in build_skip.SKIPPABLE_JOBS:
        reason, before = unchanged_since_last_build(paths, job_name)
        if reason is None and not getattr(args, "force", False):
            record = build_skip.read_record(paths)
            if record.inbox != before.inbox:  # touched files: remember their new stat
                record.inbox = before.inbox
                build_skip.write_record(paths, record)
            return print_skipped(paths, label, job_name, record, time.perf_counter() - t0,
                                 as_json)
    elif job_name in build_skip.COVERS:
        before = build_skip.take_snapshot(paths, job_name)
    build_skip.forget_record(paths)
    preload_checks_library()

    from dagster._loggers import colored_console_logger

    from dagster_project.cli.build_terminal import (StepPrinter, progress_shown,
                                                    terminal_logger_def, terminal_stream,
                                                    third_party_quiet)

    run_id = str(uuid.uuid4())  # known before the run starts, to print it first
    stream = terminal_stream()
    printer = StepPrinter(stream, f"kb {label}: run {run_id} of {job_name}, KB_HOME={paths.home}")
    loggers = {"kb_terminal": terminal_logger_def(printer)}
    if verbose:
        loggers["console"] = colored_console_logger
    t0 = time.perf_counter()
    try:
        with third_party_quiet(verbose), progress_shown(stream):
            try:
                result = run_job(paths, job_name, run_id=run_id, logger_defs=loggers)
            except Exception as exc:
                why = instance_storage_error(exc)
                if why is None:
                    raise
                print(f"kb {label}: run {run_id} stopped: the Dagster instance's database "
                      f"failed ({why}). Versions on disk are complete (the last good one keeps "
                      "serving); the next `kb build` marks the run failed and carries on.",
                      file=sys.stderr)
                return 1
        seconds = time.perf_counter() - t0
        if printer.warnings:
            print("warnings:\n" + "\n".join(f"  {w}" for w in printer.warnings), file=stream)
    finally:
        if stream is not sys.stderr:
            stream.close()
    lines, ok = summarize(result)
    if ok and before is not None:
        build_skip.write_record(paths, build_skip.after_run(before, paths, result.run_id))
    return report(result, lines, ok, label, seconds, str(paths.home), printer.warnings, as_json)


def report(result, lines: list[str], ok: bool, label: str, seconds: float, kb_home: str,
           warnings: list[str], as_json: bool) -> int:
    if as_json:
        out = summary_json(result, ok, label, seconds)
        out.update(kb_home=kb_home, warnings=warnings, skipped=False)
        print(json.dumps(out, indent=2, default=str))
        return 0 if ok else 1
    print(f"kb {label} run {result.run_id}: "
          f"{'succeeded' if ok else 'FAILED'} in {seconds:.1f}s")
    print("\n".join(lines))
    if not ok:
        print("The last good KB version keeps serving. Fix the cause above and run `kb build` again.")
    return 0 if ok else 1


def build_queued(label: str, job_name: str, as_json: bool) -> int:
    """KB_BUILD_MODE=queue: the run goes to the team's Dagster and executes on the writer's
    KB_HOME (dagster_project/cli/queued.py); nothing is written on this machine."""
    from dagster_project.cli.queued import run_queued

    t0 = time.perf_counter()
    result = run_queued(job_name, {"kb/trigger": "cli-queue"})
    lines, ok = summarize(result)
    return report(result, lines, ok, label, time.perf_counter() - t0, None, [], as_json)
