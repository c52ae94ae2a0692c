"""A micro-batch every minute and lake upkeep every hour (switch them on in the UI or with
``dagster schedule start``)."""

from __future__ import annotations

from dagster import DefaultScheduleStatus, ScheduleDefinition

from sysmon_assets.jobs import lake_maintenance, sysmon_batch_job

every_minute = ScheduleDefinition(
    name="sysmon_every_minute",
    job=sysmon_batch_job,
    cron_schedule="* * * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Runs one micro-batch every minute.",
)

hourly_maintenance = ScheduleDefinition(
    name="lake_maintenance_hourly",
    job=lake_maintenance,
    cron_schedule="17 * * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Merges small files, expires old snapshots and deletes unreferenced files, every hour.",
)
