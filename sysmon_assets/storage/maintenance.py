"""Lake upkeep: move the bookkeeping rows inlined in the catalog to Parquet, merge the small files batches leave,
expire old snapshots, delete unreferenced files, and optionally drop old events. Run by the ``lake_maintenance``
job (``jobs.py``) on its schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta

import duckdb

from dbt_like import table_exists, unread_rows
from dbt_like.compiler import STATE_SCHEMA
from dbt_like.sql import literal, scalar
from sysmon_assets.storage.lake import (
    CATALOG_DATABASE,
    COMPLETES_BATCH,
    INLINED_SCHEMAS,
    LAKE,
    current_snapshot,
    last_complete_batch,
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


def drop_old_events(con: duckdb.DuckDBPyConnection, older_than: datetime) -> dict[str, int]:
    """Delete stream rows whose batch started before ``older_than``, but those a step has still to read (a step
    that lags, a connection still waiting for its create, or given up and not yet hunted), in one transaction
    that also records the stream's highest arrival number (see ``DROPPED_SEQ_TABLE``)."""
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
                f"AND NOT {unread_rows(con, table)}",
            )
    con.commit()
    return dropped


@dataclass(frozen=True)
class ShardProgress:
    """A shard's newest batch, and its newest complete one (None: none yet) with the snapshot that completed it."""

    newest_batch: int
    complete_batch: int | None
    complete_snapshot: int | None

    @property
    def may_be_running(self) -> bool:
        """Whether the newest batch has not completed: running, or failed until the shard's next one completes."""
        return self.complete_batch != self.newest_batch


def shard_progress(con: duckdb.DuckDBPyConnection) -> list[ShardProgress]:
    """Each shard's progress, from the bookkeeping's batches and the catalog's commit notes (a shard's batch ids
    are its own: see ``dbt_like.Shard``)."""
    state = scalar(
        con,
        f"SELECT count(*) FROM duckdb_tables() WHERE database_name = {literal(LAKE)} "
        f"AND schema_name = {literal(STATE_SCHEMA)} AND table_name IN ('batches', 'shards')",
    )
    if state < 2:
        return []
    rows = con.execute(
        f"""WITH shards AS (SELECT max(shard_count) AS k FROM {STATE_SCHEMA}.shards),
        newest AS (SELECT (batch_id - 1) % k AS shard, max(batch_id) AS batch_id FROM {STATE_SCHEMA}.batches, shards
            GROUP BY ALL),
        complete AS (
            SELECT (batch_id - 1) % k AS shard, max(batch_id) AS batch_id, max(snapshot_id) AS snapshot_id
            FROM (SELECT CAST(commit_extra_info::JSON->>'batch_id' AS BIGINT) AS batch_id, snapshot_id
                  FROM {CATALOG_DATABASE}.ducklake_snapshot_changes WHERE {COMPLETES_BATCH}), shards
            GROUP BY ALL)
        SELECT n.batch_id, c.batch_id, c.snapshot_id FROM newest AS n LEFT JOIN complete AS c USING (shard)"""
    ).fetchall()
    return [ShardProgress(*row) for row in rows]


def running_batch_floor(con: duckdb.DuckDBPyConnection) -> int | None:
    """The oldest snapshot a transaction of a batch that may still be running can have begun at, or None when no
    batch may be running. DuckLake tells a commit's conflicts with other writers from the snapshots taken since its
    transaction began, and reads the files its transaction listed: expired or deleted, a shard's step would commit
    beside a race it lost (a row twice) or fail on a missing file. A shard runs one batch at a time, so one whose
    newest batch may be running began it after the snapshot its newest complete batch left (with none, at any: 0)."""
    running = [shard.complete_snapshot or 0 for shard in shard_progress(con) if shard.may_be_running]
    return min(running, default=None)


def _instant(utc: datetime) -> str:
    """A naive UTC time as a TIMESTAMPTZ literal: cast, it would be read in the session's time zone (the host's)."""
    return literal(utc.replace(tzinfo=UTC))


def expirable_snapshots(
    con: duckdb.DuckDBPyConnection, older_than: datetime, between_batches_older_than: datetime
) -> list[int]:
    """The snapshots taken before ``older_than``, and those that complete no batch taken before
    ``between_batches_older_than`` and before :func:`running_batch_floor`, but never the one the last complete batch
    left (readers read it) nor a later one, nor the one each shard's newest complete batch left. The ids are chosen
    here, by DuckDB's comparison of the snapshots' times: given ``older_than``, DuckLake 0.3 (3f1b372) with a SQLite
    catalog also expired snapshots taken after it (it compares the text). They are read from the catalog's own tables
    (``ducklake_snapshots()`` lists every snapshot's changes too), where a SQLite catalog keeps a time as text with
    its offset and PostgreSQL as a TIMESTAMPTZ: the cast reads both."""
    boundary = last_complete_batch(con)
    kept_from = boundary[1] if boundary else current_snapshot(con)
    progress = shard_progress(con)
    running = [shard.complete_snapshot or 0 for shard in progress if shard.may_be_running]
    between_kept_from = min([kept_from, *running])
    # each shard's newest complete batch's: without its note, an idle shard would look like a running one
    completions = [shard.complete_snapshot for shard in progress if shard.complete_snapshot is not None]
    taken = "CAST(s.snapshot_time AS TIMESTAMPTZ)"
    return [
        snapshot_id
        for (snapshot_id,) in con.execute(
            f"SELECT s.snapshot_id FROM {CATALOG_DATABASE}.ducklake_snapshot AS s "
            f"LEFT JOIN {CATALOG_DATABASE}.ducklake_snapshot_changes AS c USING (snapshot_id) "
            f"WHERE s.snapshot_id < {literal(kept_from)} AND ({taken} < {_instant(older_than)} "
            f"OR {taken} < {_instant(between_batches_older_than)} AND NOT coalesce({COMPLETES_BATCH}, false) "
            f"AND s.snapshot_id < {literal(between_kept_from)}) "
            f"AND NOT list_contains({literal(completions)}::BIGINT[], s.snapshot_id) "
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


def delete_replaced_files(con: duckdb.DuckDBPyConnection, now: datetime, retention: timedelta) -> int:
    """Delete the files DuckLake scheduled for deletion (replaced by a merge, or left by expired snapshots), unless
    a batch that may still be running began before one of them was scheduled: DuckLake schedules a merge's files at
    once, though a transaction that listed them may still read them. Those wait for a later run, and at most the
    retention; the number of files deleted."""
    floor = running_batch_floor(con)
    if floor is not None:
        waiting = scalar(
            con,
            f"SELECT count(*) FROM {CATALOG_DATABASE}.ducklake_files_scheduled_for_deletion WHERE "
            f"CAST(schedule_start AS TIMESTAMPTZ) >= coalesce((SELECT CAST(snapshot_time AS TIMESTAMPTZ) FROM "
            f"{CATALOG_DATABASE}.ducklake_snapshot WHERE snapshot_id = {literal(floor)}), '-infinity')",
        )
        if waiting:
            return _cleanup(con, f"older_than => {literal(_before_in_every_time_zone(now - retention))}")
    return _cleanup(con, "cleanup_all => true")


def _cleanup(con: duckdb.DuckDBPyConnection, which: str) -> int:
    return len(con.execute(f"CALL ducklake_cleanup_old_files('{LAKE}', {which})").fetchall())


def _before_in_every_time_zone(utc: datetime) -> datetime:
    """A time to give ``ducklake_cleanup_old_files`` for files scheduled before ``utc``: with a SQLite catalog,
    DuckLake 0.3 compares it with the text of the schedule's time ('2026-12-06 08:53:16+09' < '2026-12-06T...'), so
    only the date counts, in the time zone the writing process wrote it in: noon of a day 36 hours before is before
    ``utc`` in every time zone, and with PostgreSQL too."""
    return datetime.combine((utc - timedelta(hours=36)).date(), time(12), tzinfo=UTC)


def maintain(
    con: duckdb.DuckDBPyConnection, now: datetime, snapshot_retention_days: float, event_retention_days: float | None
) -> Upkeep:
    """One maintenance pass over the lake attached to ``con``."""
    upkeep = Upkeep(files_before=data_files(con))
    if event_retention_days:
        upkeep.rows_dropped = drop_old_events(con, now - timedelta(days=event_retention_days))
    # the bookkeeping rows inlined since the last run go to one Parquet file per table; DuckLake 0.3 moves only the
    # current rows: as a batch before the last left them, the bookkeeping tables read empty after this (models do not)
    for schema in INLINED_SCHEMAS:
        con.execute(f"CALL ducklake_flush_inlined_data('{LAKE}', schema_name => {literal(schema)})")
    retention = timedelta(days=snapshot_retention_days)
    # the files earlier runs replaced, which batches that began since cannot have listed
    upkeep.files_deleted = delete_replaced_files(con, now, retention)
    con.execute(f"CALL ducklake_rewrite_data_files('{LAKE}')")
    con.execute(f"CALL ducklake_merge_adjacent_files('{LAKE}')")
    _expire_snapshots(con, now - retention, now - BETWEEN_BATCHES_KEPT)
    # this run's, when no batch may be running (a batch opened meanwhile lists the files that replaced them)
    upkeep.files_deleted += delete_replaced_files(con, now, retention)
    upkeep.files_after = data_files(con)
    return upkeep
