"""A micro-batch every minute (of every shard) and lake upkeep every hour (switch them on in the UI or with
``dagster schedule start``)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from dagster import (
    DefaultScheduleStatus,
    RunRequest,
    ScheduleDefinition,
    ScheduleEvaluationContext,
    schedule,
)

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from sysmon_assets.dagster_layer.jobs import lake_maintenance
from sysmon_assets.micro_batch.shards import partition_keys


def every_minute(job: UnresolvedAssetJobDefinition, shards: int = 1) -> ScheduleDefinition:
    """A batch every minute; with shards, one run per shard."""

    @schedule(
        name="sysmon_every_minute",
        job=job,
        cron_schedule="* * * * *",
        default_status=DefaultScheduleStatus.STOPPED,
        description="Runs one micro-batch every minute" + (" of every shard." if shards > 1 else "."),
    )
    def sysmon_every_minute(context: ScheduleEvaluationContext) -> list[RunRequest]:
        if shards == 1:
            return [RunRequest()]
        tick = context.scheduled_execution_time
        return [RunRequest(run_key=f"{tick}/{key}", partition_key=key) for key in partition_keys(shards)]

    return sysmon_every_minute


hourly_maintenance = ScheduleDefinition(
    name="lake_maintenance_hourly",
    job=lake_maintenance,
    cron_schedule="17 * * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Merges small files, expires old snapshots and deletes unreferenced files, every hour.",
)
