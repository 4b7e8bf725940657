"""inbox_sensor: files dropped into the inbox start one `kb_job` run once they have stopped
changing. Settings come from the environment of the process that loads the code (the
daemon's code server): KB_SENSOR_INTERVAL_S (default 30), KB_SENSOR_SETTLE_S (default 5),
KB_SENSOR_MAX_WAIT_S (default 600); KB_SENSOR=off makes it start stopped (switch it on in
the UI under Automation). The decision logic lives in inbox_state.py.

The daemon evaluates sensors on a 5 s loop: the cadence is KB_SENSOR_INTERVAL_S rounded up
to a multiple of 5 s (see daemon_interval)."""

import os
import time
from dataclasses import dataclass

from dagster import (
    DefaultSensorStatus,
    RunRequest,
    SensorEvaluationContext,
    SensorResult,
    sensor,
)

from resources.config import KBConfig

from .inbox_state import InboxCursor, evaluate_inbox

KB_JOB = "kb_job"
# A tick may wait this long for young files to settle instead of leaving them to the next
# tick (an interval later); longer settle times fall back to the next tick.
MAX_IN_TICK_WAIT_S = 10.0


def _env_float(name: str, default: float, minimum: float) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number of seconds") from None
    if value < minimum:
        raise ValueError(f"{name}={raw!r} must be at least {minimum:g} seconds")
    return value


@dataclass(frozen=True)
class SensorSettings:
    interval_s: int
    settle_s: float
    max_wait_s: float

    @classmethod
    def from_env(cls) -> "SensorSettings":
        return cls(interval_s=int(_env_float("KB_SENSOR_INTERVAL_S", 30, 1)),
                   settle_s=_env_float("KB_SENSOR_SETTLE_S", 5, 0),
                   max_wait_s=_env_float("KB_SENSOR_MAX_WAIT_S", 600, 0))


SETTINGS = SensorSettings.from_env()


def daemon_interval(interval_s: int) -> int:
    """Dagster's minimum interval for a wanted cadence. The daemon looks every 5 s and
    counts from the END of the previous tick (~0.2 s long), so a minimum of 30 would
    tick every 35 s; one second less ticks every 30 s (5 s for 5)."""
    return max(1, interval_s - 1)


@sensor(
    name="inbox_sensor",
    job_name=KB_JOB,
    minimum_interval_seconds=daemon_interval(SETTINGS.interval_s),
    default_status=(DefaultSensorStatus.STOPPED
                    if os.environ.get("KB_SENSOR", "").strip().lower() in {"off", "0", "false", "no"}
                    else DefaultSensorStatus.RUNNING),
    description=(f"Starts one kb_job run per new stable inbox state (new, changed or removed "
                 f"files, confirmed by content hash) every {SETTINGS.interval_s}s at most; "
                 f"files still being written wait until they settle."),
)
def inbox_sensor(context: SensorEvaluationContext, kb_config: KBConfig) -> SensorResult:
    settings = SensorSettings.from_env()
    cursor = InboxCursor.loads(context.cursor)
    ev = evaluate_inbox(kb_config.inbox_path, cursor, time.time(),
                        settle_s=settings.settle_s, max_wait_s=settings.max_wait_s)
    if ev.blocking and settings.settle_s <= MAX_IN_TICK_WAIT_S:
        # Look again, within this tick, once the young files are settle_s old. Evaluated
        # against the tick's own cursor, so only that age rule can settle them now: a
        # file written to meanwhile has a new mtime and keeps waiting.
        time.sleep(max(0.1, ev.settle_wait_s + 0.05))
        ev = evaluate_inbox(kb_config.inbox_path, cursor, time.time(),
                            settle_s=settings.settle_s, max_wait_s=settings.max_wait_s)
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
