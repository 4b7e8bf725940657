"""Asset checks (Great Expectations suites and custom checks)."""

ALL_CHECKS: list = []
