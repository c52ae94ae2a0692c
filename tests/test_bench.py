"""The benchmark: its Dagster floor (the project's asset graph with nothing done, as the benchmark runs it), and a
small run of one of its modes end to end, so that a change to the project cannot leave the benchmark unable to run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from dagster import materialize

from bench.benchmark import asset_graph
from bench.dagster_floor import floor_definitions
from sysmon_assets.definitions import build_definitions
from tests.conftest import Lake


def test_the_floor_graph_has_the_projects_assets_dependencies_and_checks(lake: Lake) -> None:
    project = build_definitions(lake.settings).resolve_asset_graph()
    floor = floor_definitions(asset_graph()).resolve_asset_graph()
    assert floor.get_all_asset_keys() == project.get_all_asset_keys()
    for key in project.get_all_asset_keys():
        assert floor.get(key).parent_keys == project.get(key).parent_keys
        assert {c.name for c in floor.get(key).check_keys} == {c.name for c in project.get(key).check_keys}


def test_the_floor_graph_materializes_every_asset_and_passes_every_check() -> None:
    definitions = floor_definitions({"a": {"deps": [], "checks": ["c1", "c2"]}, "b": {"deps": ["a"], "checks": []}})
    result = materialize(list(definitions.assets or []))
    assert result.success
    assert {event.asset_key.to_user_string() for event in result.get_asset_materialization_events()} == {"a", "b"}
    checks = sorted((evaluation.check_name, evaluation.passed) for evaluation in result.get_asset_check_evaluations())
    assert checks == [("c1", True), ("c2", True)]


def test_an_empty_graph_is_one_asset_doing_nothing() -> None:
    result = materialize(list(floor_definitions({}).assets or []))
    assert [event.asset_key.to_user_string() for event in result.get_asset_materialization_events()] == ["no_op"]


def test_the_benchmark_runs_a_mode_end_to_end(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    command = [sys.executable, "bench/benchmark.py", "--small-files", "3", "--repeat", "1", "--workdir", str(tmp_path)]
    printed = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True)
    assert "SMALL FILES: 3 files" in printed.stdout


@pytest.mark.parametrize("maintain_every", ["20", "0"])
def test_the_catalog_growth_script_runs_end_to_end(tmp_path: Path, maintain_every: str) -> None:
    root = Path(__file__).resolve().parents[1]
    sizes = ["--commits", "40", "--every", "20", "--maintain-every", maintain_every]
    command = [sys.executable, "bench/catalog_growth.py", *sizes, "--workdir", str(tmp_path)]
    printed = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True)
    figures = [json.loads(line) for line in printed.stdout.splitlines() if line.startswith("{")]
    assert [f["at"] for f in figures] == [
        "0 commits",
        "20 commits",
        "40 commits",
        "before the maintenance run two hours on",
        "a maintenance run two hours on",
        "the snapshots between batches expired",
        "every snapshot but the newest expired",
    ]
    before, run, after = figures[3:6]
    assert run["expired"] > after["snapshots"]  # the snapshots between batches, most of them
    assert after["snapshots"] < before["snapshots"] // 3  # every tenth commit completes a batch
    assert figures[6]["snapshots"] <= 2
    assert run["files_before"]["main.events"] > run["files_after"]["main.events"] == 1
    assert run["peak_rss_gb"] > 0
    if maintain_every == "0":  # a data file per commit, none merged before the run
        assert run["files_before"]["main.events"] > 40


def test_the_aged_lake_mode_keeps_every_snapshot_and_compares_the_next_batch(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    sizes = ["--aged", "20", "--increment", "200", "--repeat", "1"]
    command = [sys.executable, "bench/benchmark.py", *sizes, "--workdir", str(tmp_path)]
    printed = subprocess.run(command, cwd=root, capture_output=True, text=True, check=True).stdout
    snapshots = [int(line.split()[3].replace(",", "")) for line in printed.splitlines() if line.startswith("after ")]
    assert len(snapshots) == 10  # a checkpoint a tenth of the way each
    assert snapshots == sorted(set(snapshots))  # every idle batch adds a snapshot, maintenance expires none
    assert snapshots[-1] >= 20
    assert "AGED RATIO the next batch over the aged lake / over the young" in printed
