"""The recipe's step notes: why the rekey step wrote fewer rows than it read."""

from __future__ import annotations

from sysmon_assets.dagster_layer.checks import rekey_drops
from tests.conftest import Lake, network_connect, process_create, sysmon_event


def drops(lake: Lake) -> tuple[int, int, dict[str, int]]:
    """One batch's rekey rows in, rows written, and the notes on what it dropped."""
    (result,) = lake.batch()["winlogbeat_stream_rekey"]
    return result.rows_in, result.rows_written, rekey_drops(lake.pipeline, result)


def test_rekey_notes_say_which_rows_were_not_sysmon_and_which_were_redeliveries(lake: Lake) -> None:
    create, connect = process_create("{A}", record=1), network_connect("{A}", record=2)
    other = sysmon_event(4624, None, provider="Microsoft-Windows-Security-Auditing", record=3)
    lake.land([create, connect, connect, other])  # connect delivered twice in one batch
    assert drops(lake) == (4, 2, {"not_sysmon_dropped": 1, "redeliveries_dropped": 1})
    lake.land([create, connect, network_connect("{A}", record=4)])  # two redeliveries of the first batch's events
    assert drops(lake) == (3, 1, {"not_sysmon_dropped": 0, "redeliveries_dropped": 2})


def test_the_rekey_asset_reports_the_drops(lake: Lake) -> None:
    from sysmon_assets.definitions import build_definitions

    event = process_create("{A}", record=1)
    lake.land([event, event, sysmon_event(7036, None, provider="Service Control Manager", record=2)])
    result = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch").execute_in_process()
    rekey = result.asset_materializations_for_node("winlogbeat_stream_rekey")[0].metadata
    assert (rekey["rows_in"].value, rekey["rows_written"].value) == (3, 1)
    assert (rekey["not_sysmon_dropped"].value, rekey["redeliveries_dropped"].value) == (1, 1)
