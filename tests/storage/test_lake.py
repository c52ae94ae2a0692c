"""The lake as analysts and operators meet it: readers beside a running pipeline see whole batches only,
every batch maps to a snapshot to travel back to, and maintenance keeps the file count bounded."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import sqlite3
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterable, Iterator
from contextlib import closing
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pytest

from dbt_like import ConcurrentWriterError
from dbt_like.sql import literal
from sysmon_assets import connect
from sysmon_assets.definitions import build_definitions
from sysmon_assets.hunting import sigma
from sysmon_assets.micro_batch.steps import SysmonPipeline, utc_now
from sysmon_assets.sample.generator import write_sample
from sysmon_assets.settings import Settings
from sysmon_assets.storage import lake as lake_module
from sysmon_assets.storage.lake import (
    INLINED_SCHEMAS,
    LAKE_OPTIONS,
    ROW_GROUP_ROWS,
    LakeError,
    connection_config,
    last_complete_batch,
    object_store,
    open_lake,
    s3_secret,
)
from sysmon_assets.storage.maintenance import Upkeep, maintain
from tests.conftest import T0, Lake, network_connect, process_create, snapshot
from tests.lake_servers import Postgres
from tests.recipe import RECIPE_MODELS

COUNTS = " UNION ALL ".join(f"SELECT '{table}', count(*) FROM {table}" for table in RECIPE_MODELS)
# A reader process: connect, read the batch it sees and every table's row count, again and again.
READER = """
import json, sys, time
from dbt_like import ConcurrentWriterError
from sysmon_assets import connect
from sysmon_assets.storage.lake import last_complete_batch
from sysmon_assets.settings import Settings
settings = Settings(data_dir=__import__("pathlib").Path(sys.argv[1]), lake_catalog=sys.argv[2] or None)
stop, counts = sys.argv[3], sys.argv[4]
deadline = time.time() + 300
while time.time() < deadline and not __import__("os").path.exists(stop):
    try:
        con = connect(settings)
        seen = last_complete_batch(con)
        rows = dict(con.execute(counts).fetchall())
        con.close()
        print(json.dumps({"batch": seen[0] if seen else None, "counts": rows}), flush=True)
        time.sleep(0.1)
    except Exception as error:
        print(json.dumps({"error": f"{type(error).__name__}: {error}"}), flush=True)
"""

# A reader process: one transaction counts sysmon_join's rows, waits for a line on stdin, and counts them again.
READ_TWICE = """
import sys
from pathlib import Path
from sysmon_assets import connect
from sysmon_assets.settings import Settings
con = connect(Settings(data_dir=Path(sys.argv[1])))
con.begin()
for _ in range(2):
    print(con.execute("SELECT count(*) FROM sysmon_join").fetchone()[0], flush=True)
    sys.stdin.readline()
"""


def sample_lines(tmp_path: Path, events: int) -> list[bytes]:
    path, *_ = write_sample(tmp_path / "generated", events, files=1, hosts=6, seed=5)
    return path.read_bytes().splitlines(keepends=True)


def in_batches(lake: Lake, lines: list[bytes], batches: int) -> Iterator[int]:
    """Land ``lines`` in ``batches`` parts, one batch per part; yields each batch's id."""
    size = -(-len(lines) // batches)
    for start in range(0, len(lines), size):
        with (lake.landing / "winlogbeat.ndjson").open("ab") as handle:
            handle.write(b"".join(lines[start : start + size]))
        lake.batch()
        yield lake.pipeline.last_batch_id


def table_counts(lake: Lake) -> dict[str, int]:
    with connect(lake.settings) as con:
        return dict(con.execute(COUNTS).fetchall())


@pytest.mark.parametrize("catalog", ["embedded", "postgres"])
def test_a_reader_beside_six_batches_sees_only_batch_boundaries(
    tmp_path: Path, catalog: str, request: pytest.FixtureRequest
) -> None:
    catalogs = {"lake_catalog": request.getfixturevalue("postgres").new_catalog()} if catalog == "postgres" else {}
    lake = Lake(tmp_path, **catalogs)
    lines = sample_lines(tmp_path, 1800)
    expected = {}
    batches = in_batches(lake, lines, 6)
    first = next(batches)  # the reader starts on a lake that has one batch
    expected[first] = table_counts(lake)
    stop = tmp_path / "stop"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(lake.data), lake.settings.lake_catalog or "", str(stop), COUNTS],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        for batch_id in batches:
            expected[batch_id] = table_counts(lake)
    finally:
        stop.touch()
        output, _ = reader.communicate(timeout=120)
    seen = [json.loads(line) for line in output.splitlines()]
    assert [s for s in seen if "error" in s] == []
    assert len(seen) >= 3, "the reader ran only a few queries"
    assert all(s["counts"] == expected[s["batch"]] for s in seen), "a reader saw a state between two batches"
    assert len(expected) == 6 and expected[6]["sysmon_join"] > expected[1]["sysmon_join"] > 0


def test_every_batch_maps_to_a_snapshot_to_travel_back_to(lake: Lake, tmp_path: Path) -> None:
    lines = sample_lines(tmp_path, 600)
    counts = {batch_id: table_counts(lake) for batch_id in in_batches(lake, lines, 3)}
    for batch_id, expected in counts.items():
        with connect(lake.settings, batch_id=batch_id) as con:
            assert dict(con.execute(COUNTS).fetchall()) == expected
    with open_lake(lake.settings, read_only=True) as con:
        snapshot_of_first = con.execute(
            "SELECT max(snapshot_id) FROM ducklake_snapshots('lake') WHERE commit_extra_info::JSON->>'batch_id' = '1'"
        ).fetchone()[0]
        at_first = con.execute(f"SELECT count(*) FROM sysmon_join AT (VERSION => {snapshot_of_first})").fetchone()[0]
        assert at_first == counts[1]["sysmon_join"]
        assert last_complete_batch(con)[0] == 3
    with pytest.raises(LakeError, match="batch 9 is not a complete batch"):
        connect(lake.settings, batch_id=9)


def test_the_docs_sql_for_another_duckdb_client_lists_each_batchs_snapshot(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/storage.md's SQL block, as written, in a DuckDB of its own from the folder above the data folder."""
    docs = (Path(__file__).parents[2] / "docs" / "storage.md").read_text()
    block = docs[docs.index("Any other DuckDB client") :].split("```sql\n", 1)[1].split("```", 1)[0]
    *opening, listing, travel = [statement for statement in block.split(";") if statement.strip()]
    first_batch_joins = []
    for minute, guid in enumerate(["{A}", "{B}"]):
        lake.land([process_create(guid), network_connect(guid)])
        lake.batch(T0 + timedelta(minutes=minute))
        first_batch_joins.append(lake.count("sysmon_join"))
    monkeypatch.chdir(lake.data.parent)
    with closing(duckdb.connect(config={"extension_directory": lake_module.extension_directory()})) as client:
        for statement in opening:
            client.execute(statement)
        snapshots = client.execute(listing).fetchall()
        assert [json.loads(note)["batch_id"] for _, note in snapshots] == [1, 2]
        at_first = travel.replace("57", str(snapshots[0][0]))
        assert client.execute(at_first).fetchall() == [(first_batch_joins[0],)]
    assert first_batch_joins == [1, 2]


def test_a_plain_attach_reads_the_newest_batch_and_a_connect_session_the_one_it_attached(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """docs/storage.md: a plain ATTACH reads the newest snapshot at each statement; connect() keeps its own."""
    lake.land([process_create("{A}"), network_connect("{A}")])
    lake.batch(T0)
    monkeypatch.chdir(lake.data.parent)
    with (
        closing(duckdb.connect(config={"extension_directory": lake_module.extension_directory()})) as plain,
        connect(lake.settings) as held,
    ):
        plain.execute("ATTACH 'ducklake:sqlite:data/lake.sqlite' AS lake (READ_ONLY); USE lake")
        counts = [
            (
                plain.sql("SELECT count(*) FROM sysmon_join").fetchone(),
                held.sql("SELECT count(*) FROM sysmon_join").fetchone(),
            )
        ]
        lake.land([process_create("{B}"), network_connect("{B}")])
        lake.batch(T0 + timedelta(minutes=1))
        counts.append(
            (
                plain.sql("SELECT count(*) FROM sysmon_join").fetchone(),
                held.sql("SELECT count(*) FROM sysmon_join").fetchone(),
            )
        )
    assert counts == [((1,), (1,)), ((2,), (1,))]


def test_reading_a_folder_without_a_lake_says_so_and_makes_nothing(tmp_path: Path) -> None:
    typo = Settings(landing_dir=tmp_path, data_dir=tmp_path / "no lake here")
    for reading in (lambda: connect(typo), lambda: open_lake(typo, read_only=True).__enter__()):
        with pytest.raises(
            LakeError, match=r"^no lake at sqlite:.* yet: run a micro-batch first \(or set SYSMON_DATA_DIR\)$"
        ):
            reading()
    assert not typo.data_dir.exists()


def test_a_lake_whose_first_batch_has_not_completed_has_nothing_to_read(lake: Lake) -> None:
    lake.land([process_create("{A}"), network_connect("{A}")])
    for model in lake.pipeline.project.primary_models()[:3]:  # the batch stops after three of its steps
        lake.pipeline.run_model(model, run_key="stopped")
    with pytest.raises(LakeError, match="has no complete batch yet"):
        connect(lake.settings)


def test_ducklakes_older_than_on_a_sqlite_catalog_lists_newer_snapshots_too(lake: Lake) -> None:
    """Why maintenance expires snapshots by id (docs/storage.md): a time given to DuckLake 0.3 also expires later
    snapshots. When this fails, DuckLake compares the times as it should."""
    lake.land([process_create("{A}"), network_connect("{A}")])
    lake.batch()
    with open_lake(lake.settings) as con:
        snapshots = con.execute(
            "SELECT snapshot_id, snapshot_time FROM ducklake_snapshots('lake') ORDER BY 1"
        ).fetchall()
        middle_id, middle_time = snapshots[len(snapshots) // 2]
        listed = con.execute(
            "SELECT snapshot_id FROM ducklake_expire_snapshots('lake', older_than => $1, dry_run => true)",
            [middle_time],
        ).fetchall()
    assert max(snapshot_id for (snapshot_id,) in listed) > middle_id


def test_maintenance_keeps_the_last_complete_batchs_snapshot_while_a_batch_keeps_failing(lake: Lake) -> None:
    lake.land([process_create("{A}"), network_connect("{A}")])
    lake.batch()
    complete = table_counts(lake)
    lake.land([process_create("{B}"), network_connect("{B}")])
    for model in lake.pipeline.project.primary_models()[:3]:  # the next batch commits three steps, then fails
        lake.pipeline.run_model(model, run_key="failing")
    with open_lake(lake.settings) as con:
        maintain(con, utc_now() + timedelta(days=8), snapshot_retention_days=7, event_retention_days=None)
    with connect(lake.settings) as con:
        assert last_complete_batch(con)[0] == 1
    assert table_counts(lake) == complete


def test_with_one_pipeline_a_run_deletes_what_it_replaced_though_a_batch_failed(lake: Lake, tmp_path: Path) -> None:
    """An unsharded pipeline's maintenance never runs beside a batch (the writer's pool): a failed batch is not a
    running one, and the files the run's merge replaced go at once."""
    list(in_batches(lake, sample_lines(tmp_path, 600), 3))
    lake.land([process_create("{B}"), network_connect("{B}")])
    for model in lake.pipeline.project.primary_models()[:3]:
        lake.pipeline.run_model(model, run_key="failing")
    on_disk = set(lake.data.rglob("*.parquet"))
    with open_lake(lake.settings) as con:
        upkeep = maintain(con, utc_now(), snapshot_retention_days=7, event_retention_days=None)
    assert sum(upkeep.files_after.values()) < sum(upkeep.files_before.values())
    assert upkeep.files_deleted > 0 and not on_disk <= set(lake.data.rglob("*.parquet"))


def test_after_maintenance_past_batches_read_as_they_were_but_their_bookkeeping_only_its_current_rows(
    lake: Lake, tmp_path: Path
) -> None:
    """DuckLake 0.3's flush of inlined rows moves only the current ones: a past batch's bookkeeping reads the rows
    still current (a probe's finding: not empty, as the docs said, but what a later batch left of it)."""
    kept = lake.land([process_create("{K}")], name="kept.ndjson")  # its ingest.files row never changes again
    counts = {batch_id: table_counts(lake) for batch_id in in_batches(lake, sample_lines(tmp_path, 600), 2)}
    with connect(lake.settings, batch_id=1) as con:
        assert con.execute("SELECT count(*) FROM ingest.files").fetchone() == (2,)
    with open_lake(lake.settings) as con:
        maintain(con, utc_now(), snapshot_retention_days=7, event_retention_days=None)
    with connect(lake.settings, batch_id=1) as con:
        assert dict(con.execute(COUNTS).fetchall()) == counts[1]
        assert con.execute("SELECT count(*) FROM dbt_like.offsets").fetchone() == (0,)  # each replaced by batch 2
        assert con.execute("SELECT path FROM ingest.files").fetchall() == [(str(kept),)]
    with connect(lake.settings) as con:
        assert con.execute("SELECT count(*) FROM dbt_like.offsets").fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM ingest.files").fetchone() == (2,)


def test_a_session_held_open_across_maintenance_keeps_working(lake: Lake, tmp_path: Path) -> None:
    lines = sample_lines(tmp_path, 1200)
    batches = in_batches(lake, lines, 6)
    for _ in range(3):
        next(batches)
    held = connect(lake.settings)
    before = dict(held.execute(COUNTS).fetchall())
    rows_before = held.execute("SELECT * FROM sysmon_join ORDER BY _seq").fetchall()
    list(batches)
    with open_lake(lake.settings) as con:
        upkeep = maintain(con, utc_now(), snapshot_retention_days=7, event_retention_days=None)
    assert sum(upkeep.files_after.values()) < sum(upkeep.files_before.values())
    assert dict(held.execute(COUNTS).fetchall()) == before
    assert held.execute("SELECT * FROM sysmon_join ORDER BY _seq").fetchall() == rows_before
    held.close()


def test_a_read_transaction_held_across_a_flush_and_a_merge_reads_other_rows(lake: Lake, tmp_path: Path) -> None:
    """A limitation of DuckLake 0.3 (3f1b372), documented for analysts: a transaction begun before maintenance moved
    inlined rows to Parquet and merged files reads fewer rows of a table afterwards; a query outside a transaction
    (DuckDB's default) and a new transaction read them all."""
    list(in_batches(lake, sample_lines(tmp_path, 900), 3))
    reader = subprocess.Popen(
        [sys.executable, "-c", READ_TWICE, str(lake.data)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    before = json.loads(reader.stdout.readline())
    with open_lake(lake.settings) as con:
        maintain(con, utc_now(), snapshot_retention_days=7, event_retention_days=None)
    after, _ = reader.communicate("\n", timeout=120)
    assert json.loads(after) < before == lake.rows("SELECT count(*) FROM sysmon_join")[0][0] > 0


def test_maintenance_bounds_the_files_and_changes_no_row(lake: Lake, tmp_path: Path) -> None:
    lines = sample_lines(tmp_path, 1200)
    upkeeps = []
    for batch_id in in_batches(lake, lines, 12):
        if batch_id % 4 == 0:
            before = snapshot(lake.settings)
            with open_lake(lake.settings) as con:
                upkeeps.append(maintain(con, utc_now(), snapshot_retention_days=7, event_retention_days=None))
            assert snapshot(lake.settings) == before
    recipe = [f"main.{table}" for table in RECIPE_MODELS]
    assert all(upkeep.files_after[t] <= 2 for upkeep in upkeeps for t in recipe), upkeeps
    assert all(upkeep.files_before["main.winlogbeat_stream"] >= 4 for upkeep in upkeeps), upkeeps


class LosesRacesOnce:
    """A connection whose first statement containing each of ``texts`` (``COMMIT``: its first commit, whose
    transaction is then rolled back) fails as a lost race (another writer's commit came first), as maintenance
    beside shards' batches meets one."""

    def __init__(self, con: duckdb.DuckDBPyConnection, *texts: str) -> None:
        self.con, self.waiting = con, list(texts)

    def commit(self) -> None:
        if "COMMIT" in self.waiting:
            self.waiting.remove("COMMIT")
            self.con.rollback()  # DuckLake finds a conflict as it commits: the transaction is gone
            raise duckdb.TransactionException("Transaction conflict: a lost race at COMMIT")
        self.con.commit()

    def execute(self, sql: str, params: list | None = None) -> duckdb.DuckDBPyConnection:
        for text in self.waiting:
            if text in sql:
                self.waiting.remove(text)
                raise duckdb.TransactionException(f"Transaction conflict: a lost race at {text}")
        return self.con.execute(sql, params or [])

    def __getattr__(self, name: str) -> object:
        return getattr(self.con, name)


def test_maintenance_runs_again_what_lost_a_race_with_another_writer(lake: Lake, tmp_path: Path) -> None:
    in_order = list(in_batches(lake, sample_lines(tmp_path, 600), 4))
    with open_lake(lake.settings) as con:
        raced = LosesRacesOnce(con, "COMMIT", "ducklake_merge_adjacent_files")
        upkeep = maintain(raced, T0 + timedelta(days=1000), 7, 1, project=SysmonPipeline(lake.settings).project)
    assert raced.waiting == [] and len(in_order) == 4
    assert upkeep.files_after["main.sysmon_join"] < upkeep.files_before["main.sysmon_join"]
    assert upkeep.rows_dropped["winlogbeat_stream"] > 0


def test_snapshot_retention_expires_old_snapshots_and_deletes_their_files(lake: Lake, tmp_path: Path) -> None:
    lines = sample_lines(tmp_path, 900)
    batches = in_batches(lake, lines, 3)
    for _ in range(2):
        next(batches)
    upkeeps, on_disk = [], []
    for _ in range(2):  # the files the first run merged go when a newer batch completes: readers read the last one
        on_disk.append(len(list(lake.data.rglob("*.parquet"))))
        before = snapshot(lake.settings)
        with open_lake(lake.settings) as con:
            upkeeps.append(maintain(con, utc_now(), snapshot_retention_days=1e-9, event_retention_days=None))
            oldest = con.execute("SELECT min(snapshot_id) FROM ducklake_snapshots('lake')").fetchone()[0]
            assert oldest == last_complete_batch(con)[1]  # every snapshot before the readers' one expired
        on_disk[-1] -= len(list(lake.data.rglob("*.parquet")))
        assert snapshot(lake.settings) == before  # no row changed
        next(batches, None)
    assert upkeeps[1].files_deleted > 0 and on_disk[1] > 0  # fewer files on disk after the second run
    with open_lake(lake.settings, read_only=True) as con:
        oldest = last_complete_batch(con)[0]  # the only batch whose snapshot is kept
    with pytest.raises(
        LakeError,
        match=rf"batch 1 has no snapshot to read: it did not complete, or maintenance expired its snapshot .*"
        rf"SYSMON_SNAPSHOT_RETENTION_DAYS days, as set where it ran\); the oldest batch still readable is {oldest}$",
    ):
        connect(lake.settings, batch_id=1)
    with pytest.raises(LakeError, match=rf"batch {oldest + 1} is not a complete batch"):
        connect(lake.settings, batch_id=oldest + 1)


@pytest.mark.parametrize(
    ("catalog", "time_zone"),
    [("embedded", "UTC"), ("embedded", "America/New_York"), ("embedded", "Asia/Tokyo"), ("postgres", "Asia/Tokyo")],
)
def test_maintenance_keeps_every_batchs_snapshot_and_expires_those_between_after_an_hour(
    lake: Lake, tmp_path: Path, catalog: str, time_zone: str, request: pytest.FixtureRequest
) -> None:
    """A snapshot's time is a TIMESTAMPTZ in a PostgreSQL catalog and text in a SQLite one."""
    if catalog == "postgres":
        lake = Lake(tmp_path / "postgres", lake_catalog=request.getfixturevalue("postgres").new_catalog())
    counts = {batch_id: table_counts(lake) for batch_id in in_batches(lake, sample_lines(tmp_path, 900), 3)}

    def snapshots() -> list[tuple[int, bool]]:
        with open_lake(lake.settings, read_only=True) as con:
            return con.execute(
                "SELECT snapshot_id, coalesce(commit_extra_info::JSON->>'batch_complete' = 'true', false) "
                "FROM ducklake_snapshots('lake') ORDER BY 1"
            ).fetchall()

    def maintain_at(now: datetime) -> None:  # in a session of the given time zone: the times compared are UTC's
        with open_lake(lake.settings) as con:
            con.execute(f"SET TimeZone = {literal(time_zone)}")
            maintain(con, now, snapshot_retention_days=7, event_retention_days=None)

    taken = snapshots()
    maintain_at(utc_now())
    kept_young = snapshots()
    assert {s for s, _ in taken} <= {s for s, _ in kept_young}  # younger than an hour: all kept
    maintain_at(utc_now() + timedelta(hours=2))
    kept = snapshots()
    boundaries = [s for s, completes in taken if completes]
    # before the last batch's boundary only the boundaries stay; from it on, everything
    assert [s for s, _ in kept if s < boundaries[-1]] == boundaries[:-1]
    assert len(kept) < len(taken) // 3
    for batch_id, expected in counts.items():  # every batch still reads as it was
        with connect(lake.settings, batch_id=batch_id) as con:
            assert dict(con.execute(COUNTS).fetchall()) == expected


def retain(lake: Lake, now: datetime, days: float) -> Upkeep:
    """A maintenance run at ``now`` that drops the events of batches older than ``days``."""
    with open_lake(lake.settings) as con:
        return maintain(con, now, snapshot_retention_days=7, event_retention_days=days, project=lake.pipeline.project)


def test_event_retention_empties_every_stream_but_the_waiting_rows_and_not_the_keyed_tables(
    lake: Lake, tmp_path: Path
) -> None:
    lines = sample_lines(tmp_path, 600)
    list(in_batches(lake, lines, 2))
    keyed = ("sysmon_process_create_table", "sysmon_process_ancestry")
    processes = [lake.count(name) for name in keyed]
    upkeep = retain(lake, T0.replace(year=T0.year + 1), days=30)
    streams = [name for name, config in lake.pipeline.project.configs.items() if config["materialized"] == "stream"]
    assert "sigma_detections" in streams  # every stream model's rows go, the hunting ones' too
    assert all(upkeep.rows_dropped[name] > 0 for name in streams if name != "winlogbeat_rejects")
    # but the connections still waiting for their create (and the rows of them the hunt reads when the wait ends)
    assert lake.count("sysmon_network_connect") == lake.count("dbt_like.pending") > 0
    waiting = "SELECT seq FROM dbt_like.pending"
    events = [name for name in streams if name != "winlogbeat_rejects"]
    left = {name: lake.count(f"(SELECT * FROM {name} WHERE _seq NOT IN ({waiting}))") for name in events}
    assert (lake.count("winlogbeat_rejects"), left) == (0, dict.fromkeys(events, 0))
    assert [lake.count(name) for name in keyed] == processes


def test_event_retention_keeps_the_rows_a_step_has_still_to_read(tmp_path: Path) -> None:
    """A pipeline stopped past the retention while a connection waited for its create: the retention kept it, so
    when its wait ends the hunt still reads it (through unmatched()); once read, a later retention drops it."""
    lake = Lake(tmp_path)
    lake.land([network_connect("{B}", event_data={"DestinationPort": "4444"})])
    lake.batch(at=T0)
    retain(lake, T0 + timedelta(days=2), days=1)
    assert lake.count("sysmon_network_connect") == 1
    lake.batch(at=T0 + timedelta(days=2))  # its grace is long over: the wait ends
    assert lake.rows("SELECT rule_title, process_guid, dst_port FROM sigma_detections") == [
        ("Connection To A Port Common Backdoors Use", "{B}", 4444)
    ]
    lake.batch(at=T0 + timedelta(days=3))
    retain(lake, T0 + timedelta(days=5), days=1)
    assert [lake.count(name) for name in ("sysmon_network_connect", "sigma_detections")] == [0, 0]


def test_event_retention_keeps_the_rows_of_a_batch_that_stopped_before_their_readers_ran(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.land([process_create("{A}"), network_connect("{A}")])
    for model in ("winlogbeat_stream", "winlogbeat_stream_rekey", "sysmon_network_connect"):
        lake.pipeline.run_model(model, run_key="stopped", batch_time=T0)  # then it stopped: no process create read
    retain(lake, T0 + timedelta(days=2), days=1)
    lake.batch(at=T0 + timedelta(days=2))
    assert lake.rows("SELECT process_guid FROM sysmon_join") == [("{A}",)]


def test_maintenance_deletes_no_file_the_catalog_does_not_name(tmp_path: Path) -> None:
    """An untracked file in the data path (left by a writer killed before its commit, or put there by someone
    else) stays: DuckLake's orphan deletion, which maintenance does not call, would delete either."""
    lake = Lake(tmp_path)
    lake.land([process_create("{A}")])
    lake.batch()
    data_path = lake.settings.data_path
    untracked = [Path(data_path) / "main" / "winlogbeat_stream" / "ducklake-killed.parquet", Path(data_path) / "x.txt"]
    for path in untracked:
        path.write_bytes(b"PAR1")
        os.utime(path, (0, 0))
    with open_lake(lake.settings) as con:
        maintain(con, utc_now(), snapshot_retention_days=7, event_retention_days=None)
        assert all(path.exists() for path in untracked)
        orphans = con.execute("CALL ducklake_delete_orphaned_files('lake', dry_run => true, cleanup_all => true)")
        assert {Path(path) for (path,) in orphans.fetchall()} == set(untracked)


def test_a_redelivery_after_the_retention_dropped_its_first_delivery_is_a_new_event(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    events = [process_create("{A}", record=1), network_connect("{A}", record=2)]
    lake.land(events)
    lake.batch(at=T0)
    lake.land(events, name="redelivered.ndjson")
    lake.batch(at=T0 + timedelta(minutes=1))
    assert lake.count("sysmon_join") == 1  # within the retention: a redelivery
    retain(lake, T0 + timedelta(days=2), days=1)
    lake.land(events, name="much-later.ndjson")
    lake.batch(at=T0 + timedelta(days=2))
    assert lake.rows("SELECT process_guid FROM sysmon_join") == [("{A}",)]  # past it: a new event
    assert lake.rows("SELECT _batch_id FROM sysmon_join") == [(3,)]


def test_numbering_goes_on_above_what_a_retention_dropped(tmp_path: Path) -> None:
    lake = Lake(tmp_path, join_grace_minutes=10 * 24 * 60)
    lake.land([process_create("{A}"), network_connect("{B}")])  # B's create has not arrived: its connection waits
    lake.batch(at=T0)
    kept = lake.rows("SELECT _seq FROM sysmon_process_create_table UNION ALL SELECT seq FROM dbt_like.pending")
    retain(lake, T0 + timedelta(days=2), days=1)
    # the retention dropped every line but B's connection, still waiting
    assert lake.rows("SELECT _seq FROM winlogbeat_stream") == lake.rows("SELECT seq FROM dbt_like.pending")
    lake.land([process_create("{C}"), network_connect("{C}")])
    lake.batch(at=T0 + timedelta(days=2))
    new = lake.rows("SELECT _seq FROM winlogbeat_stream WHERE _batch_id = 2")
    assert min(new) > max(kept)
    assert lake.rows("SELECT process_guid, count(*) FROM sysmon_join GROUP BY ALL") == [("{C}", 1)]
    assert lake.rows("SELECT count(*) = count(DISTINCT _seq) FROM sysmon_process_create_table") == [(True,)]


def test_a_second_writers_concurrent_step_is_rolled_back_and_named(tmp_path: Path, postgres: Postgres) -> None:
    first = Lake(tmp_path / "first", lake_catalog=postgres.new_catalog())
    events = _events_of_two_batches()
    first.land(events[0])
    first.batch()
    first.land(events[1])
    second = SysmonPipeline(first.settings)
    own_note = first.pipeline.project.commit_note

    def another_writer_meanwhile(con: object, model: str, batch: object) -> None:
        if model == "winlogbeat_stream_rekey":
            second.run_model(model, run_key="the-other-writer")
        own_note(con, model, batch)

    first.pipeline.project.commit_note = another_writer_meanwhile
    with pytest.raises(ConcurrentWriterError, match="step winlogbeat_stream_rekey of batch 2 was rolled back"):
        first.batch()
    first.pipeline.project.commit_note = own_note
    first.batch()
    assert snapshot(first.settings) == _tables_of_a_clean_run(tmp_path / "clean")
    assert first.count("sysmon_join") == 3


def _events_of_two_batches() -> tuple[list[dict], list[dict]]:
    """Two batches' events: the second adds a process and a connection of the first batch's process."""
    first = [process_create("{A}"), network_connect("{A}")]
    return first, [process_create("{B}"), network_connect("{B}"), network_connect("{A}", dst_ip="10.0.0.2")]


def _tables_of_a_clean_run(root: Path) -> dict[str, list[tuple]]:
    """The tables of a lake that read the two batches of ``_events_of_two_batches`` without trouble."""
    clean = Lake(root)
    for events in _events_of_two_batches():
        clean.land(events)
        clean.batch()
    return snapshot(clean.settings)


def test_paths_with_an_apostrophe_a_space_and_a_semicolon_are_quoted(tmp_path: Path) -> None:
    odd = tmp_path / "it's a lake; DROP TABLE x"
    lake = Lake(odd, lake_data_path=f"{odd}/files; it's here/")
    lake.land([process_create("{A}"), network_connect("{A}")])
    lake.batch()
    with connect(lake.settings) as con:
        assert con.execute("SELECT process_guid FROM sysmon_join").fetchall() == [("{A}",)]
    assert list((odd / "files; it's here").rglob("*.parquet"))
    assert (odd / "data" / "lake.sqlite").is_file()


def test_a_lake_made_from_a_relative_folder_opens_from_anywhere_by_its_absolute_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    work = tmp_path / "work"
    (work / "landing").mkdir(parents=True)
    monkeypatch.chdir(work)
    with open_lake(Settings(landing_dir=Path("landing"), data_dir=Path("data"))) as con:  # make run's default
        con.execute("CREATE TABLE t AS SELECT 1 AS x")
    monkeypatch.chdir(tmp_path)
    with open_lake(Settings(landing_dir=work / "landing", data_dir=work / "data"), read_only=True) as con:
        assert con.execute("SELECT x FROM t").fetchall() == [(1,)]


def test_a_lake_whose_catalog_stored_a_relative_folder_opens_by_either_form_but_not_another_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "landing").mkdir()
    monkeypatch.chdir(tmp_path)
    relative = Settings(landing_dir=Path("landing"), data_dir=Path("data"))
    (tmp_path / "data").mkdir()
    # as lakes were created before the project made the folder absolute: DuckLake stores DATA_PATH as given
    with closing(duckdb.connect(config=connection_config(relative))) as con:
        con.execute("ATTACH 'ducklake:sqlite:data/lake.sqlite' AS old (DATA_PATH 'data/lake_files/')")
        con.execute("CREATE TABLE old.t AS SELECT 1 AS x")
    for data_dir in (Path("data"), tmp_path / "data"):
        with open_lake(Settings(landing_dir=Path("landing"), data_dir=data_dir)) as con:
            con.execute("INSERT INTO t VALUES (2)")
    with open_lake(relative, read_only=True) as con:
        assert con.execute("SELECT x FROM t ORDER BY x").fetchall() == [(1,), (2,), (2,)]
    elsewhere = Settings(landing_dir=Path("landing"), data_dir=Path("data"), lake_data_path=str(tmp_path / "other"))
    with pytest.raises(LakeError) as refused, open_lake(elsewhere):
        pass
    assert "keeps its data files at data/lake_files/ (relative to the folder the lake was made from), not at " in str(
        refused.value
    )
    assert "(SYSMON_LAKE_DATA_PATH): set SYSMON_LAKE_DATA_PATH=data/lake_files/ to open it" in str(refused.value)


def test_the_default_lake_moved_or_copied_whole_opens_from_its_new_folder(tmp_path: Path) -> None:
    before = Lake(tmp_path / "before")
    before.land([process_create("{A}"), network_connect("{A}")])
    before.batch()
    (tmp_path / "before").rename(tmp_path / "after")  # landing and data folders together
    after = Lake(tmp_path / "after")
    after.land([process_create("{B}"), network_connect("{B}")], name="second.ndjson")
    after.batch(T0 + timedelta(minutes=1))
    assert after.rows("SELECT process_guid FROM sysmon_join ORDER BY 1") == [("{A}",), ("{B}",)]
    shutil.copytree(after.data, tmp_path / "copy")
    shutil.rmtree(after.data)  # the copy reads its own files
    copy = Settings(landing_dir=after.landing, data_dir=tmp_path / "copy")
    with connect(copy) as con:
        assert con.execute("SELECT count(*) FROM sysmon_join").fetchall() == [(2,)]
    with closing(duckdb.connect(config=connection_config(copy))) as con:  # another client names the new folder
        con.execute("LOAD ducklake")
        options = f"DATA_PATH {literal(copy.data_path)}, READ_ONLY, OVERRIDE_DATA_PATH true"
        con.execute(f"ATTACH {literal('ducklake:' + copy.catalog)} AS lake ({options})")
        assert con.execute("SELECT count(*) FROM lake.sysmon_join").fetchall() == [(2,)]


def test_a_lake_with_its_paths_set_moved_elsewhere_is_refused_without_naming_its_old_folder_as_the_fix(
    tmp_path: Path,
) -> None:
    """Only the embedded default moves with its folder: a lake whose catalog and data path are set keeps the data
    path it was made with, and setting it to that folder, gone, would make a new empty one (a probe's finding)."""
    made = tmp_path / "made"
    paths = {"lake_catalog": f"sqlite:{made / 'cat.sqlite'}", "lake_data_path": f"{made / 'files'}/"}
    Lake(tmp_path, **paths).land([process_create("{A}"), network_connect("{A}")])
    Lake(tmp_path, **paths).batch()
    made.rename(tmp_path / "moved")
    moved = Lake(
        tmp_path,
        lake_catalog=f"sqlite:{tmp_path / 'moved' / 'cat.sqlite'}",
        lake_data_path=f"{tmp_path / 'moved' / 'files'}/",
    )
    with pytest.raises(LakeError) as refused, open_lake(moved.settings):
        pass
    assert f"its catalog keeps its data files at {made / 'files'}/, which does not exist" in str(refused.value)
    assert "to open it" not in str(refused.value)
    assert not made.exists()


def test_a_forgotten_data_path_named_like_the_default_is_refused_not_written_beside(tmp_path: Path) -> None:
    custom = Lake(tmp_path, lake_data_path=f"{tmp_path / 'big disk' / 'lake_files'}/")
    custom.land([process_create("{A}"), network_connect("{A}")])
    custom.batch()
    forgotten = Settings(landing_dir=custom.landing, data_dir=custom.data)
    with pytest.raises(LakeError) as refused, open_lake(forgotten):
        pass
    # DuckLake's own advice (its OVERRIDE_DATA_PATH option) is no setting of the pipeline's: ours names the setting
    assert f"(the default under SYSMON_DATA_DIR): set SYSMON_LAKE_DATA_PATH={custom.settings.data_path} " in str(
        refused.value
    )
    assert "OVERRIDE_DATA_PATH" not in str(refused.value)
    assert not list((custom.data / "lake_files").iterdir())


def test_a_new_catalog_over_a_data_path_holding_another_lakes_files_is_refused(tmp_path: Path) -> None:
    """A forgotten or changed SYSMON_LAKE_CATALOG over a lake's data path would start a second lake among the
    first's files, to which they are untracked (DuckLake's orphan cleanup deletes every untracked file)."""
    first = Lake(tmp_path, lake_catalog=f"sqlite:{tmp_path / 'catalogs' / 'first.sqlite'}")
    (tmp_path / "catalogs").mkdir()
    first.land([process_create("{A}"), network_connect("{A}")])
    first.batch()
    files = sorted(first.data.rglob("*.parquet"))
    forgotten = Settings(landing_dir=first.landing, data_dir=first.data, lake_data_path=first.settings.data_path)
    with pytest.raises(LakeError) as refused, open_lake(forgotten):
        pass
    assert f"its data path {first.settings.data_path} already holds data files (" in str(refused.value)
    assert "point SYSMON_LAKE_CATALOG at that lake's catalog" in str(refused.value)
    assert sorted(first.data.rglob("*.parquet")) == files
    with pytest.raises(LakeError):  # refused again: the refusal left no lake to open
        SysmonPipeline(forgotten).run_batch(batch_time=T0)
    assert first.rows("SELECT count(*) FROM sysmon_join") == [(1,)]


def test_a_new_lake_opens_in_a_data_path_holding_its_own_catalog_or_files_that_are_no_lakes(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "README.txt").write_text("the lake's folder")
    lake = Lake(tmp_path, lake_data_path=f"{tmp_path / 'data'}/")  # SQLite's catalog file is in it too
    lake.land([process_create("{A}"), network_connect("{A}")])
    lake.batch()
    assert lake.rows("SELECT count(*) FROM sysmon_join") == [(1,)]


def test_the_lakes_parquet_files_are_zstd_compressed_parquet_v2(lake: Lake) -> None:
    lake.land([process_create("{A}"), network_connect("{A}")])
    lake.batch()
    files = [str(path) for path in lake.data.rglob("*.parquet")]
    with open_lake(lake.settings, read_only=True) as con:
        codecs, seq_encodings = con.execute(
            "SELECT list(DISTINCT compression), list(DISTINCT encodings) FILTER (path_in_schema = '_seq') "
            "FROM parquet_metadata(?)",
            [files],
        ).fetchone()
    assert codecs == ["ZSTD"]
    assert seq_encodings == ["DELTA_BINARY_PACKED"]  # Parquet 2's encoding of integers
    with open_lake(lake.settings) as con:
        con.execute(f"CREATE TABLE wide AS SELECT range AS x FROM range({ROW_GROUP_ROWS + 10})")
        written = con.execute("SELECT data_file FROM ducklake_list_files('lake', 'wide')").fetchall()
        groups = con.execute("SELECT row_group_num_rows FROM parquet_metadata(?)", [written[0][0]]).fetchall()
    assert sorted(set(groups)) == [(10,), (ROW_GROUP_ROWS,)]  # a writer holds at most one row group of this size
    # each option as the catalog lists it: what opening compares to set an option only when it differs
    listed = dict(lake.rows("SELECT option_name, value FROM ducklake_options('lake') WHERE scope = 'GLOBAL'"))
    assert {option: listed.get(option) for option in LAKE_OPTIONS} == {o: v for o, (_, v) in LAKE_OPTIONS.items()}


def _in_wal_mode(catalog: Path) -> bool:
    # a SQLite file header's read and write versions (bytes 18 and 19) are 2 in WAL mode, 1 otherwise
    return catalog.read_bytes()[18:20] == b"\x02\x02"


def test_the_sqlite_catalog_is_put_in_wal_mode_by_duckdbs_own_sqlite(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Another copy of SQLite in the process (Python's sqlite3) opening the catalog would drop DuckDB's locks on it
    as it closed the file: other writers of the process (shards run as threads) would commit unguarded."""

    def refused(*args: object, **kwargs: object) -> None:
        raise AssertionError("the catalog was opened with Python's sqlite3")

    monkeypatch.setattr(sqlite3, "connect", refused)
    lake.land([process_create("{A}"), network_connect("{A}")])
    lake.batch()
    assert _in_wal_mode(lake.data / "lake.sqlite")
    # a lake made elsewhere without it is switched by its first writer
    elsewhere = Lake(tmp_path / "elsewhere")
    elsewhere.data.mkdir()
    with closing(duckdb.connect(config=connection_config(elsewhere.settings))) as con:
        con.execute("LOAD ducklake")
        catalog, files = elsewhere.data / "lake.sqlite", elsewhere.data / "lake_files"
        con.execute(f"ATTACH {literal(f'ducklake:sqlite:{catalog}')} AS made (DATA_PATH {literal(f'{files}/')})")
    assert not _in_wal_mode(catalog)
    elsewhere.land([process_create("{B}"), network_connect("{B}")])
    elsewhere.batch()
    assert _in_wal_mode(catalog)
    assert elsewhere.count("sysmon_join") == 1


def test_a_catalog_that_readers_keep_from_wal_mode_is_an_error_that_says_to_close_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(lake_module, "RACE_SECONDS", 1.0)
    elsewhere = Lake(tmp_path / "elsewhere")
    elsewhere.data.mkdir()
    catalog, files = elsewhere.data / "lake.sqlite", elsewhere.data / "lake_files"
    made_elsewhere = f"ATTACH {literal(f'ducklake:sqlite:{catalog}')} AS made (DATA_PATH {literal(f'{files}/')}"
    with closing(duckdb.connect(config=connection_config(elsewhere.settings))) as reader:
        reader.execute(f"{made_elsewhere})")
        reader.execute("CREATE TABLE made.t AS SELECT 1 AS x")
        reader.execute("BEGIN")
        reader.execute("SELECT * FROM made.t").fetchall()  # a read transaction held open, as a notebook's
        elsewhere.land([process_create("{B}"), network_connect("{B}")])
        with pytest.raises(LakeError, match=r"rollback-journal mode.*every other connection to the catalog closed"):
            elsewhere.batch()
        assert not _in_wal_mode(catalog)
    elsewhere.batch()
    assert _in_wal_mode(catalog) and elsewhere.count("sysmon_join") == 1


def _data_folders(lake: Lake) -> set[str]:
    """The schemas that have Parquet files in the lake's data folder."""
    return {path.parent.relative_to(lake.data / "lake_files").parts[0] for path in lake.data.rglob("*.parquet")}


def test_the_bookkeeping_tables_are_inlined_in_the_catalog_until_maintenance(lake: Lake, tmp_path: Path) -> None:
    lines = sample_lines(tmp_path, 600)
    list(in_batches(lake, lines, 6))
    assert "main" in _data_folders(lake)
    assert not _data_folders(lake) & set(INLINED_SCHEMAS)
    before = snapshot(lake.settings)
    with open_lake(lake.settings, read_only=True) as con:
        bookkeeping = [
            con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in ("dbt_like.offsets", "ingest.files")
        ]
    assert all(bookkeeping)
    with open_lake(lake.settings) as con:
        maintain(con, utc_now(), snapshot_retention_days=7, event_retention_days=None)
    # maintenance moves the inlined rows to Parquet (the catalog's inlined tables stay small); nothing changes
    assert _data_folders(lake) >= set(INLINED_SCHEMAS)
    assert snapshot(lake.settings) == before
    with open_lake(lake.settings, read_only=True) as con:
        assert [
            con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in ("dbt_like.offsets", "ingest.files")
        ] == bookkeeping
    # and the batches after it go on from the flushed offsets
    lake.land([process_create("{LATE}"), network_connect("{LATE}")])
    lake.batch()
    assert lake.count("sysmon_join") == len(before["sysmon_join"]) + 1


def _snapshot_steps(lake: Lake) -> list[tuple[int, str]]:
    return lake.rows(
        "SELECT CAST(commit_extra_info::JSON->>'batch_id' AS BIGINT), commit_extra_info::JSON->>'step' "
        "FROM ducklake_snapshots('lake') WHERE commit_extra_info IS NOT NULL ORDER BY snapshot_id"
    )


def test_small_files_are_read_in_one_commit_and_an_idle_batch_adds_two_snapshots(lake: Lake) -> None:
    for index in range(40):
        lake.land([process_create(f"{{P{index}}}"), network_connect(f"{{P{index}}}")], name=f"small-{index:02}.ndjson")
    lake.batch()
    assert lake.count("sysmon_join") == 40
    first = [step for batch, step in _snapshot_steps(lake) if batch == 1]
    assert first.count("winlogbeat_stream") == 2  # the first batch's empty chunk creates the tables, then one chunk
    snapshots = lake.count("ducklake_snapshots('lake')")
    lake.batch()
    # nothing new: the steps in between have nothing to do; the last step's snapshot marks the batch whole
    assert [step for batch, step in _snapshot_steps(lake) if batch == 2] == ["sysmon_join_ancestry"]
    # and the batch's opening (its batch row and guard) is the only other snapshot
    assert lake.count("ducklake_snapshots('lake')") == snapshots + 2
    with connect(lake.settings) as con:
        assert con.execute("SELECT count(*) FROM sysmon_join").fetchall() == [(40,)]


def _as_nobody(*command: str) -> list[str]:
    """``command`` run as user ``nobody`` (not in root's groups)."""
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("running as another user needs root and setpriv")
    return [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups", *command]


def _read_as_nobody(path: Path) -> bool:
    """Whether user ``nobody`` can read ``path``."""
    return subprocess.run(_as_nobody("cat", str(path)), capture_output=True).returncode == 0


def test_the_lake_is_readable_only_by_whoever_reads_the_landing_folder() -> None:
    base = Path(tempfile.mkdtemp(prefix="sysmon-modes-"))
    try:
        base.chmod(0o755)  # others may walk to the folders below: only their own modes decide
        lake = Lake(base)
        lake.landing.chmod(0o700)
        lake.land(["the secret line, not JSON", process_create("{A}")])
        lake.batch()
        (rejects,) = [p for p in lake.data.rglob("*.parquet") if "winlogbeat_rejects" in str(p)]
        catalog = lake.data / "lake.sqlite"
        assert lake.count("winlogbeat_rejects") == 1
        assert not _read_as_nobody(rejects)
        assert not _read_as_nobody(catalog)
        lake.landing.chmod(0o755)  # the landing folder opened to everyone: so is the lake, from the next run
        SysmonPipeline(lake.settings).run_batch(batch_time=T0)
        assert _read_as_nobody(rejects)
        assert _read_as_nobody(catalog)
    finally:
        shutil.rmtree(base)


def test_another_user_opens_a_sqlite_catalog_only_while_its_wal_files_are_there() -> None:
    """SQLite makes a WAL-mode catalog's -wal and -shm files as a connection opens it, and the last writer to close
    removes them: a user who may read but not write the data folder cannot make them (a probe's finding)."""
    query = _as_nobody(sys.executable, "-m", "sysmon_assets.query", "--json", "SELECT count(*) FROM sysmon_join")
    base = Path(tempfile.mkdtemp(prefix="sysmon-modes-"))
    try:
        base.chmod(0o755)
        lake = Lake(base)
        lake.land([process_create("{A}"), network_connect("{A}")])
        lake.batch()
        environ = {**os.environ, "SYSMON_DATA_DIR": str(lake.data), "TMPDIR": str(base / "tmp")}
        (base / "tmp").mkdir(mode=0o777)
        (base / "tmp").chmod(0o777)
        between_runs = subprocess.run(query, env=environ, cwd=base, capture_output=True, text=True)
        assert between_runs.returncode == 1
        assert "attempt to write a readonly database" in between_runs.stderr
        with open_lake(lake.settings, read_only=True):  # the owner's connection: the WAL files are there
            beside_a_connection = subprocess.run(query, env=environ, cwd=base, capture_output=True, text=True)
        assert beside_a_connection.stdout == "[[1]]\n", beside_a_connection.stderr
    finally:
        shutil.rmtree(base)


def test_the_data_files_keep_the_process_umask(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sigma, "_MEMO", {})  # the pipeline converts the rules and caches them in the data folder
    before = os.umask(0o077)
    try:
        lake = Lake(tmp_path)
        lake.landing.chmod(0o755)
        lake.land([process_create("{A}"), network_connect("{A}")])
        lake.batch()
    finally:
        os.umask(before)

    def modes(paths: Iterable[Path]) -> set[int]:
        return {stat.S_IMODE(path.stat().st_mode) for path in paths}

    assert modes([lake.data / "lake.sqlite"]) == {0o644} and modes([lake.data / "lake_files"]) == {0o755}
    assert modes([lake.data]) == {0o700}  # so only the owner reaches the rest
    assert modes(lake.data.rglob("*.parquet")) == {0o600}


def test_a_new_catalog_has_the_landing_folders_access_before_duckdb_opens_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Access is checked when a file is opened: a reader that opened a catalog DuckLake had just made (with the
    process's umask) would go on reading the landed text written into it after any chmod."""
    lake = Lake(tmp_path)
    lake.landing.chmod(0o750)
    catalog = lake.data / "lake.sqlite"
    seen: list[int | None] = []
    attach_same_folder = lake_module._attach_same_folder

    def recording(*args: Any) -> None:
        seen.append(stat.S_IMODE(catalog.stat().st_mode) if catalog.exists() else None)
        attach_same_folder(*args)

    monkeypatch.setattr(lake_module, "_attach_same_folder", recording)
    lake.land([process_create("{A}"), network_connect("{A}")])
    lake.batch()
    assert seen and set(seen) == {0o640}
    assert stat.S_IMODE(catalog.stat().st_mode) == 0o640
    assert lake.count("sysmon_join") == 1


def test_the_s3_secret_takes_host_and_port_from_the_endpoint_url_and_refuses_what_it_cannot_use() -> None:
    secret = s3_secret("s3://bucket/lake/", {"AWS_ENDPOINT_URL": "http://localhost:9000", "AWS_REGION": "eu-west-1"})
    assert secret is not None
    assert "ENDPOINT 'localhost:9000'" in secret and "USE_SSL false" in secret and "URL_STYLE 'path'" in secret
    assert "ENDPOINT 's3.example.com'" in s3_secret("s3://b/", {"AWS_ENDPOINT_URL": "https://s3.example.com/"})
    for endpoint in ("localhost:9000", "minio.internal:9000", "https://host:9000/prefix", "ftp://host"):
        with pytest.raises(LakeError, match=r"AWS_ENDPOINT_URL=.* is not an endpoint"):
            s3_secret("s3://bucket/lake/", {"AWS_ENDPOINT_URL": endpoint})


def test_an_unreachable_s3_endpoint_is_named_with_its_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        endpoint = f"http://127.0.0.1:{probe.getsockname()[1]}"  # nothing listens once the probe closes
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    settings = Settings(landing_dir=tmp_path, data_dir=tmp_path / "data", lake_data_path="s3://bucket/lake/")
    with pytest.raises(LakeError, match=rf"s3://bucket/lake/ at AWS_ENDPOINT_URL={re.escape(endpoint)} \("):
        SysmonPipeline(settings).run_batch()


@pytest.mark.parametrize(
    ("environ", "named"),
    [
        (
            {"AWS_ENDPOINT_URL": "http://minio:9000", "AWS_REGION": "eu-west-1"},
            " at AWS_ENDPOINT_URL=http://minio:9000",
        ),
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}, " at AWS S3 in eu-west-1 (AWS_REGION)"),
        ({"AWS_DEFAULT_REGION": "us-west-2"}, " at AWS S3 in us-west-2 (AWS_DEFAULT_REGION)"),
        ({}, " at AWS S3 in us-east-1 (neither AWS_REGION nor AWS_DEFAULT_REGION is set)"),
    ],
)
def test_errors_name_where_s3_data_goes_and_what_set_it(environ: dict, named: str) -> None:
    assert object_store("s3://bucket/lake/", environ) == named
    assert object_store("/local/lake_files/", environ) == ""


@pytest.mark.parametrize(
    ("text", "shown"),
    [
        ("postgres:dbname=l password=s3cr3t host=h", "postgres:dbname=l password=*** host=h"),
        ("password = 'a b\\'c' host=h", "password = *** host=h"),
        ('password="s3cr3t" host=h', "password=*** host=h"),  # libpq reads the double quotes as characters
        ("password=a\\ b host=h", "password=*** host=h"),
        ("'ducklake:postgres:password=''a b'' host=h'", "'ducklake:postgres:password=*** host=h'"),  # as SQL echoes it
        ("postgresql://u:p%40ss@h/db", "postgresql://u:***@h/db"),
        (
            "postgresql://h/db?password=x&connect_timeout=2, data /x/",
            "postgresql://h/db?password=***&connect_timeout=2, data /x/",
        ),
        ("catalog sqlite:/x/lake.sqlite, data s3://b/l/: endpoint http://localhost:9000/", None),
    ],
)
def test_a_lake_error_shows_each_form_of_a_catalogs_password_as_stars(text: str, shown: str | None) -> None:
    assert str(LakeError(text)) == (shown or text)


def test_no_error_of_a_catalog_holding_a_password_shows_it_nor_do_dagsters_run_logs(tmp_path: Path) -> None:
    from dagster import DagsterInstance

    (tmp_path / "landing").mkdir()
    catalog = "postgres:host=127.0.0.1 port=1 dbname=lake user=sysmon password=s3cr3t-pw connect_timeout=2"
    settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data", lake_catalog=catalog)
    with pytest.raises(LakeError) as refused, open_lake(settings):
        pass
    assert "password=***" in str(refused.value) and "s3cr3t-pw" not in str(refused.value)
    with DagsterInstance.ephemeral() as instance:
        job = build_definitions(settings).resolve_job_def("sysmon_micro_batch")
        result = job.execute_in_process(instance=instance, raise_on_error=False)
        assert not result.success
        stored = [str(record) for record in instance.all_logs(result.run_id)]
    assert any("password=***" in text for text in stored)
    assert not any("s3cr3t-pw" in text for text in stored)


def test_the_s3_secret_takes_temporary_credentials_session_token_included() -> None:
    environ = {"AWS_ACCESS_KEY_ID": "ASIAX", "AWS_SECRET_ACCESS_KEY": "s", "AWS_SESSION_TOKEN": "it's a token"}
    secret = s3_secret("s3://bucket/lake/", environ) or ""
    assert "KEY_ID 'ASIAX'" in secret and "SESSION_TOKEN 'it''s a token'" in secret
    with closing(duckdb.connect(config=connection_config(Settings(landing_dir=Path("in"))))) as con:
        con.execute("LOAD httpfs")
        con.execute(secret)  # DuckDB takes it
        assert con.execute("SELECT count(*) FROM duckdb_secrets() WHERE name = 'sysmon_lake_s3'").fetchone() == (1,)


@pytest.mark.parametrize(
    ("environ", "region"),
    [
        ({"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "eu-north-1"}, "eu-west-1"),
        ({"AWS_DEFAULT_REGION": "eu-north-1"}, "eu-north-1"),
        ({}, "us-east-1"),
    ],
)
def test_the_s3_region_is_aws_region_then_aws_default_region_then_us_east_1(environ: dict, region: str) -> None:
    assert f"REGION '{region}'" in (s3_secret("s3://bucket/lake/", environ) or "")


def test_opening_the_lake_waits_out_a_locked_catalog_in_bounded_pauses(monkeypatch: pytest.MonkeyPatch) -> None:
    pauses: list[float] = []
    monkeypatch.setattr(lake_module.time, "sleep", pauses.append)
    failures = iter(range(20))

    def fails(message: str, times: int | None = None) -> None:
        if times is None or next(failures, times) < times:
            raise duckdb.IOException(message)

    lake_module._retry_races(lambda: fails("database is locked", times=20))
    assert len(pauses) == 20 and max(pauses) <= lake_module.RACE_PAUSE_MAX
    # past its time, or for an error that is no race, it gives up with the error
    with pytest.raises(duckdb.IOException, match="database is locked"):
        lake_module._retry_races(lambda: fails("database is locked"), seconds=0)
    with pytest.raises(duckdb.IOException, match="disk full"):
        lake_module._retry_races(lambda: fails("disk full"))


def test_a_catalog_file_removed_since_it_was_listed_is_left_alone(tmp_path: Path) -> None:
    """Another process's last connection removes the SQLite WAL file between the listing and the chmod of the
    lake's files: opening the lake goes on (it failed with FileNotFoundError when two shards opened it at once)."""
    from sysmon_assets.storage import lake as lake_module

    lake_module._set_access(tmp_path / "lake.sqlite-wal", 0o600, os.getgid())
    assert not (tmp_path / "lake.sqlite-wal").exists()


def _fill(disk: Path, leaving: int = 0) -> Path:
    """Write a file that leaves ``leaving`` bytes of ``disk`` free."""
    filler = disk / "filler"
    with filler.open("ab") as out:
        out.write(b"\0" * max(0, shutil.disk_usage(disk).free - leaving))
    return filler


def test_a_new_lake_on_a_full_disk_is_an_error_that_says_so_not_a_crash(small_disk: Path, tmp_path: Path) -> None:
    """A probe's finding: the first ATTACH failed with "database or disk is full", which counted as a lost race,
    and DuckDB 1.4.4 crashes (SIGSEGV) on the same connection's second ATTACH: the run died without a word."""
    _fill(small_disk, leaving=100 * 1024)
    opening = (
        "import sys; from pathlib import Path; from sysmon_assets.settings import Settings; "
        "from sysmon_assets.storage.lake import open_lake\n"
        "with open_lake(Settings(landing_dir=Path(sys.argv[1]), data_dir=Path(sys.argv[2]))): pass"
    )
    opened = subprocess.run(
        [sys.executable, "-c", opening, str(tmp_path), str(small_disk / "data")], capture_output=True, text=True
    )
    assert opened.returncode == 1, opened.stderr
    assert "LakeError: cannot open the lake" in opened.stderr
    assert "database or disk is full" in opened.stderr


@pytest.mark.parametrize(
    ("full", "error"), [("catalog", "database or disk is full"), ("data files", "No space left on device")]
)
def test_a_disk_filling_up_fails_the_batch_at_once_and_the_next_batch_catches_up(
    small_disk: Path, tmp_path: Path, full: str, error: str
) -> None:
    """A probe's finding: a commit the catalog's full disk refused was retried ten times as a lost race, then
    reported as another writer's."""
    catalog, files = (small_disk, tmp_path / "files") if full == "catalog" else (tmp_path, small_disk)
    lake = Lake(tmp_path / "lake", lake_catalog=f"sqlite:{catalog}/lake.sqlite", lake_data_path=f"{files}/")
    events = _events_of_two_batches()
    lake.land(events[0])
    lake.batch()
    lake.land(events[1])
    own_note, tries = lake.pipeline.project.commit_note, []

    def disk_full_before_the_rekey_commits(con: object, model: str, batch: object) -> None:
        own_note(con, model, batch)
        if model == "winlogbeat_stream_rekey":
            tries.append(_fill(small_disk))

    lake.pipeline.project.commit_note = disk_full_before_the_rekey_commits
    with pytest.raises(duckdb.Error, match=error):
        lake.batch()
    assert len(tries) == 1
    tries[0].unlink()
    lake.pipeline.project.commit_note = own_note
    lake.batch()
    assert snapshot(lake.settings) == _tables_of_a_clean_run(tmp_path / "clean")
    assert lake.count("sysmon_join") == 3


def test_a_catalog_whose_disk_is_full_is_named_with_its_free_space_when_the_lake_opens(
    small_disk: Path, tmp_path: Path
) -> None:
    """SQLite says only "disk I/O error" when it cannot make the catalog's WAL index on a full disk, for writers and
    readers alike."""
    lake = Lake(tmp_path, lake_catalog=f"sqlite:{small_disk}/lake.sqlite", lake_data_path=f"{tmp_path}/files/")
    lake.land(_events_of_two_batches()[0])
    lake.batch()
    _fill(small_disk)
    for read_only in (False, True):
        with pytest.raises(LakeError, match="disk I/O error") as refused, open_lake(lake.settings, read_only=read_only):
            pass
        assert f"the disk of the catalog's folder {small_disk} has 0 bytes free" in str(refused.value)
