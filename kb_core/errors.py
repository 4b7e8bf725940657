"""User-facing errors. `kb` prints a CLIError as one line (exit code 2, no traceback)."""

from __future__ import annotations


class CLIError(Exception):
    """A user-facing error: printed as one line, exit code 2, no traceback."""
