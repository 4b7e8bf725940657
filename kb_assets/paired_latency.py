"""Query latency as the promotion gate compares it: the candidate and production timed side by
side, question by question, so that both see the same machine load.

Timing one version after the other compared two moments of a shared machine: on CI, with a
load test hitting `kb serve` beside the build, one KB's p95 read 34.6 ms for production and
101.4 ms for an identical-cost candidate a few seconds later. Here each question is timed on
both versions back to back (in alternating order), and a version's latency for a question is
its fastest run: scheduler preemption only ever adds time, so the minimum is the estimate of
what the version itself costs. A first round that already passes ends the timing (the
everyday case costs one round); a suspected regression is timed again, up to `max_rounds`,
before it is believed."""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .metrics import percentile

MAX_ROUNDS = 5


@dataclass
class PairedLatency:
    candidate_ms: list[list[float]]  # per question, one timing per round
    production_ms: list[list[float]]

    @property
    def rounds(self) -> int:
        return len(self.candidate_ms[0]) if self.candidate_ms else 0

    @staticmethod
    def _summary(per_question: list[float]) -> dict[str, float]:
        return {"latency_p50_ms": round(percentile(per_question, 50), 6),
                "latency_p95_ms": round(percentile(per_question, 95), 6)}

    def fastest(self, production: bool = False) -> dict[str, float]:
        """p50/p95 over questions of each question's fastest run: what the gate compares."""
        runs = self.production_ms if production else self.candidate_ms
        return self._summary([min(r) for r in runs])

    def first_round(self, production: bool = False) -> dict[str, float]:
        """p50/p95 of the first round alone: what one served query saw, load included."""
        runs = self.production_ms if production else self.candidate_ms
        return self._summary([r[0] for r in runs])


def time_side_by_side(candidate: Callable[[str], object], production: Callable[[str], object],
                      questions: Sequence[str],
                      acceptable: Callable[[float, float], bool],
                      max_rounds: int = MAX_ROUNDS,
                      clock: Callable[[], float] = time.perf_counter) -> PairedLatency:
    """Time `candidate(q)` and `production(q)` for each question, round after round, until
    `acceptable(candidate_p95, production_p95)` holds for the fastest-run p95s or `max_rounds`
    rounds are done."""
    if not questions:
        raise ValueError("no question to time")
    runs: tuple[list[list[float]], list[list[float]]] = (
        [[] for _ in questions], [[] for _ in questions])
    searches = (candidate, production)
    paired = PairedLatency(*runs)
    for rnd in range(max(1, max_rounds)):
        for i, q in enumerate(questions):
            # Alternate who goes first, so a cache warmed by one version favours neither.
            for side in ((0, 1) if (i + rnd) % 2 == 0 else (1, 0)):
                t0 = clock()
                searches[side](q)
                runs[side][i].append((clock() - t0) * 1000)
        if acceptable(paired.fastest()["latency_p95_ms"],
                      paired.fastest(production=True)["latency_p95_ms"]):
            break
    return paired
