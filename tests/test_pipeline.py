"""End to end through Dagster in-process: batch splits, reruns and crashes give the same tables."""

from __future__ import annotations

import itertools
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from dagster import AssetSelection, materialize

from dbt_like import Project
from sysmon_assets import pipeline as pipeline_module
from sysmon_assets.assets import build_assets
from sysmon_assets.pipeline import SQL_DIR, SysmonPipeline
from sysmon_assets.resources import resources_from_settings
from sysmon_assets.sample import write_sample
from sysmon_assets.settings import Settings
from tests.conftest import CLI_BATCH, Lake, process_create, snapshot

ROOT = Path(__file__).resolve().parents[1]


def sample_bytes(tmp_path: Path, events: int) -> bytes:
    path, *_ = write_sample(tmp_path / "generated", events, files=1, hosts=12, seed=3)
    return path.read_bytes()


def materialize_batch(settings: Settings, selection: list[str] | None = None) -> None:
    assets = build_assets(Project(SQL_DIR, settings.variables()))
    result = materialize(
        assets,
        resources=resources_from_settings(settings),
        selection=AssetSelection.assets(*selection) if selection else None,
    )
    assert result.success


def run_in_batches(root: Path, data: bytes, batches: int) -> Path:
    """Land ``data`` in ``batches`` pieces cut at arbitrary bytes (mid-line), one micro-batch per piece."""
    settings = Settings(landing_dir=root / "landing", duckdb_path=root / "sysmon.duckdb")
    settings.landing_dir.mkdir(parents=True)
    target = settings.landing_dir / "winlogbeat.ndjson"
    cuts = [len(data) * i // batches + 17 * i for i in range(batches)] + [len(data)]
    for start, end in itertools.pairwise(cuts):
        with target.open("ab") as handle:
            handle.write(data[start:end])
        materialize_batch(settings)
    return settings.duckdb_path


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
    db = run_in_batches(tmp_path, events, 1)
    materialize_batch(Settings(landing_dir=tmp_path / "landing", duckdb_path=db))
    assert snapshot(db) == one_batch


def test_a_batch_that_stopped_after_some_assets_then_reruns_gives_identical_tables(
    events: bytes, one_batch: dict, tmp_path: Path
) -> None:
    settings = Settings(landing_dir=tmp_path / "landing", duckdb_path=tmp_path / "sysmon.duckdb")
    settings.landing_dir.mkdir()
    (settings.landing_dir / "w.ndjson").write_bytes(events)
    materialize_batch(settings, ["winlogbeat_stream", "winlogbeat_stream_rekey", "sysmon_process_create"])
    materialize_batch(settings)
    assert snapshot(settings.duckdb_path) == one_batch


def test_sigkill_at_several_points_then_rerun_gives_identical_tables(tmp_path: Path) -> None:
    data = sample_bytes(tmp_path, 40000)
    clean = run_in_batches(tmp_path / "clean", data, 1)
    expected = snapshot(clean)
    (tmp_path / "home").mkdir()
    env = {
        **os.environ,
        "SYSMON_LANDING_DIR": str(tmp_path / "landing"),
        "SYSMON_DUCKDB_PATH": str(tmp_path / "k.duckdb"),
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
    SysmonPipeline(Settings(landing_dir=tmp_path / "landing", duckdb_path=tmp_path / "k.duckdb")).run_batch()
    assert snapshot(tmp_path / "k.duckdb") == expected


def row_groups(lake: Lake, table: str) -> int:
    """How many row groups ``table`` is stored in."""
    return lake.rows(f"SELECT count(DISTINCT row_group_id) FROM pragma_storage_info('{table}')")[0][0]


def test_batches_keep_their_own_row_groups_until_every_nth_batch_merges_them(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(pipeline_module, "COMPACT_EVERY_BATCHES", 3)
    groups = []
    for batch in range(3):
        lake.land([process_create(f"{{P{batch}-{i}}}") for i in range(50)])
        lake.batch()
        groups.append(row_groups(lake, "sysmon_process_create"))
    assert groups == [1, 2, 1]  # batches 1 and 2 each add a row group; batch 3 merges them
    assert lake.count("sysmon_process_create") == 150
