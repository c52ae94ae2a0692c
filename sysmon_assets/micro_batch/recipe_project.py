"""The recipe's SQL models (``sql/``) as a :class:`dbt_like.Project`, built once per process.

Parsing and configuring the models takes 0.4 to 0.5 s (every model's render runs the macro files too), and a
Dagster process needs them twice: for the Definitions (one asset per model) and for the run's pipeline.
:func:`shared_project` builds them once for both.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path

import duckdb

from dbt_like import Batch, Project, Shard
from sysmon_assets.settings import Settings
from sysmon_assets.sources import kafka_source, landing_folder
from sysmon_assets.storage import lake, maintenance

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"


def build_project(settings: Settings, shard: int = 0) -> Project:
    """A new project of the recipe's models for ``settings``, as shard ``shard`` of ``settings.shards``. Every step
    labels its lake snapshot with its batch and step; the last step's marks the batch complete, the boundary
    readers see."""
    owner = Shard(shard, settings.shards)

    def label_snapshot(con: duckdb.DuckDBPyConnection, model: str, batch: Batch) -> None:
        last_step = project.primary_models()[-1]
        note = {"batch_id": batch.batch_id, "step": model, "batch_complete": model == last_step}
        if owner.count > 1:
            note["shard"] = owner.index
        lake.commit_note(con, note)

    project = Project(
        SQL_DIR,
        settings.variables(),
        commit_note=label_snapshot,
        shard=owner,
        state_ddl=landing_folder.STATE_DDL + kafka_source.STATE_DDL + maintenance.RETENTION_DDL,
    )
    return project


def shared_project(settings: Settings, shard: int = 0) -> Project:
    """The process's one project for ``settings`` and ``shard``, shared by the Definitions and every Dagster run's
    pipeline. What it remembers between steps (the batches it opened, the tables it found) is about the one lake
    ``settings`` names, so sharing it is as safe as one pipeline running batch after batch."""
    return _built(settings, shard)  # one cache key however the caller passes the shard


@cache
def _built(settings: Settings, shard: int) -> Project:
    return build_project(settings, shard)


def ingest_model(project: Project) -> str:
    """The asset the source feeds (``source('landed_lines')``): its step is a batch's ingest."""
    (name,) = [name for name in project.primary_models() if project.models[name].sources]
    return name
