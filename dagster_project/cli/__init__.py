"""The `kb` command. Each area adds its subcommands from a module of this package."""

from __future__ import annotations

import argparse
import sys

from kb_core.errors import CLIError
from kb_core.paths import apply_offline_env

COMMAND_MODULES = [
    "dagster_project.cli.build",
    "dagster_project.cli.search",
    "dagster_project.cli.registry", "dagster_project.cli.eval",
    "dagster_project.cli.golden", "dagster_project.cli.serve",
    "dagster_project.cli.audit",
    "dagster_project.cli.ask",
]


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

