"""Markdown for reports and asset metadata (audit reports, release summaries). Pure."""

from __future__ import annotations

from datetime import datetime

ROWS = 200  # table rows shown in markdown; JSON always has everything


def fmt_time(t: datetime | None) -> str:
    return "" if t is None else t.strftime("%Y-%m-%d %H:%M:%S UTC")


def table(rows: list, columns: list[str], limit: int = ROWS) -> str:
    if not rows:
        return "_none_"

    def cell(v) -> str:
        if isinstance(v, datetime):
            v = fmt_time(v)
        elif isinstance(v, bool):
            v = "yes" if v else "no"
        elif isinstance(v, float):
            v = f"{v:.4g}"
        s = "—" if v is None or v == "" else str(v)
        return s.replace("|", "\\|").replace("\n", " ")

    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(cell(v) for v in r) + " |" for r in rows[:limit]]
    if len(rows) > limit:
        out.append(f"\n_… and {len(rows) - limit} more rows (use `--format json` for all)_")
    return "\n".join(out)


def short(h: str | None, n: int = 12) -> str | None:
    return h[:n] if h else h
