"""Publish the recipe's tables to a query database that analysts open read-only at any moment.

DuckDB lets one process write a database file while no other process may even open it, so
analysts never open the pipeline's own file. After each committed batch the new rows of
every stream table are written once as an immutable Parquet file (keyed tables as a fresh
snapshot), and a new small DuckDB file of views over exactly those files replaces the query
database atomically (``os.replace``). A reader therefore always sees one whole batch
boundary, never blocks a batch, and is never blocked by one.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import duckdb

from dbt_like import Project
from dbt_like.sql import scalar

STATE_TABLE = "serving.files"
SNAPSHOTS_KEPT = 3
_STATE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS serving;
CREATE TABLE IF NOT EXISTS {STATE_TABLE} (table_name VARCHAR, batch_id BIGINT, kind VARCHAR, path VARCHAR);
"""


@dataclass
class Published:
    """What one publication wrote."""

    batch_id: int
    query_db: Path
    new_files: int


def parquet_folder(query_db: Path) -> Path:
    """Where the Parquet files behind ``query_db`` live: ``<name>_parquet/`` beside it."""
    return query_db.with_name(query_db.stem + "_parquet")


def _copy(con: duckdb.DuckDBPyConnection, query: str, target: Path) -> None:
    """Write ``query`` to ``target`` as Parquet, atomically (readers never see a partial file)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(f".{target.name}.partial")
    con.execute(f"COPY ({query}) TO '{partial}' (FORMAT parquet, COMPRESSION zstd)")
    os.replace(partial, target)


def _export(
    con: duckdb.DuckDBPyConnection, project: Project, tables: list[str], folder: Path, published: int, batch_id: int
) -> list[tuple[str, int, str, str]]:
    rows = []
    for table in tables:
        changed = scalar(con, f"SELECT count(*) FROM {table} WHERE _batch_id > {published}")
        if project.configs[table]["materialized"] == "table":
            if changed or published == 0:
                target = folder / table / f"snapshot-{batch_id:012d}.parquet"
                _copy(con, f"SELECT * FROM {table}", target)
                rows.append((table, batch_id, "snapshot", str(target)))
            continue
        if published == 0:
            target = folder / table / "schema.parquet"
            _copy(con, f"SELECT * FROM {table} WHERE false", target)
            rows.append((table, 0, "schema", str(target)))
        new_rows = f"SELECT * FROM {table} WHERE _batch_id > {published} AND _batch_id <= {batch_id}"
        if changed:
            target = folder / table / f"batch-{batch_id:012d}.parquet"
            _copy(con, new_rows, target)
            rows.append((table, batch_id, "batch", str(target)))
    return rows


def _build_query_db(query_db: Path, files: dict[str, list[str]], batch_id: int) -> None:
    staging = query_db.with_name(f".{query_db.name}.building-{os.getpid()}")
    staging.unlink(missing_ok=True)
    with duckdb.connect(str(staging)) as con:
        for table, paths in files.items():
            listed = ", ".join(f"'{Path(p).resolve()}'" for p in paths)
            con.execute(f"CREATE VIEW {table} AS SELECT * FROM read_parquet([{listed}])")
        con.execute("CREATE TABLE batch_boundary AS SELECT ?::BIGINT AS batch_id, now() AS published_at", [batch_id])
    os.replace(staging, query_db)


def publish(
    con: duckdb.DuckDBPyConnection, project: Project, tables: list[str], query_db: Path, batch_id: int
) -> Published:
    """Export what ``tables`` gained up to ``batch_id`` and swap in a query database over it.

    Order matters for crashes: files first, then the query database, then the record of
    what was published; a crash in between only leaves unreferenced files behind.
    """
    con.execute(_STATE_DDL)
    published = scalar(con, f"SELECT coalesce(max(batch_id), 0) FROM {STATE_TABLE}")
    new = _export(con, project, tables, parquet_folder(query_db), published, batch_id) if batch_id > published else []
    known = con.execute(f"SELECT table_name, batch_id, kind, path FROM {STATE_TABLE}").fetchall()
    if new or not query_db.exists():
        _build_query_db(query_db, _files_by_table(tables, known + new), max(batch_id, published))
    if new:
        con.executemany(f"INSERT INTO {STATE_TABLE} VALUES (?, ?, ?, ?)", new)
        _drop_old_snapshots(con)
    return Published(max(batch_id, published), query_db, len(new))


def _files_by_table(tables: list[str], rows: list[tuple]) -> dict[str, list[str]]:
    """Per table: its schema and batch files in order, or its latest snapshot."""
    files: dict[str, list[str]] = {}
    for table in tables:
        own = sorted((batch, kind, path) for name, batch, kind, path in rows if name == table)
        snapshots = [path for _, kind, path in own if kind == "snapshot"]
        files[table] = snapshots[-1:] if snapshots else [path for _, _, path in own]
    return files


def _drop_old_snapshots(con: duckdb.DuckDBPyConnection) -> None:
    """Keep the last few snapshots: a reader that opened an older query database may still read one."""
    old = con.execute(
        f"SELECT path FROM {STATE_TABLE} WHERE kind = 'snapshot' QUALIFY "
        "row_number() OVER (PARTITION BY table_name ORDER BY batch_id DESC) > ?",
        [SNAPSHOTS_KEPT],
    ).fetchall()
    for (path,) in old:
        Path(path).unlink(missing_ok=True)
    con.execute(f"DELETE FROM {STATE_TABLE} WHERE path IN (SELECT unnest(?::VARCHAR[]))", [[p for (p,) in old]])
