"""The framework's bookkeeping tables in the lake (schema ``dbt_like``): batches, offsets, waiting rows, guards and
the shard count; opening a batch; and what the catalog says of a model's relation."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from dbt_like.compiler import PENDING_TABLE, STATE_SCHEMA, UNMATCHED_TABLE, Shard
from dbt_like.project import ProjectError
from dbt_like.sql import Connection, first_row, literal, literals, one_of, scalar

# Every step's transaction replaces its shard's row here (and a serialized model's row), so two writers'
# concurrent steps conflict: in a lake, two transactions deleting from the same file cannot both commit.
GUARDS_TABLE = f"{STATE_SCHEMA}.guards"
SHARDS_TABLE = f"{STATE_SCHEMA}.shards"
SHARD_COUNT_VIEW = f"{STATE_SCHEMA}.shard_count"
STATE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA};
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.batches (batch_id BIGINT, run_key VARCHAR, started_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS {STATE_SCHEMA}.offsets (model VARCHAR, input VARCHAR, batch_id BIGINT, shard INTEGER);
CREATE TABLE IF NOT EXISTS {PENDING_TABLE} (model VARCHAR, seq BIGINT, first_seen TIMESTAMP, shard INTEGER);
CREATE TABLE IF NOT EXISTS {UNMATCHED_TABLE} (model VARCHAR, seq BIGINT, batch_id BIGINT, shard INTEGER);
CREATE TABLE IF NOT EXISTS {GUARDS_TABLE} (guard VARCHAR, batch_id BIGINT, model VARCHAR, committed_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS {SHARDS_TABLE} (shard_count INTEGER);
"""
SINGLE = Shard()


@dataclass(frozen=True)
class Batch:
    """One micro-batch: every model step of one run shares its id and clock."""

    batch_id: int
    started_at: datetime


class UnseededState(Exception):
    """The bookkeeping tables exist but hold no shard count yet: another writer has created them and is about to
    seed them, or stopped in between."""


def ensure_state(
    con: Connection, shard: Shard = SINGLE, guards: Iterable[str] = (), more_ddl: str = "", seed: bool = True
) -> None:
    """Create the framework's bookkeeping tables (and ``more_ddl``'s) if they do not exist, record the shard count
    the first time (it cannot change: batch ids and offsets are divided by it), and seed the guard rows (a guard
    works by being deleted, so its row must exist before two writers race for it). Without ``seed``, tables with
    no shard count yet raise :class:`UnseededState`. Each statement on a lake pays its own catalog work: an
    existing lake's state is read by one query."""
    con.execute(STATE_DDL + more_ddl)
    counts, present = first_row(
        con, f"SELECT (SELECT list(DISTINCT shard_count) FROM {SHARDS_TABLE}), (SELECT list(guard) FROM {GUARDS_TABLE})"
    )
    if not counts and not seed:
        raise UnseededState("the bookkeeping tables hold no shard count yet")
    if not counts:
        _record_shard_count(con, shard.count)
    elif counts != [shard.count]:
        raise ProjectError(
            f"this lake was written by {' and '.join(map(str, sorted(counts)))} shard(s); a project of {shard.count} "
            "cannot continue it (batch ids and offsets are divided among the shards): run it with the lake's shard "
            "count, or write a new lake"
        )
    wanted = [f"shard-{index}" for index in range(shard.count)] + list(guards)
    missing = [guard for guard in wanted if guard not in (present or [])]
    if missing:
        rows = ", ".join(f"({literal(guard)}, 0, NULL, NULL)" for guard in missing)
        con.execute(f"INSERT INTO {GUARDS_TABLE} VALUES {rows}")


def recorded_shard_count(con: Connection) -> int:
    """The shard count the lake's writers recorded (1 before the first batch)."""
    return scalar(con, f"SELECT coalesce(max(shard_count), 1) FROM {SHARDS_TABLE}")


def _record_shard_count(con: Connection, count: int) -> None:
    """Record the lake's shard count, in a table and as a view. DuckLake lets two transactions insert into one table
    at once, but not create the same view: of two runs that seed a new lake at once, one conflicts, runs again and
    then finds the other's count and guard rows (no second, maybe different, count; no doubled guard rows)."""
    con.execute(f"INSERT INTO {SHARDS_TABLE} VALUES ({count})")
    con.execute(f"CREATE VIEW {SHARD_COUNT_VIEW} AS SELECT {count} AS shard_count")


def open_batch(con: Connection, run_key: str, started_at: datetime, shard: Shard = SINGLE) -> Batch:
    """The batch of ``run_key``, created on first use (all steps of one run share it): the shard's next id."""
    ensure_state(con, shard)
    return find_or_add_batch(con, run_key, started_at, shard)[0]


def find_or_add_batch(con: Connection, run_key: str, started_at: datetime, shard: Shard) -> tuple[Batch, bool]:
    """The batch of ``run_key``, and whether it was added now."""
    found, batch_id = first_row(
        con,
        f"SELECT any_value({{'id': batch_id, 'at': started_at}}) FILTER (WHERE run_key = {literal(run_key)}), "
        f"{shard.next_number('batch_id')} FROM {STATE_SCHEMA}.batches",
    )
    if found:
        return Batch(found["id"], found["at"]), False
    con.execute(f"INSERT INTO {STATE_SCHEMA}.batches VALUES ({literals(batch_id, run_key, started_at)})")
    return Batch(batch_id, started_at), True


def unread_rows(
    con: Connection, stream: str, readers: Iterable[str], given_up_readers: Mapping[str, Sequence[str]]
) -> str:
    """SQL condition on the rows of ``stream`` that a step has still to read: committed after the batch through
    which every one of ``readers`` has read the row's shard (a reader that has not read it in that shard: none; the
    shards the lake was written by, whatever a project says),
    waiting for a match (pending), or given up by a retrying model (a key of ``given_up_readers``: an arrival
    number names the same event in every stream that keeps it) and not read yet in its shard by every model reading
    its ``unmatched()`` (the value) (rows without a ``_seq`` are never either). The offsets of a model taken out
    of the project stay, and keep what it did not read (delete its rows of ``dbt_like.offsets``)."""
    read: dict[int, dict[str, int]] = {}
    for shard, model, batch_id in con.execute(
        f"SELECT shard, model, max(batch_id) FROM {STATE_SCHEMA}.offsets WHERE input = {literal(stream)} GROUP BY ALL"
    ).fetchall():
        read.setdefault(shard, {})[model] = batch_id
    shard_count = recorded_shard_count(con)
    every_reader = set(readers).union(*(models.keys() for models in read.values()))
    floors = [
        min((read.get(shard, {}).get(model, 0) for model in every_reader), default=2**63 - 1)
        for shard in range(shard_count)
    ]
    if shard_count == 1:
        unread = f"_batch_id > {floors[0]}"
    else:  # a row is its batch's, and a batch id its shard's (see Shard)
        cases = " ".join(f"WHEN {shard} THEN {floor}" for shard, floor in enumerate(floors))
        unread = f"_batch_id > CASE (_batch_id - 1) % {shard_count} {cases} END"
    if "_seq" in dict(table_columns(con, stream)):
        unread += f" OR _seq IN (SELECT seq FROM {PENDING_TABLE})"
        unread += "".join(
            f" OR _seq IN ({_given_up_unread(retrying, unmatched_readers)})"
            for retrying, unmatched_readers in given_up_readers.items()
            if unmatched_readers
        )
    return f"({unread})"


def _given_up_unread(retrying: str, readers: Sequence[str]) -> str:
    """SQL: the ``_seq`` of the rows ``retrying`` gave up on that some model of ``readers`` (those reading
    ``unmatched(retrying)``, whose offsets of ``retrying`` count its batches) has not read in the row's shard."""
    all_read = f"count(DISTINCT model) = {len(set(readers))}"
    read_through = (
        f"SELECT shard, CASE WHEN {all_read} THEN min(batch_id) ELSE 0 END AS batch_id "
        f"FROM {STATE_SCHEMA}.offsets WHERE {one_of('input', retrying)} AND {one_of('model', *readers)} GROUP BY shard"
    )
    return (
        f"SELECT u.seq FROM {UNMATCHED_TABLE} AS u LEFT JOIN ({read_through}) AS o USING (shard) "
        f"WHERE {one_of('u.model', retrying)} AND u.batch_id > coalesce(o.batch_id, 0)"
    )


def table_exists(con: Connection, name: str) -> bool:
    """Whether ``name`` exists in the connection's default catalog and schema."""
    return bool(
        scalar(
            con,
            f"SELECT count(*) FROM duckdb_tables() WHERE table_name = {literal(name)} "
            "AND schema_name = current_schema() AND database_name = current_database()",
        )
    )


def view_sql(con: Connection, name: str) -> str | None:
    """The definition DuckDB keeps for view ``name`` in the connection's default catalog and schema (None when
    there is no such view)."""
    row = first_row(
        con,
        f"SELECT sql FROM duckdb_views() WHERE view_name = {literal(name)} AND schema_name = current_schema() "
        "AND database_name = current_database()",
    )
    return row[0] if row else None


def table_columns(con: Connection, name: str) -> list[tuple[str, str]]:
    """``(column, type)`` of table ``name`` in the connection's default catalog and schema, in order."""
    return con.execute(
        f"SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = {literal(name)} "
        "AND schema_name = current_schema() AND database_name = current_database() ORDER BY column_index"
    ).fetchall()
