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
from sysmon_assets.dagster_layer.assets import build_assets
from sysmon_assets.dagster_layer.resources import resources_from_settings
from sysmon_assets.micro_batch.recipe_project import SQL_DIR
from sysmon_assets.micro_batch.steps import SysmonPipeline
from sysmon_assets.sample.generator import write_sample
from sysmon_assets.settings import Settings
from sysmon_assets.storage.lake import open_lake
from tests.conftest import CLI_BATCH, snapshot

ROOT = Path(__file__).resolve().parents[2]


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
