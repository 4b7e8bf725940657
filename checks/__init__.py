"""Asset checks (Great Expectations suites and custom checks).

ALL_CHECKS is built on first use: the check modules import the assets they check, and the
assets import pure rules from this package (checks/release_gate.py), so importing a rule
must not import every asset."""


def __getattr__(name: str):
    if name != "ALL_CHECKS":
        raise AttributeError(f"module 'checks' has no attribute {name!r}")
    from checks.ft_checks import FT_CHECKS
    from checks.kb_checks import KB_CHECKS
    from checks.release_checks import RELEASE_CHECKS

    return [*KB_CHECKS, *RELEASE_CHECKS, *FT_CHECKS]
