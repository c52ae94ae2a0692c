"""The ``landed_lines`` source the ingest models read: one row per landed line or Kafka message.

Both sources hand DuckDB Arrow tables of this shape, chunk by chunk, so the same SQL
(``sql/winlogbeat_stream.sql``, ``sql/winlogbeat_rejects.sql``) ingests either.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from sysmon_assets.arrow_columns import int_array, repeated_string

SOURCE_NAME = "landed_lines"


class LandingError(RuntimeError):
    """The landing folder or a file in it cannot be read; the message names the path."""


# Small enough that DuckDB's threads share a chunk's scan, large enough to keep per-batch overhead low.
ROWS_PER_RECORD_BATCH = 8192
# A landed file's lines keep their newline in `line`; `line_bytes` is the length without it.
LANDED_LINES_SCHEMA = pa.schema(
    [
        ("_seq", pa.int64()),
        ("source_file", pa.dictionary(pa.int32(), pa.large_string())),
        ("source_line", pa.int64()),
        ("source_offset", pa.int64()),
        ("line", pa.large_binary()),
        ("line_bytes", pa.int64()),
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
    lines: pa.Array, line_bytes: np.ndarray, source_file: str, first_seq: int, first_line: int, offsets: np.ndarray
) -> pa.Table:
    """Lines of one file (numbered from ``first_line``, at ``offsets``), in record batches DuckDB scans
    in parallel."""
    count = len(lines)
    columns = [
        int_array(np.arange(first_seq, first_seq + count)),
        repeated_string(source_file, count),
        int_array(np.arange(first_line, first_line + count)),
        int_array(offsets),
        lines,
        int_array(line_bytes),
    ]
    table = pa.Table.from_arrays(columns, schema=LANDED_LINES_SCHEMA)
    return pa.Table.from_batches(table.to_batches(max_chunksize=ROWS_PER_RECORD_BATCH), LANDED_LINES_SCHEMA)


def empty_chunk(source: str = "files") -> dict[str, pa.Table]:
    """A chunk with no lines but the right column types: creates the tables on a first, empty batch."""
    schema = KAFKA_LINES_SCHEMA if source == "kafka" else LANDED_LINES_SCHEMA
    return {SOURCE_NAME: pa.Table.from_batches([], schema=schema)}
