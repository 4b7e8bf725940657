"""One check's verdict, turned into a Dagster AssetCheckResult (what the UI shows) and a
`check_results` row in DuckDB (what audits list per run and per KB version)."""

from __future__ import annotations

import json
import traceback
from dataclasses import dataclass, field
from typing import Callable

from kb_assets.report import md_table
from resources import persistence

from .gx_suites import SuiteResult


@dataclass(frozen=True)
class CheckDef:
    asset: str
    name: str
    blocking: bool  # blocking checks fail with ERROR severity; the others warn
    description: str


@dataclass
class CheckOutcome:
    check: CheckDef
    passed: bool
    description: str  # one line: what was found, and what was expected
    values: dict = field(default_factory=dict)  # numbers and short strings for the UI
    suite: SuiteResult | None = None
    rows: list[dict] = field(default_factory=list)  # offending rows beyond the suite's

    @property
    def severity(self) -> str:
        return "ERROR" if self.check.blocking else "WARN"

    def offending(self) -> list[dict]:
        rows = list(self.rows)
        if self.suite:
            for o in self.suite.failed:
                rows.extend(dict(r, expectation=o.name) for r in o.offending)
        return rows

    def structured(self) -> dict:
        """JSON-able detail: stored in check_results.metadata."""
        out = {"values": self.values, "offending_rows": self.offending()}
        if self.suite:
            out["expectations"] = [o.as_dict() for o in self.suite.outcomes]
            out["gx_seconds"] = round(self.suite.seconds, 4)
        return out

    def to_result(self):
        from dagster import AssetCheckResult, AssetCheckSeverity, MetadataValue

        md = {k: v for k, v in self.values.items() if isinstance(v, (int, float, str, bool))}
        if not self.passed and self.suite and self.suite.failed:
            first = self.suite.failed[0]
            md["failed_expectation"] = first.name
            md["expected"] = first.expect.describe_expected()
            md["observed"] = first.observed_text()
        if self.suite and self.suite.outcomes:
            md["expectations"] = MetadataValue.md(md_table(
                [(o.name, o.expect.label, o.expect.describe_expected(), o.observed_text(),
                  "pass" if o.success else "FAIL") for o in self.suite.outcomes],
                ["expectation", "meaning", "expected", "observed", "result"]))
        rows = self.offending()
        if rows:
            cols = list(dict.fromkeys(k for r in rows for k in r))
            md["offending_rows"] = MetadataValue.md(md_table(
                [[r.get(c) for c in cols] for r in rows], cols, limit=10))
        return AssetCheckResult(
            asset_key=self.check.asset, check_name=self.check.name, passed=self.passed,
            severity=AssetCheckSeverity.ERROR if self.check.blocking else AssetCheckSeverity.WARN,
            description=self.description[:500], metadata=md)


def guarded(checks: list[CheckDef], evaluate: Callable[[], list[CheckOutcome]],
            log=None) -> list[CheckOutcome]:
    """Run `evaluate`; a crash (a bug, or data nobody foresaw) becomes a failed result for
    every check of the group instead of a failed step, so the UI says which check and why.
    Checks the evaluation forgot are reported as failed too."""
    try:
        outcomes = evaluate()
    except Exception as exc:  # noqa: BLE001 - reported, never swallowed
        if log:
            log.error("quality check crashed:\n" + traceback.format_exc())
        reason = f"the check itself crashed: {type(exc).__name__}: {str(exc)[:200]}"
        return [CheckOutcome(c, False, reason, {"error": reason}) for c in checks]
    seen = {o.check.name for o in outcomes}
    outcomes += [CheckOutcome(c, False, "the check produced no result (bug)", {})
                 for c in checks if c.name not in seen]
    return outcomes


def record(store, run_id: str, outcomes: list[CheckOutcome], kb_version: int | None = None,
           log=None) -> None:
    """Append the outcomes to check_results. Recording must not turn a verdict into a
    crash: a failure to write is logged and the verdict still reaches Dagster."""
    if not outcomes:
        return
    rows = [{
        "run_id": run_id, "asset": o.check.asset, "check_name": o.check.name,
        "passed": o.passed, "severity": o.severity, "blocking": o.check.blocking,
        "description": o.description, "kb_version": kb_version,
        "metadata": json.dumps(o.structured(), ensure_ascii=False, default=str),
    } for o in outcomes]
    try:
        with store.connect() as con:
            persistence.record_check_results(con, rows)
    except Exception as exc:  # noqa: BLE001
        if log:
            log.error(f"could not record check results in DuckDB: {exc}")


def attach_version(store, run_id: str, kb_version: int) -> None:
    """This run's earlier check rows gated `kb_version`: say so, for audits per version."""
    with store.connect() as con:
        persistence.attach_check_results_version(con, run_id, kb_version)
