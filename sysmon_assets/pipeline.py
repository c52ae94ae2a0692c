"""One micro-batch of the recipe: ingest landed lines, then run each SQL model's step.

Plain Python with no Dagster in it, so tests, the benchmark and the Dagster assets all run
the same code. Every step is one DuckDB transaction (see :mod:`dbt_like.runner`).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb

from dbt_like import Batch, Project, StepResult, open_batch, table_exists
from dbt_like.sql import scalar
from sysmon_assets import serving
from sysmon_assets.kafka_sink import JoinSink, Published
from sysmon_assets.kafka_source import KafkaReader
from sysmon_assets.landed_lines import empty_chunk
from sysmon_assets.landing import DEFAULT_CHUNK_BYTES, LandingReader
from sysmon_assets.settings import Settings

SQL_DIR = Path(__file__).resolve().parents[1] / "sql"
INGEST_MODEL = "winlogbeat_stream"
# Each batch's checkpoint leaves its rows in a row group of their own; every this many batches, the
# checkpoint merges them (DuckDB's vacuum). Merging at every checkpoint rewrote an almost full row group
# again and again to take in a few thousand rows: in a 10k-event batch, up to 0.6 s per table.
COMPACT_EVERY_BATCHES = 24
VACUUM_TASKS_WHEN_COMPACTING = 100  # DuckDB's default max_vacuum_tasks
RECIPE_MODELS = (
    "winlogbeat_stream",
    "winlogbeat_stream_rekey",
    "sysmon_process_create",
    "sysmon_process_create_table",
    "sysmon_network_connect",
    "sysmon_join",
)

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


class PipelineError(RuntimeError):
    """The batch cannot run (DuckDB file unusable, ...); the message names the path."""


def utc_now() -> datetime:
    """The current UTC time as a naive timestamp (how DuckDB TIMESTAMP columns hold UTC here)."""
    return datetime.now(UTC).replace(tzinfo=None)


def connect_file(path: Path, opener: Connect | None = None, config: dict[str, str] | None = None) -> Connect:
    """A connection factory for the DuckDB file at ``path``; failing to open it names the file.

    ``opener`` (e.g. dagster-duckdb's ``DuckDBResource.get_connection``) opens the connection;
    by default a plain ``duckdb.connect`` with ``config`` (such as ``memory_limit``).
    """

    def plain() -> AbstractContextManager[duckdb.DuckDBPyConnection]:
        return closing(duckdb.connect(str(path), config=config or {}))

    @contextmanager
    def connect() -> Iterator[duckdb.DuckDBPyConnection]:
        opened = False
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with (opener or plain)() as con:
                opened = True
                yield con
        except (OSError, duckdb.Error) as error:
            if opened:
                raise
            raise PipelineError(f"cannot open DuckDB file {path}: {error}") from error

    return connect


def checkpoint(con: duckdb.DuckDBPyConnection, compact: bool = False) -> None:
    """Write what the step committed into the file now, as closing its last connection would: with the run's
    connection held open (the Dagster resource), it would otherwise stay in the WAL until that reaches 1 GB.
    ``compact`` also merges small row groups: DuckDB then merges them in every table that has some, not only in
    the tables the step changed."""
    if not compact:
        con.execute("CHECKPOINT")
        return
    con.execute(f"SET max_vacuum_tasks = {VACUUM_TASKS_WHEN_COMPACTING}")
    try:
        con.execute("CHECKPOINT")
    finally:
        con.execute("SET max_vacuum_tasks = 0")


def _cell(value: object, width: int = 60) -> str:
    """A markdown table cell: pipes escaped, long values cut."""
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


class SysmonPipeline:
    """The recipe's models over one DuckDB file and one landing folder."""

    def __init__(
        self, settings: Settings, connect: Connect | None = None, chunk_bytes: int = DEFAULT_CHUNK_BYTES
    ) -> None:
        self.settings = settings
        self.project = Project(SQL_DIR, settings.variables())
        self.connect = connect or connect_file(settings.duckdb_path, config=settings.duckdb_config())
        self.chunk_bytes = chunk_bytes
        self.last_batch_id: int | None = None

    def run_model(self, name: str, run_key: str, batch_time: datetime | None = None) -> list[StepResult]:
        """Run one model's step for the batch of ``run_key`` (created by the first step that asks)."""
        with self.connect() as con:
            batch = open_batch(con, run_key, batch_time or utc_now())
            self.last_batch_id = batch.batch_id
            results = self._ingest(con, batch) if name == INGEST_MODEL else self.project.run_step(con, name, batch)
            checkpoint(con, compact=batch.batch_id % COMPACT_EVERY_BATCHES == 0)
            return results

    def _ingest(self, con: duckdb.DuckDBPyConnection, batch: Batch) -> list[StepResult]:
        first_batch_ever = not table_exists(con, INGEST_MODEL)
        reader: LandingReader | KafkaReader
        if self.settings.source == "kafka":
            reader = KafkaReader(con, self.settings, self.chunk_bytes)
        else:
            reader = LandingReader(con, self.settings.landing_dir, self.settings.offset_reset, self.chunk_bytes)
        try:
            reader.plan(first_batch_ever)
            next_seq = 1 if first_batch_ever else scalar(con, f"SELECT coalesce(max(_seq), 0) + 1 FROM {INGEST_MODEL}")
            chunks = reader.chunks(next_seq)
            if first_batch_ever:
                chunks = itertools.chain([empty_chunk(self.settings.source)], chunks)
            results = self.project.run_step(
                con, INGEST_MODEL, batch, source_chunks=chunks, before_commit=reader.commit_offsets
            )
        finally:
            if isinstance(reader, KafkaReader):
                reader.close()
        if reader.file_events:
            results[0].notes["source_events"] = reader.file_events
        return results

    def describe(self, name: str, batch_id: int, preview_rows: int = 5) -> tuple[list[tuple[str, str]], str]:
        """The table's (column, type) pairs and a markdown preview of the rows ``batch_id`` wrote."""
        with self.connect() as con:
            columns = con.execute(
                "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? AND schema_name = 'main' "
                "ORDER BY column_index",
                [name],
            ).fetchall()
            shown = [c for c, _ in columns if not c.startswith("_")][:8]
            rows = con.execute(
                f"SELECT {', '.join(shown)} FROM {name} WHERE _batch_id = ? LIMIT ?", [batch_id, preview_rows]
            ).fetchall()
        lines = ["| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
        lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
        return columns, "\n".join(lines)

    def publish(self, run_key: str, batch_time: datetime | None = None) -> serving.Published:
        """Refresh the analysts' query database with everything committed up to this batch."""
        with self.connect() as con:
            batch = open_batch(con, run_key, batch_time or utc_now())
            tables = list(self.project.models)
            return serving.publish(
                con, self.project, tables, self.settings.query_db_path, batch.batch_id, now=batch.started_at
            )

    def publish_join(self) -> Published:
        """Send the ``sysmon_join`` rows committed since the last publish to the Kafka sink topic."""
        with self.connect() as con:
            return JoinSink(self.settings).publish(con)

    def run_batch(self, run_key: str | None = None, batch_time: datetime | None = None) -> dict[str, list[StepResult]]:
        """One whole micro-batch: every recipe model in dependency order, the query database, the Kafka sink
        (when configured)."""
        run_key = run_key or f"batch-{uuid.uuid4()}"
        results = {name: self.run_model(name, run_key, batch_time) for name in self.project.primary_models()}
        self.publish(run_key, batch_time)
        if self.settings.kafka_sink:
            self.publish_join()
        return results
