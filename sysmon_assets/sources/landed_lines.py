"""The ``landed_lines`` source the ingest models read: one row per landed line or Kafka message.

Both sources hand DuckDB Arrow tables of this shape, chunk by chunk, so the same SQL
(``sql/winlogbeat_stream.sql``, ``sql/winlogbeat_rejects.sql``) ingests either.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from sysmon_assets.sources.arrow_columns import bytes_array, int_array, repeated_string, strings_array

SOURCE_NAME = "landed_lines"


class LandingError(RuntimeError):
    """The landing folder or a file in it cannot be read; the message names the path."""


@dataclass(frozen=True)
class Unreadable:
    """A part of a landed file that cannot be read: from ``offset`` (an uncompressed byte offset, or an EVTX
    record index) on, for ``reason``."""

    offset: int
    reason: str


def path_text(path: str | os.PathLike[str]) -> str:
    """A file's path as the tables and messages show it: valid UTF-8 whatever bytes the name holds (a byte that
    is not UTF-8, e.g. a Latin-1 name from an old share, as ``\\xe4``), so that a name never stops a batch."""
    return os.fsencode(path).decode("utf-8", errors="backslashreplace")


def no_follow(path: str, flags: int) -> int:
    """An ``opener`` for :func:`open` that refuses a symbolic link: a link swapped in after the landing
    folder was listed is not followed out of it. Nor is a FIFO swapped in waited on (a regular file's reads
    ignore ``O_NONBLOCK``); the caller finds it is not the listed file."""
    return os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK)


# Small enough that DuckDB's threads share a chunk's scan, large enough to keep per-batch overhead low.
ROWS_PER_RECORD_BATCH = 8192
# A landed file's lines keep their newline in `line`; `line_bytes` is the length without it. A row with a
# `read_error` stands for a part of a file that could not be read (a damaged gzip stream, an EVTX file or chunk
# the parser cannot read): it has no line, and goes to winlogbeat_rejects with the error as its reason.
LANDED_LINES_SCHEMA = pa.schema(
    [
        ("_seq", pa.int64()),
        ("source_file", pa.dictionary(pa.int32(), pa.large_string())),
        ("source_line", pa.int64()),
        ("source_offset", pa.int64()),
        ("line", pa.large_binary()),
        ("line_bytes", pa.int64()),
        ("read_error", pa.large_string()),
    ]
)
# A Kafka message's row: a landed line's columns and the message's metadata.
KAFKA_LINES_SCHEMA = pa.schema(
    [
        *LANDED_LINES_SCHEMA,
        ("kafka_topic", pa.large_string()),
        ("kafka_partition", pa.int32()),
        ("kafka_offset", pa.int64()),
        ("kafka_timestamp_ms", pa.int64()),
        ("kafka_key", pa.large_binary()),
        ("kafka_headers", pa.large_string()),
    ]
)


def lines_table(
    lines: pa.Array,
    line_bytes: np.ndarray,
    source_file: str,
    first_seq: int,
    first_line: int,
    offsets: np.ndarray,
    read_errors: pa.Array | None = None,
) -> pa.Table:
    """Lines of one file (numbered from ``first_line``, at ``offsets``), in record batches DuckDB scans
    in parallel; ``read_errors`` (NULL where a line was read) marks the parts that could not be read."""
    count = len(lines)
    columns = [
        int_array(np.arange(first_seq, first_seq + count)),
        repeated_string(source_file, count),
        int_array(np.arange(first_line, first_line + count)),
        int_array(offsets),
        lines,
        int_array(line_bytes),
        pa.nulls(count, pa.large_string()) if read_errors is None else read_errors,
    ]
    table = pa.Table.from_arrays(columns, schema=LANDED_LINES_SCHEMA)
    return pa.Table.from_batches(table.to_batches(max_chunksize=ROWS_PER_RECORD_BATCH), LANDED_LINES_SCHEMA)


def unreadable_table(reason: str, source_file: str, seq: int, line: int, offset: int) -> pa.Table:
    """One row for a part of a file that could not be read, from ``offset`` on: a reject with ``reason``."""
    return lines_table(
        bytes_array([b""]),
        np.zeros(1, dtype=np.int64),
        source_file,
        seq,
        line,
        np.array([offset], dtype=np.int64),
        strings_array([reason]),
    )


def empty_chunk(source: str = "files") -> dict[str, pa.Table]:
    """A chunk with no lines but the right column types: creates the tables on a first, empty batch."""
    schema = KAFKA_LINES_SCHEMA if source == "kafka" else LANDED_LINES_SCHEMA
    return {SOURCE_NAME: pa.Table.from_batches([], schema=schema)}
