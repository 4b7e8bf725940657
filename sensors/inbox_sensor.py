"""inbox_sensor: files dropped into the inbox start one `kb_job` run once they have stopped
changing. Settings come from the environment of the process that loads the code (the
daemon's code server): KB_SENSOR_INTERVAL_S (default 30), KB_SENSOR_SETTLE_S (default 5),
KB_SENSOR_MAX_WAIT_S (default 600); KB_SENSOR=off makes it start stopped (switch it on in
the UI under Automation). The decision logic lives in inbox_state.py.

Dagster's sensor daemon loops every 5 s and measures the interval from the end of the
previous tick, so the effective cadence is the interval rounded up to the next 5 s loop
(30 -> 35 s, 5 -> 10 s, 4 -> 5 s)."""

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


@sensor(
    name="inbox_sensor",
    job_name=KB_JOB,
    minimum_interval_seconds=SETTINGS.interval_s,
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
        # Look again settle_s later within this tick: a file whose size and mtime held
        # still meanwhile has settled (the same two-observation rule as across ticks).
        time.sleep(settings.settle_s)
        ev = evaluate_inbox(kb_config.inbox_path, ev.cursor, time.time(),
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
