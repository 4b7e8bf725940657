"""`kb audit at TIME | version N | doc ID_OR_PATH | diff A B [--format md|json]`: postmortem
answers from the lineage recorded at the time (DuckDB, opened read-only, plus the Dagster
event log for the runs named)."""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from kb_core import settings
from kb_core.home import describe
from kb_core.paths import Paths


def register(sub) -> None:
    p = sub.add_parser("audit", help="postmortem answers: what was live at a time, what went "
                                     "into a version, what changed, where a document went")
    asub = p.add_subparsers(dest="audit_command", required=True, metavar="{at,version,diff,doc}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--format", choices=("md", "json"), default="md",
                        help="md: a postmortem section (default); json: everything")
    common.add_argument("--json", dest="format", action="store_const", const="json",
                        help="the same as --format json")
    common.add_argument("--no-runs", action="store_true",
                        help="skip the Dagster event-log lookup of the runs named")
    a = asub.add_parser("at", parents=[common],
                        help="KB and kb-assistant versions that held an alias at TIME")
    a.add_argument("time", help="ISO-8601, e.g. 2026-11-21T23:45:00+08:00, "
                                "'2026-11-21 23:45' (no zone = UTC), or 'now'")
    a.add_argument("--alias", default="production", help="alias (default production)")
    v = asub.add_parser("version", parents=[common],
                        help="what went into KB version N, and what changed from N-1")
    v.add_argument("version", help="KB version number (N or vN)")
    d = asub.add_parser("diff", parents=[common], help="what changed from KB version A to B")
    d.add_argument("a")
    d.add_argument("b")
    o = asub.add_parser("doc", parents=[common],
                        help="every KB version, FT dataset and model that contained a document")
    o.add_argument("ident", metavar="ID_OR_PATH", help="doc_id, doc_key or inbox-relative path")
    for sp in (a, v, d, o):
        sp.set_defaults(func=cmd_audit)


def version_number(text: str) -> int:
    from kb_core.errors import UsageError

    s = text.strip().lower().removeprefix("v")
    if not s.isdigit():
        raise UsageError(f"{text!r} is not a KB version number (expected N or vN, e.g. 3)")
    return int(s)


def doc_ident(text: str, inbox: Path) -> str:
    """Accept a doc_id/doc_key as is; turn a path into the inbox-relative form documents
    are recorded under."""
    s = text.strip()
    p = Path(s).expanduser()
    if p.is_absolute() or s.startswith("."):
        try:
            return p.resolve().relative_to(inbox.resolve()).as_posix()
        except ValueError:
            pass
    return s.removeprefix("./")


def read_report(paths: Paths, fn):
    """Run `fn(Lineage)` on a short read-only connection (a build may hold the file: the
    store waits for its lock)."""
    import duckdb

    from dagster_project.audit.report import Lineage
    from kb_core.errors import CLIError
    from resources.store import KBStore

    if not paths.db.exists():
        raise CLIError(f"no KB database at {paths.db}: nothing was ever built "
                       f"(is {describe(paths.home)} right?)")
    timeout = settings.get("KB_AUDIT_LOCK_TIMEOUT_S")
    try:
        with KBStore(db_path=str(paths.db)).connect(read_only=True, timeout_s=timeout) as con:
            return fn(Lineage(con))
    except duckdb.IOException as exc:
        msg = str(exc).splitlines()[0]
        if "lock" in msg.lower():
            pid = re.search(r"PID (\d+)", msg)
            msg = (f"another process{' (PID ' + pid.group(1) + ')' if pid else ''} held its "
                   f"write lock for over {timeout:g}s (a build?); retry when it finishes")
        raise CLIError(f"cannot open {paths.db} read-only: {msg}") from None


def cmd_audit(args) -> int:
    from dagster_project.audit import format as audit_format, report as audit
    from dagster_project.audit.runs import run_facts
    from kb_core.errors import CLIError, UsageError

    paths = Paths.from_env()
    note = ""
    try:
        if args.audit_command == "at":
            t, note = audit.parse_time(args.time)
            report = read_report(paths, lambda lin: audit.live_at(lin, t, args.alias))
            runs = [m.get("built_by_run") for m in report["models"].values()]
        elif args.audit_command == "version":
            n = version_number(args.version)
            report = read_report(paths, lambda lin: audit.version_report(lin, n))
            runs = [report["run_id"]] + ([report["diff"]["versions"][k]["run_id"]
                                          for k in report["diff"]["versions"]]
                                         if report["diff"] else [])
        elif args.audit_command == "diff":
            a, b = version_number(args.a), version_number(args.b)
            report = read_report(paths, lambda lin: audit.diff_versions(lin, a, b))
            runs = [x["run_id"] for x in report["versions"].values()]
        else:
            ident = doc_ident(args.ident, paths.inbox)
            if not ident:
                raise UsageError("the document id or path is empty")
            report = read_report(paths, lambda lin: audit.doc_report(lin, ident))
            runs = ([k["run_id"] for k in report["kb_versions"]]
                    + [f["run_id"] for f in report["ft_datasets"]]
                    + [m["run_id"] for m in report["models"]])
    except audit.AuditError as exc:
        raise CLIError(str(exc)) from None
    facts = {} if args.no_runs else run_facts(paths.dagster_home, runs)
    if args.format == "json":
        if note:
            report["time_note"] = note
        report["dagster_runs"] = facts
        print(audit_format.to_json(report))
    elif args.audit_command == "at":
        print(audit_format.md_at(report, note, facts), end="")
    elif args.audit_command == "version":
        print(audit_format.md_version(report, facts), end="")
    elif args.audit_command == "diff":
        print(audit_format.md_diff(report) + "\n".join(audit_format.runs_section(facts)))
    else:
        print(audit_format.md_doc(report, facts), end="")
    return 0
