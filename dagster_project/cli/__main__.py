"""`python -m dagster_project.cli`: the `kb` command."""

import sys

from dagster_project.cli import main

sys.exit(main())
