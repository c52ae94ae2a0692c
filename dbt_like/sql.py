"""Small helpers for running statements on a DuckDB connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb


def scalar(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> Any:
    """The first column of the first row of ``sql`` (None when it returns no row).

    The whole result is fetched, so the connection is free for the next statement.
    """
    rows = con.execute(sql, params or []).fetchall()
    return rows[0][0] if rows else None


def first_row(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence[Any] | None = None) -> tuple | None:
    """The first row of ``sql``, or None; the whole result is fetched."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def quote_string(text: str) -> str:
    """``text`` as a SQL string literal."""
    return "'" + str(text).replace("'", "''") + "'"


def quote_identifier(name: str) -> str:
    """``name`` as a quoted SQL identifier (any characters, quotes included)."""
    return '"' + str(name).replace('"', '""') + '"'
