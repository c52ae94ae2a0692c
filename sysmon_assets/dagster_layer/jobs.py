"""The jobs: one micro-batch (every asset, one process), and the lake's upkeep."""

from typing import TYPE_CHECKING

from dagster import (
    AssetSelection,
    OpExecutionContext,
    define_asset_job,
    in_process_executor,
    job,
    op,
)

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from sysmon_assets.dagster_layer.resources import SysmonPipelineResource
from sysmon_assets.micro_batch.steps import utc_now
from sysmon_assets.sinks.kafka_sink import JOIN_TABLE, unpublished_rows
from sysmon_assets.storage import maintenance
from sysmon_assets.storage.lake import open_lake

# An unsharded pipeline's assets are in this pool; instance/dagster.yaml gives it one slot for a whole run, so that
# every run that materializes them (this job's, the asset graph's "Materialize all", the schedule's, the sensor's)
# waits in the run queue for the one before: a writer's batches must commit in order. A shard's runs carry their
# partition's tag instead, which the queue allows one run at a time each, so different shards run side by side.
WRITER_POOL = "sysmon_lake_writer"


def batch_job(shards: int = 1) -> "UnresolvedAssetJobDefinition":
    """One micro-batch: every asset in one process; with shards, of one shard (its partition)."""
    return define_asset_job(
        name="sysmon_micro_batch",
        # every model of every group: the batch is complete for readers only once its last model has committed
        selection=AssetSelection.all(),
        executor_def=in_process_executor,
        description="One micro-batch: ingest what landed, then every model's step in order"
        + (" (of the shard its partition names)." if shards > 1 else "."),
    )


# In the writer's pool: a batch whose transaction began before maintenance moved the bookkeeping rows out of the
# catalog reads those tables as empty (DuckLake 0.3), so the two do not run at once.
@op(
    description="Merge small files, expire snapshots past the retention, delete unreferenced files, drop old events.",
    pool=WRITER_POOL,
)
def maintain_lake(context: OpExecutionContext, sysmon: SysmonPipelineResource) -> None:
    """The op behind ``lake_maintenance``; figures go to the run's metadata."""
    settings = sysmon.settings()
    with open_lake(settings, read_only=True):  # a folder without a lake (a typo) is an error, not a new empty lake
        pass
    pipeline = sysmon.pipeline()
    with pipeline.connect() as con:
        sink_waits = settings.kafka_sink and settings.event_retention_days
        kept = {JOIN_TABLE: unpublished_rows(con, settings.kafka_sink_topic)} if sink_waits else None
        upkeep = maintenance.maintain(
            con,
            utc_now(),
            settings.snapshot_retention_days,
            settings.event_retention_days or None,
            project=pipeline.project,
            kept=kept,
        )
    context.add_output_metadata(
        {
            "data_files_before": sum(upkeep.files_before.values()),
            "data_files_after": sum(upkeep.files_after.values()),
            "files_deleted": upkeep.files_deleted,
            "rows_dropped": sum(upkeep.rows_dropped.values()),
        }
    )
    context.log.info(f"lake maintenance: {upkeep}")


@job(description="Lake upkeep (merge, expire, clean up, retention); scheduled every ten minutes.")
def lake_maintenance() -> None:
    maintain_lake()
