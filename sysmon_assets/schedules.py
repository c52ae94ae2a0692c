"""A micro-batch every minute (switch it on in the UI or with ``dagster schedule start``)."""

from __future__ import annotations

from dagster import DefaultScheduleStatus, ScheduleDefinition

from sysmon_assets.jobs import sysmon_batch_job

every_minute = ScheduleDefinition(
    name="sysmon_every_minute",
    job=sysmon_batch_job,
    cron_schedule="* * * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Runs one micro-batch every minute.",
)
