"""Asset checks (Great Expectations suites and custom checks)."""

from checks.release_checks import RELEASE_CHECKS
from checks.ft_checks import FT_CHECKS
from checks.kb_checks import KB_CHECKS

ALL_CHECKS: list = [*KB_CHECKS, *RELEASE_CHECKS, *FT_CHECKS]
