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
# How long a file DuckLake scheduled for deletion (replaced by a merge, or left by expired snapshots) stays: a
# transaction that listed it before may still read it (DuckLake's docs: a few days is generally safe).
SCHEDULED_FILES_KEPT = timedelta(days=1)


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


def running_batch_floor(con: duckdb.DuckDBPyConnection) -> int | None:
    """The oldest snapshot a transaction of a batch that may still be running can have begun at, or None when no
    batch may be running. DuckLake tells a commit's conflicts with other writers from the snapshots taken since its
    transaction began, and reads the files of the snapshot it began at: expired, a shard's step would commit beside
    a race it lost (a row twice) or fail on a deleted file. A shard runs one batch at a time, so a shard whose newest
    batch has not completed (running, or failed until its next one completes) began it after the snapshot its newest
    complete batch left; a shard with no complete batch, at any snapshot (0)."""
    state = scalar(
        con,
        f"SELECT count(*) FROM duckdb_tables() WHERE database_name = {literal(LAKE)} "
        f"AND schema_name = {literal(STATE_SCHEMA)} AND table_name IN ('batches', 'shards')",
    )
    if state < 2:
        return None
    return scalar(
        con,
        f"""WITH shards AS (SELECT max(shard_count) AS k FROM {STATE_SCHEMA}.shards),
        completed AS (
            SELECT CAST(commit_extra_info::JSON->>'batch_id' AS BIGINT) AS batch_id, snapshot_id
            FROM {CATALOG_DATABASE}.ducklake_snapshot_changes WHERE {COMPLETES_BATCH}),
        newest AS (SELECT (batch_id - 1) % k AS shard, max(batch_id) AS batch_id FROM {STATE_SCHEMA}.batches, shards
            GROUP BY ALL)
        SELECT min(coalesce(
            (SELECT max(c.snapshot_id) FROM completed AS c, shards WHERE (c.batch_id - 1) % k = n.shard), 0))
        FROM newest AS n WHERE NOT EXISTS (SELECT 1 FROM completed AS c WHERE c.batch_id = n.batch_id)""",
    )


def _instant(utc: datetime) -> str:
    """A naive UTC time as a TIMESTAMPTZ literal: cast, it would be read in the session's time zone (the host's)."""
    return literal(utc.replace(tzinfo=UTC))


def expirable_snapshots(
    con: duckdb.DuckDBPyConnection, older_than: datetime, between_batches_older_than: datetime
) -> list[int]:
    """The snapshots taken before ``older_than``, and those that complete no batch taken before
    ``between_batches_older_than`` and before :func:`running_batch_floor`, but never the one the last complete batch
    left (readers read it) nor a later one. The ids are chosen here, by DuckDB's comparison of the snapshots'
    times: given ``older_than``, DuckLake 0.3 (3f1b372) with a SQLite catalog also expired snapshots taken after it
    (it compares the text). They are read from the catalog's own tables (``ducklake_snapshots()`` lists every
    snapshot's changes too), where a SQLite catalog keeps a time as text with its offset and PostgreSQL as a
    TIMESTAMPTZ: the cast reads both."""
    boundary = last_complete_batch(con)
    kept_from = boundary[1] if boundary else current_snapshot(con)
    floor = running_batch_floor(con)
    between_kept_from = kept_from if floor is None else min(floor, kept_from)
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


def files_deleted_before(con: duckdb.DuckDBPyConnection, now: datetime, older_than: datetime) -> datetime:
    """``older_than`` for ``ducklake_cleanup_old_files``: DuckLake schedules the files a merge replaced for deletion
    at once, though a transaction that listed them before may still read them. A file goes once it was scheduled
    ``SCHEDULED_FILES_KEPT`` before ``now``, and before the snapshot :func:`running_batch_floor` names was taken (a
    batch may last longer), unless that is before ``older_than`` (the retention: nothing waits longer)."""
    cutoff = now - SCHEDULED_FILES_KEPT
    floor = running_batch_floor(con)
    if floor is not None:
        taken = scalar(
            con,
            f"SELECT CAST(snapshot_time AS TIMESTAMPTZ) FROM {CATALOG_DATABASE}.ducklake_snapshot "
            f"WHERE snapshot_id = {literal(floor)}",
        )
        floor_time = taken.astimezone(UTC).replace(tzinfo=None) if taken else older_than
        cutoff = min(cutoff, max(floor_time, older_than))
    # DuckLake 0.3 compares the time with a SQLite catalog's text ('2026-12-06 08:53:16+09' < '2026-12-06T...'),
    # where only the date counts, in the time zone of the session that scheduled the file: noon of a day 36 hours
    # before the cutoff is before it in every time zone, and means the same with PostgreSQL
    return datetime.combine((cutoff - timedelta(hours=36)).date(), time(12), tzinfo=UTC)


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
    con.execute(f"CALL ducklake_rewrite_data_files('{LAKE}')")
    con.execute(f"CALL ducklake_merge_adjacent_files('{LAKE}')")
    # after the merge: a batch that opened during it is counted as running
    older_than = now - timedelta(days=snapshot_retention_days)
    _expire_snapshots(con, older_than, now - BETWEEN_BATCHES_KEPT)
    deleted_before = files_deleted_before(con, now, older_than)
    upkeep.files_deleted = len(
        con.execute(f"CALL ducklake_cleanup_old_files('{LAKE}', older_than => {literal(deleted_before)})").fetchall()
    )
    upkeep.files_after = data_files(con)
    return upkeep
