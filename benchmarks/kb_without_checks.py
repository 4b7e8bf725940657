"""`kb` with no asset checks in its Definitions and no Great Expectations preload: the
baseline bench_checks.py times real `kb build` processes against. Benchmarks only; the
product has no way to build without its gates."""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> int:
    from dagster import Definitions

    import dagster_project.cli.build as build
    import dagster_project.definitions as definitions
    from dagster_project.cli import main as kb_main

    with_checks = definitions.build_definitions

    def without_checks(paths):
        defs = with_checks(paths)
        return Definitions(assets=list(defs.assets or []), jobs=list(defs.jobs or []),
                           resources=defs.resources, sensors=defs.sensors,
                           schedules=defs.schedules)

    definitions.build_definitions = without_checks
    build.preload_checks_library = lambda: None
    return kb_main()


if __name__ == "__main__":
    sys.exit(main())
