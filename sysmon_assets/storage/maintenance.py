"""Lake upkeep: move the bookkeeping rows inlined in the catalog to Parquet, merge the small files batches leave,
expire old snapshots, delete unreferenced files, and optionally drop old events. Run by the ``lake_maintenance``
job (``jobs.py``) on its schedule."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import TypeVar

import duckdb

from dbt_like import Project, table_exists
from dbt_like.compiler import STATE_SCHEMA
from dbt_like.concurrency import run_again_after_lost_races
from dbt_like.sql import literal, scalar
from dbt_like.state import SHARDS_TABLE
from sysmon_assets.storage.lake import (
    CATALOG_DATABASE,
    COMPLETES_BATCH,
    INLINED_SCHEMAS,
    LAKE,
    NOTED_BATCH_ID,
    current_snapshot,
    last_complete_batch,
    recorded_shards,
    tables_of,
)

# The stream models' tables, whose old rows a retention drops by the time their batch started (a test checks that
# every stream model is listed). The keyed tables are left whole: a long-lived process still opens connections long
# after its create arrived.
EVENT_TABLES = (
    "winlogbeat_stream",
    "winlogbeat_rejects",
    "winlogbeat_stream_rekey",
    "sysmon_process_create",
    "sysmon_network_connect",
    "sysmon_join",
    "sigma_detections",
)

# The highest arrival number (_seq) the stream held when a retention last dropped rows: the ingest step numbers new
# lines above it, so that a number a kept row still holds (the process table, a pending join) is never given again.
DROPPED_SEQ_TABLE = "ingest.dropped_seq"
RETENTION_DDL = f"CREATE SCHEMA IF NOT EXISTS ingest; CREATE TABLE IF NOT EXISTS {DROPPED_SEQ_TABLE} (seq BIGINT);"
# Snapshot ids per expiry call: the catalog query lists them all (a week of one-minute batches is ~100,000).
EXPIRED_PER_CALL = 5000
# How long the snapshots between two batch boundaries (one per step) are kept: readers read boundaries only, and
# every transaction's catalog work grows with the snapshots kept (measured: docs/storage.md, "Maintenance"), so
# they go long before the retention. Those a batch still running may need are kept longer (running_batch_floor).
BETWEEN_BATCHES_KEPT = timedelta(hours=1)
T = TypeVar("T")


@dataclass
class Upkeep:
    """What one maintenance run did, for run metadata."""

    files_before: dict[str, int] = field(default_factory=dict)
    files_after: dict[str, int] = field(default_factory=dict)
    rows_dropped: dict[str, int] = field(default_factory=dict)
    files_deleted: int = 0


def data_files(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Data files per table (``schema.table``) in the lake's current snapshot."""
    tables = con.execute(
        f"SELECT schema_name, table_name FROM duckdb_tables() WHERE database_name = {literal(LAKE)} ORDER BY ALL"
    ).fetchall()
    return {
        f"{schema}.{table}": scalar(
            con, f"SELECT count(*) FROM ducklake_list_files('{LAKE}', {literal(table)}, schema => {literal(schema)})"
        )
        for schema, table in tables
    }


def drop_old_events(
    con: duckdb.DuckDBPyConnection, older_than: datetime, project: Project, kept: Mapping[str, str] | None = None
) -> dict[str, int]:
    """Delete stream rows whose batch started before ``older_than``, but those a step of ``project`` has still to
    read (a step that lags or has not run yet, a connection still waiting for its create, or given up and not yet
    hunted) and those ``kept`` holds an SQL condition on per table (what a sink has still to send), in one
    transaction that also records the stream's highest arrival number (see ``DROPPED_SEQ_TABLE``)."""
    kept = kept or {}
    dropped = {}
    con.execute(RETENTION_DDL)
    con.begin()
    if table_exists(con, "winlogbeat_stream"):
        highest = scalar(
            con,
            f"SELECT max(seq) FROM (SELECT max(_seq) AS seq FROM winlogbeat_stream "
            f"UNION ALL SELECT seq FROM {DROPPED_SEQ_TABLE})",
        )
        con.execute(f"DELETE FROM {DROPPED_SEQ_TABLE}")
        con.execute(f"INSERT INTO {DROPPED_SEQ_TABLE} VALUES ({literal(highest)})")
    for table in EVENT_TABLES:
        if table_exists(con, table):
            dropped[table] = scalar(
                con,
                f"DELETE FROM {table} WHERE _batch_id IN "
                f"(SELECT batch_id FROM dbt_like.batches WHERE started_at < {literal(older_than)}) "
                f"AND NOT ({project.unread_rows(con, table)} OR {kept.get(table, 'false')})",
            )
    con.commit()
    return dropped


def shard_count(con: duckdb.DuckDBPyConnection) -> int:
    """The lake's shard count (1 before its first batch)."""
    return recorded_shards(con) or 1


def _has_state(con: duckdb.DuckDBPyConnection) -> bool:
    return {"batches", "shards"} <= tables_of(con, LAKE, STATE_SCHEMA)


def running_batch_floor(con: duckdb.DuckDBPyConnection, older_than: datetime) -> int | None:
    """The oldest snapshot a transaction of a batch that may still be running can have begun at, or None when no
    batch may be running. DuckLake tells a commit's conflicts with other writers from the snapshots taken since its
    transaction began, and reads the files its transaction listed: expired or deleted, a shard's step would commit
    beside a race it lost (a row twice) or fail on a missing file. A shard runs one batch at a time (its batch ids
    are its own: see ``dbt_like.Shard``), so one whose newest batch has no completing commit note (running, or failed
    until its next one completes) began it after the snapshot its newest complete batch left (with none, at any: 0).
    Such a snapshot taken before ``older_than`` (the retention), or gone, is not counted: no batch runs that long, and
    a shard idle since then has lost the note that its newest batch completed."""
    if not _has_state(con):
        return None
    return scalar(
        con,
        f"""WITH shards AS (SELECT max(shard_count) AS k FROM {SHARDS_TABLE}),
        completed AS (
            SELECT {NOTED_BATCH_ID} AS batch_id, snapshot_id
            FROM {CATALOG_DATABASE}.ducklake_snapshot_changes WHERE {COMPLETES_BATCH}),
        newest AS (SELECT (batch_id - 1) % k AS shard, max(batch_id) AS batch_id FROM {STATE_SCHEMA}.batches, shards
            GROUP BY ALL),
        complete AS (SELECT (batch_id - 1) % k AS shard, max(snapshot_id) AS snapshot_id FROM completed, shards
            GROUP BY ALL)
        SELECT min(s.snapshot_id)
        FROM newest AS n LEFT JOIN complete AS c USING (shard)
        JOIN {CATALOG_DATABASE}.ducklake_snapshot AS s ON s.snapshot_id = coalesce(c.snapshot_id, 0)
        WHERE NOT EXISTS (SELECT 1 FROM completed AS d WHERE d.batch_id = n.batch_id)
          AND CAST(s.snapshot_time AS TIMESTAMPTZ) >= {_instant(older_than)}""",
    )


def _instant(utc: datetime) -> str:
    """A naive UTC time as a TIMESTAMPTZ literal: cast, it would be read in the session's time zone (the host's)."""
    return literal(utc.replace(tzinfo=UTC))


def expirable_snapshots(
    con: duckdb.DuckDBPyConnection, older_than: datetime, between_batches_older_than: datetime
) -> list[int]:
    """The snapshots taken before ``older_than``, and those that complete no batch taken before
    ``between_batches_older_than`` and before :func:`running_batch_floor`, but never the one the last complete batch
    left (readers read it) nor a later one. The ids are chosen here, by DuckDB's comparison of the snapshots' times:
    given ``older_than``, DuckLake 0.3 (3f1b372) with a SQLite catalog also expired snapshots taken after it (it
    compares the text). They are read from the catalog's own tables (``ducklake_snapshots()`` lists every snapshot's
    changes too), where a SQLite catalog keeps a time as text with its offset and PostgreSQL as a TIMESTAMPTZ: the
    cast reads both."""
    boundary = last_complete_batch(con)
    kept_from = boundary[1] if boundary else current_snapshot(con)
    floor = running_batch_floor(con, older_than)
    between_kept_from = kept_from if floor is None else min(kept_from, floor)
    taken = "CAST(s.snapshot_time AS TIMESTAMPTZ)"
    return [
        snapshot_id
        for (snapshot_id,) in con.execute(
            f"SELECT s.snapshot_id FROM {CATALOG_DATABASE}.ducklake_snapshot AS s "
            f"LEFT JOIN {CATALOG_DATABASE}.ducklake_snapshot_changes AS c USING (snapshot_id) "
            f"WHERE s.snapshot_id < {literal(kept_from)} AND ({taken} < {_instant(older_than)} "
            f"OR {taken} < {_instant(between_batches_older_than)} AND NOT coalesce({COMPLETES_BATCH}, false) "
            f"AND s.snapshot_id < {literal(between_kept_from)}) "
            "ORDER BY s.snapshot_id"
        ).fetchall()
    ]


def _expire_snapshots(
    con: duckdb.DuckDBPyConnection, older_than: datetime, between_batches_older_than: datetime
) -> None:
    expired = expirable_snapshots(con, older_than, between_batches_older_than)
    for start in range(0, len(expired), EXPIRED_PER_CALL):
        versions = literal(expired[start : start + EXPIRED_PER_CALL])
        con.execute(f"CALL ducklake_expire_snapshots('{LAKE}', versions => {versions})")


def delete_replaced_files(con: duckdb.DuckDBPyConnection, older_than: datetime) -> int:
    """Delete the files DuckLake scheduled for deletion (replaced by a merge, or left by expired snapshots), but
    those a batch that may still be running could read: DuckLake schedules a merge's files at once, though a
    transaction that listed them may still read them. If one was scheduled since the snapshot
    :func:`running_batch_floor` names, it waits for a later run, and so do those scheduled up to two and a half days
    before that snapshot (DuckLake 0.3 compares the times as text with a SQLite catalog, '2026-12-06 08:53:16+00' <
    '2026-12-06T...', so only the date counts). The number of files deleted."""
    floor = running_batch_floor(con, older_than)
    if floor is not None:
        taken = scalar(
            con,
            f"SELECT CAST(snapshot_time AS TIMESTAMPTZ) FROM {CATALOG_DATABASE}.ducklake_snapshot "
            f"WHERE snapshot_id = {literal(floor)}",
        )
        waiting = scalar(
            con,
            f"SELECT count(*) FROM {CATALOG_DATABASE}.ducklake_files_scheduled_for_deletion "
            f"WHERE CAST(schedule_start AS TIMESTAMPTZ) >= {literal(taken)}",
        )
        if waiting:
            return _cleanup(con, f"older_than => {literal(_before_in_every_time_zone(taken))}")
    return _cleanup(con, "cleanup_all => true")


def _cleanup(con: duckdb.DuckDBPyConnection, which: str) -> int:
    return len(_call(con, f"ducklake_cleanup_old_files('{LAKE}', {which})"))


def _call(con: duckdb.DuckDBPyConnection, call: str) -> list[tuple]:
    """``CALL call``, run again when it loses a race with a shard's batch committing meanwhile."""
    return _again(con, lambda: con.execute(f"CALL {call}").fetchall(), call.split("(", 1)[0])


def _again(con: duckdb.DuckDBPyConnection, action: Callable[[], T], what: str) -> T:
    return run_again_after_lost_races(con, action, f"maintenance ({what})")


def _before_in_every_time_zone(instant: datetime) -> datetime:
    """A time to give ``ducklake_cleanup_old_files`` for files scheduled before ``instant``: with a SQLite catalog,
    DuckLake 0.3 compares it with the text of the schedule's time ('2026-12-06 08:53:16+09' < '2026-12-06T...'), so
    only the date counts, in the time zone the writing process wrote it in: noon of a day 36 hours before is before
    ``instant`` in every time zone, and with PostgreSQL too."""
    return datetime.combine((instant.astimezone(UTC) - timedelta(hours=36)).date(), time(12), tzinfo=UTC)


def maintain(
    con: duckdb.DuckDBPyConnection,
    now: datetime,
    snapshot_retention_days: float,
    event_retention_days: float | None,
    *,
    project: Project | None = None,
    kept: Mapping[str, str] | None = None,
) -> Upkeep:
    """One maintenance pass over the lake attached to ``con``; an event retention needs the ``project`` whose
    steps read the lake (``project`` and ``kept``: see :func:`drop_old_events`)."""
    upkeep = Upkeep(files_before=data_files(con))
    if event_retention_days:
        if project is None:
            raise ValueError("an event retention keeps what the project's steps have still to read: pass the project")
        cutoff = now - timedelta(days=event_retention_days)
        upkeep.rows_dropped = _again(con, lambda: drop_old_events(con, cutoff, project, kept), "the event retention")
    # the bookkeeping rows inlined since the last run go to one Parquet file per table; DuckLake 0.3 moves only the
    # current rows: as a batch before the last left them, the bookkeeping tables read empty after this (models do not)
    for schema in INLINED_SCHEMAS:
        _call(con, f"ducklake_flush_inlined_data('{LAKE}', schema_name => {literal(schema)})")
    older_than = now - timedelta(days=snapshot_retention_days)
    sharded = shard_count(con) > 1
    if sharded:  # the files earlier runs replaced: a batch that opens while this run merges began after them
        upkeep.files_deleted = delete_replaced_files(con, older_than)
    _call(con, f"ducklake_rewrite_data_files('{LAKE}')")
    _call(con, f"ducklake_merge_adjacent_files('{LAKE}')")
    _again(con, lambda: _expire_snapshots(con, older_than, now - BETWEEN_BATCHES_KEPT), "the snapshot expiry")
    if not sharded:  # no batch runs beside it (the writer's pool): this run's too
        upkeep.files_deleted = _cleanup(con, "cleanup_all => true")
    upkeep.files_after = data_files(con)
    return upkeep
