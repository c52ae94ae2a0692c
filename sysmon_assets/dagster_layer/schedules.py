"""A micro-batch every minute (of every shard) and lake upkeep every ten minutes (switch them on in the UI or with
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


# Every ten minutes, not every hour: each batch adds about ten small files, and every step's catalog work grows with
# the file lists of the tables it reads, so an hour of batches ends about 0.8 s slower than it began; merged every
# ten batches they stay flat, and batches plus merges take less time in all (bench/README.md, "Steady"). At minutes
# 7, 17, ...: a batch and maintenance queue in the writer's pool anyway.
maintenance_every_10_minutes = ScheduleDefinition(
    name="lake_maintenance_every_10_minutes",
    job=lake_maintenance,
    cron_schedule="7-59/10 * * * *",
    default_status=DefaultScheduleStatus.STOPPED,
    description="Merges small files, expires old snapshots and deletes unreferenced files, every ten minutes.",
)
