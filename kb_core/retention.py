"""Which KB version directories a publish removes (issue 13): every version except those an
alias or the serving pointer names, the last `keep_last`, and any younger than `keep_days`.
Lineage rows stay in DuckDB; only the files go. Pure: the publisher applies it."""

from __future__ import annotations

from datetime import datetime, timedelta


def removable_versions(created_at: dict[int, datetime], protected: set[int], keep_last: int,
                       keep_days: float, now: datetime) -> list[int]:
    """Version numbers to remove, oldest first. `created_at` holds every version on disk."""
    numbers = sorted(created_at)
    keep = set(numbers[-keep_last:]) if keep_last > 0 else set()
    cutoff = now - timedelta(days=keep_days)
    return [n for n in numbers
            if n not in keep and n not in protected and created_at[n] < cutoff]
