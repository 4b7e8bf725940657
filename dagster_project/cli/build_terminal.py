"""What `kb build` and `kb finetune` show while they run, on stderr (stdout keeps the
summary, or the JSON): one line per step with its outcome and duration, progress bars for
long steps, the steps' warnings. Dagster's event stream still goes to the instance (the UI
shows it) and to the terminal only with --verbose; MLflow's database-setup lines and
third-party warnings are silenced unless --verbose."""

from __future__ import annotations

import logging
import os
import sys
import time
import warnings
from contextlib import contextmanager
from dataclasses import dataclass, field

from kb_core import progress

STEP_EVENTS = {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "STEP_SKIPPED",
               "ASSET_CHECK_EVALUATION"}
PLAIN_PROGRESS_EVERY_S = 30.0  # not a TTY: at most one progress line per task this often


def terminal_stream():
    """The terminal's stderr, bypassing Dagster's compute-log capture: during a run Dagster
    redirects file descriptor 2 into the run's log files, and whatever sits in its pipe when
    the run ends can be lost (the last step's line was). A duplicate of the descriptor taken
    before the run keeps pointing at the terminal. Under a test's captured sys.stderr (no
    descriptor 2), that object itself."""
    try:
        if sys.stderr.fileno() == 2:
            return os.fdopen(os.dup(2), "w", buffering=1, encoding="utf-8", errors="replace")
    except (AttributeError, OSError, ValueError):
        pass
    return sys.stderr


@dataclass
class StepState:
    started: float | None = None
    passed: int = 0
    warned: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def step_line(step: str, outcome: str, seconds: float | None, state: StepState,
              detail: str = "") -> str:
    """`  ok       raw_docs_quality        4.8s  6 checks passed` (pure: tested directly)."""
    notes = []
    n_checks = state.passed + len(state.warned) + len(state.failed)
    if n_checks:
        parts = [f"{state.passed} passed"]
        if state.warned:
            parts.append(f"{len(state.warned)} warning{'s' * (len(state.warned) > 1)} "
                         f"({', '.join(state.warned)})")
        if state.failed:
            parts.append(f"{len(state.failed)} FAILED ({', '.join(state.failed)})")
        notes.append(f"checks: {', '.join(parts)}")
    if detail:
        notes.append(detail)
    took = f"{seconds:.1f}s" if seconds is not None else ""
    return f"  {outcome:<8} {step:<30} {took:>7}  {'; '.join(notes)}".rstrip()


class StepPrinter:
    """Turns Dagster events into one line per finished step (and collects warnings)."""

    def __init__(self, stream=None, header: str = "") -> None:
        self.stream = stream or sys.stderr
        self.header = header  # printed with the first event: a settings error comes alone
        self.steps: dict[str, StepState] = {}
        self.warnings: list[str] = []

    def _print(self, line: str) -> None:
        with progress_paused():
            print(line, file=self.stream, flush=True)

    def event(self, ev) -> None:
        if self.header:
            self._print(self.header)
            self.header = ""
        kind, key = ev.event_type_value, ev.step_key
        if kind not in STEP_EVENTS or not key:
            return
        st = self.steps.setdefault(key, StepState())
        if kind == "STEP_START":
            st.started = time.monotonic()
        elif kind == "ASSET_CHECK_EVALUATION":
            data = ev.event_specific_data
            if data.passed:
                st.passed += 1
            elif data.severity.value == "WARN":
                st.warned.append(data.check_name)
            else:
                st.failed.append(data.check_name)
        elif kind == "STEP_SUCCESS":
            ms = getattr(ev.event_specific_data, "duration_ms", None)
            secs = ms / 1000 if ms is not None else self._elapsed(st)
            outcome = "FAILED" if st.failed else ("warn" if st.warned else "ok")
            self._print(step_line(key, outcome, secs, st))
        elif kind == "STEP_FAILURE":
            err = ev.event_specific_data.error
            msg = err.cause.message if err and err.cause else (err.message if err else "")
            last = msg.strip().splitlines()[-1] if msg.strip() else ""
            self._print(step_line(key, "FAILED", self._elapsed(st), st, last))
        elif kind == "STEP_SKIPPED":
            self._print(step_line(key, "skipped", None, st, "an upstream step or blocking "
                                                              "check failed"))

    @staticmethod
    def _elapsed(st: StepState) -> float | None:
        return time.monotonic() - st.started if st.started is not None else None

    def log_record(self, record: logging.LogRecord) -> None:
        meta = getattr(record, "dagster_meta", None) or {}
        ev = meta.get("dagster_event") or getattr(record, "dagster_event", None)
        if ev is not None:
            self.event(ev)
        elif record.levelno >= logging.WARNING:
            step = meta.get("step_key") or ""
            text = meta.get("orig_message") or record.getMessage()
            self.warnings.append(f"{step}: {text}" if step else text)


class _Handler(logging.Handler):
    def __init__(self, printer: StepPrinter) -> None:
        super().__init__(level=logging.DEBUG)
        self.printer = printer

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.printer.log_record(record)
        except Exception:  # the terminal must never fail the run
            pass


def terminal_logger_def(printer: StepPrinter):
    """A Dagster logger that feeds `printer` (events arrive as log records)."""
    from dagster import logger

    @logger(description="kb build's terminal lines")
    def kb_terminal(_init_context):
        lg = logging.Logger("kb_terminal", level=logging.DEBUG)
        lg.addHandler(_Handler(printer))
        return lg

    return kb_terminal


@contextmanager
def third_party_quiet(verbose: bool):
    """MLflow's db-setup INFO lines, its CloudPickle WARNING, alembic and library warnings
    off for the build (unless verbose). Set before MLflow is imported: it reads the level
    from MLFLOW_LOGGING_LEVEL when it configures its logger."""
    if verbose:
        if os.environ.get("MLFLOW_LOGGING_LEVEL") == "WARNING":  # kb's default, not the user's
            os.environ["MLFLOW_LOGGING_LEVEL"] = "INFO"
        yield
        return
    if os.environ.get("MLFLOW_LOGGING_LEVEL", "WARNING").upper() == "WARNING":
        os.environ["MLFLOW_LOGGING_LEVEL"] = "ERROR"  # its CloudPickle warning is not for users
    levels = {}
    for name in ("mlflow", "alembic", "py.warnings", "transformers", "sentence_transformers"):
        lg = logging.getLogger(name)
        levels[name] = lg.level
        lg.setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            yield
        finally:
            for name, level in levels.items():
                logging.getLogger(name).setLevel(level)


# --- progress bars -------------------------------------------------------------------------

_active: "ProgressRenderer | None" = None


@contextmanager
def progress_paused():
    """Print a line without tearing a progress bar."""
    bars = _active.bars if _active is not None else {}
    if bars:
        from tqdm import tqdm

        with tqdm.external_write_mode(file=_active.stream):
            yield
    else:
        yield


class ProgressRenderer:
    """kb_core.progress reporter: tqdm bars on a TTY; otherwise a plain line per task at most
    every PLAIN_PROGRESS_EVERY_S seconds (a task shorter than that prints nothing)."""

    def __init__(self, stream=None, tty: bool | None = None,
                 every_s: float = PLAIN_PROGRESS_EVERY_S, clock=time.monotonic) -> None:
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty() if tty is None else tty
        self.every_s, self.clock = every_s, clock
        self.bars: dict[str, object] = {}
        self.plain: dict[str, tuple[float, float]] = {}  # task -> (started, last printed)

    def __call__(self, task: str, done: int, total: int, unit: str) -> None:
        if self.tty:
            self._bar(task, done, total, unit)
        else:
            self._plain(task, done, total, unit)

    def _bar(self, task, done, total, unit) -> None:
        from tqdm import tqdm

        bar = self.bars.get(task)
        if bar is None:
            bar = self.bars[task] = tqdm(total=total, desc=f"  {task}", unit=f" {unit}".rstrip()
                                         or "it", file=self.stream, leave=False,
                                         dynamic_ncols=True)
        bar.total = total
        bar.update(done - bar.n)  # tqdm redraws at most every mininterval
        if done >= total:
            bar.close()
            del self.bars[task]

    def _plain(self, task, done, total, unit) -> None:
        now = self.clock()
        started, last = self.plain.setdefault(task, (now, now))
        if done >= total:
            self.plain.pop(task, None)
            if now - started < self.every_s:
                return
        elif now - last < self.every_s:
            return
        else:
            self.plain[task] = (started, now)
        pct = 100 * done / total
        print(f"  ...      {task}: {done}/{total} {unit} ({pct:.0f}%, {now - started:.0f}s)",
              file=self.stream, flush=True)

    def close(self) -> None:
        for bar in self.bars.values():
            bar.close()
        self.bars.clear()


@contextmanager
def progress_shown(stream=None):
    global _active
    renderer = ProgressRenderer(stream)
    _active, previous = renderer, progress.set_reporter(renderer)
    try:
        yield renderer
    finally:
        progress.set_reporter(previous)
        renderer.close()
        _active = None
