"""Asset checks (Great Expectations suites and custom checks)."""

from kb_assets.release_checks import RELEASE_CHECKS

ALL_CHECKS: list = [*RELEASE_CHECKS]
