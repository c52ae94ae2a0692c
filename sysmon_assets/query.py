"""Query the lake from the command line, read-only, at the last complete batch (``sysmon_assets.connect``).

``python -m sysmon_assets.query sql/queries/sysmon_join_sample.sql`` prints a table;
``python -m sysmon_assets.query --json "select count(*) from sysmon_join"`` prints the rows as a JSON array of arrays.
Both read the same ``SYSMON_*`` settings as the pipeline.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import duckdb

from sysmon_assets.read_only_sql import refusal, statement_texts
from sysmon_assets.settings import Settings, SettingsError
from sysmon_assets.storage import lake

# The printable bytes DuckDB's text of a BLOB escapes too: backslash, single and double quote.
ESCAPED_BYTES = frozenset(b"\\'\"")


def _blob_text(value: bytes) -> str:
    """A BLOB as DuckDB prints it: ``\\xAB`` for each byte that is not printable ASCII or is escaped."""
    return "".join(chr(byte) if 32 <= byte < 127 and byte not in ESCAPED_BYTES else f"\\x{byte:02X}" for byte in value)


def _json_value(value: Any) -> Any:
    """``value`` as JSON can hold it: NaN and infinities as null (JSON has no such numbers), a MAP's keys as text,
    a BLOB as DuckDB prints it (``\\xAB`` for a byte that is not printable ASCII, and for a backslash or a quote,
    so that the text reads back as one BLOB only), anything else not JSON as text."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {_key_text(key): _json_value(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    if isinstance(value, bytes):
        return _blob_text(value)
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


# DuckDB's infinite dates and timestamps reach Python as date.max and datetime.max: the JSON gets DuckDB's text
TEMPORAL_TYPES = {"DATE", "TIMESTAMP", "TIMESTAMP_S", "TIMESTAMP_MS", "TIMESTAMP_NS", "TIMESTAMP WITH TIME ZONE"}


@dataclass(frozen=True)
class JsonColumns:
    """How :func:`rows_as_json` reads the rows of :func:`json_ready`: the positions holding JSON text to decode, and
    for each date or timestamp column, the position of the extra column (after the query's own) that holds its text
    when the value is infinite."""

    decoded: list[int]
    infinite: dict[int, int]


def json_ready(relation: duckdb.DuckDBPyRelation) -> tuple[duckdb.DuckDBPyRelation, JsonColumns]:
    """``relation`` with its INTERVAL columns as DuckDB's text (``1 month 01:30:00``; Python's timedelta would turn
    a month into 30 days), those holding one inside a list, STRUCT or MAP as DuckDB's JSON text, and after its own
    columns, one per date or timestamp column: its text when the value is infinite (``infinity``), else NULL."""
    columns, nested, extra = [], [], []
    count = len(relation.types)
    for position, kind in enumerate(relation.types, start=1):
        if str(kind) == "INTERVAL":
            columns.append(f"CAST(#{position} AS VARCHAR)")
        elif "INTERVAL" in str(kind):
            columns.append(f"CAST(to_json(#{position}) AS VARCHAR)")
            nested.append(position - 1)
        else:
            columns.append(f"#{position}")
            if str(kind) in TEMPORAL_TYPES:
                extra.append((position - 1, f"CASE WHEN isinf(#{position}) THEN CAST(#{position} AS VARCHAR) END"))
    layout = JsonColumns(nested, {column: count + index for index, (column, _) in enumerate(extra)})
    if all(column.startswith("#") for column in columns) and not extra:
        return relation, layout
    return relation.project(", ".join(columns + [expression for _, expression in extra])), layout


def _key_text(key: Any) -> str:
    """A MAP key as JSON object keys must be: text, a boolean as JSON writes it (``true``, not Python's ``True``), a
    NaN or an infinity as DuckDB writes it (``nan``, ``inf``, ``-inf``: as null, all three would be one key)."""
    if isinstance(key, float) and not math.isfinite(key):
        return str(key)
    value = _json_value(key)
    return value if isinstance(value, str) else json.dumps(value, allow_nan=False)


def rows_as_json(rows: list[tuple], columns: JsonColumns | None = None) -> str:
    """Rows as a JSON array of arrays (strict JSON: timestamps and other non-JSON values as text), read as
    ``columns`` says (:func:`json_ready`)."""
    columns = columns or JsonColumns([], {})
    decoded, width = set(columns.decoded), len(rows[0]) - len(columns.infinite) if rows else 0

    def value_at(row: tuple, index: int) -> Any:
        extra = columns.infinite.get(index)
        if extra is not None and row[extra] is not None:
            return row[extra]
        value = row[index]
        return json.loads(value) if index in decoded and value is not None else value

    return json.dumps([[_json_value(value_at(row, index)) for index in range(width)] for row in rows], allow_nan=False)


def _count_of(thing: str, least: int) -> Callable[[str], int]:
    """An argument type: a count of ``thing``s, ``least`` or more (argparse names it in its error)."""

    def count(text: str) -> int:
        if int(text) < least:
            raise ValueError(text)
        return int(text)

    count.__name__ = f"{thing} count"
    return count


def unreadable_text(sql: str) -> str | None:
    """Why DuckDB would not read ``sql`` whole, or None: it stops at a NUL character, and bytes of a command-line
    argument that are not UTF-8 reach Python as lone surrogates, which no SQL text holds."""
    if "\x00" in sql:
        return f"the SQL holds a NUL character (at character {sql.index(chr(0))}), where DuckDB would stop reading it"
    try:
        sql.encode("utf-8")
    except UnicodeEncodeError as error:
        return f"the SQL is not UTF-8 text (at character {error.start})"
    return None


def results(con: duckdb.DuckDBPyConnection, statements: list[str]) -> Iterator[duckdb.DuckDBPyRelation]:
    """The rows of each of ``statements`` that returns rows, one statement at a time and in order, so each is read
    before the next runs (a statement such as ``SET`` runs and gives none)."""
    for statement in statements:
        relation = con.sql(statement)
        if relation is not None:
            yield relation


def _lake_data_named(message: str) -> str:
    """Where the lake's data goes, to follow an error reading files, if they were the lake's: the error names its
    data folder, or the bucket of its object storage (not a file of the user's own, ``read_csv('x.csv')``)."""
    settings = Settings.from_env()
    data_path = settings.data_path
    named = os.path.abspath(data_path) if lake.is_local(data_path) else urlsplit(data_path).netloc
    return f" (the lake's data: {lake.data_location(settings)})" if named and named in message else ""


def _spill_disk_named(message: str) -> str:
    """Where a reader spills, to follow DuckDB's error for a spill that found no room: it says "Out of Memory" and
    names its limit on spilled bytes (``max_temp_directory_size``), by default the free space of that disk."""
    if "max_temp_directory_size" not in message:
        return ""
    return f" (this reader spills under the temporary folder {tempfile.gettempdir()}, TMPDIR: its disk may be full)"


def _replace_what_the_output_cannot_encode() -> None:
    """The table's frame is drawn in Unicode: an output in ASCII or a legacy code page shows ``?`` for what it
    cannot encode (``--json`` escapes everything beyond ASCII)."""
    if isinstance(sys.stdout, io.TextIOWrapper):
        sys.stdout.reconfigure(errors="replace")


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m sysmon_assets.query", description=__doc__.splitlines()[0])
    parser.add_argument("query", help="a .sql file, or SQL text")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON array of arrays")
    parser.add_argument("--batch", type=int, default=None, help="read the lake as this batch left it")
    parser.add_argument(
        "--max-width",
        type=_count_of("character", 1),
        default=160,
        help="the table's width in characters (default 160)",
    )
    parser.add_argument(
        "--max-rows",
        type=_count_of("row", 0),
        default=20,
        help="rows the table shows, the first and last ones (default 20)",
    )
    args = parser.parse_args(argv)
    path = Path(args.query)
    is_file_name = path.suffix.lower() == ".sql"
    if is_file_name and not any(space in args.query for space in " \n\t") and not path.is_file():
        sys.exit(f"query failed: no SQL file {path}")
    try:  # a file's bytes as they are: read_text would turn a lone carriage return inside a string into a newline
        sql = path.read_bytes().decode("utf-8") if is_file_name and path.is_file() else args.query
    except (OSError, UnicodeDecodeError) as error:
        sys.exit(f"query failed: cannot read the SQL file {path} (UTF-8 text expected): {error}")
    if problem := unreadable_text(sql):
        sys.exit(f"query failed: {problem}")
    if refused := refusal(sql):
        sys.exit(f"query failed: {refused}")
    try:  # a query fails when it is parsed, planned or as its rows are read: each is reported the same way
        statements = statement_texts(sql)
        for statement in statements:  # each parses before the first runs
            duckdb.extract_statements(statement)
        con = lake.connect(batch_id=args.batch)  # held: the relations read through it
        for relation in results(con, statements):
            if args.json:
                relation, columns = json_ready(relation)
                print(rows_as_json(relation.fetchall(), columns))
            else:
                _replace_what_the_output_cannot_encode()
                relation.show(max_width=args.max_width, max_rows=args.max_rows)
        sys.stdout.flush()  # here, so a closed pipe is met inside the try
    except (duckdb.IOException, duckdb.HTTPException) as error:  # the data files, which the ATTACH does not read
        sys.exit(f"query failed: {error}{_lake_data_named(str(error))}")
    except (SettingsError, lake.LakeError, duckdb.Error) as error:
        sys.exit(f"query failed: {error}{_spill_disk_named(str(error))}")
    except BrokenPipeError:  # the reader stopped early (`| head`): end quietly, as Python's docs on SIGPIPE advise
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # the exit's own flush would fail again
        sys.exit(1)


if __name__ == "__main__":
    main()
