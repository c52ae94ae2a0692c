"""The ingest step: the lines the source (landing folder or Kafka topic) holds past its offsets, into the stream
model fed by ``source('landed_lines')`` (``winlogbeat_stream``, with ``winlogbeat_rejects`` beside it), one
transaction per chunk together with the source's new offsets."""

from __future__ import annotations

import itertools
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

import duckdb
import pyarrow as pa
import pyarrow.compute as pc

from dbt_like import Batch, Project, StepResult
from dbt_like.compiler import STATE_SCHEMA
from dbt_like.sql import first_row, scalar
from sysmon_assets.micro_batch.shards import file_shard, partition_shard
from sysmon_assets.settings import Settings
from sysmon_assets.sources.kafka_source import KafkaReader
from sysmon_assets.sources.landed_lines import SOURCE_NAME, empty_chunk
from sysmon_assets.sources.landing_folder import LandingReader
from sysmon_assets.storage.maintenance import DROPPED_SEQ_TABLE

# the step's note (its asset's metadata): the batch left lines of this many files to the next (stopped at their share of
# SYSMON_LANDING_MAX_BYTES, or holding back a last line without newline)
LEFT_FOR_NEXT_BATCH = "files_left_for_next_batch"
# the step's note: the first last line this batch held back for its writer is due then (UTC, ISO 8601), see
# landing_folder._wait_for_writer; the sensor requests a batch for it then
UNFINISHED_LINE_DUE = "unfinished_line_due"
# The ingest's chunk: an eighth of DuckDB's memory limit, from 64 MiB (with which the 1M-event benchmark batch runs
# in a 512 MB limit) to 128 MiB (which ran in 1 GB, not in 512 MB): bigger chunks are read faster (bench/README.md).
MIN_CHUNK_BYTES = 64 * 1024 * 1024
MAX_CHUNK_BYTES = 128 * 1024 * 1024
# The stream's query holds memory per DuckDB thread that it cannot spill, whatever the chunk: each of its JSON
# functions keeps one vector's lines (2,048) parsed in an arena of its own. duckdb_memory()'s ALLOCATOR at its peak on
# one thread: 257-293 MiB for lines of 1.8 KiB, 361 MiB for 5.7 KiB, 489 MiB for 9.6 KiB (on two, 497-513 MiB for
# 1.8 KiB): about THREAD_BYTES plus THREAD_BYTES_PER_LINE_BYTE for each byte of a chunk's mean line. Each chunk runs
# on as many threads as the memory limit beyond LIMIT_KEPT_BYTES holds (one at least): under 512 MB one (two ran out
# of memory), under 768 MB two for lines of 1.8 KiB, one for 5.7 KiB.
LIMIT_KEPT_BYTES = 128 * 2**20
THREAD_BYTES = 200 * 2**20
THREAD_BYTES_PER_LINE_BYTE = 30 * 2**10
# How DuckDB prints its memory limit back: "488.2 MiB", "18.8 GiB"
_PRINTED_BYTES = re.compile(r"([0-9.]+) (bytes|KiB|MiB|GiB|TiB|PiB)")
_UNITS = {"bytes": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}


def _numbered(
    chunks: Iterator[dict[str, pa.Table]], first_seq: Callable[[], int], step: int
) -> Iterator[dict[str, pa.Table]]:
    """The chunks (their lines numbered from 0, 1 apart, as the readers number them) with arrival numbers
    ``first, first + step, ...``: a shard's numbers never meet another shard's. ``first_seq()`` is asked once there
    is a chunk (an idle batch does not read the stream's highest number)."""
    first: int | None = None
    for chunk in chunks:
        first = first_seq() if first is None else first
        frame = chunk[SOURCE_NAME]
        column = frame.schema.get_field_index("_seq")
        seq = pc.add(pc.multiply(frame.column(column), step), first)
        yield {SOURCE_NAME: frame.set_column(column, "_seq", seq)}


def memory_limit_bytes(con: duckdb.DuckDBPyConnection) -> int:
    """``con``'s memory limit in bytes."""
    printed = scalar(con, "SELECT current_setting('memory_limit')")
    match = _PRINTED_BYTES.fullmatch(printed)
    if match is None:
        raise ValueError(f"DuckDB printed its memory limit as {printed!r}, which this version does not read")
    return int(float(match[1]) * _UNITS[match[2]])


def chunk_bytes_for(con: duckdb.DuckDBPyConnection) -> int:
    """The ingest's chunk size on ``con``: an eighth of its memory limit, within MIN_CHUNK_BYTES and
    MAX_CHUNK_BYTES."""
    return max(MIN_CHUNK_BYTES, min(MAX_CHUNK_BYTES, memory_limit_bytes(con) // 8))


def ingest_threads_for(memory_limit: int, threads: int, mean_line_bytes: float) -> int:
    """How many of ``threads`` a chunk of lines of ``mean_line_bytes`` runs on under ``memory_limit`` (bytes): as many
    as the limit holds beyond LIMIT_KEPT_BYTES, one at least (see THREAD_BYTES)."""
    per_thread = THREAD_BYTES + THREAD_BYTES_PER_LINE_BYTE * mean_line_bytes
    return max(1, min(threads, int((memory_limit - LIMIT_KEPT_BYTES) // per_thread)))


def _threads(con: duckdb.DuckDBPyConnection) -> int:
    return int(scalar(con, "SELECT current_setting('threads')"))


@contextmanager
def _threads_per_chunk(
    con: duckdb.DuckDBPyConnection, chunks: Iterator[dict[str, pa.Table]]
) -> Iterator[Iterator[dict[str, pa.Table]]]:
    """``chunks``, each run on the threads :func:`ingest_threads_for` gives it on ``con``; ``con`` gets its own
    threads back when the step ends."""
    before, limit = _threads(con), memory_limit_bytes(con)
    current = before

    def each(chunks: Iterator[dict[str, pa.Table]]) -> Iterator[dict[str, pa.Table]]:
        nonlocal current
        for chunk in chunks:
            mean = pc.mean(chunk[SOURCE_NAME].column("line_bytes")).as_py() or 0  # None for no line
            wanted = ingest_threads_for(limit, before, mean)
            if wanted != current:
                con.execute(f"SET threads = {wanted}")
                current = wanted
            yield chunk

    try:
        yield each(chunks)
    finally:
        if current != before:
            con.execute(f"SET threads = {before}")


def source_reader(
    con: duckdb.DuckDBPyConnection, project: Project, settings: Settings, chunk_bytes: int
) -> LandingReader | KafkaReader:
    """The reader of ``settings.source`` over the files or partitions the project's shard owns."""
    shards, index = project.shard.count, project.shard.index
    if settings.source == "kafka":
        return KafkaReader(
            con, settings, chunk_bytes, owns=lambda partition: partition_shard(partition, shards) == index
        )
    return LandingReader(
        con,
        settings.landing_dir,
        settings.offset_reset,
        chunk_bytes,
        owns=lambda key: file_shard(key, shards) == index,
        max_bytes=settings.landing_max_bytes,
    )


def _next_seq(con: duckdb.DuckDBPyConnection, project: Project, model: str, first_batch_ever: bool) -> int:
    """The shard's next arrival number: shard i numbers its lines i + 1, i + 1 + K, ..., above every number the
    stream holds or a retention dropped (``DROPPED_SEQ_TABLE``)."""
    if first_batch_ever:
        return project.shard.index + 1
    own, dropped = first_row(
        con,
        f"SELECT (SELECT {project.shard.next_number('_seq')} FROM {model}), (SELECT max(seq) FROM {DROPPED_SEQ_TABLE})",
    )
    return own if dropped is None else max(own, project.shard.first_above(dropped))


def _shards_first_batch(con: duckdb.DuckDBPyConnection, project: Project, batch: Batch) -> bool:
    """Whether ``batch`` is the first its shard opened (with shards: where ``offset_reset='latest'`` starts the
    shard's own files and partitions at their end, whichever shard made the stream's table)."""
    if project.shard.count == 1:
        return False
    earlier = scalar(
        con,
        f"SELECT count(*) FROM {STATE_SCHEMA}.batches "
        f"WHERE {project.shard.owns('batch_id')} AND batch_id < {batch.batch_id}",
    )
    return not earlier


def ingest(
    con: duckdb.DuckDBPyConnection,
    project: Project,
    model: str,
    batch: Batch,
    settings: Settings,
    chunk_bytes: int,
) -> list[StepResult]:
    """Run ``model``'s step over the source's new lines for ``batch``, each chunk on as many threads as the memory
    limit holds for its lines (:func:`ingest_threads_for`)."""
    first_batch_ever = not project.exists(con, model)
    reader = source_reader(con, project, settings, chunk_bytes)
    try:
        reader.plan(first_batch_ever or _shards_first_batch(con, project, batch))
        chunks = _numbered(
            reader.chunks(0), lambda: _next_seq(con, project, model, first_batch_ever), project.shard.count
        )
        if first_batch_ever:
            chunks = itertools.chain([empty_chunk(settings.source)], chunks)
        with _threads_per_chunk(con, chunks) as sized_chunks:
            results = project.run_step(
                con,
                model,
                batch,
                source_chunks=sized_chunks,
                before_commit=reader.commit_offsets,
                after_commit=reader.offsets_committed,
            )
    finally:
        if isinstance(reader, KafkaReader):
            reader.close()
    if reader.file_events:
        results[0].notes["source_events"] = reader.file_events
    if isinstance(reader, LandingReader):
        if reader.left_for_next_batch:
            results[0].notes[LEFT_FOR_NEXT_BATCH] = reader.left_for_next_batch
        if reader.writer_due:
            results[0].notes[UNFINISHED_LINE_DUE] = datetime.fromtimestamp(reader.writer_due, UTC).isoformat()
    return results
