"""One micro-batch of the recipe: ingest landed lines, then run each SQL model's step.

Plain Python with no Dagster in it, so tests, the benchmark and the Dagster assets all run
the same code. Every step is one lake transaction (see :mod:`dbt_like.runner`), whose snapshot is
labelled with its batch and step; the last step's marks the batch complete, the boundary readers see.
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, closing, contextmanager
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from dbt_like import Batch, Project, Shard, StepResult, table_columns, table_exists
from dbt_like.sql import scalar
from sysmon_assets.hunting.sigma import RuleSet, load_rule_set
from sysmon_assets.micro_batch.shards import file_shard, partition_shard
from sysmon_assets.settings import Settings
from sysmon_assets.sinks.kafka_sink import JoinSink, Published
from sysmon_assets.sources import kafka_source
from sysmon_assets.sources import landing_folder as landing
from sysmon_assets.sources.kafka_source import KafkaReader
from sysmon_assets.sources.landed_lines import SOURCE_NAME, empty_chunk
from sysmon_assets.sources.landing_folder import DEFAULT_CHUNK_BYTES, LandingReader
from sysmon_assets.storage import lake

SQL_DIR = Path(__file__).resolve().parents[2] / "sql"
INGEST_MODEL = "winlogbeat_stream"

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


def utc_now() -> datetime:
    """The current UTC time as a naive timestamp (how DuckDB TIMESTAMP columns hold UTC here)."""
    return datetime.now(UTC).replace(tzinfo=None)


class LakeConnections:
    """The pipeline's connections: one DuckDB instance with the lake attached, opened on first use and held
    until :meth:`close`; each ``connect()`` is a cursor of it. Loading and verifying the extensions costs about
    0.25 s per instance, so a batch pays it once, not once per step.

    ``opener`` (e.g. dagster-duckdb's ``DuckDBResource.get_connection``) opens the in-memory DuckDB the lake is
    attached to; by default a plain ``duckdb.connect``.
    """

    def __init__(self, settings: Settings, opener: Connect | None = None) -> None:
        self.settings = settings
        self.opener = opener or (lambda: closing(duckdb.connect(config=lake.connection_config(settings))))
        self._held = ExitStack()
        self._instance: duckdb.DuckDBPyConnection | None = None

    @contextmanager
    def __call__(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._instance is None:
            instance = self._held.enter_context(self.opener())
            lake.attach(instance, self.settings)
            self._instance = instance
        with self._instance.cursor() as con:
            yield lake.use_lake(con)

    def close(self) -> None:
        """Close the held instance (the next ``connect()`` opens a new one)."""
        self._instance = None
        self._held.close()


def _cell(value: object, width: int = 60) -> str:
    """A markdown table cell: pipes escaped, long values cut."""
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def _strided(chunks: Iterator[dict[str, pa.Table]], first_seq: int, step: int) -> Iterator[dict[str, pa.Table]]:
    """The chunks with arrival numbers ``first_seq, first_seq + step, ...`` (readers number 1 apart): a shard's
    numbers never meet another shard's."""
    for chunk in chunks:
        frame = chunk[SOURCE_NAME]
        column = frame.schema.get_field_index("_seq")
        seq = pc.add(pc.multiply(pc.subtract(frame.column(column), first_seq), step), first_seq)
        yield {SOURCE_NAME: frame.set_column(column, "_seq", seq)}


class SysmonPipeline:
    """The recipe's models over one lake and one landing folder (or Kafka topic); with ``SYSMON_SHARDS`` > 1,
    shard ``shard``'s part of them."""

    def __init__(
        self,
        settings: Settings,
        connect: Connect | None = None,
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        shard: int = 0,
    ) -> None:
        self.settings = settings
        self.shard = Shard(shard, settings.shards)
        self.project = Project(
            SQL_DIR,
            settings.variables(),
            commit_note=self._commit_note,
            shard=self.shard,
            state_ddl=landing.STATE_DDL + kafka_source.STATE_DDL,
        )
        self.connect = connect or LakeConnections(settings)
        self.chunk_bytes = chunk_bytes
        self.last_batch_id: int | None = None

    def sigma_rules(self) -> RuleSet:
        """The Sigma rule set the detections step runs (converted once per content; then from memory or cache)."""
        return load_rule_set(self.settings.sigma_rules, self.settings.sigma_cache_dir)

    def run_model(self, name: str, run_key: str, batch_time: datetime | None = None) -> list[StepResult]:
        """Run one model's step for the batch of ``run_key`` (created by the first step that asks)."""
        with self.connect() as con:
            batch = self.project.open_batch(con, run_key, batch_time or utc_now())
            self.last_batch_id = batch.batch_id
            return self._ingest(con, batch) if name == INGEST_MODEL else self.project.run_step(con, name, batch)

    def _commit_note(self, con: duckdb.DuckDBPyConnection, model: str, batch: Batch) -> None:
        last_step = self.project.primary_models()[-1]
        note = {"batch_id": batch.batch_id, "step": model, "batch_complete": model == last_step}
        if self.shard.count > 1:
            note["shard"] = self.shard.index
        lake.commit_note(con, note)

    def _ingest(self, con: duckdb.DuckDBPyConnection, batch: Batch) -> list[StepResult]:
        first_batch_ever = not table_exists(con, INGEST_MODEL)
        reader = self._reader(con)
        try:
            reader.plan(first_batch_ever)
            next_seq = self._next_seq(con, first_batch_ever)
            chunks = reader.chunks(next_seq)
            if self.shard.count > 1:
                chunks = _strided(chunks, next_seq, self.shard.count)
            if first_batch_ever:
                chunks = itertools.chain([empty_chunk(self.settings.source)], chunks)
            results = self.project.run_step(
                con,
                INGEST_MODEL,
                batch,
                source_chunks=chunks,
                before_commit=reader.commit_offsets,
                after_commit=reader.offsets_committed,
            )
        finally:
            if isinstance(reader, KafkaReader):
                reader.close()
        if reader.file_events:
            results[0].notes["source_events"] = reader.file_events
        return results

    def _reader(self, con: duckdb.DuckDBPyConnection) -> LandingReader | KafkaReader:
        shards, index = self.shard.count, self.shard.index
        if self.settings.source == "kafka":
            return KafkaReader(
                con, self.settings, self.chunk_bytes, owns=lambda partition: partition_shard(partition, shards) == index
            )
        return LandingReader(
            con,
            self.settings.landing_dir,
            self.settings.offset_reset,
            self.chunk_bytes,
            owns=lambda key: file_shard(key, shards) == index,
        )

    def _next_seq(self, con: duckdb.DuckDBPyConnection, first_batch_ever: bool) -> int:
        """The shard's next arrival number: shard i numbers its lines i + 1, i + 1 + K, ..."""
        if first_batch_ever:
            return self.shard.index + 1
        return scalar(con, f"SELECT {self.shard.next_number('_seq')} FROM {INGEST_MODEL}")

    def describe(self, name: str, batch_id: int, preview_rows: int = 5) -> tuple[list[tuple[str, str]], str, int]:
        """The table's (column, type) pairs, a markdown preview of the rows ``batch_id`` wrote, and the lake's
        snapshot id after the step."""
        with self.connect() as con:
            columns = table_columns(con, name)
            snapshot = lake.current_snapshot(con)
            shown = [c for c, _ in columns if not c.startswith("_")][:8]
            rows = con.execute(
                f"SELECT {', '.join(shown)} FROM {name} WHERE _batch_id = ? LIMIT ?", [batch_id, preview_rows]
            ).fetchall()
        lines = ["| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
        lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
        return columns, "\n".join(lines), snapshot

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
