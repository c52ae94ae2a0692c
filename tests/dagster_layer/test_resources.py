"""The Dagster resource: one pipeline per run; the lake has no single-process lock, so other processes read it
while the run's connection is still open."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path

import pytest
from dagster import DagsterInstance, build_resources
from dagster._serdes import serialize_value

from sysmon_assets.dagster_layer.resources import BatchClock, resources_from_settings
from sysmon_assets.definitions import build_definitions
from sysmon_assets.settings import Settings, SettingsError
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
def test_the_batch_clock_is_naive_utc_however_it_is_configured(configured: str, clock: datetime) -> None:
    # an aware time would go into the lake's TIMESTAMP columns in the session's time zone (the host's), or lose its
    # offset in a TIMESTAMP literal
    assert BatchClock(batch_time=configured).clock() == clock


def test_a_run_configuring_the_batch_clock_keeps_the_settings_of_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe's finding: configured in a run, batch_time replaced the whole resource's configuration (Dagster's
    rule for a resource's run config), so every other setting fell back to its default: the run wrote another lake,
    from ./data/landing."""
    lake = Lake(tmp_path / "configured")
    lake.land([process_create("{A}"), network_connect("{A}")])
    environ = {"SYSMON_LANDING_DIR": str(lake.landing), "SYSMON_DATA_DIR": str(lake.data)}
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    definitions = build_definitions(Settings.from_env(environ), environ)
    run_config = {"resources": {"batch_clock": {"config": {"batch_time": "2026-12-04T10:00:00"}}}}
    result = definitions.resolve_implicit_global_asset_job_def().execute_in_process(run_config=run_config)
    assert result.success
    assert lake.rows("SELECT DISTINCT _ingested_at FROM winlogbeat_stream") == [(datetime(2026, 12, 4, 10),)]
    assert lake.count("sysmon_join") == 1


def test_a_run_configuring_the_sysmon_resource_without_a_setting_of_the_environment_fails_naming_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Dagster replaces a resource's whole configuration with a run's: the settings the run does not name would fall
    back to their defaults (a docs probe's run read ./data/landing and failed saying to set SYSMON_LANDING_DIR,
    which was set)."""
    lake = Lake(tmp_path / "configured")
    environ = {"SYSMON_LANDING_DIR": str(lake.landing), "SYSMON_DATA_DIR": str(lake.data)}
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    job = build_definitions(Settings.from_env(environ), environ).resolve_implicit_global_asset_job_def()
    run_config = {"resources": {"sysmon": {"config": {"join_grace_minutes": 5, "data_dir": str(lake.data)}}}}
    result = job.execute_in_process(run_config=run_config, raise_on_error=False)
    assert not result.success
    error, *_ = [
        event.event_specific_data.error.to_string()
        for event in result.all_events
        if getattr(event.event_specific_data, "error", None) is not None
    ]
    assert "the run's configuration of the sysmon resource" in error
    assert "SYSMON_LANDING_DIR (landing_dir)" in error and "SYSMON_DATA_DIR" not in error  # the run names data_dir
    assert not (tmp_path / "data").exists()
    named = {"landing_dir": {"env": "SYSMON_LANDING_DIR"}, "data_dir": str(lake.data), "join_grace_minutes": 5}
    monkeypatch.setenv("SYSMON_FRESHNESS_MINUTES", "60")  # the default: falling back to it changes nothing
    lake.land([process_create("{A}"), network_connect("{A}")])
    assert job.execute_in_process(run_config={"resources": {"sysmon": {"config": named}}}).success
    assert lake.count("sysmon_join") == 1


def test_dagster_keeps_the_names_of_the_variables_a_run_was_configured_by_not_their_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A catalog string or a Kafka config may hold a password: the resource holds the variables (EnvVar), so the
    run's job snapshot, which keeps the resources' configuration, names them instead."""
    (tmp_path / "landing").mkdir()
    environ = {
        "SYSMON_LANDING_DIR": str(tmp_path / "landing"),
        "SYSMON_DATA_DIR": str(tmp_path / "data"),
        "SYSMON_LAKE_CATALOG": f"sqlite:{tmp_path}/catalog-kept-secret.sqlite",
        "SYSMON_KAFKA_CONFIG": "sasl.username=u,sasl.password=kafka-kept-secret",
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    definitions = build_definitions(Settings.from_env(environ), environ)
    with DagsterInstance.ephemeral() as instance:
        result = definitions.resolve_implicit_global_asset_job_def().execute_in_process(instance=instance)
        run = instance.get_run_by_id(result.run_id)
        kept = serialize_value(instance.get_job_snapshot(run.job_snapshot_id)) + serialize_value(run)
    assert result.success
    assert (tmp_path / "catalog-kept-secret.sqlite").exists()  # the run read the variable
    assert "kept-secret" not in kept
    assert "SYSMON_LAKE_CATALOG" in kept and "SYSMON_KAFKA_CONFIG" in kept


def test_the_resource_reads_its_variables_as_the_settings_read_them(monkeypatch: pytest.MonkeyPatch) -> None:
    environ = {
        "SYSMON_LANDING_DIR": "/landing/here",
        "SYSMON_JOIN_MODE": "KSQL",
        "SYSMON_LAKE_DATA_PATH": "s3://bucket/lake/",
        "SYSMON_KAFKA_BOOTSTRAP": "k:9092",
        "SYSMON_KAFKA_CONFIG": " security.protocol=SSL, ssl.ca.location=/ca=1.pem ",
        "SYSMON_KAFKA_TOPIC": "",  # empty: the default, as if unset
    }
    for name, value in environ.items():
        monkeypatch.setenv(name, value)
    settings = Settings.from_env(environ)
    with build_resources(resources_from_settings(settings, environ)) as resources:
        assert resources.sysmon.settings() == settings
    assert settings.kafka_config == (("security.protocol", "SSL"), ("ssl.ca.location", "/ca=1.pem"))
    assert (settings.join_mode, settings.kafka_topic) == ("ksql", "winlogbeat")


@pytest.mark.parametrize(
    "pair",
    [("sasl.password", "hun,ter2"), ("sasl.password", " hunter2"), ("sasl.password ", "hunter2"), ("a=b", "hunter2")],
)
def test_a_kafka_config_the_variable_could_not_carry_is_refused_without_showing_its_values(
    pair: tuple[str, str],
) -> None:
    with pytest.raises(
        SettingsError, match=rf"^SYSMON_KAFKA_CONFIG: the pair of key '{re.escape(pair[0])}'"
    ) as refused:
        Settings(kafka_config=(("sasl.username", "u"), pair))
    assert "hunter2" not in str(refused.value).replace(",", "")


def test_a_catalog_refused_is_not_shown_in_the_error() -> None:
    with pytest.raises(SettingsError, match=r"^SYSMON_LAKE_CATALOG: expected") as refused:
        Settings(lake_catalog="postgresql://u:hunter2@db/lake")
    assert "hunter2" not in str(refused.value)


def test_settings_made_in_code_come_back_from_the_resource_as_they_were_an_empty_text_as_its_default() -> None:
    settings = Settings(kafka_topic="", lake_data_path="", kafka_config=(("sasl.password", "pa ss"),))
    assert (settings.kafka_topic, settings.lake_data_path) == ("winlogbeat", None)  # as empty variables read
    with build_resources(resources_from_settings(settings)) as resources:
        assert resources.sysmon.settings() == settings


@pytest.mark.parametrize("text", ["sasl.username=u,sasl.password=hun,ter2", "sasl.username=u,sasl.password:hunter2"])
def test_a_kafka_config_variable_that_does_not_read_is_refused_without_showing_its_items(text: str) -> None:
    with pytest.raises(
        SettingsError, match=r"^SYSMON_KAFKA_CONFIG item [23] \(of the items between commas\)"
    ) as refused:
        Settings.from_env({"SYSMON_KAFKA_CONFIG": text})
    assert "ter2" not in str(refused.value)


def test_the_settings_repr_leaves_out_the_catalog_and_the_kafka_config() -> None:
    settings = Settings(lake_catalog="postgres:password=hunter2", kafka_config=(("sasl.password", "hunter2"),))
    assert "hunter2" not in repr(settings) and "kafka_topic='winlogbeat'" in repr(settings)
