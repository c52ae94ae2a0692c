"""Publish the recipe's tables to a query database that analysts open read-only at any moment.

DuckDB lets one process write a database file while no other process may even open it, so
analysts never open the pipeline's own file. After each committed batch the rows every
table gained or changed are written once as an immutable Parquet file, and a new small
DuckDB file of views over exactly those files replaces the query database atomically
(``os.replace``). A reader therefore always sees one whole batch boundary, never blocks a
batch, and is never blocked by one. A keyed table's view keeps the newest row per key.

Files never change once written. Compaction is tiered, so a batch's cost does not grow with
history: when a table has more than ``COMPACT_AFTER`` files of one level they are merged into
one file of the next level (keyed tables keep the newest row per key). A file larger than all
the others of its level together (a backlog's batch) is left out: merging small files into it
would mostly rewrite it. Merged files are
*retired* and deleted ``RETIRED_KEPT`` later, so a session opened on an older query database
keeps working that long (reconnecting shows the newest batch).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

import duckdb

from dbt_like import Project
from dbt_like.sql import scalar

STATE_TABLE = "serving.files"
COMPACT_AFTER = 24
RETIRED_KEPT = timedelta(hours=1)
_STATE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS serving;
CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    table_name VARCHAR, batch_id BIGINT, kind VARCHAR, path VARCHAR, retired_at TIMESTAMP);
"""

File = tuple[str, int, str, str]  # table, batch id, kind (schema, batch, snapshot), path


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
    con.execute(f"COPY ({query}) TO '{partial}' (FORMAT parquet, COMPRESSION zstd, COMPRESSION_LEVEL 1)")
    os.replace(partial, target)


def _level(kind: str) -> int:
    """Compaction level of a file kind: ``batch`` 0, ``levelN`` N (``snapshot``, an older layout, 1)."""
    return 0 if kind == "batch" else 1 if kind == "snapshot" else int(kind.removeprefix("level"))


def _export(
    con: duckdb.DuckDBPyConnection, tables: list[str], folder: Path, published: int, batch_id: int
) -> list[File]:
    """New files for what each table gained or changed in ``(published, batch_id]``."""
    files = []
    for table in tables:
        if published == 0:
            target = folder / table / "schema.parquet"
            _copy(con, f"SELECT * FROM {table} WHERE false", target)
            files.append((table, 0, "schema", str(target)))
        changed = scalar(con, f"SELECT count(*) FROM {table} WHERE _batch_id > {published} AND _batch_id <= {batch_id}")
        if changed:
            target = folder / table / f"batch-{batch_id:012d}.parquet"
            _copy(con, f"SELECT * FROM {table} WHERE _batch_id > {published} AND _batch_id <= {batch_id}", target)
            files.append((table, batch_id, "batch", str(target)))
    return files


def _live_files(tables: list[str], files: list[File]) -> dict[str, list[File]]:
    """Per table, the files its view reads, in order."""
    return {table: sorted((f for f in files if f[0] == table), key=lambda f: (f[1], f[2], f[3])) for table in tables}


def _mergeable(files: list[File]) -> list[File]:
    """``files`` (one level's) without one larger than all the others together."""
    sizes = {f: Path(f[3]).stat().st_size for f in files}
    total = sum(sizes.values())
    return [f for f in files if 2 * sizes[f] <= total]


def _newest_per_key(source: str, key: str | None) -> str:
    """``source`` rows, only the newest (highest ``_batch_id``) per ``key`` when the table is keyed."""
    if not key:
        return f"SELECT * FROM {source}"
    return f"SELECT * FROM {source} QUALIFY row_number() OVER (PARTITION BY {key} ORDER BY _batch_id DESC) = 1"


def _compact(
    con: duckdb.DuckDBPyConnection,
    live: dict[str, list[File]],
    keys: dict[str, str | None],
    folder: Path,
    batch_id: int,
) -> list[File]:
    """Merge, level by level, the files of tables that have too many of one level; return the new files."""
    merged = []
    for table, files in live.items():
        level = 0
        while True:
            same = [f for f in files if f[2] != "schema" and _level(f[2]) == level]
            if not same:
                break
            same = _mergeable(same)
            if len(same) > COMPACT_AFTER:
                listed = ", ".join(f"'{path}'" for _, _, _, path in same)
                target = folder / table / f"level{level + 1}-{batch_id:012d}.parquet"
                _copy(con, _newest_per_key(f"read_parquet([{listed}])", keys[table]), target)
                new = (table, batch_id, f"level{level + 1}", str(target))
                files = [f for f in files if f not in same] + [new]
                merged.append(new)
            level += 1
        live[table] = files
    return merged


def _build_query_db(query_db: Path, live: dict[str, list[File]], keys: dict[str, str | None], batch_id: int) -> None:
    staging = query_db.with_name(f".{query_db.name}.building-{os.getpid()}")
    staging.unlink(missing_ok=True)
    with duckdb.connect(str(staging)) as con:
        for table, files in live.items():
            listed = ", ".join(f"'{Path(path).resolve()}'" for _, _, _, path in files)
            con.execute(f"CREATE VIEW {table} AS {_newest_per_key(f'read_parquet([{listed}])', keys[table])}")
        con.execute("CREATE TABLE batch_boundary AS SELECT ?::BIGINT AS batch_id, now() AS published_at", [batch_id])
    os.replace(staging, query_db)


def publish(
    con: duckdb.DuckDBPyConnection,
    project: Project,
    tables: list[str],
    query_db: Path,
    batch_id: int,
    now: datetime,
) -> Published:
    """Export what ``tables`` gained up to ``batch_id`` and swap in a query database over it.

    Order matters for crashes: files first, then the query database, then the record of
    what was published; a crash in between only leaves unreferenced files behind.
    """
    con.execute(_STATE_DDL)
    published = scalar(con, f"SELECT coalesce(max(batch_id), 0) FROM {STATE_TABLE}")
    folder = parquet_folder(query_db)
    keys = {
        t: project.configs[t].get("unique_key") if project.configs[t]["materialized"] == "table" else None
        for t in tables
    }
    new = _export(con, tables, folder, published, batch_id) if batch_id > published else []
    known = con.execute(
        f"SELECT table_name, batch_id, kind, path FROM {STATE_TABLE} WHERE retired_at IS NULL"
    ).fetchall()
    live = _live_files(tables, known + new)
    new += _compact(con, live, keys, folder, batch_id)
    if new or not query_db.exists():
        _build_query_db(query_db, live, keys, max(batch_id, published))
    if new:
        con.executemany(f"INSERT INTO {STATE_TABLE} VALUES (?, ?, ?, ?, NULL)", new)
        kept = [path for files in live.values() for _, _, _, path in files]
        con.execute(
            f"UPDATE {STATE_TABLE} SET retired_at = ? WHERE retired_at IS NULL AND path NOT IN "
            "(SELECT unnest(?::VARCHAR[]))",
            [now, kept],
        )
    _delete_retired(con, now)
    return Published(max(batch_id, published), query_db, len(new))


def _delete_retired(con: duckdb.DuckDBPyConnection, now: datetime) -> None:
    """Delete files retired longer than ``RETIRED_KEPT`` ago: no query database has listed them since."""
    old = [
        path
        for (path,) in con.execute(
            f"SELECT path FROM {STATE_TABLE} WHERE retired_at < ?", [now - RETIRED_KEPT]
        ).fetchall()
    ]
    for path in old:
        Path(path).unlink(missing_ok=True)
    con.execute(f"DELETE FROM {STATE_TABLE} WHERE path IN (SELECT unnest(?::VARCHAR[]))", [old])
