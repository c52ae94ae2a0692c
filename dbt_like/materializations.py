"""How a model's step writes its rows, per materialization (dbt's materializations):

- ``stream``: append-only (:func:`append`). Optional ``dedupe_key='<columns>'``: a row whose key is already in
  the table, or that an earlier row of the same step (lowest ``order_by``, default ``_seq``) has, is not appended:
  the first delivery wins; a NULL in the key never matches. ``order_by`` must tell a step's rows of one key apart
  (the default ``_seq`` is unique): rows tied on the lowest value, or whose value is NULL, are all appended.
  Optional ``retry_unmatched=<input>`` with ``retry_grace_minutes=N`` (kept by the runner, dbt_like/runner.py):
  input rows that produced no output row (matched on ``_seq``) are offered again in later steps until N minutes of
  batch time have passed. The rows whose time runs out are kept (``dbt_like.unmatched``) for the models that read
  them with ``unmatched(<model>)`` (dbt_like/compiler.py), until every such model has read them (deleted in bulk,
  by a reader's step, once ``Project.let_go_of_unmatched_at`` rows are kept).
- ``table``: keyed upsert on ``unique_key`` (:func:`upsert`); the row with the highest ``order_by`` wins (a NULL
  key matches none).
- ``view``: the model's query stored in the catalog as a view, so readers always see it over the current rows of
  what it reads (every ``ref()`` in it is the whole relation). Its step replaces the view only when the query
  changed (a newer version of its SQL, other variables: :func:`view_outdated`), and otherwise has nothing to do.

Each function runs inside the step's transaction; ``query`` is the model's compiled query, parenthesized.
"""

from __future__ import annotations

from typing import Any

from dbt_like.sql import Connection, first_row, literal, quote_string, scalar
from dbt_like.state import Batch, view_sql

# How DuckDB's type names show a nested type: INTEGER[], INTEGER[2], STRUCT(...), MAP(...), UNION(...).
NESTED_TYPE_MARKS = ("[", "STRUCT(", "MAP(", "UNION(")


def config_columns(listing: str) -> list[str]:
    """``'a, b'`` -> ``['a', 'b']``: a config's column list."""
    return [column.strip() for column in listing.split(",")]


def _bound(value: Any, text: str, kind: str) -> str:
    """A key range's bound as a constant of its column's type: DuckDB's text of it cast back (NULL where DuckDB
    cannot read it back, as an INTERVAL of 2^31 hours), but a TIMESTAMPTZ's Python value (DuckDB writes its offset
    without seconds, in a TimeZone not UTC) unless it is infinite (which Python cannot hold)."""
    if kind == "TIMESTAMP WITH TIME ZONE" and text not in ("infinity", "-infinity"):
        return literal(value)
    return f"TRY_CAST({quote_string(text)} AS {kind})"


def _within(column: str, low: Any, high: Any, low_text: str, high_text: str, kind: str) -> str:
    """A condition holding for the table's rows whose ``column`` lies between the step's lowest and highest key:
    true for every row where a bound is not known (DuckDB folds the constants, so a known range still prunes
    files), and for a nested type (a list, array, STRUCT, MAP or UNION: BETWEEN refuses some, and their text does
    not always give the value back: a UNION's drops its tag, a TIMESTAMPTZ inside one its offset's seconds)."""
    if any(mark in kind for mark in NESTED_TYPE_MARKS):
        return "true"
    low_bound, high_bound = _bound(low, low_text, kind), _bound(high, high_text, kind)
    return f"({column} BETWEEN {low_bound} AND {high_bound} OR {low_bound} IS NULL OR {high_bound} IS NULL)"


def append(con: Connection, name: str, query: str, config: dict[str, Any], batch: Batch) -> int:
    """Append the step's rows; with a ``dedupe_key``, only the first row of each key (by ``order_by``) the
    step brings, and none whose key is in the table already.

    The step's later deliveries are found by grouping only its key columns and order column (a window over
    the whole rows would hold every column of the step in memory), in the statement that appends the rest:
    the step's query (which must be deterministic) is read again for those columns only, not staged. A lake
    has no index: the anti-join reads only the table's rows whose key columns lie within the step's key
    ranges, given as constants so that files whose min/max statistics lie outside are skipped. A key column
    that is NULL in every row of the step matches nothing.
    """
    rows = f"SELECT *, {batch.batch_id} AS _batch_id FROM {query}"
    key = config.get("dedupe_key")
    if not key:
        return scalar(con, f"INSERT INTO {name} BY NAME {rows}")
    columns, order_by = config_columns(key), config["order_by"]
    matches = " AND ".join(f"n.{c} = t.{c}" for c in columns)
    repeated = (
        f"SELECT {key}, min({order_by}) AS __first FROM {query} "
        f"WHERE {' AND '.join(f'{c} IS NOT NULL' for c in columns)} GROUP BY ALL HAVING count(*) > 1"
    )
    firsts = f"SELECT n.* FROM ({rows}) AS n ANTI JOIN ({repeated}) AS t ON {matches} AND n.{order_by} <> t.__first"
    bounds = first_row(
        con,
        "SELECT "
        + ", ".join(f"min({c}), max({c}), min({c})::VARCHAR, max({c})::VARCHAR, typeof(min({c}))" for c in columns)
        + f" FROM {query}",
    )
    if None in bounds:
        return scalar(con, f"INSERT INTO {name} BY NAME {firsts}")
    ranges = " AND ".join(
        _within(c, *column_bounds) for c, *column_bounds in zip(columns, *(bounds[i::5] for i in range(5)), strict=True)
    )
    return scalar(
        con,
        f"INSERT INTO {name} BY NAME SELECT n.* FROM ({firsts}) AS n "
        f"ANTI JOIN (SELECT {key} FROM {name} WHERE {ranges}) AS t ON {matches}",
    )


def upsert(con: Connection, name: str, query: str, config: dict[str, Any], batch: Batch, shards: int) -> int:
    """Replace the rows of the keys the step brings with its newest row per key. A key that is NULL (in any of
    its columns) equals no other, as in SQL: such rows are all kept, in one step as over several. With more
    than one of ``shards`` writing the lake, a row another shard committed is replaced only by a newer one."""
    key, order_by = config["unique_key"], config["order_by"]
    null_key = " OR ".join(f"{column} IS NULL" for column in config_columns(key))
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE __upsert AS SELECT * FROM {query} "
        f"QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY {order_by} DESC) = 1 OR {null_key}"
    )
    if shards > 1:
        # Another shard may have committed a newer row for a key (one writer's rows only ever get newer).
        keys = " AND ".join(f"t.{c} = u.{c}" for c in config_columns(key))
        order = {alias: "row(" + ", ".join(f"{alias}.{c}" for c in config_columns(order_by)) + ")" for alias in "tu"}
        # the table's rows of the step's keys first, the table on the left: built from __upsert whatever the
        # model's duckdb_settings say of choosing a join's build side
        rows = f"SELECT t.* FROM {name} AS t SEMI JOIN __upsert AS u ON {keys}"
        con.execute(f"DELETE FROM __upsert AS u USING ({rows}) AS t WHERE {keys} AND {order['t']} >= {order['u']}")
    con.execute(f"DELETE FROM {name} WHERE ({key}) IN (SELECT {key} FROM __upsert)")  # one column or several
    written = scalar(con, f"INSERT INTO {name} BY NAME SELECT *, {batch.batch_id} AS _batch_id FROM __upsert")
    con.execute("DROP TABLE __upsert")
    return written


def view_outdated(con: Connection, name: str, query: str) -> bool:
    """Whether view ``name`` is missing or stores another query than ``query``. DuckDB keeps a view's query
    as it prints it back, not as written, so ``query`` is printed the same way through a temporary view."""
    stored = view_sql(con, name)
    if stored is None:
        return True
    con.execute(f"CREATE OR REPLACE TEMP VIEW __view_probe AS {query}")
    probe = scalar(con, "SELECT sql FROM duckdb_views() WHERE view_name = '__view_probe' AND temporary")
    con.execute("DROP VIEW __view_probe")
    # 'CREATE VIEW <name> AS <query>;' and 'CREATE TEMP VIEW __view_probe AS <query>;': compare the queries
    return stored.partition(" AS ")[2] != probe.partition(" AS ")[2]


def new_columns(con: Connection, query: str, existing: set[str]) -> list[tuple[str, str]]:
    """The columns (name, type) ``query`` selects that are not in ``existing`` (dbt's ``on_schema_change=
    'append_new_columns'`` adds them); the query is bound, not run."""
    relation = con.sql(f"SELECT * FROM {query} WHERE false")
    known = {column.lower() for column in existing}  # DuckDB's names are case-insensitive
    return [
        (column, str(kind))
        for column, kind in zip(relation.columns, relation.types, strict=True)
        if column.lower() not in known
    ]
