"""The fine-tuning chain is too slow to follow every file drop: it runs on a schedule
(nightly by default) and that schedule starts STOPPED unless KB_FT_SCHEDULE=on. Cron and
timezone come from KB_FT_SCHEDULE_CRON (default "0 2 * * *") and KB_FT_SCHEDULE_TZ
(default UTC). It starts `all_job`: refresh the KB, then the dataset, model and eval."""

import os

from dagster import DefaultScheduleStatus, ScheduleDefinition

FT_JOB = "all_job"
ENABLED_VALUES = {"1", "on", "true", "yes", "running"}


def _enabled() -> bool:
    return os.environ.get("KB_FT_SCHEDULE", "").strip().lower() in ENABLED_VALUES


CRON = os.environ.get("KB_FT_SCHEDULE_CRON", "").strip() or "0 2 * * *"
TIMEZONE = os.environ.get("KB_FT_SCHEDULE_TZ", "").strip() or "UTC"

nightly_fine_tune = ScheduleDefinition(
    name="nightly_fine_tune",
    job_name=FT_JOB,
    cron_schedule=CRON,
    execution_timezone=TIMEZONE,
    default_status=DefaultScheduleStatus.RUNNING if _enabled() else DefaultScheduleStatus.STOPPED,
    tags={"kb/trigger": "schedule"},
    description=f"Refresh the KB and re-run fine-tuning ({CRON} {TIMEZONE}); "
                "stopped unless KB_FT_SCHEDULE=on or switched on in the UI.",
)
