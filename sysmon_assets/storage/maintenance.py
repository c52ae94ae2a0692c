"""Lake upkeep: move the bookkeeping rows inlined in the catalog to Parquet, merge the small files batches leave,
expire old snapshots, delete unreferenced files, and optionally drop old events. Run by the ``lake_maintenance``
job (``jobs.py``) on its schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import duckdb

from dbt_like import table_exists, unread_rows
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
# they go long before the retention; an hour is far longer than any transaction of a batch lasts.
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


def _instant(utc: datetime) -> str:
    """A naive UTC time as a TIMESTAMPTZ literal: cast, it would be read in the session's time zone (the host's)."""
    return literal(utc.replace(tzinfo=UTC))


def expirable_snapshots(
    con: duckdb.DuckDBPyConnection, older_than: datetime, between_batches_older_than: datetime
) -> list[int]:
    """The snapshots taken before ``older_than``, and those that complete no batch taken before
    ``between_batches_older_than``, but never the one the last complete batch left (readers read it) nor a later
    one. The ids are chosen here, by DuckDB's comparison of the snapshots' times: given ``older_than``, DuckLake 0.3
    (3f1b372) with a SQLite catalog also expired snapshots taken after it. They are read from the catalog's own
    tables (``ducklake_snapshots()`` lists every snapshot's changes too), where a SQLite catalog keeps a time as
    text with its offset and PostgreSQL as a TIMESTAMPTZ: the cast reads both."""
    boundary = last_complete_batch(con)
    kept_from = boundary[1] if boundary else current_snapshot(con)
    taken = "CAST(s.snapshot_time AS TIMESTAMPTZ)"
    return [
        snapshot_id
        for (snapshot_id,) in con.execute(
            f"SELECT s.snapshot_id FROM {CATALOG_DATABASE}.ducklake_snapshot AS s "
            f"LEFT JOIN {CATALOG_DATABASE}.ducklake_snapshot_changes AS c USING (snapshot_id) "
            f"WHERE s.snapshot_id < {literal(kept_from)} AND ({taken} < {_instant(older_than)} "
            f"OR {taken} < {_instant(between_batches_older_than)} AND NOT coalesce({COMPLETES_BATCH}, false)) "
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
    _expire_snapshots(con, now - timedelta(days=snapshot_retention_days), now - BETWEEN_BATCHES_KEPT)
    upkeep.files_deleted = len(
        con.execute(f"CALL ducklake_cleanup_old_files('{LAKE}', cleanup_all => true)").fetchall()
    )
    upkeep.files_after = data_files(con)
    return upkeep
