"""The micro-batch job: every recipe asset, one process, one batch per run."""

from __future__ import annotations

from dagster import AssetSelection, define_asset_job, in_process_executor

from sysmon_assets.assets import GROUP, SERVING_GROUP

sysmon_batch_job = define_asset_job(
    name="sysmon_micro_batch",
    selection=AssetSelection.groups(GROUP, SERVING_GROUP),
    executor_def=in_process_executor,
    description="One micro-batch: ingest what landed, every recipe step in order, then the query database.",
)
