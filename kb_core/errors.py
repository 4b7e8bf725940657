"""User-facing errors. `kb` prints a CLIError as one line (exit code 2, no traceback)."""

from __future__ import annotations


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""


class UsageError(CLIError):
    """A CLIError about the command line itself (an empty query, a bad -k): it does not
    depend on KB_HOME, so it is printed without naming it."""
