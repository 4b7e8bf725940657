"""Great Expectations 1.x, called directly: a dataframe and a list of expectations in, a
structured result out (which expectation failed, observed vs expected, offending rows).

GX costs about 1.8 s to import, so it is imported on first use (`kb build` starts that on a
thread) and one ephemeral context serves the whole process; the modules it imports only for
expectations we never use load on first touch instead (`deferred_imports`). Expectations are
declared with the small `Expect` spec below so that suites can be written (and tested)
without importing GX."""

from __future__ import annotations

import contextlib
import importlib.abc
import importlib.util
import math
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

# Expect.kind -> GX 1.x expectation class name
_GX_CLASSES = {
    "not_null": "ExpectColumnValuesToNotBeNull",
    "unique": "ExpectColumnValuesToBeUnique",
    "between": "ExpectColumnValuesToBeBetween",
    "in_set": "ExpectColumnValuesToBeInSet",
    "mean_between": "ExpectColumnMeanToBeBetween",
    "median_between": "ExpectColumnMedianToBeBetween",
    "max_between": "ExpectColumnMaxToBeBetween",
}
_LOCK = threading.RLock()
_CONTEXT: dict[str, Any] = {}
# GX 1.x imports these at module level for the KL-divergence and KS-test expectations and their
# charts, which no suite here uses: 0.68 s of its 1.8 s import (median of 3, this machine). While
# GX is imported they are bound as lazy modules that load on first attribute access, so
# anything that does use them later (in this process) still gets the real module. (Python
# 3.11's LazyLoader is not safe against two threads first touching one module at once; no code
# here touches these at all.)
GX_UNUSED_IMPORTS = ("scipy.stats", "altair")


class _DeferringFinder(importlib.abc.MetaPathFinder):
    """Finds `names` as usual, but with a loader that runs the module on first attribute use."""

    def __init__(self, names: tuple[str, ...]):
        self.names = frozenset(names)

    def find_spec(self, name, path, target=None):
        if name not in self.names:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = importlib.util.LazyLoader(spec.loader)
                return spec
        return None


@contextlib.contextmanager
def deferred_imports(names: tuple[str, ...] = GX_UNUSED_IMPORTS):
    """Within the block, a first import of `names` binds a lazy module (importlib's LazyLoader)."""
    finder = _DeferringFinder(names)
    sys.meta_path.insert(0, finder)
    try:
        yield
    finally:
        sys.meta_path.remove(finder)


@dataclass(frozen=True)
class Expect:
    """One expectation: kind (see _GX_CLASSES), a column and GX keyword arguments."""

    kind: str
    column: str
    kwargs: dict = field(default_factory=dict)
    label: str = ""  # what it means to the on-call engineer, e.g. "text present"

    def describe_expected(self) -> str:
        k = self.kwargs
        if self.kind == "not_null":
            what = "not null"
        elif self.kind == "unique":
            what = "unique"
        elif self.kind == "in_set":
            what = f"in {sorted(k.get('value_set', []), key=str)}"
        else:
            lo, hi = k.get("min_value"), k.get("max_value")
            subject = {"mean_between": "mean ", "median_between": "median ",
                       "max_between": "max "}.get(self.kind, "")
            what = (f"{subject}in [{_fmt(lo)}, {_fmt(hi)}]" if lo is not None and hi is not None
                    else f"{subject}>= {_fmt(lo)}" if lo is not None else f"{subject}<= {_fmt(hi)}")
        mostly = k.get("mostly")
        return f"{self.column} {what}" + (f" for >= {mostly:.1%} of rows" if mostly is not None else "")


@dataclass
class Outcome:
    """The result of one expectation."""

    expect: Expect
    success: bool
    element_count: int
    unexpected_count: int | None
    observed: Any  # observed_value for aggregate expectations, else the unexpected share
    offending: list[dict]

    @property
    def name(self) -> str:
        return f"expect_{self.expect.kind}({self.expect.column})"

    def observed_text(self) -> str:
        if self.unexpected_count is None:
            return _fmt(self.observed)
        share = self.unexpected_count / self.element_count if self.element_count else 0.0
        return f"{self.unexpected_count} of {self.element_count} rows unexpected ({share:.1%})"

    def as_dict(self) -> dict:
        return {"expectation": self.name, "label": self.expect.label, "success": self.success,
                "expected": self.expect.describe_expected(), "observed": self.observed_text(),
                "offending": self.offending}


@dataclass
class SuiteResult:
    suite: str
    outcomes: list[Outcome]
    seconds: float = 0.0

    @property
    def success(self) -> bool:
        return all(o.success for o in self.outcomes)

    @property
    def failed(self) -> list[Outcome]:
        return [o for o in self.outcomes if not o.success]

    def part(self, start: int, stop: int) -> "SuiteResult":
        """The outcomes of expectations start..stop-1: one validation can serve several
        checks (each validation hashes the whole dataframe, so fewer is faster)."""
        return SuiteResult(self.suite, self.outcomes[start:stop], self.seconds)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "nan"
        return f"{value:.4g}"
    return str(value)


def _json_safe(value: Any) -> Any:
    """numpy scalars and NaN out of GX results, so metadata and DuckDB JSON accept them."""
    if hasattr(value, "item") and not isinstance(value, (list, dict, str, bytes)):
        try:
            value = value.item()
        except (ValueError, AttributeError):
            value = str(value)
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, str) and len(value) > 160:
        return value[:157] + "..."
    return value


def gx_context():
    """The process-wide ephemeral GX context, with progress bars off."""
    with _LOCK:
        if "ctx" not in _CONTEXT:
            t0 = time.perf_counter()
            with deferred_imports():
                import great_expectations as gx
                from great_expectations.data_context.types.base import ProgressBarsConfig

            _CONTEXT["import_s"] = time.perf_counter() - t0

            ctx = gx.get_context(mode="ephemeral")
            ctx.variables.progress_bars = ProgressBarsConfig(globally=False)
            _CONTEXT["gx"] = gx
            _CONTEXT["ctx"] = ctx
            _CONTEXT["source"] = ctx.data_sources.add_pandas("kb_checks")
            _CONTEXT["batches"] = {}
        return _CONTEXT["ctx"]


def import_seconds() -> float:
    """Time this process spent importing GX and creating its context (0 before first use)."""
    return _CONTEXT.get("import_s", 0.0)


def _batch_definition(suite: str):
    gx_context()
    batches = _CONTEXT["batches"]
    if suite not in batches:
        asset = _CONTEXT["source"].add_dataframe_asset(name=suite)
        batches[suite] = asset.add_batch_definition_whole_dataframe(f"{suite}_whole")
    return batches[suite]


def validate(suite: str, df: pd.DataFrame, expectations: list[Expect],
             id_columns: list[str] | None = None, max_rows: int = 5) -> SuiteResult:
    """Validate `df` against `expectations`; offending rows carry `id_columns` values."""
    t0 = time.perf_counter()
    if not expectations:
        return SuiteResult(suite, [], 0.0)
    gx_context()
    gx = _CONTEXT["gx"]
    missing = [e.column for e in expectations if e.column not in df.columns]
    if missing:
        raise KeyError(f"suite {suite}: dataframe lacks columns {missing}")
    exps = [getattr(gx.expectations, _GX_CLASSES[e.kind])(column=e.column, **e.kwargs)
            for e in expectations]
    # GX's pandas `between` is vectorised only for int64/float64 columns (row by row in
    # Python otherwise: 0.3 s per 100k rows), and DuckDB INTEGER arrives as int32.
    narrow = {c: "int64" for c in df.columns if isinstance(df[c].dtype, np.dtype)
              and df[c].dtype.kind in "iu" and df[c].dtype != np.int64}
    if narrow:
        df = df.astype(narrow)
    ids = [c for c in (id_columns or []) if c in df.columns]
    result_format = {"result_format": "SUMMARY", "partial_unexpected_count": max_rows}
    if ids:
        result_format["unexpected_index_column_names"] = ids
    with _LOCK:
        batch = _batch_definition(suite).get_batch(batch_parameters={"dataframe": df})
        res = batch.validate(gx.ExpectationSuite(name=suite, expectations=exps),
                             result_format=result_format)
    outcomes = [_outcome(e, r, len(df), max_rows) for e, r in zip(expectations, res.results)]
    return SuiteResult(suite, outcomes, time.perf_counter() - t0)


def _outcome(expect: Expect, r, n_rows: int, max_rows: int) -> Outcome:
    result = r.result or {}
    if r.exception_info and r.exception_info.get("raised_exception"):
        msg = str(r.exception_info.get("exception_message", "expectation raised"))
        return Outcome(expect, False, n_rows, None, f"error: {msg[:200]}", [])
    if "observed_value" in result:
        return Outcome(expect, bool(r.success), n_rows, None,
                       _json_safe(result["observed_value"]), [])
    offending = result.get("partial_unexpected_index_list") or [
        {expect.column: v} for v in result.get("partial_unexpected_list") or []]
    return Outcome(expect, bool(r.success), int(result.get("element_count") or 0),
                   int(result.get("unexpected_count") or 0), None,
                   _json_safe(list(offending)[:max_rows]))
