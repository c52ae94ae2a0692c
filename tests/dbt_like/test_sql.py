"""Values written into SQL as literals read back as the values binding them would give."""

from __future__ import annotations

import enum
import math
import subprocess
import sys
import uuid
from datetime import UTC, date, datetime, time, timedelta
from decimal import Decimal

import duckdb
import numpy as np
import pytest

from dbt_like.sql import literal, literals, one_of, quote_identifier, settings_applied


@pytest.mark.parametrize(
    "value",
    [
        None,
        True,
        False,
        0,
        -(2**63),
        2**63 - 1,
        0.1,
        -1e-300,
        -0.0,
        float("inf"),
        float("-inf"),
        Decimal("12.50"),
        Decimal("1E+2"),
        Decimal("0E-7"),
        Decimal("-0.000000000000000000000000000000000001"),
        b"\x00\xab'; --",
        time(10, 11, 12, 123456),
        timedelta(days=-1, microseconds=5),
        "",
        "it's; DROP TABLE t; --",
        "a\x00b\x00",
        'line\nbreak \\ back\'slash "quote" ünïcødé ☃',
        "$$ dollar $$ ? $1",
        uuid.UUID("12345678-1234-5678-1234-567812345678"),
        datetime(2026, 12, 1, 13, 20, 18, 123456),
        datetime(2026, 12, 1, 13, 20, 18, tzinfo=UTC),
        date(2026, 2, 28),
        ["a", "b'c", None],
        [1, 2, 3],
        [],
    ],
)
def test_a_literal_reads_back_as_the_bound_value(value: object) -> None:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    from_literal = con.execute(f"SELECT {literal(value)}").fetchone()[0]
    assert from_literal == value
    assert type(from_literal) is type(value) or value is None
    if isinstance(value, float):
        assert math.copysign(1, from_literal) == math.copysign(1, value)


class Level(enum.IntEnum):
    HIGH = 3


def test_subclasses_of_numbers_are_their_numbers() -> None:
    con = duckdb.connect()
    assert con.execute(f"SELECT {literal(np.float64(1.5))}, {literal(Level.HIGH)}").fetchone() == (1.5, 3)
    assert math.isnan(con.execute(f"SELECT {literal(float('nan'))}").fetchone()[0])


def test_literals_fill_a_values_row() -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE t (a VARCHAR, b BIGINT, c TIMESTAMP)")
    con.execute(f"INSERT INTO t VALUES ({literals('x;y', 7, datetime(2026, 1, 2, 3, 4, 5))})")
    assert con.execute("SELECT * FROM t").fetchall() == [("x;y", 7, datetime(2026, 1, 2, 3, 4, 5))]


@pytest.mark.parametrize("value", [Decimal("NaN"), time(1, tzinfo=UTC), object()])
def test_a_value_with_no_literal_is_refused(value: object) -> None:
    with pytest.raises((TypeError, ValueError), match=r"no .*literal"):
        literal(value)


def test_an_identifier_may_hold_any_character() -> None:
    con = duckdb.connect()
    name = 'odd "name"; with space'
    con.execute(f"CREATE TABLE {quote_identifier(name)} AS SELECT 1 AS x")
    assert con.execute("SELECT table_name FROM duckdb_tables()").fetchall() == [(name,)]


def test_literals_keep_pandas_unimported() -> None:
    """Why literals, not bound parameters: DuckDB 1.4 imports pandas on a process's first bound parameter."""
    probe = (
        "import sys, duckdb\n"
        "from dbt_like.sql import literal\n"
        "con = duckdb.connect()\n"
        "con.execute(f'SELECT {literal(\"x\")}').fetchall()\n"
        "assert 'pandas' not in sys.modules, 'a literal imported pandas'\n"
        "con.execute('SELECT ?', ['x']).fetchall()\n"
        "print('pandas' in sys.modules)\n"
    )
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True).stdout == "True\n"


def test_settings_applied_refuses_a_name_that_is_not_a_setting_name() -> None:
    con = duckdb.connect()
    with pytest.raises(ValueError, match="not a DuckDB setting name"), settings_applied(con, {"threads; SET x=1": 1}):
        pass


@pytest.mark.parametrize(
    ("column_type", "stored", "wanted"),
    [
        ("VARCHAR", ["shard-0", "it's", "", None, "b"], ["shard-0", "it's", "absent"]),
        ("INTEGER", [0, 1, -7, None], [0, -7]),
        ("BIGINT", [2**62, 3, None], [2**62]),
        ("TIMESTAMP", [datetime(2026, 12, 1, 13, 0), datetime(2026, 12, 2), None], [datetime(2026, 12, 2)]),
        ("VARCHAR", ["a", None], []),
        ("VARCHAR", [f"k{i}" for i in range(0, 3000, 7)] + [None], [f"k{i}" for i in range(2000)]),  # a long list
    ],
)
def test_one_of_selects_the_rows_holding_one_of_the_values(column_type: str, stored: list, wanted: list) -> None:
    with duckdb.connect() as con:
        con.execute(f"CREATE TABLE t (v {column_type})")
        con.execute(f"INSERT INTO t VALUES {', '.join(f'({literal(value)})' for value in stored)}")
        picked = con.execute(f"SELECT v FROM t WHERE {one_of('v', *wanted)} ORDER BY ALL").fetchall()
        deleted = con.execute(f"DELETE FROM t WHERE {one_of('v', *wanted)}").fetchone()[0]
    expected = sorted(value for value in stored if value is not None and value in wanted)
    assert [row[0] for row in picked] == expected
    assert deleted == len(expected)
