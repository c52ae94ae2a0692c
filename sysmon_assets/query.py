"""Query the lake from the command line, read-only, at the last complete batch (``sysmon_assets.connect``).

``python -m sysmon_assets.query sql/queries/sysmon_join_sample.sql`` prints a table;
``python -m sysmon_assets.query --json "select count(*) from sysmon_join"`` prints the rows as a JSON array of arrays.
Both read the same ``SYSMON_*`` settings as the pipeline.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from sysmon_assets.settings import SettingsError
from sysmon_assets.storage import lake

# Functions that change the lake (its files or its catalog): DuckLake's maintenance, which the lake_maintenance job
# runs (on a lake attached read-only, DuckLake 0.3's ducklake_cleanup_old_files still deletes the files scheduled for
# deletion, then fails), and a checkpoint (DuckLake's writes files before it fails); and those that run SQL held in
# a string, which the command could not check. Refused where called, not where a column is so named.
REFUSED_FUNCTIONS = frozenset(
    [
        *(
            f"ducklake_{name}"
            for name in (
                "add_data_files",
                "cleanup_old_files",
                "delete_orphaned_files",
                "expire_snapshots",
                "flush_inlined_data",
                "merge_adjacent_files",
                "rewrite_data_files",
                "set_commit_message",
                "set_option",
            )
        ),
        "checkpoint",
        "force_checkpoint",
        "query",
        "query_table",
    ]
)
# The statements the command runs: those that read (SET and CALL included: USE, ducklake_snapshots()); COPY ... TO
# could write over the lake's own files, and ATTACH attach the lake again for writing.
READING_STATEMENTS = frozenset(
    {
        duckdb.StatementType.SELECT,
        duckdb.StatementType.EXPLAIN,
        duckdb.StatementType.PRAGMA,
        duckdb.StatementType.SET,
        duckdb.StatementType.CALL,
    }
)
# Settings that name files DuckDB writes (or open the file system to it): SET or PRAGMA of one is refused.
FILE_SETTINGS = frozenset(
    {
        "allowed_directories",
        "allowed_paths",
        "enable_external_access",
        "extension_directory",
        "home_directory",
        "log_query_path",
        "profile_output",
        "profiling_output",
        "secret_directory",
        "temp_directory",
    }
)
SETTING = re.compile(r"\s*(?:SET|RESET|PRAGMA)\s+(?:(?:GLOBAL|SESSION|LOCAL)\s+)?([A-Za-z_]\w*)", re.IGNORECASE)
CHECKPOINT = re.compile(r"\s*(?:FORCE\s+)?CHECKPOINT\b", re.IGNORECASE)
EXPLAINED = re.compile(r"\s*EXPLAIN\s+(?:ANALY[SZ]E\s+)?", re.IGNORECASE)
IDENTIFIER = re.compile(r'"((?:[^"]|"")*)"|[^\W\d]\w*')
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
    """A MAP key as JSON object keys must be: text, a boolean as JSON writes it (``true``, not Python's ``True``)."""
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


def refusal(sql: str) -> str | None:
    """Why the command does not run ``sql``, which would change the lake or write a file, or None. A guard against
    mistakes, not a sandbox: DuckDB's SQL reaches the file system in more ways than it knows."""
    try:
        statements, tokens = duckdb.extract_statements(sql), duckdb.tokenize(sql)
    except duckdb.Error:
        return None  # not SQL DuckDB reads: running it reports why
    for statement in statements:
        if refused := _statement_refusal(statement):
            return refused
    for (position, kind), (following, _) in zip(tokens, [*tokens[1:], (len(sql), None)], strict=True):
        found = IDENTIFIER.match(sql, position) if kind == duckdb.token_type.identifier else None
        name = found and (found.group(1) or found.group(0)).replace('""', '"').lower()
        if name in REFUSED_FUNCTIONS and sql.startswith("(", following):  # called, not a column so named
            return f"{name} is refused: it changes the lake or runs SQL this command cannot check"
    return None


def _statement_refusal(statement: duckdb.Statement) -> str | None:
    """Why one statement is refused: it does not read, explains (and so may run) one that does not, or sets a
    setting that names a file; or None."""
    text = statement.query
    if statement.type == duckdb.StatementType.CREATE and not text:
        return None  # the ENUM type DuckDB creates for a PIVOT without IN, which has no text of its own
    if statement.type not in READING_STATEMENTS:
        return f"{statement.type.name.replace('_', ' ')} is refused: this command only reads (--json prints the rows)"
    if statement.type == duckdb.StatementType.EXPLAIN and (explained := EXPLAINED.match(text)):
        inner = duckdb.extract_statements(text[explained.end() :])
        return next((refused for refused in map(_statement_refusal, inner) if refused), None)
    if statement.type == duckdb.StatementType.CALL and CHECKPOINT.match(text):
        return "CHECKPOINT is refused: it changes the lake"
    setting = SETTING.match(text) if statement.type == duckdb.StatementType.SET else None
    if setting and setting.group(1).lower() in FILE_SETTINGS:
        return f"setting {setting.group(1)} is refused: it names a file DuckDB would write"
    return None


def _row_count(text: str) -> int:
    """``--max-rows``: a count of rows, 0 or more."""
    count = int(text)
    if count < 0:
        raise ValueError(text)
    return count


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(prog="python -m sysmon_assets.query", description=__doc__.splitlines()[0])
    parser.add_argument("query", help="a .sql file, or SQL text")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON array of arrays")
    parser.add_argument("--batch", type=int, default=None, help="read the lake as this batch left it")
    parser.add_argument("--max-width", type=int, default=160, help="the table's width in characters (default 160)")
    parser.add_argument(
        "--max-rows", type=_row_count, default=20, help="rows the table shows, the first and last ones (default 20)"
    )
    args = parser.parse_args(argv)
    path = Path(args.query)
    if path.suffix == ".sql" and not any(space in args.query for space in " \n\t") and not path.is_file():
        sys.exit(f"query failed: no SQL file {path}")
    try:
        sql = path.read_text(encoding="utf-8") if path.suffix == ".sql" and path.is_file() else args.query
    except (OSError, UnicodeDecodeError) as error:
        sys.exit(f"query failed: cannot read the SQL file {path} (UTF-8 text expected): {error}")
    if refused := refusal(sql):
        sys.exit(f"query failed: {refused}")
    try:  # a query fails when it is planned or as its rows are read: both are reported the same way
        con = lake.connect(batch_id=args.batch)  # held: the relation reads through it
        relation = con.sql(sql)
        if relation is None:
            return
        if args.json:
            relation, columns = json_ready(relation)
            print(rows_as_json(relation.fetchall(), columns))
        else:
            relation.show(max_width=args.max_width, max_rows=args.max_rows)
    except (SettingsError, lake.LakeError, duckdb.Error) as error:
        sys.exit(f"query failed: {error}")


if __name__ == "__main__":
    main()
