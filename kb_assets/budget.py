"""A per-document time budget. Every per-document step is linear in the document's size,
but a budget still bounds what a pathological input can cost: the steps call
`deadline.check(stage)` at safe points and the document is quarantined with the reason
instead of stalling the batch (and every later sensor run) behind it."""

from __future__ import annotations

import time


def budget_for(size: int, per_mb_s: float | None) -> float | None:
    """The budget of a document of `size` characters/bytes: `per_mb_s` for each started
    megabyte, so it grows linearly like the work does (a 20 MB policy dump gets 20x the
    budget of a memo; measured rates are 0.5-5 s/MB on a busy 2-core machine)."""
    if not per_mb_s or per_mb_s <= 0:
        return None
    return per_mb_s * max(1, -(-size // 1_000_000))


class BudgetExceeded(Exception):
    def __init__(self, stage: str, elapsed: float, seconds: float):
        self.stage, self.elapsed, self.seconds = stage, elapsed, seconds
        super().__init__(
            f"processing took longer than the per-document time budget of {seconds:g} s "
            f"(stopped at '{stage}' after {elapsed:.1f} s; KB_DOC_TIME_BUDGET_S per MB): "
            "quarantined so the rest of the batch goes on")


class Deadline:
    """`seconds` <= 0 or None: no budget."""

    def __init__(self, seconds: float | None, clock=time.monotonic):
        self.seconds = seconds if seconds and seconds > 0 else None
        self._clock = clock
        self._t0 = clock()

    def check(self, stage: str) -> None:
        if self.seconds is not None:
            elapsed = self._clock() - self._t0
            if elapsed > self.seconds:
                raise BudgetExceeded(stage, elapsed, self.seconds)

    @property
    def elapsed(self) -> float:
        return self._clock() - self._t0
