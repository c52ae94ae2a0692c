"""The landing sensor requests a batch exactly when bytes land."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from dagster import (
    AssetKey,
    MetadataValue,
    RunRequest,
    SensorEvaluationContext,
    SkipReason,
    build_sensor_context,
)
from dagster._core.test_utils import instance_for_test

from sysmon_assets.dagster_layer import sensors
from sysmon_assets.dagster_layer.jobs import batch_job
from sysmon_assets.dagster_layer.resources import resources_from_settings
from sysmon_assets.dagster_layer.sensors import evaluate_landing, landing_sensor
from sysmon_assets.definitions import build_definitions
from sysmon_assets.micro_batch.ingest import LEFT_FOR_NEXT_BATCH, UNFINISHED_LINE_DUE
from sysmon_assets.micro_batch.shards import file_shard
from sysmon_assets.settings import Settings
from sysmon_assets.sources import landing_folder
from sysmon_assets.sources.landed_files import landing_snapshot
from sysmon_assets.sources.landing_folder import MIN_PIECE_BYTES
from tests.conftest import Lake, land_in_shard, network_connect, process_create

sensor = landing = landing_sensor(batch_job(), "winlogbeat_stream")


def test_requests_a_batch_only_when_files_appear_or_grow(tmp_path: Path) -> None:
    decision, cursor = evaluate_landing(tmp_path, None)
    assert isinstance(decision, SkipReason)
    (tmp_path / "w.ndjson").write_text('{"a": 1}\n')
    decision, cursor = evaluate_landing(tmp_path, cursor)
    assert [request.partition_key for request in decision] == [None]
    decision, cursor = evaluate_landing(tmp_path, cursor)
    assert isinstance(decision, SkipReason)
    with (tmp_path / "w.ndjson").open("a") as handle:
        handle.write('{"a": 2}\n')
    decision, _ = evaluate_landing(tmp_path, cursor)
    assert isinstance(decision[0], RunRequest)


def test_a_file_rewritten_smaller_or_of_the_same_size_is_requested(tmp_path: Path) -> None:
    # the batch reads such a file again from its start (docs/inputs.md): the sensor must not wait for it to grow
    landed = tmp_path / "w.ndjson"
    landed.write_text('{"a": 1}\n{"a": 2}\n')
    _, cursor = evaluate_landing(tmp_path, None)
    landed.write_text('{"a": 3}\n')  # truncated and written again, as logrotate's copytruncate leaves a file
    decision, cursor = evaluate_landing(tmp_path, cursor)
    assert isinstance(decision, list) and len(decision) == 1
    landed.write_text('{"a": 4}\n')  # the same size, another time
    os.utime(landed, ns=(landed.stat().st_atime_ns, landed.stat().st_mtime_ns + 10**9))
    decision, cursor = evaluate_landing(tmp_path, cursor)
    assert isinstance(decision, list) and len(decision) == 1
    assert isinstance(evaluate_landing(tmp_path, cursor)[0], SkipReason)


def test_a_missing_folder_is_a_skip_that_names_it(tmp_path: Path) -> None:
    decision, _ = evaluate_landing(tmp_path / "nope", None)
    assert isinstance(decision, SkipReason)
    assert str(tmp_path / "nope") in decision.skip_message


@contextmanager
def with_resources(settings: Settings) -> Iterator[SensorEvaluationContext]:
    """A sensor context holding the pipeline resource built from ``settings``, as Definitions builds it, on a
    Dagster instance of its own."""
    with (
        instance_for_test() as instance,
        build_sensor_context(instance=instance, resources=resources_from_settings(settings)) as context,
    ):
        yield context


def test_the_sensor_reads_the_resource_and_keeps_a_cursor(tmp_path: Path) -> None:
    (tmp_path / "w.ndjson").write_text('{"a": 1}\n')
    with with_resources(Settings(landing_dir=tmp_path, data_dir=tmp_path / "data")) as context:
        assert len(sensor(context).run_requests) == 1
        assert isinstance(sensor(context), SkipReason)


def test_a_batch_that_leaves_lines_unread_is_followed_by_one_more_until_all_is_read(tmp_path: Path) -> None:
    lake = Lake(tmp_path, landing_max_bytes=MIN_PIECE_BYTES)
    lake.land([process_create(f"{{P{n}}}", record=n) for n in range(300)])
    assert (lake.landing / "winlogbeat.ndjson").stat().st_size > 3 * MIN_PIECE_BYTES
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    with with_resources(lake.settings) as context:
        instance = context.instance
        (request,) = sensor(context).run_requests
        assert request.run_key is None  # the file appeared
        run_ids: list[str] = []
        while True:
            run_ids.append(job.execute_in_process(instance=instance).run_id)
            ingest = instance.get_latest_materialization_event(AssetKey("winlogbeat_stream")).asset_materialization
            all_read = lake.count("winlogbeat_stream") == 300
            assert ingest.metadata.get(LEFT_FOR_NEXT_BATCH) == (None if all_read else MetadataValue.int(1))
            if isinstance(decision := sensor(context), SkipReason):
                break
            # nothing new landed: the one request is for the rest of the last run's lines, once per run
            (request,) = decision.run_requests
            assert request.run_key == f"landing:rest-of:{run_ids[-1]}" == sensor(context).run_requests[0].run_key
        assert len(run_ids) > 3
        assert lake.count("sysmon_process_create_table") == 300


def test_a_last_line_without_newline_is_delivered_by_the_batch_the_sensor_requests_next(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    (lake.landing / "export.ndjson").write_text(json.dumps(process_create("{A}")))  # a copied export, no newline
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    with with_resources(lake.settings) as context:
        assert len(sensor(context).run_requests) == 1
        first = job.execute_in_process(instance=context.instance).run_id
        assert lake.count("winlogbeat_stream") == 0  # the line may still be being written
        (request,) = sensor(context).run_requests
        assert request.run_key == f"landing:rest-of:{first}"
        job.execute_in_process(instance=context.instance)
        assert lake.count("sysmon_process_create_table") == 1
        assert isinstance(sensor(context), SkipReason)


def test_a_cut_last_line_waiting_for_its_writer_is_requested_once_due(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A last line that is not a whole JSON document waits for its writer (docs/inputs.md, "Finished files"): the
    sensor does not keep asking for batches meanwhile, and asks for one when the wait is over."""
    lake = Lake(tmp_path)
    (lake.landing / "w.ndjson").write_text(json.dumps(process_create("{A}")) + "\n" + '{"event_id": 1, "event_')
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    with with_resources(lake.settings) as context:
        assert len(sensor(context).run_requests) == 1
        first = job.execute_in_process(instance=context.instance).run_id
        (request,) = sensor(context).run_requests
        assert request.run_key == f"landing:rest-of:{first}"
        second = job.execute_in_process(instance=context.instance)
        assert isinstance(sensor(context), SkipReason)
        assert (lake.count("winlogbeat_stream"), lake.count("winlogbeat_rejects")) == (1, 0)
        (materialization,) = [m for m in second.asset_materializations_for_node("winlogbeat_stream")]
        due = datetime.fromisoformat(materialization.metadata[UNFINISHED_LINE_DUE].value)
        assert timedelta(minutes=9) < due - datetime.now(UTC) <= timedelta(minutes=10)
        monkeypatch.setattr(sensors, "utc_clock", lambda: due)  # ten minutes on
        monkeypatch.setattr(landing_folder, "UNFINISHED_LINE_SECONDS", 0)
        (request,) = sensor(context).run_requests
        assert request.run_key == f"landing:rest-of:{second.run_id}"
        job.execute_in_process(instance=context.instance)
        assert isinstance(sensor(context), SkipReason)
    assert lake.rows("SELECT error FROM winlogbeat_rejects") == [("malformed JSON",)]


def test_with_shards_the_rest_is_requested_for_the_shard_that_left_it(tmp_path: Path) -> None:
    lake = Lake(tmp_path, shards=2, landing_max_bytes=MIN_PIECE_BYTES)
    lake.land([process_create(f"{{P{n}}}", record=n) for n in range(300)])
    (key,) = landing_snapshot(lake.landing)
    owner = f"shard-{file_shard(key, 2)}"
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    with with_resources(lake.settings) as context:
        assert [request.partition_key for request in sensor(context).run_requests] == [owner]
        for partition in ("shard-0", "shard-1"):
            run_id = job.execute_in_process(instance=context.instance, partition_key=partition).run_id
            if partition == owner:
                owner_run = run_id
        (request,) = sensor(context).run_requests
        assert (request.partition_key, request.run_key) == (owner, f"landing:rest-of:{owner_run}")


def test_with_shards_a_shard_whose_connections_wait_runs_once_another_commits_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection's create lands in another shard's file: that shard's batch commits it, and the waiting shard
    needs one more batch to join it (within its grace), though none of its files changed. The sensor reads the
    Dagster instance only, never the lake."""
    lake = Lake(tmp_path, shards=2)

    def sensor(context: SensorEvaluationContext) -> object:
        with monkeypatch.context() as no_lake:
            no_lake.setattr(duckdb, "connect", lambda *a, **k: pytest.fail("the sensor opened a DuckDB connection"))
            return landing(context)

    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    with with_resources(lake.settings) as context:
        land_in_shard(lake, 0, network_connect("{X}"))
        (request,) = sensor(context).run_requests
        job.execute_in_process(instance=context.instance, partition_key=request.partition_key)
        assert isinstance(sensor(context), SkipReason)  # waiting, but no other shard committed a create since
        land_in_shard(lake, 1, process_create("{X}"))
        (request,) = sensor(context).run_requests
        assert request.partition_key == "shard-1"
        other = job.execute_in_process(instance=context.instance, partition_key="shard-1").run_id
        (request,) = sensor(context).run_requests
        assert (request.partition_key, request.run_key) == ("shard-0", f"landing:joins-waiting-after:{other}:shard-0")
        job.execute_in_process(instance=context.instance, partition_key="shard-0")
        assert lake.rows("SELECT process_guid FROM sysmon_join") == [("{X}",)]
        assert isinstance(sensor(context), SkipReason)


def test_with_shards_waiting_joins_request_nothing_until_a_create_is_written(tmp_path: Path) -> None:
    """Each of three shards has connections whose creates have not come: their runs write no create, so none
    requests another (they would run each other for good); then one writes a create, and each of the two others
    gets a run of its own (a sensor's run key is run once, whatever its partition)."""
    lake = Lake(tmp_path, shards=3, join_grace_minutes=24 * 60)
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    with with_resources(lake.settings) as context:
        for shard in range(3):
            land_in_shard(lake, shard, network_connect(f"{{W{shard}}}"))
        for request in sensor(context).run_requests:
            job.execute_in_process(instance=context.instance, partition_key=request.partition_key)
        assert isinstance(sensor(context), SkipReason)
        land_in_shard(lake, 1, process_create("{W0}"))
        (request,) = sensor(context).run_requests
        creates = job.execute_in_process(instance=context.instance, partition_key=request.partition_key).run_id
        requests = sensor(context).run_requests
        assert [(r.partition_key, r.run_key) for r in requests] == [
            (f"shard-{shard}", f"landing:joins-waiting-after:{creates}:shard-{shard}") for shard in (0, 2)
        ]
        for request in requests:
            job.execute_in_process(instance=context.instance, partition_key=request.partition_key)
        assert lake.rows("SELECT process_guid FROM sysmon_join") == [("{W0}",)]
        assert isinstance(sensor(context), SkipReason)


def kafka_settings(tmp_path: Path, bootstrap: str, topic: str, **more: object) -> Settings:
    where = {"data_dir": tmp_path / "data", "landing_dir": tmp_path}
    return Settings(source="kafka", kafka_bootstrap=bootstrap, kafka_topic=topic, **where, **more)


def test_with_kafka_the_sensor_requests_a_batch_while_the_consumer_group_lags(tmp_path: Path, kafka_broker) -> None:
    from sysmon_assets.micro_batch.steps import SysmonPipeline
    from sysmon_assets.sources.kafka_source import topic_id

    topic = kafka_broker.create_topic(partitions=2)
    settings = kafka_settings(tmp_path, kafka_broker.bootstrap, topic, kafka_max_messages=2)
    with with_resources(settings) as context:
        assert isinstance(sensor(context), SkipReason)
        kafka_broker.produce(topic, [process_create(None)] * 3, partition=1, one_per_request=True)
        (decision,) = sensor(context).run_requests
        assert decision.tags["sysmon/lag"] == "3"
        # the same unread range, the same key: Dagster requests no second run while the first is queued or running
        named = f"{topic}@{topic_id(settings, topic)}"
        assert decision.run_key == f"kafka:{named}:0:0-0,1:0-3" == sensor(context).run_requests[0].run_key
        SysmonPipeline(settings).run_batch()
        # the batch read two of the three messages: the rest is a new range, so a new key, with nothing produced
        (decision,) = sensor(context).run_requests
        assert (decision.run_key, decision.tags["sysmon/lag"]) == (f"kafka:{named}:0:0-0,1:2-3", "1")
        SysmonPipeline(settings).run_batch()
        assert isinstance(sensor(context), SkipReason)
        # the topic recreated with as many messages: the same ranges, but another topic, so another key
        kafka_broker.recreate_topic(topic, partitions=2)
        kafka_broker.produce(topic, [process_create(None)] * 3, partition=1, one_per_request=True)
        (decision,) = sensor(context).run_requests
        assert decision.run_key.endswith(":0:0-0,1:0-3")  # the first batch's ranges
        assert decision.run_key != f"kafka:{named}:0:0-0,1:0-3"  # Dagster would not run that key again


def test_with_kafka_a_topic_id_that_cannot_be_read_is_a_skip_not_another_key(
    tmp_path: Path, kafka_broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    topic = kafka_broker.create_topic(partitions=1)
    settings = kafka_settings(tmp_path, kafka_broker.bootstrap, topic)
    with with_resources(settings) as context:
        kafka_broker.produce(topic, [process_create(None)] * 2)
        (first,) = sensor(context).run_requests

        def timed_out(*args: object, **kwargs: object) -> None:
            raise KafkaException(KafkaError(KafkaError._TIMED_OUT))

        with monkeypatch.context() as broken:
            broken.setattr(AdminClient, "describe_topics", timed_out)
            decision = sensor(context)
        assert isinstance(decision, SkipReason)
        assert f"cannot read the id of topic {topic!r} at {kafka_broker.bootstrap}" in decision.skip_message
        # the lag unchanged: the same key as before, so Dagster does not run it twice
        assert sensor(context).run_requests[0].run_key == first.run_key


def test_with_kafka_an_unreachable_broker_is_a_skip_that_names_it(tmp_path: Path) -> None:
    settings = Settings(
        source="kafka",
        kafka_bootstrap="127.0.0.1:1",
        kafka_config=(("socket.connection.setup.timeout.ms", "1000"),),
        landing_dir=tmp_path,
        data_dir=tmp_path / "data",
    )
    with with_resources(settings) as context:
        decision = sensor(context)
    assert isinstance(decision, SkipReason)
    assert "127.0.0.1:1" in decision.skip_message
