"""The Dagster resource: one pipeline per run, whose DuckDB file stays open until the run ends."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from dagster import build_resources

from sysmon_assets.resources import resources_from_settings
from tests.conftest import Lake, network_connect, process_create

OPEN_FROM_ANOTHER_PROCESS = "import duckdb, sys; duckdb.connect(sys.argv[1]).close()"


def opens_from_another_process(db: Path) -> bool:
    """Whether a second process can open the DuckDB file for writing (DuckDB locks it per process)."""
    opened = subprocess.run([sys.executable, "-c", OPEN_FROM_ANOTHER_PROCESS, str(db)], capture_output=True)
    return opened.returncode == 0


def test_a_run_builds_one_pipeline_and_holds_the_file_until_it_ends(lake: Lake) -> None:
    lake.land([process_create("{A}"), network_connect("{A}")])
    with build_resources(resources_from_settings(lake.settings)) as resources:
        pipeline = resources.sysmon.pipeline()
        assert resources.sysmon.pipeline() is pipeline
        pipeline.run_batch(run_key="run-1")
        assert not opens_from_another_process(lake.db)
    assert opens_from_another_process(lake.db)
    assert lake.count("sysmon_join") == 1


def test_each_step_checkpoints_its_rows_while_the_file_stays_open(lake: Lake) -> None:
    lake.land([process_create("{A}"), network_connect("{A}")] * 50)
    wal = lake.db.with_name(lake.db.name + ".wal")
    with build_resources(resources_from_settings(lake.settings)) as resources:
        resources.sysmon.pipeline().run_model("winlogbeat_stream", run_key="run-1")
        assert not wal.exists() or wal.stat().st_size == 0
    assert lake.count("winlogbeat_stream") == 100
