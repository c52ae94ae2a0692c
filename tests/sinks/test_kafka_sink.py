"""The SYSMON_JOIN sink against a real broker: read back by a consumer, never published twice."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Producer
from dagster import AssetKey

from sysmon_assets.definitions import build_definitions
from sysmon_assets.micro_batch.steps import SysmonPipeline, utc_now
from sysmon_assets.settings import Settings
from sysmon_assets.sinks.kafka_sink import KSQL_ALIASED, JoinSink, KafkaSinkError, ksql_name
from tests.conftest import T0, Lake, in_time_zone, lake_rows, network_connect, process_create
from tests.kafka_broker import Broker
from tests.recipe import HUNTING_MODELS, RECIPE_MODELS, recipe_columns


def sink_lake(root: Path, broker: Broker, **overrides) -> Lake:
    """A file-fed pipeline whose joins go to a fresh sink topic."""
    topic = broker.create_topic(partitions=2, prefix="SYSMON_JOIN")
    return Lake(root, kafka_sink=True, kafka_bootstrap=broker.bootstrap, kafka_sink_topic=topic, **overrides)


def published(broker: Broker, lake: Lake) -> list[dict]:
    """The sink topic's messages as (key, headers, value) dicts."""
    return [
        {"key": m.key(), "headers": dict(m.headers()), "value": json.loads(m.value())}
        for m in broker.read_all(lake.settings.kafka_sink_topic)
    ]


def crash_while_publishing(settings: Settings, run_key: str, producer_factory: Callable[[dict], Any]) -> None:
    """Run a batch's steps, then publish through ``producer_factory``'s producer, which 'kills' the process
    (a KeyboardInterrupt before the sink records the range done)."""
    crashing = SysmonPipeline(settings)
    for name in crashing.project.primary_models():
        crashing.run_model(name, run_key, T0)
    with pytest.raises(KeyboardInterrupt), crashing.connect() as con:
        JoinSink(settings, producer_factory=producer_factory).publish(con)


def ksql_join_names() -> list[str]:
    """SYSMON_JOIN's columns as KSQL 5.1.1 names them, from the recipe text: a column N and P both have
    is named after the source it is selected from (the recipe's sample reads N_USER_ACCOUNT)."""
    shared = set(recipe_columns("sysmon_network_connect")) & set(recipe_columns("sysmon_process_create_table"))
    names = []
    for column in recipe_columns("sysmon_join"):
        side = "N" if column in recipe_columns("sysmon_network_connect") else "P"
        names.append(f"{side}_{column}".upper() if column in shared else column.upper())
    return names


def test_the_ksql_names_are_the_recipes() -> None:
    assert ksql_join_names()[:5] == [
        "N_EVENT_DATE_CREATION",
        "N_PROCESS_GUID",
        "N_PROCESS_ID",
        "N_PROCESS_PATH",
        "N_USER_ACCOUNT",
    ]
    assert [name for name in ksql_join_names() if name.startswith("N_")] == [
        ksql_name(column) for column in KSQL_ALIASED
    ]


def test_each_joined_row_is_published_once_as_ksql_json_keyed_by_process_guid(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    lake = sink_lake(tmp_path, kafka_broker)
    lake.land(
        [
            process_create("{A}", command_line="a.exe"),
            network_connect("{A}", dst_ip="10.0.0.7"),
            process_create("{B}"),
            network_connect("{B}"),
        ]
    )
    lake.batch()
    lake.land([network_connect("{A}", dst_ip="10.0.0.8")])
    lake.batch()
    lake.batch()  # nothing new: nothing sent
    messages = published(kafka_broker, lake)
    assert len(messages) == lake.count("sysmon_join") == 3
    by_dst = {m["value"]["DST_IP_ADDR"]: m for m in messages if m["key"] == b"{A}"}
    assert set(by_dst) == {"10.0.0.7", "10.0.0.8"}
    first = by_dst["10.0.0.7"]
    assert list(first["value"]) == ksql_join_names()
    assert first["value"]["PROCESS_COMMAND_LINE"] == "a.exe"
    assert first["value"]["N_PROCESS_GUID"] == "{A}"
    assert first["value"]["N_USER_ACCOUNT"] == r"CORP\alice"
    ((epoch_ms, batch_id),) = lake.rows(
        "SELECT epoch_ms(event_date_creation), _batch_id FROM sysmon_join WHERE dst_ip_addr = '10.0.0.7'"
    )
    assert first["value"]["N_EVENT_DATE_CREATION"] == epoch_ms
    assert first["headers"]["sysmon_batch_id"] == str(batch_id).encode()
    assert lake.rows("SELECT through_batch, state, messages FROM ingest.kafka_sink ORDER BY 1") == [
        (1, "done", 2),
        (2, "done", 1),
    ]


def test_the_sinks_times_are_utc_whatever_the_hosts_time_zone(tmp_path: Path, kafka_broker: Broker) -> None:
    lake = sink_lake(tmp_path, kafka_broker)
    lake.wrap_connections(in_time_zone("Pacific/Kiritimati"))  # UTC+14
    lake.land([process_create("{A}"), network_connect("{A}")])
    started = utc_now() - timedelta(seconds=1)
    lake.batch()
    ((updated_at,),) = lake.rows("SELECT updated_at FROM ingest.kafka_sink")
    assert started <= updated_at <= utc_now()


def test_a_range_left_publishing_by_a_crash_sends_only_what_the_topic_lacks(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    lake = sink_lake(tmp_path, kafka_broker)
    lake.land([process_create(f"{{P{i}}}") for i in range(6)] + [network_connect(f"{{P{i}}}") for i in range(6)])
    lake.batch()
    assert len(published(kafka_broker, lake)) == 6
    lake.land([network_connect(f"{{P{i}}}", dst_ip="10.9.9.9") for i in range(6)])

    class DiesAfterTwo:
        """A producer that delivers two messages, then the process 'dies' (an exception before DuckDB hears)."""

        def __init__(self, config: dict) -> None:
            self.producer, self.sent = Producer(config), 0

        def produce(self, *args, **kwargs) -> None:
            if self.sent == 2:
                self.producer.flush(15)
                raise KeyboardInterrupt("killed mid-publish")
            self.sent += 1
            self.producer.produce(*args, **kwargs)

    crash_while_publishing(lake.settings, "second", DiesAfterTwo)
    assert lake.rows("SELECT state FROM ingest.kafka_sink ORDER BY through_batch") == [("done",), ("publishing",)]
    assert len(published(kafka_broker, lake)) == 8

    lake.batch()  # a restart: completes the unfinished range first
    messages = published(kafka_broker, lake)
    keys = [(m["headers"]["sysmon_batch_id"], m["headers"]["sysmon_seq"]) for m in messages]
    assert len(messages) == len(set(keys)) == lake.count("sysmon_join") == 12
    assert lake.rows("SELECT state FROM ingest.kafka_sink") == [("done",), ("done",)]


def test_a_range_the_read_back_finds_whole_records_the_offsets_it_found(tmp_path: Path, kafka_broker: Broker) -> None:
    """A crash after every message was acknowledged but before the range was marked done: the restart sends
    nothing, and the range's last offsets are those of its messages in the topic."""
    lake = sink_lake(tmp_path, kafka_broker)
    lake.land([process_create(f"{{P{i}}}") for i in range(6)] + [network_connect(f"{{P{i}}}") for i in range(6)])

    class DiesAfterFlushing:
        def __init__(self, config: dict) -> None:
            self.producer = Producer(config)

        def produce(self, *args, **kwargs) -> None:
            self.producer.produce(*args, **kwargs)

        def flush(self, timeout: float) -> int:
            self.producer.flush(timeout)
            raise KeyboardInterrupt("killed after the broker acknowledged every message")

    crash_while_publishing(lake.settings, "first", DiesAfterFlushing)
    messages = kafka_broker.read_all(lake.settings.kafka_sink_topic)
    assert len(messages) == 6

    lake.batch()
    assert len(published(kafka_broker, lake)) == 6
    last = {str(p): max(m.offset() for m in messages if m.partition() == p) for p in {m.partition() for m in messages}}
    ((state, last_offsets),) = lake.rows("SELECT state, last_offsets FROM ingest.kafka_sink")
    assert (state, json.loads(last_offsets)) == ("done", last)


def test_an_unreachable_sink_fails_the_publish_and_keeps_the_range(tmp_path: Path) -> None:
    lake = Lake(
        tmp_path, kafka_sink=True, kafka_bootstrap="127.0.0.1:1", kafka_config=(("message.timeout.ms", "2000"),)
    )
    lake.land([process_create("{A}"), network_connect("{A}")])
    with pytest.raises(KafkaSinkError, match=re.escape("127.0.0.1:1")):
        lake.batch()
    assert lake.rows("SELECT count(*) FROM ingest.kafka_sink WHERE state = 'done'") == [(0,)]
    assert lake.count("sysmon_join") == 1


def test_pipelines_sharing_the_sink_topic_each_resume_their_own_range(tmp_path: Path, kafka_broker: Broker) -> None:
    """Batch ids and seqs count from 1 in every lake: the read-back must not take another pipeline's
    messages for its own."""
    first = sink_lake(tmp_path / "a", kafka_broker)
    second = Lake(
        tmp_path / "b",
        kafka_sink=True,
        kafka_bootstrap=kafka_broker.bootstrap,
        kafka_sink_topic=first.settings.kafka_sink_topic,
    )
    for lake, guid in ((first, "{HA}"), (second, "{HB}")):
        lake.land([process_create(guid), network_connect(guid)])
        lake.batch()
        lake.land([network_connect(guid, dst_ip="10.2.2.2")])

    class DiesBeforeSending:
        def __init__(self, config: dict) -> None:
            self.producer = Producer(config)

        def produce(self, *args, **kwargs) -> None:
            raise KeyboardInterrupt("killed before the first message")

    crash_while_publishing(first.settings, "second", DiesBeforeSending)
    second.batch()  # the other pipeline's batch 2: the same batch id and seq numbers
    first.batch()  # the restart resumes batch 2 of the first pipeline
    messages = published(kafka_broker, first)
    sent = sorted((m["key"], m["value"]["DST_IP_ADDR"]) for m in messages)
    assert sent == sorted((guid, ip) for guid in (b"{HA}", b"{HB}") for ip in ("10.0.0.1", "10.2.2.2"))
    assert len({m["headers"]["sysmon_pipeline"] for m in messages}) == 2


def test_a_refused_row_names_itself_and_the_range_completes_once_the_limit_allows_it(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    lake = sink_lake(tmp_path, kafka_broker, kafka_config=(("message.max.bytes", "4000"),))
    lake.land(
        [process_create(f"{{S{i}}}") for i in range(4)]
        + [process_create("{BIG}", command_line="x" * 6000)]
        + [network_connect(guid) for guid in ("{S0}", "{S1}", "{BIG}", "{S2}", "{S3}")]
    )
    with pytest.raises(KafkaSinkError, match=re.escape("(process_guid {BIG})")):
        lake.batch()
    assert lake.rows("SELECT state FROM ingest.kafka_sink") == [("publishing",)]
    bigger = Lake(
        tmp_path,
        kafka_sink=True,
        kafka_bootstrap=kafka_broker.bootstrap,
        kafka_sink_topic=lake.settings.kafka_sink_topic,
        kafka_config=(("message.max.bytes", "100000"),),
    )
    bigger.batch()
    keys = sorted(m["key"] for m in published(kafka_broker, lake))
    assert keys == sorted(f"{{{name}}}".encode() for name in ("S0", "S1", "BIG", "S2", "S3"))
    assert bigger.rows("SELECT state FROM ingest.kafka_sink") == [("done",)]


def test_event_retention_keeps_the_joins_the_sink_has_not_published(tmp_path: Path, kafka_broker: Broker) -> None:
    lake = sink_lake(tmp_path, kafka_broker, event_retention_days=1)
    unreachable = Lake(
        tmp_path,
        kafka_sink=True,
        kafka_bootstrap="127.0.0.1:1",
        kafka_sink_topic=lake.settings.kafka_sink_topic,
        kafka_config=(("message.timeout.ms", "2000"),),
    )
    unreachable.land([process_create("{OLD}"), network_connect("{OLD}")])
    with pytest.raises(KafkaSinkError):
        unreachable.batch(at=T0)  # more than a day ago: its rows are past the retention, its join not published
    maintenance = build_definitions(lake.settings).resolve_job_def("lake_maintenance")
    assert maintenance.execute_in_process().success
    assert lake.count("sysmon_network_connect") == 0  # the retention ran
    assert lake.rows("SELECT process_guid FROM sysmon_join") == [("{OLD}",)]
    lake.batch(at=T0 + timedelta(days=2))
    assert [m["key"] for m in published(kafka_broker, lake)] == [b"{OLD}"]
    assert maintenance.execute_in_process().success  # published: now it goes
    assert lake.count("sysmon_join") == 0


def test_the_sink_needs_a_bootstrap_server() -> None:
    from sysmon_assets.settings import SettingsError

    with pytest.raises(SettingsError, match="SYSMON_KAFKA_BOOTSTRAP"):
        Settings(kafka_sink=True)


def test_the_cli_batch_reads_kafka_and_publishes_the_join_topic(tmp_path: Path, kafka_broker: Broker) -> None:
    import os
    import subprocess

    from sysmon_assets.definitions import build_definitions
    from sysmon_assets.sample.generator import write_sample
    from tests.conftest import CLI_BATCH

    sample, *_ = write_sample(tmp_path / "generated", 400, files=1, hosts=3, seed=2)
    source = kafka_broker.create_topic(partitions=2)
    lines = sample.read_bytes().splitlines()
    kafka_broker.produce(source, lines, partition=0)
    sink = kafka_broker.create_topic(partitions=1, prefix="SYSMON_JOIN")
    env = {
        **os.environ,
        "SYSMON_SOURCE": "kafka",
        "SYSMON_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "SYSMON_KAFKA_TOPIC": source,
        "SYSMON_KAFKA_SINK": "1",
        "SYSMON_KAFKA_SINK_TOPIC": sink,
        "SYSMON_LANDING_DIR": str(tmp_path / "unused"),
        "SYSMON_DATA_DIR": str(tmp_path / "k"),
    }
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(CLI_BATCH, cwd=root, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "sysmon_join_topic" in done.stderr
    settings = Settings.from_env(env)
    assert lake_rows(settings, "SELECT count(*) FROM winlogbeat_stream") == [(len(lines),)]
    ((joins,),) = lake_rows(settings, "SELECT count(*) FROM sysmon_join")
    assert joins > 0
    assert len(kafka_broker.read_all(sink)) == joins
    definitions = build_definitions(settings)
    graph = definitions.resolve_asset_graph()
    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == {
        *RECIPE_MODELS,
        *HUNTING_MODELS,
        "sysmon_join_topic",
    }
    sink_asset = graph.get(AssetKey("sysmon_join_topic"))
    assert {key.to_user_string() for key in sink_asset.parent_keys} == {"sysmon_join"}
    assert sink_asset.group_name == "serving"
    job = definitions.resolve_job_def("sysmon_micro_batch")
    assert {node.name for node in job.nodes} == {*RECIPE_MODELS, *HUNTING_MODELS, "sysmon_join_topic"}
