"""The `kb` command. Each area adds its subcommands from a module in `commands/`."""

from __future__ import annotations

import argparse
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


def main(argv: list[str] | None = None) -> int:
    apply_offline_env()
    import importlib

    parser = argparse.ArgumentParser(prog="kb", description="Knowledge-base platform.")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CLIError as exc:
        print(f"kb {args.command}: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    # Under `python -m` this file is `__main__`: use the importable module's main so that
    # CLIError is the same class the commands raise.
    from dagster_project.cli import main as cli_main

    sys.exit(cli_main())
