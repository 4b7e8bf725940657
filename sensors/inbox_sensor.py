"""inbox_sensor: files dropped into the inbox start one `kb_job` run once they have stopped
changing. Settings come from the environment of the process that loads the code (the
daemon's code server): KB_SENSOR_INTERVAL_S (default 30), KB_SENSOR_SETTLE_S (default 5),
KB_SENSOR_MAX_WAIT_S (default 600); KB_SENSOR=off makes it start stopped (switch it on in
the UI under Automation). The decision logic lives in inbox_state.py.

The daemon evaluates sensors on a 5 s loop: the cadence is KB_SENSOR_INTERVAL_S rounded up
to a multiple of 5 s (see daemon_interval)."""

import time
from dataclasses import dataclass

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from kb_core import settings
from resources.config import KBConfig

from .inbox_state import InboxCursor, evaluate_inbox

KB_JOB = "kb_job"
# A tick may wait this long for young files to settle instead of leaving them to the next
# tick (an interval later); longer settle times fall back to the next tick.
MAX_IN_TICK_WAIT_S = 10.0


@dataclass(frozen=True)
class SensorSettings:
    interval_s: int
    settle_s: float
    max_wait_s: float

    @classmethod
    def from_env(cls) -> "SensorSettings":
        return cls(interval_s=int(settings.get("KB_SENSOR_INTERVAL_S")),
                   settle_s=settings.get("KB_SENSOR_SETTLE_S"),
                   max_wait_s=settings.get("KB_SENSOR_MAX_WAIT_S"))


def daemon_interval(interval_s: int) -> int:
    """Dagster's minimum interval for a wanted cadence. The daemon looks every 5 s and
    counts from the END of the previous tick (~0.2 s long), so a minimum of 30 would
    tick every 35 s; one second less ticks every 30 s (5 s for 5)."""
    return max(1, interval_s - 1)


def build_inbox_sensor() -> SensorDefinition:
    """The sensor, with its cadence and default status from the environment of the process
    building the definitions (read here, not at import)."""
    interval_s = SensorSettings.from_env().interval_s
    return sensor(
        name="inbox_sensor",
        job_name=KB_JOB,
        minimum_interval_seconds=daemon_interval(interval_s),
        default_status=(DefaultSensorStatus.RUNNING if settings.enabled("KB_SENSOR")
                        else DefaultSensorStatus.STOPPED),
        description=(f"Starts one kb_job run per new stable inbox state (new, changed or "
                     f"removed files, confirmed by content hash) every {interval_s}s at most; "
                     f"files still being written wait until they settle."),
    )(inbox_tick)


def inbox_tick(context: SensorEvaluationContext, kb_config: KBConfig) -> SensorResult:
    """One tick: request a run for a new stable inbox state."""
    tick = SensorSettings.from_env()
    cursor = InboxCursor.loads(context.cursor)
    ev = evaluate_inbox(kb_config.inbox_path, cursor, time.time(),
                        settle_s=tick.settle_s, max_wait_s=tick.max_wait_s)
    if ev.blocking and tick.settle_s <= MAX_IN_TICK_WAIT_S:
        # Look again, within this tick, once the young files are settle_s old. Evaluated
        # against the tick's own cursor, so only that age rule can settle them now: a
        # file written to meanwhile has a new mtime and keeps waiting.
        time.sleep(max(0.1, ev.settle_wait_s + 0.05))
        ev = evaluate_inbox(kb_config.inbox_path, cursor, time.time(),
                            settle_s=tick.settle_s, max_wait_s=tick.max_wait_s)
    if ev.settling:
        context.log.info(f"settling (not ingested yet): {', '.join(ev.settling[:10])}")
    if ev.run_key is None:
        return SensorResult(skip_reason=ev.skip_reason(), cursor=ev.cursor.dumps())
    context.log.info(f"inbox state {ev.state[:12]}: {ev.summary()}; requesting {KB_JOB}")
    request = RunRequest(run_key=ev.run_key, tags={
        "kb/trigger": "inbox_sensor",
        "kb/inbox_state": ev.state[:16],
        "kb/inbox_changes": ev.summary(),
    })
    return SensorResult(run_requests=[request], cursor=ev.cursor.dumps())
