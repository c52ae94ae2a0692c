"""The Dagster definitions: lineage of the six recipe assets and the hunting ones, job, schedule, sensor, and the
CLI batch."""

from __future__ import annotations

import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, DefaultScheduleStatus, DefaultSensorStatus
from dagster._core.remote_origin import RegisteredCodeLocationOrigin, RemoteJobOrigin, RemoteRepositoryOrigin
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.test_utils import instance_for_test
from dagster._daemon.run_coordinator.queued_run_coordinator_daemon import QueuedRunCoordinatorDaemon

from dbt_like import SchemaTest, discover_models
from sysmon_assets.dagster_layer import checks as batch_checks
from sysmon_assets.dagster_layer.jobs import WRITER_POOL
from sysmon_assets.definitions import build_definitions, defs
from sysmon_assets.micro_batch.recipe_project import SQL_DIR, shared_project
from sysmon_assets.settings import Settings
from sysmon_assets.storage.lake import open_lake
from tests.conftest import CLI_BATCH, Lake, lake_rows, land, land_in_shard, network_connect, process_create
from tests.recipe import HUNTING_MODELS, RECIPE_MODELS

ROOT = Path(__file__).resolve().parents[2]
RECIPE_EDGES = {
    "winlogbeat_stream": set(),
    "winlogbeat_stream_rekey": {"winlogbeat_stream"},
    "sysmon_process_create": {"winlogbeat_stream_rekey"},
    "sysmon_process_create_table": {"sysmon_process_create"},
    "sysmon_network_connect": {"winlogbeat_stream_rekey"},
    # the ksql mode's as-of join reads the ProcessCreate stream itself
    "sysmon_join": {"sysmon_network_connect", "sysmon_process_create_table", "sysmon_process_create"},
}
HUNTING_EDGES = {
    # the creates a batch brought (the stream) and the whole process table
    "sysmon_process_ancestry": {"sysmon_process_create", "sysmon_process_create_table"},
    "sysmon_join_ancestry": {"sysmon_join", "sysmon_process_ancestry"},
    # the rekeyed events a batch brought (the stream), the whole process table for a connection's process, and the
    # join's new rows (and the connections it gave up on) for the rules that wait for that process
    "sigma_detections": {"winlogbeat_stream_rekey", "sysmon_process_create_table", "sysmon_join"},
}
ALL_MODELS = RECIPE_MODELS + HUNTING_MODELS


def test_the_six_recipe_assets_with_their_lineage_and_descriptions() -> None:
    graph = defs.resolve_asset_graph()
    keys = {key.to_user_string() for key in graph.get_all_asset_keys()}
    assert keys == set(ALL_MODELS)
    recipe = {
        key.to_user_string() for key in graph.get_all_asset_keys() if graph.get(key).group_name == "sysmon_recipe"
    }
    assert recipe == set(RECIPE_MODELS)
    for name, upstream in RECIPE_EDGES.items():
        node = graph.get(AssetKey(name))
        assert {key.to_user_string() for key in node.parent_keys} == upstream
        assert node.description and "Recipe step" in node.description
        assert node.kinds == {"ducklake", "sql"}
        assert node.group_name == "sysmon_recipe"


def test_the_hunting_assets_are_a_group_of_their_own_downstream_of_the_recipe() -> None:
    graph = defs.resolve_asset_graph()
    for name, upstream in HUNTING_EDGES.items():
        node = graph.get(AssetKey(name))
        assert {key.to_user_string() for key in node.parent_keys} == upstream
        assert node.description and node.description.startswith("Not a recipe step")
        assert node.group_name == "hunting"
    assert graph.get(AssetKey("sysmon_join_ancestry")).metadata["materialized"] == "view"


def test_schema_tests_are_asset_checks() -> None:
    checks = {key.name for key in defs.resolve_asset_graph().asset_check_keys}
    assert "sysmon_process_create_table__unique_process_guid" in checks
    assert "winlogbeat_rejects__not_null_error" in checks


def test_job_schedule_and_sensor() -> None:
    job = defs.resolve_job_def("sysmon_micro_batch")
    assert job.executor_def.name == "in_process"
    assert {node.name for node in job.nodes} == set(ALL_MODELS)
    schedule, sensor = defs.resolve_schedule_def("sysmon_every_minute"), defs.resolve_sensor_def("landing_sensor")
    assert schedule.cron_schedule == "* * * * *"
    assert schedule.job_name == sensor.job_name == "sysmon_micro_batch"
    assert schedule.default_status == DefaultScheduleStatus.STOPPED
    assert sensor.default_status == DefaultSensorStatus.STOPPED


def test_every_asset_of_one_writer_is_in_its_pool_and_no_shards_asset_is(tmp_path: Path) -> None:
    """The pool holds back every run that materializes the assets, whichever job it is (the asset graph's
    "Materialize all" runs Dagster's implicit asset job, as docs/dagster.md says)."""
    for job in (defs.resolve_job_def("sysmon_micro_batch"), defs.resolve_implicit_global_asset_job_def()):
        assert {node.definition.pool for node in job.nodes} == {WRITER_POOL}
    sharded = build_definitions(Settings(landing_dir=tmp_path, data_dir=tmp_path / "data", shards=3))
    assert {node.definition.pool for node in sharded.resolve_job_def("sysmon_micro_batch").nodes} == {None}


def test_lake_maintenance_job_and_its_schedule_every_ten_minutes() -> None:
    job = defs.resolve_job_def("lake_maintenance")
    assert {node.name for node in job.nodes} == {"maintain_lake"}
    assert {node.definition.pool for node in job.nodes} == {WRITER_POOL}  # never beside a batch of the writer
    schedule = defs.resolve_schedule_def("lake_maintenance_every_10_minutes")
    assert schedule.job_name == "lake_maintenance"
    assert schedule.cron_schedule == "7-59/10 * * * *"
    assert schedule.default_status == DefaultScheduleStatus.STOPPED


def test_lake_maintenance_of_a_folder_without_a_lake_fails_and_makes_none(tmp_path: Path) -> None:
    typo = Settings(landing_dir=tmp_path, data_dir=tmp_path / "no lake here")
    job = build_definitions(typo).resolve_job_def("lake_maintenance")
    result = job.execute_in_process(raise_on_error=False)
    assert not result.success
    (failure,) = [event for event in result.all_events if event.is_step_failure]
    assert "no lake at" in failure.step_failure_data.error.to_string()
    assert not typo.data_dir.exists()


def test_a_failing_blocking_check_stops_the_downstream_steps_of_its_batch(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    lake.land([process_create("{A}"), network_connect("{A}")])
    project = shared_project(lake.settings)
    model = project.models["sysmon_process_create"]
    broken = SchemaTest("expression_is_true", "process_id", expression="process_id < 0")
    monkeypatch.setitem(project.models, model.name, replace(model, tests=(*model.tests, broken)))
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    result = job.execute_in_process(raise_on_error=False)
    assert not result.success
    done = {event.step_key for event in result.all_events if event.is_step_success}
    assert {"winlogbeat_stream", "winlogbeat_stream_rekey", "sysmon_network_connect"} <= done
    assert "sysmon_process_create" not in done  # its step wrote its rows, then failed with its check
    assert not {"sysmon_process_create_table", "sysmon_join", "sysmon_process_ancestry"} & done
    assert lake.count("sysmon_process_create") == 1
    assert lake.rows("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'sysmon_join'") == [(0,)]
    # a check tests the rows of its own batch: the next run's (none new) passes, and the steps after it read on from
    # where they stopped, the rows that failed the check included (a probe's finding, now documented)
    assert job.execute_in_process(raise_on_error=False).success
    assert lake.count("sysmon_join") == 1


def queue_batch_runs(instance: DagsterInstance, data: Path) -> dict[str, str]:
    """Queue runs of the one-writer and the sharded definitions as Dagster creates launched runs (their pools from
    the execution plan); their names by run id."""
    sharded = build_definitions(Settings(landing_dir=data, data_dir=data / "data", shards=3))
    one_writer, asset_job = defs.resolve_job_def("sysmon_micro_batch"), defs.resolve_implicit_global_asset_job_def()
    shards_job = sharded.resolve_job_def("sysmon_micro_batch")
    queue = {
        "unsharded first": (one_writer, {}),
        "materialize all": (asset_job, {}),
        "unsharded again": (one_writer, {}),
        "shard-0 first": (shards_job, {"dagster/partition": "shard-0"}),
        "shard-0 again": (shards_job, {"dagster/partition": "shard-0"}),
        "shard-1": (shards_job, {"dagster/partition": "shard-1"}),
    }
    names = {}
    for name, (job, tags) in queue.items():
        repository = RemoteRepositoryOrigin(RegisteredCodeLocationOrigin("sysmon"), "__repository__")
        origin = RemoteJobOrigin(repository, job.name)
        run = instance.create_run_for_job(job, status=DagsterRunStatus.QUEUED, tags=tags, remote_job_origin=origin)
        names[run.run_id] = name
    return names


def dequeued(instance: DagsterInstance) -> list[DagsterRun]:
    """What Dagster's own queued-run daemon takes from the queue in one pass (its selection step, launching
    nothing)."""
    daemon = QueuedRunCoordinatorDaemon(interval_seconds=1)
    return daemon._get_runs_to_dequeue(instance, instance.get_concurrency_config(), fixed_iteration_time=None)


MAKE_UI_CONCURRENCY = yaml.safe_load((ROOT / "instance" / "dagster.yaml").read_text())["concurrency"]


def test_make_ui_instance_runs_one_batch_at_a_time_per_writer(tmp_path: Path) -> None:
    """The run queue of `make ui`'s instance (instance/dagster.yaml, and the pool's slot `make ui` sets)."""
    with instance_for_test(overrides={"concurrency": MAKE_UI_CONCURRENCY}) as instance:
        names = queue_batch_runs(instance, tmp_path)
        instance.event_log_storage.set_concurrency_slots(WRITER_POOL, 1)
        started = dequeued(instance)
        first = sorted(names[run.run_id] for run in started)
        # the writer's first run ends: the next run of the writer may start, whichever job it is
        (unsharded,) = (run for run in started if names[run.run_id] == "unsharded first")
        instance.report_run_failed(unsharded)
        then = {names[run.run_id] for run in dequeued(instance)}
    assert first == ["shard-0 first", "shard-1", "unsharded first"]
    assert "materialize all" in then and "unsharded again" not in then


def test_without_the_pools_slot_set_the_daemons_first_pass_lets_every_run_of_the_writer_through(
    tmp_path: Path,
) -> None:
    """Why `make ui` sets the slot: Dagster 1.13's daemon gives a pool it has not seen its default limit only after
    it chose what to launch."""
    with instance_for_test(overrides={"concurrency": MAKE_UI_CONCURRENCY}) as instance:
        names = queue_batch_runs(instance, tmp_path)
        first = {names[run.run_id] for run in dequeued(instance)}
        second = {names[run.run_id] for run in dequeued(instance)}
    assert {"unsharded first", "materialize all", "unsharded again"} <= first
    assert len({"unsharded first", "materialize all", "unsharded again"} & second) == 1


def test_materializing_the_job_in_process_reports_rows_offsets_and_checks(lake: Lake) -> None:
    lake.land([process_create("{G}"), network_connect("{g}"), network_connect("{none}")])
    definitions = build_definitions(lake.settings)
    result = definitions.resolve_job_def("sysmon_micro_batch").execute_in_process()
    assert result.success
    join = result.asset_materializations_for_node("sysmon_join")[0].metadata
    assert join["rows_written"].value == 1
    assert join["pending_joins"].value == 1
    assert join["dagster/row_count"].value == 1
    assert join["offsets_after"].value == {"sysmon_network_connect": 1, "sysmon_process_create": 1}
    ingest = result.asset_materializations_for_node("winlogbeat_stream")[0].metadata
    assert ingest["winlogbeat_rejects_rows_written"].value == 0
    checks = result.get_asset_check_evaluations()
    assert checks and all(check.passed for check in checks)


def test_the_cli_runs_exactly_one_micro_batch(tmp_path: Path) -> None:
    settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "cli")
    lake = Lake(tmp_path)
    lake.land([process_create("{G}"), network_connect("{G}")])
    env = {
        **os.environ,
        "SYSMON_LANDING_DIR": str(settings.landing_dir),
        "SYSMON_DATA_DIR": str(settings.data_dir),
    }
    # the README's command, then the one `make run` runs: a batch each
    job_batch = [*CLI_BATCH[:3], "job", "execute", "-m", "sysmon_assets.definitions", "-j", "sysmon_micro_batch"]
    for command in (CLI_BATCH, job_batch):
        subprocess.run(command, cwd=ROOT, env=env, check=True, capture_output=True)
    assert lake_rows(settings, "SELECT count(*) FROM dbt_like.batches") == [(2,)]
    assert lake_rows(settings, "SELECT count(*), max(_batch_id) FROM main.sysmon_join") == [(1, 1)]


@pytest.mark.parametrize(
    ("variable", "value"), [("SYSMON_JOIN_GRACE_MINUTES", "soon"), ("SYSMON_DUCKDB_MEMORY_LIMIT", "lots")]
)
def test_the_cli_refuses_a_bad_setting_naming_it_before_any_step_runs(
    tmp_path: Path, variable: str, value: str
) -> None:
    lake = Lake(tmp_path)
    lake.land([process_create("{G}"), network_connect("{G}")])
    env = {**os.environ, "SYSMON_LANDING_DIR": str(lake.landing), "SYSMON_DATA_DIR": str(lake.data), variable: value}
    refused = subprocess.run(CLI_BATCH, cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode != 0
    assert f"{variable}={value!r}" in refused.stderr
    assert not lake.data.exists()


def test_materializations_carry_column_schema_lineage_and_a_preview(lake: Lake) -> None:
    lake.land([process_create("{G}", "whoami.exe"), network_connect("{g}")])
    result = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch").execute_in_process()
    join = result.asset_materializations_for_node("sysmon_join")[0].metadata
    schema = {column.name: column for column in join["dagster/column_schema"].schema.columns}
    assert schema["event_date_creation"].type == "TIMESTAMP"
    assert schema["user_account"].description == "the network event's user (N.USER_ACCOUNT in the recipe)"
    for name in ALL_MODELS:  # every column of every table and view is described in the UI
        columns = result.asset_materializations_for_node(name)[0].metadata["dagster/column_schema"].schema.columns
        assert [column.name for column in columns if not column.description] == [], name
    # winlogbeat_rejects, a side table with no asset of its own, has its descriptions in schema.yml
    rejects = discover_models(SQL_DIR)["winlogbeat_rejects"].columns
    assert [name for name, *_ in lake.rows("DESCRIBE winlogbeat_rejects") if not rejects.get(name)] == []
    deps = join["dagster/column_lineage"].column_lineage.deps_by_column["process_command_line"]
    assert [(d.asset_key.to_user_string(), d.column_name) for d in deps] == [
        ("sysmon_process_create_table", "process_command_line")
    ]
    assert "whoami.exe" not in join["new_rows_preview"].value  # the preview shows the first columns only
    assert "{G}" in join["new_rows_preview"].value
    assert join["duration_seconds"].value >= 0
    assert join["lake_table"].value == "lake.main.sysmon_join"
    snapshots = [result.asset_materializations_for_node(name)[0].metadata["lake_snapshot"].value for name in ALL_MODELS]
    assert len(set(snapshots)) == len(ALL_MODELS)  # each step committed a snapshot of its own
    assert max(snapshots) == lake.rows("FROM ducklake_current_snapshot('lake')")[0][0]


def test_a_file_moved_in_with_an_old_modification_time_is_fresh(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    shipped = tmp_path / "shipped.ndjson"  # written long ago elsewhere, moved in as mv, cp -p or rsync -a keep it
    land(shipped, [process_create("{G}")])
    os.utime(shipped, (0, 0))
    shipped.rename(lake.landing / shipped.name)
    result = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch").execute_in_process()
    (freshness,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "landing_freshness"]
    assert freshness.passed, freshness.metadata


def test_a_rotation_and_a_new_empty_file_are_not_a_landing(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    written = lake.land([process_create("{G}")], name="winlogbeat")
    job.execute_in_process()
    with open_lake(lake.settings) as con:  # that landing two hours ago
        con.execute("UPDATE ingest.files SET updated_at = updated_at - INTERVAL 2 HOUR")
    written.rename(written.with_name("winlogbeat.1"))  # as Winlogbeat rotates on a restart, writing nothing
    written.touch()  # and an empty file, which a writer may create before it writes
    result = job.execute_in_process()
    (freshness,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "landing_freshness"]
    assert not freshness.passed
    assert freshness.metadata["minutes_since_last_landing"].value >= 120


def test_reading_on_into_bytes_that_landed_earlier_is_not_a_landing(tmp_path: Path) -> None:
    lake = Lake(tmp_path, landing_max_bytes=1)  # a batch reads about one piece of each file: the rest waits
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    lake.land([process_create(f"{{G{i}}}", command_line="x" * 2000) for i in range(200)])
    job.execute_in_process()
    with open_lake(lake.settings) as con:  # that landing two hours ago
        con.execute("UPDATE ingest.files SET updated_at = updated_at - INTERVAL 2 HOUR")
    result = job.execute_in_process()
    assert lake.rows("SELECT count(DISTINCT _batch_id) FROM winlogbeat_stream") == [(2,)]  # the second read on
    (freshness,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "landing_freshness"]
    assert not freshness.passed
    assert freshness.metadata["minutes_since_last_landing"].value >= 120


def test_with_shards_landing_freshness_is_each_shard_s_own(tmp_path: Path) -> None:
    lake = Lake(tmp_path, shards=2)
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    land_in_shard(lake, 1, process_create("{A}"))
    freshness = {}
    for partition in ("shard-1", "shard-0"):
        result = job.execute_in_process(partition_key=partition)
        (freshness[partition],) = [
            e for e in result.get_asset_check_evaluations() if e.check_name == "landing_freshness"
        ]
    assert freshness["shard-1"].passed
    assert freshness["shard-1"].metadata["files"].value == 1
    assert not freshness["shard-0"].passed  # nothing ever landed in shard 0's files, though shard 1's are fresh
    assert freshness["shard-0"].metadata["files"].value == 0


@pytest.mark.parametrize(("freshness_minutes", "fresh"), [(90, True), (30, False)])
def test_landing_freshness_warns_after_the_configured_minutes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, freshness_minutes: int, fresh: bool
) -> None:
    lake = Lake(tmp_path, freshness_minutes=freshness_minutes)
    lake.land([process_create("{G}")])
    monkeypatch.setattr(batch_checks, "wall_clock", lambda: time.time() + 61 * 60)  # nothing landed for 61 minutes
    result = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch").execute_in_process()
    (freshness,) = [c for c in result.get_asset_check_evaluations() if c.check_name == "landing_freshness"]
    assert freshness.passed is fresh


def test_join_coverage_is_the_batch_s_own(tmp_path: Path) -> None:
    lake = Lake(tmp_path, join_coverage_warn=0.5)
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    lake.land([process_create(f"{{P{i}}}") for i in range(8)] + [network_connect(f"{{P{i}}}") for i in range(8)])
    job.execute_in_process()
    lake.land([network_connect("{P0}"), *[network_connect(f"{{Q{i}}}") for i in range(3)]], name="later.ndjson")
    checks = {c.check_name: c for c in job.execute_in_process().get_asset_check_evaluations()}
    coverage = {key: value.value for key, value in checks["join_coverage"].metadata.items()}
    # 1 of this batch's 4 connections joined (3 wait for their process, in vain so far); 9 of 12 in all would pass
    assert not checks["join_coverage"].passed
    assert coverage == {
        "coverage": 0.25,
        "joined": 1,
        "joined_from_earlier_batches": 0,
        "network_events": 4,
        "waiting": 3,
        "warn_below": 0.5,
    }


def test_join_coverage_and_landing_freshness_warn(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    lake = Lake(tmp_path)
    lake.land([process_create("{G}"), network_connect("{g}"), *[network_connect(f"{{X{i}}}") for i in range(5)]])
    monkeypatch.setattr(batch_checks, "wall_clock", lambda: time.time() + 61 * 60)  # nothing landed for 61 minutes
    result = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch").execute_in_process()
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    assert not checks["join_coverage"].passed
    assert checks["join_coverage"].metadata["coverage"].value == round(1 / 6, 4)
    assert not checks["landing_freshness"].passed
    assert checks["landing_freshness"].severity.value == "WARN"
