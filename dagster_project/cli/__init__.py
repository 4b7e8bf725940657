"""The `kb` command. Each area adds its subcommands from a module of this package."""

from __future__ import annotations

import argparse
import os
import sys

from kb_core.errors import CLIError, UsageError
from kb_core.paths import apply_offline_env

COMMAND_MODULES = [
    "dagster_project.cli.build",
    "dagster_project.cli.search",
    "dagster_project.cli.registry", "dagster_project.cli.eval",
    "dagster_project.cli.golden", "dagster_project.cli.serve",
    "dagster_project.cli.audit",
    "dagster_project.cli.ask",
]

# Commands that read the KB: their errors name the KB_HOME used and how it was found.
READS_KB = {"search", "ask", "eval", "versions", "promote", "rollback", "audit", "golden",
            "serve"}


def error_line(command: str, exc: CLIError) -> str:
    msg = str(exc)
    if command in READS_KB and not isinstance(exc, UsageError) and "KB_HOME=" not in msg:
        from kb_core.home import describe

        msg = f"{msg} [{describe()}]"
    return f"kb {command}: {msg}"


def version_text() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from kb_core.home import describe

    try:
        package = version("kb-platform")
    except PackageNotFoundError:  # running from a checkout that was never installed
        package = "unknown"
    return f"kb-platform {package}\n{describe()}"


class PrintVersion(argparse.Action):
    """`kb --version`: like argparse's "version" action, without its line wrapping, and
    computed only when asked (it looks for KB_HOME)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, help=None):
        super().__init__(option_strings, dest, default=argparse.SUPPRESS, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_text())
        parser.exit()


def kb_version_flag(p, help_text: str) -> None:
    """The KB version a command reads: `--kb-version N` everywhere (the older `--version N`
    of search, eval and golden suggest still works, hidden from help)."""
    p.add_argument("--kb-version", dest="kb_version", type=int, default=None, metavar="N",
                   help=help_text)
    p.add_argument("--version", dest="kb_version", type=int, default=None,
                   help=argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    import importlib

    parser = argparse.ArgumentParser(prog="kb", description="Knowledge-base platform.")
    parser.add_argument("--version", action=PrintVersion,
                        help="print the kb-platform version and the KB_HOME in use")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    apply_offline_env()
    # MLflow's INFO lines ("Creating initial MLflow database tables...") are not for users;
    # read by MLflow when it is imported. `kb build -v` lets them through.
    os.environ.setdefault("MLFLOW_LOGGING_LEVEL", "WARNING")
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(error_line(args.command, exc), file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
