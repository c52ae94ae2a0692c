"""The lake as a batch opened: bookkeeping read at once, the tables' figures on first need."""

from __future__ import annotations

import duckdb

from dbt_like.lake_at_open import read_lake_at_open
from dbt_like.state import STATE_DDL


def lake_with_a_model() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute(STATE_DDL)
    con.execute("CREATE TABLE orders (item VARCHAR, _batch_id BIGINT)")
    con.execute("INSERT INTO orders VALUES ('a', 1), ('b', 2)")
    con.execute("INSERT INTO dbt_like.offsets VALUES ('orders', 'events', 2, 0)")
    return con


def test_opening_reads_no_table_and_the_figures_are_read_once_when_first_asked_for() -> None:
    con = lake_with_a_model()
    at_open = read_lake_at_open(con, ["orders", "not_made_yet"], shard=0)
    assert (at_open.tables, at_open.offsets) == (["orders"], {("orders", "events"): 2})
    con.execute("INSERT INTO orders VALUES ('c', 3)")  # not scanned as the batch opened: read when first asked for
    assert at_open.figures(None) is None  # no connection to read them with
    figures = at_open.figures(con)
    assert figures is not None and (figures.newest, figures.rows) == ({"orders": 3}, {"orders": 3})
    con.execute("INSERT INTO orders VALUES ('d', 4)")
    assert at_open.figures(None) == at_open.figures(con) == figures  # read once for the batch
