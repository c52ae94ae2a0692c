"""What a lake held for one writer when its batch opened, read in one transaction.

With one writer, nothing but the batch's own steps changes the models' tables until the batch ends. A step whose
inputs none of the batch's earlier steps wrote can then tell from this reading alone that it has nothing to do,
and skip the transaction it would otherwise open only to find that out (on a lake, each transaction pays a round
of catalog lookups: 0.05-0.1 s per step of an idle batch).

The tables' figures (highest ``_batch_id``, row count) are read on first need (:meth:`LakeAtOpen.figures`), not as
the batch opens: they scan every table, which costs more the more files the tables have, and only a step that
wrote no rows, or one whose inputs no step of the batch wrote, reads them. A batch whose first step brings rows
never does. Read later, they are still what the batch opened with for the tables no step of the batch wrote (but
for old events a maintenance run deleted meanwhile).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime

import duckdb

from dbt_like.compiler import PENDING_TABLE, STATE_SCHEMA, UNMATCHED_TABLE
from dbt_like.sql import first_row, one_of


@dataclass(frozen=True)
class Waiting:
    """A retried model's waiting rows: the lowest arrival number and the earliest time one was first seen."""

    floor: int
    first_seen: datetime


@dataclass(frozen=True)
class TableFigures:
    """The models' tables as one read transaction saw them."""

    newest: dict[str, int]  # a model table's highest _batch_id (0 when empty)
    rows: dict[str, int]  # a model table's row count


@dataclass
class LakeAtOpen:
    """The models' tables and the shard's bookkeeping as the batch-opening transaction saw them."""

    columns: dict[str, set[str]]  # every table of the default schema: its column names
    tables: list[str]  # the model tables that exist
    offsets: dict[tuple[str, str], int]  # (model, input): the last batch of the input the model consumed
    waiting: dict[str, Waiting]  # a retried model with waiting rows
    unmatched: dict[str, int]  # a retried model with rows that stopped waiting: the last batch that ended a wait
    _figures: TableFigures | None = None

    def figures(self, con: duckdb.DuckDBPyConnection | None) -> TableFigures | None:
        """The tables' figures, read in a transaction of their own on ``con`` the first time; None when they are
        not read yet and there is no connection to read them with."""
        if self._figures is None and con is not None:
            con.begin()
            try:
                self._figures = read_table_figures(con, self.tables)
            finally:
                con.rollback()
        return self._figures


def read_lake_at_open(con: duckdb.DuckDBPyConnection, models: Iterable[str], shard: int) -> LakeAtOpen:
    """Read :class:`LakeAtOpen` in the open transaction of ``con``, for the tables of ``models`` that exist."""
    columns: dict[str, set[str]] = {}
    for table, column in con.execute(
        "SELECT table_name, column_name FROM duckdb_columns() WHERE schema_name = current_schema() "
        "AND database_name = current_database()"
    ).fetchall():
        columns.setdefault(table, set()).add(column)
    of_shard = one_of("shard", shard)
    offsets_of_shard = f"(SELECT list((model, input, batch_id)) FROM {STATE_SCHEMA}.offsets WHERE {of_shard})"
    waiting_of_shard = (
        f"(SELECT list((model, min_seq, first_seen)) FROM (SELECT model, min(seq) AS min_seq, "
        f"min(first_seen) AS first_seen FROM {PENDING_TABLE} WHERE {of_shard} GROUP BY model))"
    )
    unmatched_of_shard = (
        f"(SELECT list((model, last_batch)) FROM (SELECT model, max(batch_id) AS last_batch FROM {UNMATCHED_TABLE} "
        f"WHERE {of_shard} GROUP BY model))"
    )
    offsets, waiting, unmatched = first_row(con, f"SELECT {offsets_of_shard}, {waiting_of_shard}, {unmatched_of_shard}")
    return LakeAtOpen(
        columns=columns,
        tables=[name for name in models if "_batch_id" in columns.get(name, ())],
        offsets={(model, upstream): batch_id for model, upstream, batch_id in offsets or []},
        waiting={model: Waiting(floor, first_seen) for model, floor, first_seen in waiting or []},
        unmatched=dict(unmatched or []),
    )


def read_table_figures(con: duckdb.DuckDBPyConnection, tables: list[str]) -> TableFigures:
    """Each table's highest ``_batch_id`` and row count, in one statement: each statement on a lake pays its own
    catalog lookups."""
    if not tables:
        return TableFigures(newest={}, rows={})
    scans = [f"(SELECT [coalesce(max(_batch_id), 0), count(*)] FROM {name})" for name in tables]
    figures = first_row(con, "SELECT " + ", ".join(scans))
    return TableFigures(
        newest={name: figure[0] for name, figure in zip(tables, figures, strict=True)},
        rows={name: figure[1] for name, figure in zip(tables, figures, strict=True)},
    )
