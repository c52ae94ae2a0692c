"""The Makefile's targets: as `make -n` prints them, and `make run` run in a copy of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sysmon_assets.dagster_layer.jobs import WRITER_POOL
from sysmon_assets.definitions import defs

ROOT = Path(__file__).resolve().parents[1]
# What a fresh clone holds: everything but the venv, git's files, what runs and tests leave behind.
NOT_IN_A_CLONE = shutil.ignore_patterns(
    ".venv", ".git", "data", ".dagster", "*cache*", ".hypothesis", "bench", "*.egg-info"
)

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def dry_run(*arguments: str) -> str:
    return subprocess.run(["make", "-n", *arguments], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_make_test_checks_the_lint_and_the_format_before_the_tests() -> None:
    lines = dry_run("test").splitlines()  # after the venv's install, where .venv/bin/.installed is out of date
    commands = [line.split()[:3] for line in lines if line.startswith((".venv/bin/ruff", ".venv/bin/pytest"))]
    assert commands == [
        [".venv/bin/ruff", "check", "."],
        [".venv/bin/ruff", "format", "--check"],
        [".venv/bin/pytest", "-n", "auto"],
    ]


def test_make_ui_serves_on_ui_port_3000_by_default() -> None:
    assert "dagster dev -w workspace.yaml --port 3000" in dry_run("ui")
    assert "dagster dev -w workspace.yaml --port 3456" in dry_run("ui", "UI_PORT=3456")


def test_make_ui_gives_the_writer_pool_its_one_slot_before_the_daemon_starts() -> None:
    commands = dry_run("ui")
    assert f"dagster instance concurrency set {WRITER_POOL} 1" in commands
    assert commands.index("concurrency set") < commands.index("dagster dev")


def test_the_instance_settings_are_copied_from_outside_the_repository_root() -> None:
    """`dagster dev` warns on every start when the folder it starts in holds a dagster.yaml that is not
    DAGSTER_HOME's; `make ui` starts in the root and uses .dagster/."""
    assert not [name for name in ("dagster.yaml", "dagster.yml") if (ROOT / name).exists()]
    assert "cp instance/dagster.yaml .dagster/dagster.yaml" in dry_run("ui")


def make_run(copy: Path, *arguments: str) -> subprocess.CompletedProcess[str]:
    """`make run` in ``copy`` with this interpreter's venv (-o: make takes the venv as installed)."""
    venv = Path(sys.prefix)
    env = {key: value for key, value in os.environ.items() if not key.startswith(("SYSMON_", "DAGSTER_", "PYTHON"))}
    return subprocess.run(
        ["make", "run", f"VENV={venv}", "-o", f"{venv}/bin/.installed", *arguments],
        cwd=copy,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_make_run_prints_a_line_per_asset_then_the_sample_rows_without_a_warning(tmp_path: Path) -> None:
    copy = tmp_path / "clone"
    shutil.copytree(ROOT, copy, ignore=NOT_IN_A_CLONE)
    events = [json.loads(line) for path in sorted(copy.glob("sample_data/*.ndjson")) for line in path.open()]
    not_sysmon = sum(event["source_name"] != "Microsoft-Windows-Sysmon" for event in events)
    assets = {
        key.to_user_string() for key in defs.resolve_job_def("sysmon_micro_batch").asset_layer.executable_asset_keys
    }

    done = make_run(copy)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # Dagster's DEBUG log, and any warning, would be here
    lines = done.stdout.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("sysmon_micro_batch run "))
    assert lines[header].endswith(": SUCCESS, batch 1")  # a run of the job, not of Dagster's __ASSET_JOB
    report = {line.split()[0]: line.split()[1:] for line in lines[header + 1 : header + 1 + len(assets)]}
    assert set(report) == assets
    assert report["winlogbeat_stream"] == [
        *(str(len(events)), "in", str(len(events)), "written"),
        "winlogbeat_rejects_rows_written=0",
    ]
    assert report["winlogbeat_stream_rekey"][2:] == [
        str(len(events) - not_sysmon),
        "written",
        f"not_sysmon_dropped={not_sysmon}",
        "redeliveries_dropped=0",
    ]
    # the sample holds events rules of level high match: the check warns, and the run still succeeds
    assert " ".join(report["sigma_detections"]).endswith("failed checks: severe_detections (WARN)")
    assert " ".join(report["sysmon_join_ancestry"]) == "a view: stores no rows"
    # then the recipe's join sample: as many rows as the report says sysmon_join wrote
    assert f"│ {report['sysmon_join'][2]} rows (20 shown)" in done.stdout

    # asked for, Dagster's DEBUG log; the sample, already read, gives the next batch nothing new
    again = make_run(copy, "VERBOSE=1")
    assert again.returncode == 0, again.stderr
    assert " - DEBUG - sysmon_micro_batch - " in again.stderr
    assert "Warning" not in again.stderr
    assert "sysmon_micro_batch run " in again.stdout and ": SUCCESS, batch 2" in again.stdout


def test_make_run_with_shards_runs_each_shards_batch_in_turn(tmp_path: Path) -> None:
    copy = tmp_path / "clone"
    shutil.copytree(ROOT, copy, ignore=NOT_IN_A_CLONE)
    events = sum(1 for path in copy.glob("sample_data/*.ndjson") for _ in path.open())

    done = make_run(copy, "SYSMON_SHARDS=2")
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    headers = [i for i, line in enumerate(lines) if line.startswith("sysmon_micro_batch run ")]
    # shard i's batch ids are i + 1, i + 1 + K, ...
    assert [lines[i].split(": ", 1)[1] for i in headers] == [
        "SUCCESS, partition shard-0, batch 1",
        "SUCCESS, partition shard-1, batch 2",
    ]
    # each landed file belongs to one shard: between them the two runs read every line once
    streams = [lines[i + 1].split() for i in headers]
    assert all(stream[0] == "winlogbeat_stream" for stream in streams)
    assert sum(int(stream[3]) for stream in streams) == events
    assert "rows (20 shown)" in done.stdout
