"""The Dagster resource: one pipeline per run; the lake has no single-process lock, so other processes read it
while the run's connection is still open."""

from __future__ import annotations

from datetime import datetime

import pytest
from dagster import build_resources

from sysmon_assets.dagster_layer.resources import resources_from_settings
from tests.conftest import Lake, lake_rows_in_another_process, network_connect, process_create


def test_a_run_builds_one_pipeline_and_another_process_reads_the_lake_while_it_is_open(lake: Lake) -> None:
    lake.land([process_create("{A}"), network_connect("{A}")])
    with build_resources(resources_from_settings(lake.settings)) as resources:
        pipeline = resources.sysmon.pipeline()
        assert resources.sysmon.pipeline() is pipeline
        pipeline.run_batch(run_key="run-1")
        assert lake_rows_in_another_process(lake.settings, "SELECT process_guid FROM sysmon_join") == [["{A}"]]
    assert lake.count("sysmon_join") == 1


def test_each_step_is_readable_by_another_process_as_soon_as_it_commits(lake: Lake) -> None:
    lake.land([process_create("{A}"), network_connect("{A}")] * 50)
    with build_resources(resources_from_settings(lake.settings)) as resources:
        resources.sysmon.pipeline().run_model("winlogbeat_stream", run_key="run-1")
        assert lake_rows_in_another_process(lake.settings, "SELECT count(*) FROM winlogbeat_stream") == [[100]]
    assert lake.count("winlogbeat_stream") == 100


@pytest.mark.parametrize(
    ("configured", "clock"),
    [
        ("2026-11-01T12:00:00", datetime(2026, 11, 1, 12)),
        ("2026-11-01T12:00:00Z", datetime(2026, 11, 1, 12)),
        ("2026-11-01T12:00:00+14:00", datetime(2026, 10, 31, 22)),
    ],
)
def test_the_batch_clock_is_naive_utc_however_it_is_configured(configured: str, clock: datetime, lake: Lake) -> None:
    # an aware time would go into the lake's TIMESTAMP columns in the session's time zone (the host's), or lose its
    # offset in a TIMESTAMP literal
    resource = resources_from_settings(lake.settings)["sysmon"].model_copy(update={"batch_time": configured})
    assert resource.clock() == clock
