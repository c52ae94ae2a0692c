"""Dagster definitions: the recipe's assets, the micro-batch job, its schedule and sensor.

``dagster asset materialize -m sysmon_assets.definitions --select '*'`` runs one micro-batch
with ``SYSMON_LANDING_DIR`` and the lake settings (``SYSMON_DATA_DIR``, ``SYSMON_LAKE_CATALOG``,
``SYSMON_LAKE_DATA_PATH``) from the environment.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from dagster import Definitions, in_process_executor

from sysmon_assets.dagster_layer.assets import build_assets
from sysmon_assets.dagster_layer.jobs import batch_job, lake_maintenance
from sysmon_assets.dagster_layer.resources import resources_from_settings
from sysmon_assets.dagster_layer.schedules import every_minute, maintenance_every_10_minutes
from sysmon_assets.dagster_layer.sensors import landing_sensor
from sysmon_assets.micro_batch.recipe_project import ingest_model, shared_project
from sysmon_assets.settings import Settings


def build_definitions(settings: Settings, environ: Mapping[str, str] | None = None) -> Definitions:
    """Definitions for ``settings`` (tests build their own; the module builds from the environment). The resource
    holds each text setting read from a variable of ``environ`` as that variable, not its value."""
    project = shared_project(settings)  # the runs' pipelines in this process use the same one
    job = batch_job(settings.shards)
    return Definitions(
        assets=build_assets(project, settings.kafka_sink_topic if settings.kafka_sink else None, settings.shards),
        jobs=[job, lake_maintenance],
        schedules=[every_minute(job, settings.shards), maintenance_every_10_minutes],
        sensors=[landing_sensor(job, ingest_model(project))],
        resources=resources_from_settings(settings, environ),
        # Steps run one after another in one process, on cursors of the run's one lake connection.
        executor=in_process_executor,
    )


defs = build_definitions(Settings.from_env(), os.environ)
