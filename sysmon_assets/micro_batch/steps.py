"""One micro-batch of the recipe: ingest landed lines, then run each SQL model's step.

Plain Python with no Dagster in it, so tests, the benchmark and the Dagster assets all run
the same code. Every step is one lake transaction (see :mod:`dbt_like.runner`), whose snapshot is
labelled with its batch and step; the last step's marks the batch complete, the boundary readers see.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from dbt_like import Project, StepResult
from sysmon_assets.hunting.sigma import RuleSet, load_rule_set
from sysmon_assets.micro_batch.ingest import chunk_bytes_for, ingest
from sysmon_assets.micro_batch.recipe_project import build_project
from sysmon_assets.settings import Settings
from sysmon_assets.sinks.kafka_sink import JoinSink, Published
from sysmon_assets.storage.lake_connections import Connect, LakeConnections


def utc_now() -> datetime:
    """The current UTC time as a naive timestamp (how DuckDB TIMESTAMP columns hold UTC here)."""
    return datetime.now(UTC).replace(tzinfo=None)


def naive_utc(time: datetime) -> datetime:
    """``time`` as a naive UTC timestamp: one with an offset converted, a naive one taken as UTC. An aware time
    would go into the lake's TIMESTAMP columns in the session's time zone (the host's), or lose its offset in a
    TIMESTAMP literal."""
    return time.astimezone(UTC).replace(tzinfo=None) if time.tzinfo else time


class SysmonPipeline:
    """The recipe's models over one lake and one landing folder (or Kafka topic); with ``SYSMON_SHARDS`` > 1,
    shard ``shard``'s part of them. ``project``: the recipe's project for these settings and shard (by default
    a new one; the Dagster resource passes the process's shared one). ``chunk_bytes``: the ingest's chunk size
    (by default, from the connection's memory limit: :func:`~sysmon_assets.micro_batch.ingest.chunk_bytes_for`)."""

    def __init__(
        self,
        settings: Settings,
        connect: Connect | None = None,
        chunk_bytes: int | None = None,
        shard: int = 0,
        project: Project | None = None,
    ) -> None:
        self.settings = settings
        self.project = project if project is not None else build_project(settings, shard)
        self.shard = self.project.shard
        self.connect = connect or LakeConnections(settings)
        self.chunk_bytes = chunk_bytes
        self.last_batch_id: int | None = None

    def sigma_rules(self) -> RuleSet:
        """The Sigma rule set the detections step runs (converted once per content; then from memory or cache)."""
        return load_rule_set(self.settings.sigma_rules, self.settings.sigma_cache_dir)

    def run_model(self, name: str, run_key: str, batch_time: datetime | None = None) -> list[StepResult]:
        """Run one model's step for the batch of ``run_key`` (created by the first step that asks; ``batch_time``: its
        clock, by default now, UTC unless it has an offset). A model fed
        by a ``source()`` reads the configured source: that step is the ingest. A step the lake, as the batch
        opened, shows to have nothing to do opens no connection."""
        opened = self.project.opened_batch(run_key)
        if opened and (quiet := self.project.quiet_step(name, opened)) is not None:
            self.last_batch_id = opened.batch_id
            return quiet
        with self.connect() as con:
            batch = self.project.open_batch(con, run_key, naive_utc(batch_time) if batch_time else utc_now())
            self.last_batch_id = batch.batch_id
            if self.project.models[name].sources:
                chunk = chunk_bytes_for(con) if self.chunk_bytes is None else self.chunk_bytes
                return ingest(con, self.project, name, batch, self.settings, chunk)
            return self.project.run_step(con, name, batch)

    def publish_join(self) -> Published:
        """Send the ``sysmon_join`` rows committed since the last publish to the Kafka sink topic."""
        with self.connect() as con:
            return JoinSink(self.settings).publish(con)

    def run_batch(self, run_key: str | None = None, batch_time: datetime | None = None) -> dict[str, list[StepResult]]:
        """One whole micro-batch: every recipe model in dependency order, then the Kafka sink (when configured)."""
        run_key = run_key or f"batch-{uuid.uuid4()}"
        results = {name: self.run_model(name, run_key, batch_time) for name in self.project.primary_models()}
        if self.settings.kafka_sink:
            self.publish_join()
        return results
