"""Progress of long steps (embedding, training, evaluation) for the terminal. Steps call
`report(task, done, total)`; nothing happens unless a reporter is installed (the `kb`
command installs one; in the daemon and the UI the steps' own log lines remain)."""

from __future__ import annotations

from typing import Callable

Reporter = Callable[[str, int, int, str], None]
_reporter: Reporter | None = None


def set_reporter(reporter: Reporter | None) -> Reporter | None:
    """Install `reporter` (None: none); returns the one it replaces."""
    global _reporter
    previous, _reporter = _reporter, reporter
    return previous


def report(task: str, done: int, total: int, unit: str = "") -> None:
    if _reporter is not None and total > 0:
        try:
            _reporter(task, done, total, unit)
        except Exception:  # a terminal problem must never fail a step
            pass
