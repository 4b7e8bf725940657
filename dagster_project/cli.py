"""The `kb` command. Each area adds its subcommands from a module in `commands/`."""

from __future__ import annotations

import argparse
import os
import sys

from dagster_project.settings import apply_offline_env

COMMAND_MODULES = [
    "dagster_project.commands.build",
    "dagster_project.commands.search",
    "dagster_project.commands.registry", "dagster_project.commands.eval",
    "dagster_project.commands.golden", "dagster_project.commands.serve",
    "dagster_project.commands.audit",
    "dagster_project.commands.ask",
]


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""


class UsageError(CLIError):
    """A CLIError about the command line itself (an empty query, a bad -k): it does not
    depend on KB_HOME, so it is printed without naming it."""


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


if __name__ == "__main__":
    # Under `python -m` this file is `__main__`: use the importable module's main so that
    # CLIError is the same class the commands raise.
    from dagster_project.cli import main as cli_main

    sys.exit(cli_main())
