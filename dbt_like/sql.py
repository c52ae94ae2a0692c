"""Small helpers for running statements on a DuckDB connection.

Values go into SQL as literals (``literal``), not as bound parameters: DuckDB 1.4's Python client imports pandas
the first time a process binds any parameter (duckdb/duckdb#18658), which costs a short batch 0.3-0.5 s.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import date, datetime, time, timedelta
from decimal import Decimal
from typing import Any

import duckdb

# The connection every dbt_like function takes: to DuckDB, a DuckLake attached as its default catalog or not.
Connection = duckdb.DuckDBPyConnection
# The transaction's start as a naive UTC TIMESTAMP. now() is a TIMESTAMPTZ, which a TIMESTAMP column (or a cast)
# holds in the session's time zone, the host's: hosts in different zones would write times hours apart.
UTC_NOW = "(now() AT TIME ZONE 'UTC')"


def scalar(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    """The first column of the first row of ``sql`` (None when it returns no row).

    The whole result is fetched, so the connection is free for the next statement.
    """
    rows = con.execute(sql).fetchall()
    return rows[0][0] if rows else None


def first_row(con: duckdb.DuckDBPyConnection, sql: str) -> tuple | None:
    """The first row of ``sql``, or None; the whole result is fetched."""
    rows = con.execute(sql).fetchall()
    return rows[0] if rows else None


def quote_string(text: str) -> str:
    """``text`` as a SQL string literal (a NUL, which DuckDB's parser ends a statement at, as ``chr(0)``)."""
    quoted = "'" + str(text).replace("'", "''") + "'"
    return quoted.replace("\x00", "' || chr(0) || '") if "\x00" in quoted else quoted


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier (any characters, quotes included)."""
    return '"' + str(name).replace('"', '""') + '"'


def literal(value: Any) -> str:
    """``value`` as a DuckDB literal of the type binding it would give: NULL, BOOLEAN, an integer, DOUBLE (NaN and
    infinities included), DECIMAL, VARCHAR, BLOB, UUID, TIMESTAMP (a naive datetime) or TIMESTAMPTZ, DATE, TIME,
    INTERVAL, or a list of them."""
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(int(value))
    if isinstance(value, float):
        return f"CAST('{float(value)!r}' AS DOUBLE)"  # from text: NaN, infinities and -0.0 survive
    if isinstance(value, Decimal):
        return _decimal(value)
    if isinstance(value, str):
        return quote_string(value)
    if isinstance(value, bytes | bytearray):
        return "'" + "".join(f"\\x{byte:02X}" for byte in value) + "'::BLOB"
    if isinstance(value, uuid.UUID):
        return f"'{value}'::UUID"
    if isinstance(value, datetime):
        kind = "TIMESTAMP" if value.tzinfo is None else "TIMESTAMPTZ"
        return f"{kind} '{value.isoformat(sep=' ')}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, time) and value.tzinfo is None:
        return f"TIME '{value.isoformat()}'"
    if isinstance(value, timedelta):
        return f"INTERVAL '{value // timedelta(microseconds=1)} microseconds'"
    if isinstance(value, Sequence):
        return "[" + ", ".join(literal(item) for item in value) + "]"
    raise TypeError(f"no SQL literal for {type(value).__name__} {value!r}")


def _decimal(value: Decimal) -> str:
    if not value.is_finite():
        raise ValueError(f"no SQL literal for the decimal {value!r}")
    _, digits, exponent = value.as_tuple()
    scale = max(-int(exponent), 0)
    precision = max(len(digits) + max(int(exponent), 0), scale, 1)
    return f"CAST('{value:f}' AS {f'DECIMAL({precision}, {scale})' if precision <= 38 else 'DOUBLE'})"


def literals(*values: Any) -> str:
    """``values`` as a comma-separated list of literals: ``VALUES ({literals(a, b)})``."""
    return ", ".join(literal(value) for value in values)


# Above this many values one_of joins: list_contains compares each row with every value (1,000 values over 20,000
# rows: 15-26 ms against 3-4 ms for the join; 20,000 over 20,000: 0.22 s against 0.05 s).
ONE_OF_LIST_MAX = 100


def one_of(column: str, *values: Any) -> str:
    """SQL: ``column`` holds one of ``values`` (as ``column IN (...)``; no value: no row), in the form to use on
    the small bookkeeping tables a lake keeps in its catalog. DuckLake 0.3 prunes a scan filtered by ``=`` or
    ``IN`` by first reading the column statistics of the table's data files (over a SQLite catalog, the catalog's
    whole statistics table: about 3 ms a statement over 5M events, growing with the lake's files;
    bench/README.md), which buys nothing for rows kept in the catalog. It does not prune by ``list_contains``;
    DuckDB still filters by it. A long list is joined instead, and pays the statistics."""
    if len(values) > ONE_OF_LIST_MAX:
        return f"{column} IN (SELECT unnest([{literals(*values)}]))"
    return f"list_contains([{literals(*values)}], {column})"


_SETTING_NAME = re.compile(r"[a-z][a-z0-9_]*")


def is_setting_name(name: object) -> bool:
    """Whether ``name`` looks like a DuckDB setting's name: it goes into ``SET`` unquoted."""
    return isinstance(name, str) and _SETTING_NAME.fullmatch(name) is not None


@contextmanager
def settings_applied(con: duckdb.DuckDBPyConnection, settings: Mapping[str, Any]) -> Iterator[None]:
    """DuckDB ``settings`` (name -> value) SET for what runs inside, and set back to what they were after. A
    setting DuckDB scopes to the whole database applies to its other connections meanwhile too. Run no open
    transaction out of it: an aborted one refuses the SET that restores."""
    for name in settings:
        if not is_setting_name(name):
            raise ValueError(f"not a DuckDB setting name: {name!r}")
    before = {name: scalar(con, f"SELECT current_setting({quote_string(name)})") for name in settings}
    try:
        for name, value in settings.items():
            con.execute(f"SET {name} = {literal(value)}")
        yield
    finally:
        for name, value in before.items():
            con.execute(f"SET {name} = {literal(value)}")
