"""The report `make run` prints: one line per asset of a run, read back from the Dagster instance."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from dagster import DagsterInstance, MetadataValue
from dagster._core.test_utils import instance_for_test

from sysmon_assets.dagster_layer import checks
from sysmon_assets.dagster_layer.run_report import asset_line, main, run_report
from sysmon_assets.definitions import build_definitions
from tests.conftest import Lake, network_connect, process_create, sysmon_event


def test_an_asset_line_gives_rows_in_and_written_then_every_other_count_under_its_label() -> None:
    metadata = {
        "batch_id": MetadataValue.int(7),
        "rows_in": MetadataValue.int(500),
        "rows_written": 452,
        "dagster/row_count": MetadataValue.int(9000),
        "not_sysmon_dropped": MetadataValue.int(48),
        "redeliveries_dropped": 0,
        "lake_snapshot": 31,
        "duration_seconds": 0.25,
        "lake_table": "lake.main.x",
        "offsets_after": MetadataValue.json({"x": 1}),
        "replayed": True,
    }
    assert asset_line("rekey", metadata, 8) == (
        "rekey         500 in     452 written  not_sysmon_dropped=48  redeliveries_dropped=0"
    )
    assert asset_line("rekey", metadata) == "rekey  500 in 452 written  not_sysmon_dropped=48  redeliveries_dropped=0"
    # an asset that counts no rows in (the Kafka sink) still gets its counts
    assert asset_line("topic", {"through_batch": 3, "messages_sent": 2}) == "topic  through_batch=3  messages_sent=2"


def test_the_report_names_the_run_and_its_batch_and_says_per_asset_where_rows_went(
    lake: Lake, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    create, connect = process_create("{A}", record=1), network_connect("{A}", record=2)
    other = sysmon_event(4624, None, provider="Microsoft-Windows-Security-Auditing", record=3)
    lake.land([create, connect, connect, other, network_connect("{nobody}", record=4), "not json"])
    monkeypatch.setattr(checks, "wall_clock", lambda: time.time() + 61 * 60)  # nothing landed for 61 minutes
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "home"))
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    definitions = build_definitions(lake.settings)
    job = definitions.resolve_job_def("sysmon_micro_batch")
    with DagsterInstance.get() as instance:
        run_id = job.execute_in_process(instance=instance).run_id
    main([])
    header, *lines = capsys.readouterr().out.splitlines()
    assert header == f"sysmon_micro_batch run {run_id[:8]}: SUCCESS, batch 1"
    by_asset = {line.split()[0]: line.split(maxsplit=1)[1] for line in lines}
    assert len(lines) == len(by_asset) == len(job.asset_layer.executable_asset_keys)
    assert set(by_asset) == {key.to_user_string() for key in job.asset_layer.executable_asset_keys}
    assert by_asset["winlogbeat_stream"].split() == [
        *("6", "in", "5", "written", "winlogbeat_rejects_rows_written=1"),
        # the rejected line fails schema.yml's warning on winlogbeat_rejects
        *("failed", "checks:", "winlogbeat_rejects__expression_is_true_error", "(WARN),"),
        *("landing_freshness", "(WARN)"),
    ]
    assert by_asset["winlogbeat_stream_rekey"].split() == [
        *("5", "in", "3", "written"),
        *("not_sysmon_dropped=1", "redeliveries_dropped=1"),
    ]
    # in: two connections and a process create; the connection without its create waits for it
    assert by_asset["sysmon_join"].split() == ["3", "in", "1", "written", "pending_joins=1", "expired_joins=0"]
    assert by_asset["sysmon_join_ancestry"] == "a view: stores no rows"
    # another run of the job is the one reported by default; --run-id picks the first
    with DagsterInstance.get() as instance:
        job.execute_in_process(instance=instance)
    main(["--run-id", run_id])
    assert capsys.readouterr().out.splitlines()[0].startswith(f"sysmon_micro_batch run {run_id[:8]}")
    main([])
    assert capsys.readouterr().out.splitlines()[0].endswith("SUCCESS, batch 2")
    # `dagster asset materialize` (and the UI's "Materialize all") runs the assets' implicit job: reported too
    with DagsterInstance.get() as instance:
        definitions.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance)
    main([])
    assert capsys.readouterr().out.splitlines()[0].endswith("SUCCESS, batch 3")


def test_without_dagster_home_or_a_run_the_report_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    with pytest.raises(SystemExit, match="DAGSTER_HOME is not set"):
        main([])
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path))
    with pytest.raises(SystemExit, match="no run of sysmon_micro_batch or __ASSET_JOB in the Dagster instance at"):
        main([])


def test_a_shards_report_names_its_partition_and_its_batch(tmp_path: Path) -> None:
    lake = Lake(tmp_path, shards=2)
    lake.land([process_create("{A}", record=1)])
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    with instance_for_test() as instance:
        run_id = job.execute_in_process(instance=instance, partition_key="shard-1").run_id
        header, *_ = run_report(instance, instance.get_run_by_id(run_id))
    # shard 1 of 2 numbers its batches 2, 4, ...
    assert header == f"sysmon_micro_batch run {run_id[:8]}: SUCCESS, partition shard-1, batch 2"
