"""How a lake's per-transaction cost grows with the snapshots its catalog keeps.

    python bench/catalog_growth.py --commits 10000 --every 2500 --maintain-every 100

A one-minute pipeline commits about ten snapshots a batch (one per step): some 100,000 in seven days. This script
commits ``--commits`` transactions into a fresh lake under ``--workdir``, opened as the project opens it (the
default catalog: SQLite), each shaped like a step: read the newest rows of a table by batch id, append ten rows of
thirty columns to it (a data file), replace a bookkeeping row (inlined in the catalog, as the pipeline's are),
label the snapshot (every tenth completes a batch); with a maintenance run (``maintain``: inlined rows flushed,
files merged, unreferenced files deleted; a run shorter than an hour expires no snapshot) every
``--maintain-every`` commits (ten batches: every ten minutes, as the schedule runs it). At the start and every
``--every`` commits, just after a maintenance run, it prints the medians of: one such transaction, one read of the
bookkeeping table alone, ``last_complete_batch`` (what ``connect()`` and maintenance read),
``ducklake_snapshots()`` listed whole, ``connect()``, and maintenance's listing of the snapshots it would expire.
Then the same figures, the seconds, data files and peak memory of a maintenance run two hours on (which expires the
snapshots between batch boundaries) and the figures after it, and once every snapshot but the newest has expired.
``--maintain-every 0``: no maintenance before that run (a lake whose maintenance schedule was left off).
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import statistics
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import duckdb

from dbt_like.compiler import STATE_SCHEMA
from sysmon_assets.micro_batch.steps import utc_now
from sysmon_assets.settings import Settings
from sysmon_assets.storage.lake import CATALOG_DATABASE, LAKE, commit_note, connect, last_complete_batch, open_lake
from sysmon_assets.storage.maintenance import BETWEEN_BATCHES_KEPT, expirable_snapshots, maintain

STEPS_PER_BATCH = 10
# the appended table's text columns (the stream has some forty columns, the join about thirty)
TEXT_COLUMNS = 29
# a bookkeeping table, in the schema whose inserts the catalog keeps inlined, as the pipeline's are
GUARDS = f"{STATE_SCHEMA}.bench_guards"


def _step(con: duckdb.DuckDBPyConnection, n: int, completes_batch: bool) -> None:
    """One transaction shaped like a step: its input's newest rows read by batch id (a filter, so DuckLake reads
    the files' column statistics), a few rows appended (one data file, statistics for each of its columns), its
    bookkeeping row replaced (cf. ``dbt_like.guards``)."""
    con.execute("BEGIN")
    con.execute(f"SELECT * FROM {GUARDS}").fetchall()
    con.execute("SELECT count(*) FROM events WHERE batch_id >= ?", [n // STEPS_PER_BATCH - 1]).fetchall()
    con.execute(f"INSERT INTO events SELECT ?, {', '.join(['range::VARCHAR'] * TEXT_COLUMNS)} FROM range(10)", [n])
    con.execute(f"DELETE FROM {GUARDS}")
    con.execute(f"INSERT INTO {GUARDS} VALUES (?, now())", [n])
    note: dict[str, object] = {"batch_id": n // STEPS_PER_BATCH, "step": "bench"}
    if completes_batch:
        note["batch_complete"] = True
    commit_note(con, note)
    con.execute("COMMIT")


def _median_ms(action: Callable[[], object], times: int) -> float:
    seconds = []
    for _ in range(times):
        start = time.perf_counter()
        action()
        seconds.append(time.perf_counter() - start)
    return round(1000 * statistics.median(seconds), 1)


def _measure(con: duckdb.DuckDBPyConnection, settings: Settings, label: str, step_number: Callable[[], int]) -> None:
    snapshots = con.execute(f"SELECT count(*) FROM ducklake_snapshots('{LAKE}')").fetchone()[0]
    figures = {
        "at": label,
        "snapshots": snapshots,
        "data_files_listed": con.execute(f"SELECT count(*) FROM {CATALOG_DATABASE}.ducklake_data_file").fetchone()[0],
        "transaction_ms": _median_ms(lambda: _step(con, step_number(), False), 7),
        "read_ms": _median_ms(lambda: con.execute(f"SELECT * FROM {GUARDS}").fetchall(), 7),
        "last_complete_batch_ms": _median_ms(lambda: last_complete_batch(con), 5),
        "ducklake_snapshots_ms": _median_ms(
            lambda: con.execute(f"SELECT max(snapshot_id) FROM ducklake_snapshots('{LAKE}')").fetchall(), 5
        ),
        "connect_ms": _median_ms(lambda: connect(settings).close(), 3),
        "expiry_listing_ms": _median_ms(
            lambda: expirable_snapshots(con, utc_now() - timedelta(days=7), utc_now() - BETWEEN_BATCHES_KEPT), 5
        ),
    }
    print(json.dumps(figures), flush=True)


def _expire_all(con: duckdb.DuckDBPyConnection) -> None:
    """Expire every snapshot but the newest and delete the files no snapshot left needs."""
    con.execute(f"CALL ducklake_expire_snapshots('{LAKE}', older_than => now())")
    con.execute(f"CALL ducklake_cleanup_old_files('{LAKE}', cleanup_all => true)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--commits", type=int, default=10_000)
    parser.add_argument("--every", type=int, default=2_500)
    parser.add_argument("--maintain-every", type=int, default=100, help="0: never, until the run at the end")
    parser.add_argument("--workdir", type=Path, default=Path("bench/out"))
    args = parser.parse_args()
    data = args.workdir / "catalog-growth"
    shutil.rmtree(data, ignore_errors=True)
    settings = Settings.from_env({"SYSMON_LANDING_DIR": str(args.workdir), "SYSMON_DATA_DIR": str(data)})
    counter = iter(range(10**9, 2 * 10**9))  # the measuring transactions' own numbers
    start = time.perf_counter()
    with open_lake(settings) as con:
        con.execute(f"CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA}")
        con.execute(f"CREATE TABLE {GUARDS} (n BIGINT, seen TIMESTAMPTZ)")
        text_columns = ", ".join(f"c{i} VARCHAR" for i in range(TEXT_COLUMNS))
        con.execute(f"CREATE TABLE events (batch_id BIGINT, {text_columns})")
        _step(con, 0, True)  # a first complete batch, so that connect() opens
        for n in range(args.commits + 1):
            if n and args.maintain_every and n % args.maintain_every == 0:
                maintain(con, utc_now(), 7, None)
            if n % args.every == 0:  # just after a maintenance run when ``every`` is a multiple of its period
                _measure(con, settings, f"{n} commits", lambda: next(counter))
            _step(con, n, n % STEPS_PER_BATCH == STEPS_PER_BATCH - 1)
        _step(con, next(counter), True)
        _measure(con, settings, "before the maintenance run two hours on", lambda: next(counter))
        kept = con.execute(f"SELECT count(*) FROM ducklake_snapshots('{LAKE}')").fetchone()[0]
        started = time.perf_counter()
        upkeep = maintain(con, utc_now() + BETWEEN_BATCHES_KEPT * 2, 7, None)
        expired = kept - con.execute(f"SELECT count(*) FROM ducklake_snapshots('{LAKE}')").fetchone()[0]
        seconds = round(time.perf_counter() - started, 2)
        run = {"at": "a maintenance run two hours on", "seconds": seconds, "expired": expired}
        run |= {"files_before": upkeep.files_before, "files_after": upkeep.files_after}
        run["peak_rss_gb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2)
        print(json.dumps(run), flush=True)
        _measure(con, settings, "the snapshots between batches expired", lambda: next(counter))
        _expire_all(con)
        _step(con, next(counter), True)
        _measure(con, settings, "every snapshot but the newest expired", lambda: next(counter))
    print(f"{time.perf_counter() - start:.0f} s in all")


if __name__ == "__main__":
    main()
