"""The Dagster resource that gives assets the pipeline, configured from the environment."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from dagster import ConfigurableResource, InitResourceContext
from dagster_duckdb import DuckDBResource
from pydantic import Field, PrivateAttr

from sysmon_assets import lake
from sysmon_assets.pipeline import LakeConnections, SysmonPipeline
from sysmon_assets.settings import Settings

# Settings fields the resource carries as they are (paths need converting, so they are listed apart).
PLAIN_SETTINGS = (
    "offset_reset",
    "join_mode",
    "join_grace_minutes",
    "max_line_bytes",
    "join_coverage_warn",
    "freshness_minutes",
    "snapshot_retention_days",
    "event_retention_days",
    "source",
    "kafka_bootstrap",
    "kafka_topic",
    "kafka_group",
    "kafka_max_messages",
    "kafka_max_bytes",
    "kafka_sink",
    "kafka_sink_topic",
    "shards",
)


class SysmonPipelineResource(ConfigurableResource):
    """Where the events come from (landing folder or Kafka), the lake, and how batches join."""

    duckdb: DuckDBResource
    landing_dir: str = Field(description="folder Winlogbeat's file output writes NDJSON into")
    data_dir: str = Field(default="data", description="folder the embedded default keeps the lake in")
    lake_catalog: str | None = Field(default=None, description="DuckLake catalog: sqlite:PATH or postgres:DSN")
    lake_data_path: str | None = Field(default=None, description="where the lake's Parquet files go (s3:// too)")
    offset_reset: str = Field(default="earliest", description="'earliest' or 'latest', as KSQL's auto.offset.reset")
    join_mode: str = Field(default="default", description="'default' or 'ksql' (strict recipe parity)")
    join_grace_minutes: int = Field(default=15, description="how long a connection waits for its process create")
    max_line_bytes: int = Field(default=1024 * 1024, description="longer lines are rejected without parsing")
    join_coverage_warn: float = Field(default=0.25, description="join coverage below this warns")
    freshness_minutes: int = Field(default=60, description="warn when nothing landed for this long")
    snapshot_retention_days: float = Field(default=7.0, description="lake snapshots kept for time travel")
    event_retention_days: float = Field(default=0.0, description="drop events older than this (0: keep)")
    batch_time: str | None = Field(default=None, description="fixed batch clock (ISO UTC) for replays and tests")
    source: str = Field(default="files", description="'files' (the landing folder) or 'kafka'")
    kafka_bootstrap: str | None = Field(default=None, description="Kafka bootstrap servers, host:port[,host:port]")
    kafka_topic: str = Field(default="winlogbeat", description="topic Winlogbeat's output.kafka writes")
    kafka_group: str = Field(default="sysmon-assets", description="consumer group (offsets for monitoring)")
    kafka_partitions: list[int] | None = Field(default=None, description="partitions to read (default: all)")
    kafka_max_messages: int = Field(default=200_000, description="per partition per batch")
    kafka_max_bytes: int = Field(default=256 * 1024 * 1024, description="per partition per batch")
    kafka_sink: bool = Field(default=False, description="publish sysmon_join rows to kafka_sink_topic")
    kafka_sink_topic: str = Field(default="SYSMON_JOIN", description="topic the joined rows go to")
    kafka_config: dict[str, str] = Field(default={}, description="extra librdkafka settings (security, ...)")
    shards: int = Field(default=1, description="pipelines writing the lake at once, each a partition shard-i")

    _run_pipelines: dict[int, SysmonPipeline] = PrivateAttr(default_factory=dict)
    _run_connections: LakeConnections | None = PrivateAttr(default=None)

    def setup_for_execution(self, context: InitResourceContext) -> None:
        """One DuckDB instance with the lake attached per run: the run's steps share it."""
        self._run_connections = LakeConnections(self.settings(), self.duckdb.get_connection)

    def teardown_after_execution(self, context: InitResourceContext) -> None:
        """Close the run's connection."""
        if self._run_connections is not None:
            self._run_connections.close()
        self._run_connections = None
        self._run_pipelines.clear()

    def settings(self) -> Settings:
        """These fields as pipeline :class:`Settings`."""
        return Settings(
            landing_dir=Path(self.landing_dir),
            data_dir=Path(self.data_dir),
            lake_catalog=self.lake_catalog,
            lake_data_path=self.lake_data_path,
            memory_limit=self.duckdb.connection_config.get("memory_limit"),
            kafka_partitions=tuple(self.kafka_partitions) if self.kafka_partitions else None,
            kafka_config=tuple(self.kafka_config.items()),
            **{name: getattr(self, name) for name in PLAIN_SETTINGS},
        )

    def pipeline(self, shard: int = 0) -> SysmonPipeline:
        """The run's pipeline (of ``shard``), whose connections come from the DuckDB resource."""
        if self._run_connections is None:
            settings = self.settings()
            return SysmonPipeline(settings, LakeConnections(settings, self.duckdb.get_connection), shard=shard)
        if shard not in self._run_pipelines:
            self._run_pipelines[shard] = SysmonPipeline(self.settings(), connect=self._run_connections, shard=shard)
        return self._run_pipelines[shard]

    def clock(self) -> datetime | None:
        """The configured batch time, if any."""
        return datetime.fromisoformat(self.batch_time) if self.batch_time else None


def resources_from_settings(settings: Settings) -> dict[str, object]:
    """The resources dict for :class:`dagster.Definitions` (or ``materialize``)."""
    return {
        "sysmon": SysmonPipelineResource(
            # An in-memory DuckDB per connection: the lake is attached to it (sysmon_assets.lake).
            duckdb=DuckDBResource(database=":memory:", connection_config=lake.connection_config(settings)),
            landing_dir=str(settings.landing_dir),
            data_dir=str(settings.data_dir),
            lake_catalog=settings.lake_catalog,
            lake_data_path=settings.lake_data_path,
            kafka_partitions=list(settings.kafka_partitions) if settings.kafka_partitions else None,
            kafka_config=dict(settings.kafka_config),
            **{name: getattr(settings, name) for name in PLAIN_SETTINGS},
        )
    }
