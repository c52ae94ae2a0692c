"""The landing sensor requests a batch exactly when bytes land."""

from __future__ import annotations

from pathlib import Path

from dagster import RunRequest, SkipReason, build_sensor_context

from sysmon_assets.dagster_layer.jobs import batch_job
from sysmon_assets.dagster_layer.resources import resources_from_settings
from sysmon_assets.dagster_layer.sensors import evaluate_landing, landing_sensor
from sysmon_assets.settings import Settings

sensor = landing_sensor(batch_job())


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


def test_a_missing_folder_is_a_skip_that_names_it(tmp_path: Path) -> None:
    decision, _ = evaluate_landing(tmp_path / "nope", None)
    assert isinstance(decision, SkipReason)
    assert str(tmp_path / "nope") in decision.skip_message


def with_resources(settings: Settings):
    """A sensor context holding the pipeline resource built from ``settings``, as Definitions builds it."""
    return build_sensor_context(resources=resources_from_settings(settings))


def test_the_sensor_reads_the_resource_and_keeps_a_cursor(tmp_path: Path) -> None:
    (tmp_path / "w.ndjson").write_text('{"a": 1}\n')
    with with_resources(Settings(landing_dir=tmp_path, data_dir=tmp_path / "data")) as context:
        assert len(sensor(context).run_requests) == 1
        assert isinstance(sensor(context), SkipReason)


def test_with_kafka_the_sensor_requests_a_batch_while_the_consumer_group_lags(tmp_path: Path, kafka_broker) -> None:
    from sysmon_assets.micro_batch.steps import SysmonPipeline
    from tests.conftest import process_create

    topic = kafka_broker.create_topic(partitions=2)
    settings = Settings(
        source="kafka",
        kafka_bootstrap=kafka_broker.bootstrap,
        kafka_topic=topic,
        data_dir=tmp_path / "data",
        landing_dir=tmp_path,
    )
    with with_resources(settings) as context:
        assert isinstance(sensor(context), SkipReason)
        kafka_broker.produce(topic, [process_create(None)] * 3, partition=1, one_per_request=True)
        (decision,) = sensor(context).run_requests
        assert decision.tags["sysmon/lag"] == "3"
        # the same ends, the same key: Dagster requests no second run while the first is queued or running
        assert decision.run_key == f"kafka:{topic}:0:0,1:3" == sensor(context).run_requests[0].run_key
        SysmonPipeline(settings).run_batch()
        assert isinstance(sensor(context), SkipReason)


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
