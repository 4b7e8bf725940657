"""Small formatting helpers for asset metadata (markdown tables the Dagster UI renders)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence


def md_table(rows: Iterable[Sequence], columns: Sequence[str], limit: int = 25) -> str:
    rows = list(rows)
    def cell(v) -> str:
        s = "" if v is None else str(v)
        return s.replace("|", "\\|").replace("\n", " ")[:160]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows[:limit]]
    if len(rows) > limit:
        out.append(f"\n… and {len(rows) - limit} more")
    return "\n".join(out)


def histogram(values: Sequence[float], bins: Sequence[float]) -> list[tuple[str, int]]:
    """Counts per [bins[i], bins[i+1]) bucket, with an open last bucket."""
    edges = list(bins)
    counts = [0] * len(edges)
    for v in values:
        i = len(edges) - 1
        while i > 0 and v < edges[i]:
            i -= 1
        counts[i] += 1
    labels = [f"{int(edges[i])}-{int(edges[i + 1]) - 1}" if i + 1 < len(edges)
              else f"{int(edges[i])}+" for i in range(len(edges))]
    return list(zip(labels, counts))


def bar_chart(pairs: Sequence[tuple[str, float]], width: int = 30) -> str:
    """A text bar chart in a code block: readable at a glance in the UI's markdown view."""
    top = max((v for _, v in pairs), default=0) or 1
    lines = [f"{label:>9} | {'█' * round(width * v / top):<{width}} {v}" for label, v in pairs]
    return "```\n" + "\n".join(lines) + "\n```"
