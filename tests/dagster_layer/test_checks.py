"""The recipe's step notes (why the rekey step wrote fewer rows than it read) and batch checks."""

from __future__ import annotations

from datetime import timedelta

from sysmon_assets.dagster_layer.checks import join_coverage, rekey_drops
from tests.conftest import T0, Lake, network_connect, process_create, sysmon_event


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


def test_join_coverage_counts_the_connections_the_join_step_read_in_whichever_batch_they_came(lake: Lake) -> None:
    # a run that stopped after the connect step (a failed blocking check, a re-execution): the next batch's join
    # step reads both batches' connections
    lake.land([process_create("{P}"), network_connect("{P}"), *[network_connect(f"{{Q{i}}}") for i in range(3)]])
    models = lake.pipeline.project.primary_models()
    stopped_at = models.index("sysmon_network_connect") + 1
    for name in models[:stopped_at]:
        lake.pipeline.run_model(name, "stopped", T0)
    for name in models[stopped_at:]:
        results = lake.pipeline.run_model(name, "next", T0)
        if name == "sysmon_join":
            joined_by = lake.pipeline.last_batch_id, results[0]
    passed, metadata = join_coverage(lake.pipeline, *joined_by)
    assert (passed, metadata) == (
        True,
        {
            "coverage": 0.25,
            "joined": 1,
            "joined_from_earlier_batches": 0,
            "network_events": 4,
            "waiting": 3,
            "warn_below": 0.25,
        },
    )


def test_join_coverage_counts_apart_the_connections_of_earlier_batches_that_joined(lake: Lake) -> None:
    lake.land([network_connect("{L}"), network_connect("{L}", "10.0.0.2")])
    lake.batch(T0)
    lake.land([process_create("{L}"), process_create("{N}"), network_connect("{N}", "10.0.0.3")])
    (result,) = lake.batch(T0 + timedelta(minutes=1))["sysmon_join"]
    passed, metadata = join_coverage(lake.pipeline, lake.pipeline.last_batch_id, result)
    assert passed and {k: metadata[k] for k in ("joined", "joined_from_earlier_batches", "network_events")} == {
        "joined": 1,
        "joined_from_earlier_batches": 2,
        "network_events": 1,
    }
