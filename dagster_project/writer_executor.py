"""The executor of every run launched by the daemon or the UI: all steps in one process,
inside the same KB writer file lock that `kb build` takes.

Why an executor: the lock must cover a whole run, whichever assets it selects (a UI
"Materialize all" uses Dagster's implicit asset job, which carries no run tags), and it must
be taken by the process that writes. The executor is the one piece every launched run passes
through, once, in its run worker. `execute_in_process` (`kb build`, the tests) never uses
it: `kb build` takes the lock itself (kb_core/writer_lock.py). In one process the
steps also skip re-importing torch per step (measured ~3 s instead of ~10 s per step)."""

from __future__ import annotations

import time
from collections.abc import Iterator

from dagster import executor
from dagster._core.definitions.executor_definition import (  # pinned dagster==1.13.27
    IN_PROC_CONFIG,
    _core_in_process_executor_creation,
)
from dagster._core.events import DagsterEvent, EngineEventData
from dagster._core.executor.in_process import InProcessExecutor

from kb_core.paths import Paths
from kb_core.writer_lock import writer_lock, writer_lock_path


class WriterLockedExecutor(InProcessExecutor):
    def execute(self, plan_context, execution_plan) -> Iterator[DagsterEvent]:
        paths = Paths.from_env()
        lock_file = writer_lock_path(paths.home)
        yield DagsterEvent.engine_event(
            plan_context, f"Taking the KB writer lock {lock_file} (waits while another run "
                          "or `kb build` writes the knowledge base)", EngineEventData())
        t0 = time.monotonic()
        with writer_lock(paths.home):
            yield DagsterEvent.engine_event(
                plan_context, f"Holding the KB writer lock (waited {time.monotonic() - t0:.1f}s)",
                EngineEventData())
            yield from super().execute(plan_context, execution_plan)


@executor(name="kb_writer_in_process", config_schema=IN_PROC_CONFIG)
def kb_writer_executor(init_context) -> WriterLockedExecutor:
    """In-process execution under the KB writer lock (see module docstring)."""
    base = _core_in_process_executor_creation(init_context.executor_config)
    return WriterLockedExecutor(retries=base.retries,
                                step_dependency_config=base.step_dependency_config)
