"""End to end through Dagster in-process: batch splits, reruns and crashes give the same tables."""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import pytest
from dagster import AssetSelection, ExecuteInProcessResult, materialize

from dbt_like import Project
from sysmon_assets.dagster_layer.assets import build_assets
from sysmon_assets.dagster_layer.resources import resources_from_settings
from sysmon_assets.micro_batch.recipe_project import SQL_DIR
from sysmon_assets.micro_batch.steps import SysmonPipeline
from sysmon_assets.sample.generator import write_sample
from sysmon_assets.settings import Settings
from sysmon_assets.storage.lake import LAKE, open_lake
from sysmon_assets.storage.lake_connections import LakeConnections
from tests.conftest import CLI_BATCH, Lake, in_time_zone, process_create, python_prints, snapshot

ROOT = Path(__file__).resolve().parents[2]


def sample_bytes(tmp_path: Path, events: int) -> bytes:
    path, *_ = write_sample(tmp_path / "generated", events, files=1, hosts=12, seed=3)
    return path.read_bytes()


def materialize_batch(settings: Settings, selection: list[str] | None = None) -> ExecuteInProcessResult:
    assets = build_assets(Project(SQL_DIR, settings.variables()))
    result = materialize(
        assets,
        resources=resources_from_settings(settings),
        selection=AssetSelection.assets(*selection) if selection else None,
    )
    assert result.success
    return result


def run_in_batches(root: Path, data: bytes, batches: int) -> Settings:
    """Land ``data`` in ``batches`` pieces cut at arbitrary bytes (mid-line), one micro-batch per piece."""
    settings = Settings(landing_dir=root / "landing", data_dir=root / "data")
    settings.landing_dir.mkdir(parents=True)
    target = settings.landing_dir / "winlogbeat.ndjson"
    cuts = [len(data) * i // batches + 17 * i for i in range(batches)] + [len(data)]
    for start, end in itertools.pairwise(cuts):
        with target.open("ab") as handle:
            handle.write(data[start:end])
        materialize_batch(settings)
    return settings


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    return sample_bytes(tmp_path_factory.mktemp("sample"), 3000)


@pytest.fixture(scope="module")
def one_batch(events: bytes, tmp_path_factory: pytest.TempPathFactory) -> dict:
    return snapshot(run_in_batches(tmp_path_factory.mktemp("one"), events, 1))


def test_one_batch_fills_every_table(one_batch: dict) -> None:
    counts = {table: len(rows) for table, rows in one_batch.items()}
    assert counts["winlogbeat_stream"] == 3000
    assert 0 < counts["sysmon_join"] < counts["sysmon_network_connect"]
    assert counts["sysmon_process_create_table"] == counts["sysmon_process_create"]


@pytest.mark.parametrize("batches", [2, 5])
def test_splitting_the_same_events_over_batches_gives_identical_tables(
    events: bytes, one_batch: dict, batches: int, tmp_path: Path
) -> None:
    assert snapshot(run_in_batches(tmp_path, events, batches)) == one_batch


def test_a_rerun_adds_nothing(events: bytes, one_batch: dict, tmp_path: Path) -> None:
    settings = run_in_batches(tmp_path, events, 1)
    materialize_batch(Settings(landing_dir=tmp_path / "landing", data_dir=settings.data_dir))
    assert snapshot(settings) == one_batch


def test_a_batch_that_stopped_after_some_assets_then_reruns_gives_identical_tables(
    events: bytes, one_batch: dict, tmp_path: Path
) -> None:
    settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data")
    settings.landing_dir.mkdir()
    (settings.landing_dir / "w.ndjson").write_bytes(events)
    materialize_batch(settings, ["winlogbeat_stream", "winlogbeat_stream_rekey", "sysmon_process_create"])
    materialize_batch(settings)
    assert snapshot(settings) == one_batch


def test_a_run_that_leaves_out_the_process_table_then_a_whole_run_gives_identical_tables(
    events: bytes, one_batch: dict, tmp_path: Path
) -> None:
    """The steps reading the process table whole wait for it, and say so in their metadata."""
    settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data")
    settings.landing_dir.mkdir()
    (settings.landing_dir / "w.ndjson").write_bytes(events[: len(events) // 2])
    materialize_batch(settings)
    (settings.landing_dir / "w.ndjson").write_bytes(events)
    models = Project(SQL_DIR, settings.variables()).primary_models()
    partial = materialize_batch(settings, [name for name in models if name != "sysmon_process_create_table"])
    waiting = {
        name: partial.asset_materializations_for_node(name)[0].metadata["waiting_for"].value
        for name in ("sysmon_join", "sysmon_process_ancestry", "sigma_detections")
    }
    assert waiting == {name: ["sysmon_process_create_table"] for name in waiting}
    materialize_batch(settings)
    assert snapshot(settings) == one_batch


def test_steps_left_behind_for_several_batches_catch_up_to_identical_tables(
    events: bytes, one_batch: dict, tmp_path: Path
) -> None:
    """The steps after ingest, not run in two batches (as if they had failed), catch up batch by batch in the third."""
    settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data")
    settings.landing_dir.mkdir()
    cuts = [0, len(events) // 3 + 5, 2 * len(events) // 3 - 11, len(events)]
    for number, (start, end) in enumerate(itertools.pairwise(cuts), start=1):
        with (settings.landing_dir / "w.ndjson").open("ab") as handle:
            handle.write(events[start:end])
        materialize_batch(settings, None if number == 3 else ["winlogbeat_stream"])
    assert snapshot(settings) == one_batch
    with open_lake(settings, read_only=True) as con:
        rekey_commits = con.execute(
            "SELECT count(*) FROM ducklake_snapshots('lake') "
            "WHERE json_extract_string(commit_extra_info, ['step', 'batch_id']) = ['winlogbeat_stream_rekey', '3']"
        ).fetchone()
    assert rekey_commits == (3,)  # one per batch of the stream


def test_sigkill_at_several_points_then_rerun_gives_identical_tables(tmp_path: Path) -> None:
    data = sample_bytes(tmp_path, 40000)
    clean = run_in_batches(tmp_path / "clean", data, 1)
    expected = snapshot(clean)
    (tmp_path / "home").mkdir()
    env = {
        **os.environ,
        "SYSMON_LANDING_DIR": str(tmp_path / "landing"),
        "SYSMON_DATA_DIR": str(tmp_path / "k"),
        "DAGSTER_HOME": str(tmp_path / "home"),  # a killed CLI would leave its temporary home behind
    }
    (tmp_path / "landing").mkdir()
    (tmp_path / "landing" / "w.ndjson").write_bytes(data)
    killed = 0
    for delay in (3.0, 4.5, 6.0, 7.5):
        process = subprocess.Popen(CLI_BATCH, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(delay)
        if process.poll() is None:
            process.send_signal(signal.SIGKILL)
            killed += 1
        process.wait()
    assert killed >= 1, "every run finished before its kill: use more data"
    killed_settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "k")
    SysmonPipeline(killed_settings).run_batch()
    assert snapshot(killed_settings) == expected


def test_the_bookkeeping_statements_read_no_file_statistics(events: bytes, tmp_path: Path) -> None:
    """DuckLake prunes a scan filtered by ``=`` or ``IN`` by reading its data files' column statistics first (a
    query of the catalog naming the table); the bookkeeping tables keep their rows in the catalog, so their
    statements filter by ``one_of``, which it does not prune by. The one statement left: the join's removal of the
    waits it matched, whose filter on them comes from a join with ``sysmon_join``."""
    settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data")
    settings.landing_dir.mkdir()
    lines = events.splitlines(keepends=True)
    (settings.landing_dir / "first.ndjson").write_bytes(b"".join(lines[: len(lines) // 2]))
    materialize_batch(settings)
    (settings.landing_dir / "second.ndjson").write_bytes(b"".join(lines[len(lines) // 2 :]))
    connections = LakeConnections(settings)
    statements: list[tuple[str, list[str]]] = []

    @contextmanager
    def logged() -> Iterator[duckdb.DuckDBPyConnection]:
        with connections() as con:
            con.execute("CALL enable_logging(level => 'debug')")
            yield StatisticsReads(con, statements)

    try:
        pipeline = SysmonPipeline(settings, connect=logged)
        for name in pipeline.project.primary_models():
            pipeline.run_model(name, "second batch")
        with connections() as con:
            names = dict(
                con.execute(
                    f"SELECT table_id, schema_name || '.' || table_name FROM __ducklake_metadata_{LAKE}.ducklake_table "
                    f"JOIN __ducklake_metadata_{LAKE}.ducklake_schema USING (schema_id) WHERE table_name != ''"
                ).fetchall()
            )
    finally:
        connections.close()
    read = {(sql, names[int(table_id)]) for sql, table_ids in statements for table_id in table_ids}
    assert any(table.startswith("main.") for _, table in read)  # the log shows the reads where they happen
    matched_waits = re.compile(r"DELETE FROM dbt_like\.pending WHERE .* IN \(SELECT _seq FROM sysmon_join WHERE")
    bookkeeping = sorted(
        (table, sql[:150])
        for sql, table in read
        if table.startswith(("dbt_like.", "ingest.")) and not matched_waits.match(sql)
    )
    assert bookkeeping == []


class StatisticsReads:
    """A connection that records, per statement, the tables whose file statistics DuckLake read for it (DuckDB's
    debug log holds the catalog queries; read through another connection, so the statement's result stays)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, statements: list[tuple[str, list[str]]]) -> None:
        self._con, self._log, self._statements = con, con.cursor(), statements

    def execute(self, sql: str, *parameters: object) -> duckdb.DuckDBPyConnection:
        self._log.execute("CALL truncate_duckdb_logs()")
        result = self._con.execute(sql, *parameters)
        log = self._log.execute("SELECT message FROM duckdb_logs WHERE message LIKE '%ducklake_file_column_stats%'")
        table_ids = [table_id for (message,) in log.fetchall() for table_id in re.findall(r"table_id = (\d+)", message)]
        self._statements.append((" ".join(sql.split()), table_ids))
        return result

    def __getattr__(self, name: str) -> object:
        return getattr(self._con, name)


def test_an_idle_batch_in_a_new_process_imports_no_pandas(tmp_path: Path) -> None:
    """Values go into SQL as literals (docs/architecture.md): DuckDB 1.4 imports pandas, 0.3-0.5 s, on a process's
    first bound parameter. A batch that reads landed lines imports it anyway: DuckDB scans their Arrow chunk through
    pyarrow.dataset, which imports pandas."""
    landing, data = tmp_path / "landing", tmp_path / "data"
    write_sample(landing, 200)
    script = (
        "import sys; from pathlib import Path; from sysmon_assets.settings import Settings; "
        "from sysmon_assets.micro_batch.steps import SysmonPipeline; "
        f"SysmonPipeline(Settings(landing_dir=Path({str(landing)!r}), data_dir=Path({str(data)!r}))).run_batch(); "
        "print('pandas' in sys.modules)"
    )
    # the first batch reads the sample, the second finds nothing new
    assert [python_prints(script), python_prints(script)] == [["True"], ["False"]]


def test_a_batch_clock_with_an_offset_goes_into_the_lake_as_utc(lake: Lake) -> None:
    lake.wrap_connections(in_time_zone("Asia/Tokyo"))  # an aware time would be stored in this zone
    lake.land([process_create("{A}")])
    lake.pipeline.run_batch(batch_time=datetime(2026, 11, 1, 12, tzinfo=timezone(timedelta(hours=14))))
    utc = datetime(2026, 10, 31, 22)
    assert lake.rows("SELECT DISTINCT _ingested_at FROM winlogbeat_stream") == [(utc,)]
    assert lake.rows("SELECT started_at FROM dbt_like.batches") == [(utc,)]
