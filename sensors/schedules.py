"""The fine-tuning chain is too slow to follow every file drop: it runs on a schedule
(nightly by default) and that schedule starts STOPPED unless KB_FT_SCHEDULE=on. Cron and
timezone come from KB_FT_SCHEDULE_CRON (default "0 2 * * *") and KB_FT_SCHEDULE_TZ
(default UTC). It starts `all_job`: refresh the KB, then the dataset, model and eval."""

from dagster import DefaultScheduleStatus, ScheduleDefinition

from kb_core import settings

FT_JOB = "all_job"


def build_fine_tune_schedule() -> ScheduleDefinition:
    """The schedule, from the environment of the process building the definitions."""
    cron, tz = settings.get("KB_FT_SCHEDULE_CRON"), settings.get("KB_FT_SCHEDULE_TZ")
    return ScheduleDefinition(
        name="nightly_fine_tune",
        job_name=FT_JOB,
        cron_schedule=cron,
        execution_timezone=tz,
        default_status=(DefaultScheduleStatus.RUNNING if settings.get("KB_FT_SCHEDULE")
                        else DefaultScheduleStatus.STOPPED),
        tags={"kb/trigger": "schedule"},
        description=f"Refresh the KB and re-run fine-tuning ({cron} {tz}); "
                    "stopped unless KB_FT_SCHEDULE=on or switched on in the UI.",
    )
