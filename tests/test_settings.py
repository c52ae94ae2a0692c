"""Settings from the environment: defaults under ./data/ and clear errors."""

from __future__ import annotations

import os
import re
from dataclasses import fields
from pathlib import Path

import pytest

from sysmon_assets.dagster_layer.resources import SysmonPipelineResource, resources_from_settings
from sysmon_assets.micro_batch.steps import SysmonPipeline
from sysmon_assets.settings import MAX_ANCESTRY_DEPTH, MAX_MINUTES, Settings, SettingsError, configuration_table
from tests.conftest import Lake, network_connect, process_create

ROOT = Path(__file__).resolve().parent.parent


def test_defaults_live_under_data() -> None:
    settings = Settings.from_env({})
    assert (settings.landing_dir, settings.data_dir) == (Path("data/landing"), Path("data"))
    assert (settings.catalog, settings.data_path) == ("sqlite:data/lake.sqlite", "data/lake_files/")
    assert (settings.offset_reset, settings.join_mode, settings.join_grace_minutes) == ("earliest", "default", 15)


def test_every_setting_comes_from_its_variable() -> None:
    settings = Settings.from_env(
        {
            "SYSMON_LANDING_DIR": "/in",
            "SYSMON_DATA_DIR": "/lake",
            "SYSMON_OFFSET_RESET": "latest",
            "SYSMON_JOIN_MODE": "KSQL",
            "SYSMON_JOIN_GRACE_MINUTES": "5",
        }
    )
    assert settings == Settings(
        landing_dir=Path("/in"), data_dir=Path("/lake"), offset_reset="latest", join_mode="ksql", join_grace_minutes=5
    )
    assert (settings.catalog, settings.data_path) == ("sqlite:/lake/lake.sqlite", "/lake/lake_files/")
    elsewhere = Settings.from_env({"SYSMON_LAKE_CATALOG": "postgres:dbname=lake", "SYSMON_LAKE_DATA_PATH": "s3://b/l/"})
    assert (elsewhere.catalog, elsewhere.data_path) == ("postgres:dbname=lake", "s3://b/l/")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SYSMON_JOIN_MODE", "fuzzy"),
        ("SYSMON_OFFSET_RESET", "middle"),
        ("SYSMON_JOIN_GRACE_MINUTES", "soon"),
        ("SYSMON_JOIN_GRACE_MINUTES", "-1"),
        ("SYSMON_SOURCE", "carrier-pigeon"),
        ("SYSMON_KAFKA_PARTITIONS", "0,one"),
        ("SYSMON_KAFKA_PARTITIONS", "0,-1"),
        ("SYSMON_KAFKA_PARTITIONS", "2147483648"),
        ("SYSMON_KAFKA_SINK", "maybe"),
        ("SYSMON_KAFKA_CONFIG", "security.protocol"),
        ("SYSMON_KAFKA_MAX_MESSAGES", "lots"),
        ("SYSMON_ANCESTRY_DEPTH", "deep"),
    ],
)
def test_bad_values_name_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


def test_a_bad_path_is_named_as_it_was_set(tmp_path: Path) -> None:
    missing = tmp_path / "no rules"
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"SYSMON_SIGMA_RULES": str(missing)})
    assert str(refused.value).startswith(f"SYSMON_SIGMA_RULES={str(missing)!r}: ")


@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("SYSMON_JOIN_GRACE_MINUTES", "100000000000000000000"),  # more than DuckDB's INTERVAL holds
        ("SYSMON_JOIN_GRACE_MINUTES", str(MAX_MINUTES + 1)),
        ("SYSMON_MAX_LINE_BYTES", "100000000000000000000000"),
        ("SYSMON_MAX_LINE_BYTES", str(1024**3 + 1)),
        ("SYSMON_MAX_LINE_BYTES", "0"),
        ("SYSMON_JOIN_COVERAGE_WARN", "nan"),
        ("SYSMON_JOIN_COVERAGE_WARN", "inf"),
        ("SYSMON_JOIN_COVERAGE_WARN", "-0.1"),
        ("SYSMON_JOIN_COVERAGE_WARN", "1.5"),
        ("SYSMON_FRESHNESS_MINUTES", "-1"),
        ("SYSMON_FRESHNESS_MINUTES", "0"),
        ("SYSMON_FRESHNESS_MINUTES", "100000000000000000000"),
        ("SYSMON_DUCKDB_MEMORY_LIMIT", "lots"),
        ("SYSMON_DUCKDB_MEMORY_LIMIT", "80%"),
        ("SYSMON_DUCKDB_MEMORY_LIMIT", "1e30GB"),  # overflows to 0 bytes in DuckDB: no query could run
        ("SYSMON_LAKE_CATALOG", "mysql:lake"),
        ("SYSMON_LAKE_DATA_PATH", "s3://"),
        ("SYSMON_LAKE_DATA_PATH", "s3:///lake/"),
        ("SYSMON_LAKE_DATA_PATH", "S3://bucket/lake/"),  # DuckDB would take it for a local folder named S3:
        ("SYSMON_LAKE_DATA_PATH", "s3:/bucket/lake/"),
        ("SYSMON_SNAPSHOT_RETENTION_DAYS", "0"),
        ("SYSMON_EVENT_RETENTION_DAYS", "-1"),
        ("SYSMON_KAFKA_MAX_BYTES", "0"),
        ("SYSMON_LANDING_MAX_BYTES", "-1"),
        ("SYSMON_ANCESTRY_DEPTH", "0"),
        ("SYSMON_ANCESTRY_DEPTH", str(MAX_ANCESTRY_DEPTH + 1)),
    ],
)
def test_values_out_of_range_are_refused_up_front_naming_the_variable(variable: str, value: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        Settings.from_env({variable: value})


@pytest.mark.parametrize("variable", ["SYSMON_DATA_DIR", "SYSMON_LAKE_DATA_PATH", "SYSMON_LAKE_CATALOG"])
def test_a_path_whose_bytes_are_not_utf8_is_refused_naming_the_variable(variable: str) -> None:
    """Python reads such a variable's bytes as lone surrogates, which DuckDB cannot take (a probe: a traceback)."""
    value = os.fsdecode(b"/tmp/d\xe4ta")
    prefix = "sqlite:" if variable == "SYSMON_LAKE_CATALOG" else ""
    with pytest.raises(SettingsError, match=f"^{variable}.*: a path DuckDB can open is UTF-8 text"):
        Settings.from_env({variable: prefix + value})


@pytest.mark.parametrize(
    ("value", "problem"),
    [
        ("lots", "expected a number and a unit: KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB"),
        ("80%", "expected a number and a unit"),
        ("1B", "no query runs under it (too small, or so large that it overflows)"),
        ("1e30GB", "no query runs under it"),
    ],
)
def test_a_bad_memory_limit_is_explained_in_our_words(value: str, problem: str) -> None:
    # DuckDB's own text for "lots" ends "(e.g. SET memory_limit=1GB", its parenthesis never closed
    with pytest.raises(SettingsError) as refused:
        Settings.from_env({"SYSMON_DUCKDB_MEMORY_LIMIT": value})
    assert str(refused.value).startswith(f"SYSMON_DUCKDB_MEMORY_LIMIT={value!r}: ")
    assert problem in str(refused.value)
    assert "Error" not in str(refused.value)


def test_the_bounds_themselves_are_accepted() -> None:
    settings = Settings.from_env(
        {
            "SYSMON_JOIN_GRACE_MINUTES": str(MAX_MINUTES),
            "SYSMON_MAX_LINE_BYTES": str(1024**3),
            "SYSMON_JOIN_COVERAGE_WARN": "1",
            "SYSMON_FRESHNESS_MINUTES": "1",
            "SYSMON_DUCKDB_MEMORY_LIMIT": "1GiB",
            "SYSMON_ANCESTRY_DEPTH": str(MAX_ANCESTRY_DEPTH),
        }
    )
    assert (settings.join_grace_minutes, settings.max_line_bytes, settings.join_coverage_warn) == (
        MAX_MINUTES,
        1024**3,
        1,
    )
    assert (settings.ancestry_depth, Settings.from_env({"SYSMON_ANCESTRY_DEPTH": "1"}).ancestry_depth) == (
        MAX_ANCESTRY_DEPTH,
        1,
    )


def test_a_grace_period_in_range_runs_a_batch(tmp_path: Path) -> None:
    """The largest grace period is one DuckDB's INTERVAL holds: the join's retry bookkeeping runs with it."""
    lake = Lake(tmp_path, join_grace_minutes=MAX_MINUTES)
    lake.land([network_connect("{LATE}")])
    lake.batch()
    lake.land([process_create("{LATE}")])
    lake.batch()
    assert lake.count("sysmon_join") == 1


def test_the_duckdb_memory_limit_reaches_every_connection(tmp_path: Path) -> None:
    settings = Settings.from_env(
        {
            "SYSMON_DUCKDB_MEMORY_LIMIT": "300MB",
            "SYSMON_DATA_DIR": str(tmp_path / "data"),
            "SYSMON_LANDING_DIR": str(tmp_path),
        }
    )
    with SysmonPipeline(settings).connect() as con:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "286.1 MiB"  # 300 MB
    resource = resources_from_settings(settings)["sysmon"]
    assert resource.settings().memory_limit == "300MB"
    with resource.pipeline().connect() as con:
        assert con.execute("SELECT current_setting('memory_limit')").fetchone()[0] == "286.1 MiB"  # 300 MB


def test_kafka_settings_come_from_their_variables_and_reach_the_resource() -> None:
    settings = Settings.from_env(
        {
            "SYSMON_SOURCE": "Kafka",
            "SYSMON_KAFKA_BOOTSTRAP": "k1:9092,k2:9092",
            "SYSMON_KAFKA_TOPIC": "wlb",
            "SYSMON_KAFKA_GROUP": "g",
            "SYSMON_KAFKA_PARTITIONS": "2, 0",
            "SYSMON_KAFKA_MAX_MESSAGES": "10",
            "SYSMON_KAFKA_MAX_BYTES": "1000",
            "SYSMON_KAFKA_SINK": "yes",
            "SYSMON_KAFKA_SINK_TOPIC": "JOINED",
            "SYSMON_KAFKA_CONFIG": "security.protocol=SASL_SSL, sasl.mechanism=PLAIN",
        }
    )
    assert (settings.source, settings.kafka_topic, settings.kafka_group, settings.kafka_partitions) == (
        "kafka",
        "wlb",
        "g",
        (0, 2),
    )
    assert (settings.kafka_max_messages, settings.kafka_max_bytes, settings.kafka_sink) == (10, 1000, True)
    assert settings.kafka_client_config() == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
    }
    assert resources_from_settings(settings)["sysmon"].settings() == settings


def test_kafka_defaults_follow_the_recipe() -> None:
    settings = Settings.from_env({})
    assert (settings.source, settings.kafka_topic, settings.offset_reset, settings.kafka_sink_topic) == (
        "files",
        "winlogbeat",
        "earliest",
        "SYSMON_JOIN",
    )
    with pytest.raises(SettingsError, match="SYSMON_KAFKA_BOOTSTRAP"):
        Settings.from_env({"SYSMON_SOURCE": "kafka"})


def test_shards_come_from_sysmon_shards_and_refuse_what_needs_one_pipeline() -> None:
    assert Settings.from_env({}).shards == 1
    assert Settings.from_env({"SYSMON_SHARDS": "3"}).shards == 3
    for text in ("0", "1025", "-2"):
        with pytest.raises(SettingsError, match=f"SYSMON_SHARDS={text}: expected 1 to 1024"):
            Settings.from_env({"SYSMON_SHARDS": text})
    with pytest.raises(SettingsError, match="SYSMON_SHARDS='two': expected a whole number"):
        Settings.from_env({"SYSMON_SHARDS": "two"})
    with pytest.raises(SettingsError, match="SYSMON_JOIN_MODE=ksql needs one arrival order"):
        Settings.from_env({"SYSMON_SHARDS": "2", "SYSMON_JOIN_MODE": "ksql"})
    sink = {"SYSMON_SHARDS": "2", "SYSMON_KAFKA_SINK": "1", "SYSMON_KAFKA_BOOTSTRAP": "localhost:9092"}
    with pytest.raises(SettingsError, match="SYSMON_KAFKA_SINK publishes from one pipeline"):
        Settings.from_env(sink)


def test_each_setting_is_declared_once_with_its_variable_and_description() -> None:
    declared = fields(Settings)
    variables = [setting.metadata["env"] for setting in declared]
    assert all(variable.startswith("SYSMON_") for variable in variables)
    assert len(set(variables)) == len(variables)
    assert all(setting.metadata["doc"] for setting in declared)
    assert Settings.from_env({}) == Settings()


def test_the_resource_has_one_described_config_field_per_setting() -> None:
    """The Dagster resource's config is generated from the declarations: the UI shows the same descriptions."""
    config = SysmonPipelineResource.to_config_schema().as_field().config_type.fields
    described = {setting.name: setting.metadata["doc"] for setting in fields(Settings)}
    described.pop("memory_limit")  # reaches DuckDB through the DuckDB resource's connection_config
    assert {name: config[name].description for name in described} == described
    assert set(config) == set(described)  # nothing else: the batch clock is a resource of its own


def test_the_resource_gives_back_the_settings_it_was_built_from(tmp_path: Path) -> None:
    settings = Settings(
        landing_dir=tmp_path / "in",
        lake_data_path="s3://b/l/",
        kafka_partitions=(0, 2),
        kafka_config=(("security.protocol", "SSL"),),
        memory_limit="1GB",
        join_coverage_warn=0.5,
    )
    assert resources_from_settings(settings)["sysmon"].settings() == settings


def test_readme_configuration_table_is_generated_from_the_declarations() -> None:
    """README's table is ``configuration_table()``; no other doc keeps a table of its own."""
    readme = (ROOT / "README.md").read_text()
    start = readme.index("| variable | default | meaning |")
    table = readme[start : readme.index("\n\n", start) + 1]
    assert table == configuration_table(), "paste sysmon_assets.settings.configuration_table() into README.md"
    for doc in (ROOT / "docs").glob("*.md"):
        assert "| `SYSMON_" not in doc.read_text(), doc


def test_an_event_retention_within_the_join_grace_is_refused() -> None:
    # a connection dropped while it waits for its process create would never join
    with pytest.raises(
        SettingsError, match=r"SYSMON_EVENT_RETENTION_DAYS=0.01 \(14.4 minutes\) would drop connections"
    ):
        Settings.from_env({"SYSMON_EVENT_RETENTION_DAYS": "0.01"})
    with pytest.raises(SettingsError, match=r"SYSMON_JOIN_GRACE_MINUTES=2880\): keep events longer than the grace"):
        Settings.from_env({"SYSMON_EVENT_RETENTION_DAYS": "2", "SYSMON_JOIN_GRACE_MINUTES": "2880"})
    assert Settings.from_env({"SYSMON_EVENT_RETENTION_DAYS": "0.02"}).event_retention_days == 0.02  # 28.8 > 15
    assert Settings.from_env({"SYSMON_EVENT_RETENTION_DAYS": "0"}).event_retention_days == 0  # keep everything
    assert Settings.from_env({"SYSMON_JOIN_MODE": "ksql"}).event_retention_days == 0


def test_an_event_retention_is_refused_in_the_ksql_join_mode() -> None:
    # that join reads the stream of process creates, whose old rows a retention drops
    with pytest.raises(SettingsError, match=r"SYSMON_EVENT_RETENTION_DAYS=2.0 with SYSMON_JOIN_MODE=ksql: "):
        Settings.from_env({"SYSMON_EVENT_RETENTION_DAYS": "2", "SYSMON_JOIN_MODE": "ksql"})


@pytest.mark.parametrize(
    ("variable", "value", "expected"),
    [
        ("SYSMON_EVENT_RETENTION_DAYS", "40000", "expected 0 (keep) or more days, fewer than 36500"),
        ("SYSMON_EVENT_RETENTION_DAYS", "-1", "expected 0 (keep) or more days, fewer than 36500"),
        ("SYSMON_SNAPSHOT_RETENTION_DAYS", "40000", "expected more than 0 days and fewer than 36500"),
        ("SYSMON_SNAPSHOT_RETENTION_DAYS", "0", "expected more than 0 days and fewer than 36500"),
    ],
)
def test_a_retention_out_of_range_names_the_range(variable: str, value: str, expected: str) -> None:
    with pytest.raises(SettingsError, match=re.escape(expected)):
        Settings.from_env({variable: value})
