"""The analysts' query database: same tables, read-only at any moment, always a whole batch."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from datetime import timedelta
from pathlib import Path

import duckdb
import pytest

from sysmon_assets import serving
from sysmon_assets.pipeline import RECIPE_MODELS
from sysmon_assets.sample import FleetSimulator
from sysmon_assets.serving import COMPACT_AFTER, RETIRED_KEPT, parquet_folder
from tests.conftest import T0, Lake, network_connect, process_create, snapshot

TABLES = [*RECIPE_MODELS, "winlogbeat_rejects"]

READER = textwrap.dedent(
    """
    import json, sys, time, duckdb
    path, out, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
    deadline, results = time.time() + seconds, []
    while time.time() < deadline:
        try:
            with duckdb.connect(path, read_only=True) as con:
                results.append({"row": con.execute(
                    "SELECT (SELECT batch_id FROM batch_boundary), (SELECT count(*) FROM winlogbeat_stream),"
                    " (SELECT count(*) FROM sysmon_network_connect), (SELECT count(*) FROM sysmon_join),"
                    " (SELECT count(*) FROM sysmon_process_create_table)").fetchone()})
        except duckdb.IOException as error:
            if "No such file" not in str(error) and "does not exist" not in str(error):
                results.append({"error": str(error)})
        except Exception as error:
            results.append({"error": repr(error)})
    json.dump(results, open(out, "w"))
    """
)


def test_the_query_database_has_the_same_tables_and_rows(lake: Lake) -> None:
    lake.land([process_create("{A}"), network_connect("{a}"), "not json"])
    lake.batch()
    query_db = lake.settings.query_db_path
    assert query_db == lake.db.with_name("sysmon_query.duckdb")
    # the pipeline's own file held open for writing does not stop a reader of the query database
    with duckdb.connect(str(lake.db)), duckdb.connect(str(query_db), read_only=True) as con:
        assert con.execute("SELECT batch_id FROM batch_boundary").fetchone() == (1,)
        assert con.execute("SELECT count(*) FROM sysmon_join").fetchone() == (1,)
    assert snapshot(query_db, TABLES) == snapshot(lake.db, TABLES)


def test_a_batch_with_nothing_new_writes_no_files(lake: Lake) -> None:
    lake.land([process_create("{A}"), network_connect("{a}")])
    lake.batch()
    files = sorted(parquet_folder(lake.settings.query_db_path).rglob("*.parquet"))
    lake.batch()
    assert sorted(parquet_folder(lake.settings.query_db_path).rglob("*.parquet")) == files


def live_and_all_files(lake: Lake, table: str) -> tuple[int, int]:
    with duckdb.connect(str(lake.db), read_only=True) as con:
        live = con.execute(
            "SELECT count(*) FROM serving.files WHERE table_name = ? AND retired_at IS NULL", [table]
        ).fetchone()[0]
    return live, len(list((parquet_folder(lake.settings.query_db_path) / table).glob("*.parquet")))


def test_a_keyed_table_is_published_as_changes_and_merged_files_go_an_hour_after_retirement(lake: Lake) -> None:
    table = "sysmon_process_create_table"
    start = T0
    for minute in range(COMPACT_AFTER + 1):
        # one process recreated in every batch (its row changes), one new process per batch
        lake.land([process_create("{SAME}", command_line=f"v{minute}"), process_create(f"{{P{minute}}}")])
        lake.batch(start + timedelta(minutes=minute))
    # schema file + one file of changed rows per batch, until they were merged into one level-1 file
    assert live_and_all_files(lake, table) == (2, COMPACT_AFTER + 3)
    with duckdb.connect(str(lake.settings.query_db_path), read_only=True) as con:
        assert con.execute(f"SELECT count(*) FROM {table}").fetchone() == (COMPACT_AFTER + 2,)
        assert con.execute(f"SELECT process_command_line FROM {table} WHERE process_guid = '{{SAME}}'").fetchall() == [
            (f"v{COMPACT_AFTER}",)
        ]
    lake.land([process_create("{LATE}")])
    lake.batch(start + RETIRED_KEPT + timedelta(minutes=COMPACT_AFTER + 5))
    assert live_and_all_files(lake, table) == (3, 3)
    assert snapshot(lake.settings.query_db_path, TABLES) == snapshot(lake.db, TABLES)


def test_many_batch_files_are_compacted_and_the_views_stay_whole(lake: Lake) -> None:
    lake.land([network_connect("{A}", "10.0.0.0")])
    lake.batch(T0)
    with duckdb.connect(str(lake.settings.query_db_path), read_only=True) as early_session:
        for minute in range(1, COMPACT_AFTER + 2):
            lake.land([network_connect("{A}", f"10.0.0.{minute}")])
            lake.batch(T0 + timedelta(minutes=minute))
        # a session opened before the compaction still reads its own batch boundary
        assert early_session.execute("SELECT count(*) FROM sysmon_network_connect").fetchone() == (1,)
    live, on_disk = live_and_all_files(lake, "sysmon_network_connect")
    assert live <= 3  # the schema file, one compacted file, and what came after it
    assert on_disk > live  # merged files stay for sessions still open on an older query database
    assert snapshot(lake.settings.query_db_path, TABLES) == snapshot(lake.db, TABLES)


def test_a_backlog_file_larger_than_the_rest_of_its_level_is_left_out_of_merges(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serving, "COMPACT_AFTER", 2)
    lake.land([network_connect("{A}", f"10.{i // 62500}.{i // 250 % 250}.{i % 250}") for i in range(10_000)])
    lake.batch(T0)  # a backlog
    folder = parquet_folder(lake.settings.query_db_path) / "sysmon_network_connect"
    (backlog,) = folder.glob("batch-*.parquet")
    for minute in range(1, 4):  # three small files of level 0: more than two
        lake.land([network_connect("{A}", f"10.9.0.{minute}")])
        lake.batch(T0 + timedelta(minutes=minute))
    with duckdb.connect(str(lake.db), read_only=True) as con:
        live = con.execute(
            "SELECT kind, path FROM serving.files WHERE table_name = 'sysmon_network_connect' AND retired_at IS NULL "
            "AND kind <> 'schema' ORDER BY batch_id"
        ).fetchall()
    assert [kind for kind, _ in live] == ["batch", "level1"]
    assert live[0][1] == str(backlog)  # not rewritten
    assert snapshot(lake.settings.query_db_path, TABLES) == snapshot(lake.db, TABLES)


def test_readers_never_block_batches_and_always_see_a_whole_batch(lake: Lake, tmp_path: Path) -> None:
    events = [json.dumps(e) for e in FleetSimulator(seed=9, hosts=6, start=T0).events(6000)]
    out = tmp_path / "reader.json"
    reader = subprocess.Popen(
        [sys.executable, "-c", READER, str(lake.settings.query_db_path), str(out), "12"], stderr=subprocess.PIPE
    )
    expected = {}
    started = time.time()
    for part in range(6):
        lake.land(events[part * 1000 : (part + 1) * 1000])
        lake.batch()
        with duckdb.connect(str(lake.db), read_only=True) as con:
            expected[part + 1] = con.execute(
                "SELECT (SELECT count(*) FROM winlogbeat_stream), (SELECT count(*) FROM sysmon_network_connect),"
                " (SELECT count(*) FROM sysmon_join), (SELECT count(*) FROM sysmon_process_create_table)"
            ).fetchone()
        time.sleep(0.3)
    assert time.time() - started < 12, "the batches must finish while the reader is still reading"
    assert reader.wait(timeout=60) == 0, reader.stderr.read().decode()
    results = json.loads(out.read_text())
    errors = [r["error"] for r in results if "error" in r]
    assert errors == []
    seen = {tuple(r["row"]) for r in results}
    assert len(results) > 20
    for boundary, *counts in seen:
        assert tuple(counts) == expected[boundary], (boundary, counts)
    assert len({boundary for boundary, *_ in seen}) >= 3
