"""The Dagster resource that gives assets the pipeline, configured from the environment."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

from dagster import ConfigurableResource
from dagster_duckdb import DuckDBResource
from pydantic import Field

from sysmon_assets.pipeline import SysmonPipeline, connect_file
from sysmon_assets.settings import Settings

# Settings fields the resource carries as they are (paths need converting, so they are listed apart).
PLAIN_SETTINGS = (
    "offset_reset",
    "join_mode",
    "join_grace_minutes",
    "max_line_bytes",
    "join_coverage_warn",
    "freshness_minutes",
)


class SysmonPipelineResource(ConfigurableResource):
    """Where the landing folder and the DuckDB file are, and how batches join."""

    duckdb: DuckDBResource
    landing_dir: str = Field(description="folder Winlogbeat's file output writes NDJSON into")
    offset_reset: str = Field(default="earliest", description="'earliest' or 'latest', as KSQL's auto.offset.reset")
    join_mode: str = Field(default="default", description="'default' or 'ksql' (strict recipe parity)")
    join_grace_minutes: int = Field(default=15, description="how long a connection waits for its process create")
    max_line_bytes: int = Field(default=1024 * 1024, description="longer lines are rejected without parsing")
    query_db: str | None = Field(default=None, description="analysts' read-only query database (default beside)")
    join_coverage_warn: float = Field(default=0.25, description="join coverage below this warns")
    freshness_minutes: int = Field(default=60, description="warn when nothing landed for this long")
    batch_time: str | None = Field(default=None, description="fixed batch clock (ISO UTC) for replays and tests")

    def settings(self) -> Settings:
        """These fields as pipeline :class:`Settings`."""
        return Settings(
            landing_dir=Path(self.landing_dir),
            duckdb_path=Path(self.duckdb.database),
            memory_limit=self.duckdb.connection_config.get("memory_limit"),
            query_db=Path(self.query_db) if self.query_db else None,
            **{name: getattr(self, name) for name in PLAIN_SETTINGS},
        )

    def pipeline(self) -> SysmonPipeline:
        """A pipeline whose connections come from the DuckDB resource."""
        settings = self.settings()
        return SysmonPipeline(settings, connect=connect_file(settings.duckdb_path, self.duckdb.get_connection))

    def clock(self) -> datetime | None:
        """The configured batch time, if any."""
        return datetime.fromisoformat(self.batch_time) if self.batch_time else None


def resources_from_settings(settings: Settings) -> dict[str, object]:
    """The resources dict for :class:`dagster.Definitions` (or ``materialize``)."""
    return {
        "sysmon": SysmonPipelineResource(
            duckdb=DuckDBResource(database=str(settings.duckdb_path), connection_config=settings.duckdb_config()),
            landing_dir=str(settings.landing_dir),
            query_db=str(settings.query_db) if settings.query_db else None,
            **{name: getattr(settings, name) for name in PLAIN_SETTINGS},
        )
    }
