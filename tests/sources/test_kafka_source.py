"""The Kafka source against a real broker: offsets stored with the rows, layouts and rejects as for files."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import zlib
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from sysmon_assets.micro_batch.ingest import chunk_bytes_for
from sysmon_assets.micro_batch.steps import SysmonPipeline, utc_now
from sysmon_assets.sample.generator import write_sample
from sysmon_assets.settings import Settings
from sysmon_assets.sources import kafka_source
from sysmon_assets.sources.kafka_source import UNREADABLE_HEADERS, KafkaReader, PartitionLag, consumer_lag
from sysmon_assets.storage.lake import open_lake
from tests.conftest import (
    T0,
    RecordingConnection,
    in_time_zone,
    lake_rows,
    network_connect,
    process_create,
    snapshot,
    wrap_connections,
)
from tests.kafka_broker import Broker

ROOT = Path(__file__).resolve().parents[2]


def kafka_settings(root: Path, broker: Broker, topic: str, **overrides) -> Settings:
    """Settings of a pipeline reading ``topic`` into its own lake under ``root``."""
    return Settings(
        landing_dir=root / "landing",
        data_dir=root / "data",
        source="kafka",
        kafka_bootstrap=broker.bootstrap,
        kafka_topic=topic,
        **overrides,
    )


def test_recipe_from_kafka_equals_the_file_run_of_the_same_events(tmp_path: Path, kafka_broker: Broker) -> None:
    sample, *_ = write_sample(tmp_path / "generated", 3000, files=1, hosts=6, seed=11)
    lines = sample.read_bytes().splitlines()
    topic = kafka_broker.create_topic(partitions=3)
    by_host: dict[int, list[bytes]] = {0: [], 1: [], 2: []}
    for line in lines:  # one host's events stay in one partition, as a key of the host name keeps them
        by_host[zlib.crc32(json.loads(line)["computer_name"].encode()) % 3].append(line)
    for partition, values in by_host.items():
        kafka_broker.produce(topic, values, partition=partition)
    files = Settings(landing_dir=sample.parent, data_dir=tmp_path / "files")
    SysmonPipeline(files).run_batch(batch_time=T0)
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    SysmonPipeline(settings).run_batch(batch_time=T0)
    assert snapshot(settings) == snapshot(files)


def sample_topic(tmp_path: Path, broker: Broker, events: int, partitions: int, seed: int) -> str:
    """A new topic holding ``events`` generated events, dealt round-robin to its ``partitions`` (so a connection's
    create is often in another partition)."""
    sample, *_ = write_sample(tmp_path / "generated", events, files=1, hosts=6, seed=seed)
    topic = broker.create_topic(partitions=partitions)
    lines = sample.read_bytes().splitlines()
    for partition in range(partitions):
        broker.produce(topic, lines[partition::partitions], partition=partition)
    return topic


def test_with_shards_partition_p_is_shard_p_mod_k_s_and_the_shards_give_one_pipelines_tables(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    topic = sample_topic(tmp_path, kafka_broker, 1500, partitions=3, seed=12)
    one = kafka_settings(tmp_path / "one", kafka_broker, topic)
    SysmonPipeline(one).run_batch(batch_time=T0)
    sharded = kafka_settings(tmp_path / "sharded", kafka_broker, topic, shards=2)
    for minutes in (0, 1):  # the second round joins connections whose creates the other shard read
        for index in (0, 1):
            SysmonPipeline(sharded, shard=index).run_batch(batch_time=T0 + timedelta(minutes=minutes))
    read_by = 'SELECT DISTINCT _kafka."partition", (_batch_id - 1) % 2 FROM winlogbeat_stream ORDER BY 1'
    assert lake_rows(sharded, read_by) == [(0, 0), (1, 1), (2, 0)]
    assert stored_offsets(sharded) == stored_offsets(one) == [(0, 500), (1, 500), (2, 500)]
    assert snapshot(sharded) == snapshot(one)
    assert lake_rows(sharded, "SELECT count(*) > 0 FROM sysmon_join") == [(True,)]


def ingested(settings: Settings) -> list[tuple]:
    """(partition, offset) of every ingested message, in arrival order."""
    return lake_rows(settings, 'SELECT _kafka."partition", _kafka."offset" FROM winlogbeat_stream ORDER BY _seq')


def stored_offsets(settings: Settings) -> list[tuple]:
    return lake_rows(settings, 'SELECT "partition", next_offset FROM ingest.kafka_offsets ORDER BY 1')


def source_events(settings: Settings) -> list[tuple]:
    return lake_rows(settings, "SELECT event, detail FROM ingest.file_events ORDER BY detected_at")


def read_one_batch(
    settings: Settings, consumer_factory: type[Consumer], commit: bool = False
) -> tuple[KafkaReader, list[list[int]]]:
    """Plan and read one batch through ``consumer_factory`` (no rows written; with ``commit``, its offsets and
    notes are); the reader and the Kafka offsets of each chunk."""
    with SysmonPipeline(settings).connect() as con:
        reader = KafkaReader(con, settings, chunk_bytes_for(con), consumer_factory=consumer_factory)
        reader.plan(first_batch_ever=False)
        chunks = [chunk["landed_lines"].column("kafka_offset").to_pylist() for chunk in reader.chunks(first_seq=100)]
        if commit:
            reader.commit_offsets(con)
        reader.close()
    return reader, chunks


class ResetsOutOfRange(Consumer):
    """Kafka answers a fetch past the end with OFFSET_OUT_OF_RANGE and librdkafka starts again from the earliest
    offset (auto.offset.reset); tansu answers with nothing, so this consumer does that reset."""

    def assign(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            if tp.offset > self.get_watermark_offsets(tp, timeout=15)[1]:
                tp.offset = -2
        super().assign(partitions)


def test_earliest_reads_what_is_already_there_and_latest_only_what_comes_after(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    topic = kafka_broker.create_topic(partitions=2)
    for partition in (0, 1):
        kafka_broker.produce(
            topic,
            [process_create(f"{{G{partition}-{i}}}") for i in range(3)],
            partition=partition,
            one_per_request=True,
        )
    earliest = kafka_settings(tmp_path / "earliest", kafka_broker, topic)
    latest = kafka_settings(tmp_path / "latest", kafka_broker, topic, offset_reset="latest")
    SysmonPipeline(earliest).run_batch(batch_time=T0)
    SysmonPipeline(latest).run_batch(batch_time=T0)
    assert sorted(ingested(earliest)) == [(p, o) for p in (0, 1) for o in range(3)]
    assert ingested(latest) == []

    kafka_broker.produce(topic, [network_connect("{G0-0}")], partition=0, one_per_request=True)
    kafka_broker.produce(topic, [network_connect("{G1-2}")], partition=1, one_per_request=True)
    SysmonPipeline(earliest).run_batch(batch_time=T0)
    SysmonPipeline(latest).run_batch(batch_time=T0)
    assert sorted(ingested(earliest)) == [(p, o) for p in (0, 1) for o in range(4)]
    assert sorted(ingested(latest)) == [(0, 3), (1, 3)]
    assert lake_rows(latest, "SELECT process_guid FROM sysmon_join ORDER BY 1") == []  # creates never read
    assert lake_rows(earliest, "SELECT process_guid FROM sysmon_join ORDER BY 1") == [("{G0-0}",), ("{G1-2}",)]


def test_offsets_live_in_the_lake_and_an_idle_batch_reads_nothing(tmp_path: Path, kafka_broker: Broker) -> None:
    topic = kafka_broker.create_topic(partitions=3)
    for partition in range(3):
        kafka_broker.produce(topic, [process_create(None)] * (partition + 1), partition=partition)
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    pipeline = SysmonPipeline(settings)
    pipeline.run_batch(batch_time=T0)
    pipeline.run_batch(batch_time=T0)
    assert stored_offsets(settings) == [
        (0, 1),
        (1, 2),
        (2, 3),
    ]
    assert lake_rows(settings, "SELECT _batch_id, count(*) FROM winlogbeat_stream GROUP BY 1") == [(1, 6)]
    # The group's Kafka-side offsets follow, for monitoring.
    consumer = Consumer({"bootstrap.servers": kafka_broker.bootstrap, "group.id": settings.kafka_group})
    committed = consumer.committed([TopicPartition(topic, p) for p in range(3)], timeout=15)
    consumer.close()
    assert [tp.offset for tp in committed] == [1, 2, 3]


def test_the_stored_offsets_time_is_utc_whatever_the_hosts_time_zone(tmp_path: Path, kafka_broker: Broker) -> None:
    topic = kafka_broker.create_topic(partitions=2)
    for partition in range(2):
        kafka_broker.produce(topic, [process_create(None)], partition=partition)
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    pipeline = SysmonPipeline(settings)
    wrap_connections(pipeline, in_time_zone("Etc/GMT+12"))  # UTC-12 (the sign is POSIX's)
    started = utc_now() - timedelta(seconds=1)
    pipeline.run_batch(batch_time=T0)
    times = lake_rows(settings, "SELECT updated_at FROM ingest.kafka_offsets")
    assert len(times) == 2
    assert all(started <= time <= utc_now() for (time,) in times), times


def test_a_chunk_records_the_offsets_of_all_its_partitions_in_two_statements(
    tmp_path: Path, kafka_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every lake statement costs a round of catalog work: one DELETE and one INSERT for all partitions."""
    topic = kafka_broker.create_topic(partitions=4)
    for partition in range(4):
        kafka_broker.produce(topic, [process_create(None)] * (partition + 1), partition=partition)
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    commit_offsets, statements = KafkaReader.commit_offsets, []
    monkeypatch.setattr(
        KafkaReader, "commit_offsets", lambda self, con: commit_offsets(self, RecordingConnection(con, statements))
    )
    SysmonPipeline(settings).run_batch(batch_time=T0)
    assert [sql.split(" WHERE ")[0].split(" (")[0] for sql in statements] == [
        "DELETE FROM ingest.kafka_offsets",
        "INSERT INTO ingest.kafka_offsets",
    ]
    assert stored_offsets(settings) == [(0, 1), (1, 2), (2, 3), (3, 4)]


def test_a_batch_reads_at_most_the_configured_messages_per_partition(tmp_path: Path, kafka_broker: Broker) -> None:
    topic = kafka_broker.create_topic(partitions=2)
    for partition in (0, 1):
        kafka_broker.produce(topic, [process_create(None)] * 5, partition=partition)
    settings = kafka_settings(tmp_path, kafka_broker, topic, kafka_max_messages=2)
    pipeline = SysmonPipeline(settings)
    for _ in range(4):
        pipeline.run_batch(batch_time=T0)
    per_batch = lake_rows(settings, "SELECT _batch_id, count(*) FROM winlogbeat_stream GROUP BY 1 ORDER BY 1")
    assert per_batch == [(1, 4), (2, 4), (3, 2)]
    assert sorted(ingested(settings)) == [(p, o) for p in (0, 1) for o in range(5)]


def test_a_batch_reads_the_configured_partitions_and_stops_at_the_message_that_crosses_the_byte_limit(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    topic = kafka_broker.create_topic(partitions=3)
    message = json.dumps(process_create(None)).encode()
    for partition in range(3):
        kafka_broker.produce(topic, [message] * 5, partition=partition)
    # two messages' bytes and one more: the third message crosses the limit and is the batch's last
    settings = kafka_settings(
        tmp_path, kafka_broker, topic, kafka_partitions=(0, 2), kafka_max_bytes=2 * len(message) + 1
    )
    pipeline = SysmonPipeline(settings)
    pipeline.run_batch(batch_time=T0)
    assert sorted(ingested(settings)) == [(p, o) for p in (0, 2) for o in range(3)]
    pipeline.run_batch(batch_time=T0)
    assert sorted(ingested(settings)) == [(p, o) for p in (0, 2) for o in range(5)]
    assert stored_offsets(settings) == [(0, 5), (2, 5)]


def test_a_partition_the_pipeline_lists_after_its_first_batch_is_read_from_its_earliest_offset(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    """As a partition added to a running topic is (tansu cannot add one: the pipeline lists one more instead)."""
    topic = kafka_broker.create_topic(partitions=2)
    for partition in (0, 1):  # one per request: tansu's high watermark counts a produced batch as one message
        kafka_broker.produce(topic, [process_create(None)] * (partition + 2), partition=partition, one_per_request=True)
    settings = kafka_settings(tmp_path, kafka_broker, topic, offset_reset="latest", kafka_partitions=(0,))
    SysmonPipeline(settings).run_batch(batch_time=T0)  # latest: the first batch starts at the end
    assert (ingested(settings), stored_offsets(settings)) == ([], [(0, 2)])
    settings = dataclasses.replace(settings, kafka_partitions=(0, 1))
    SysmonPipeline(settings).run_batch(batch_time=T0)
    assert sorted(ingested(settings)) == [(1, 0), (1, 1), (1, 2)]
    assert stored_offsets(settings) == [(0, 2), (1, 3)]


def test_a_message_that_is_not_json_is_a_reject_naming_topic_partition_and_offset(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    kafka_broker.produce(
        topic,
        [
            process_create("{A}"),
            b"not json",
            None,
            b"[1, 2]",
            network_connect("{A}"),
            b"\x00",
            '{"a": 1}'.encode("utf-16"),
        ],
        key=b"HOST1.corp",
        headers=[("origin", b"winlogbeat-7"), ("raw", b"\xff"), ("text", b"\\xff")],
    )
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    SysmonPipeline(settings).run_batch(batch_time=T0)
    rejects = lake_rows(
        settings,
        "SELECT kafka, source_file, source_offset, error FROM winlogbeat_rejects ORDER BY source_offset",
    )
    assert rejects == [
        ({"topic": topic, "partition": 0, "offset": 1}, f"kafka:{topic}/0", 1, "malformed JSON"),
        ({"topic": topic, "partition": 0, "offset": 2}, f"kafka:{topic}/0", 2, "empty message value"),
        ({"topic": topic, "partition": 0, "offset": 3}, f"kafka:{topic}/0", 3, "valid JSON but not an object: ARRAY"),
        # a NUL alone ends a UTF-16 file, not a message; a message has no file to save as UTF-8
        ({"topic": topic, "partition": 0, "offset": 5}, f"kafka:{topic}/0", 5, "malformed JSON"),
        ({"topic": topic, "partition": 0, "offset": 6}, f"kafka:{topic}/0", 6, "UTF-16 text: only UTF-8 is read"),
    ]
    kept = lake_rows(settings, "SELECT _kafka.key, _kafka.headers, _kafka.timestamp IS NOT NULL FROM winlogbeat_stream")
    headers = [["origin", "winlogbeat-7"], ["raw", {"base64": "/w=="}], ["text", "\\xff"]]
    assert kept == [(b"HOST1.corp", json.dumps(headers), True)] * 2
    assert lake_rows(settings, "SELECT count(*) FROM sysmon_join") == [(1,)]


class HeaderNamesNotUtf8:
    """A message as confluent_kafka gives one whose header name is not UTF-8 (any producer may send one; the broker
    does not check, and confluent_kafka's own producer cannot): its headers() fails with a SystemError."""

    def __init__(self, message: object) -> None:
        self.message = message

    def __getattr__(self, name: str) -> object:
        return getattr(self.message, name)

    def headers(self) -> None:
        try:
            b"bad\xffname".decode("utf-8")
        except UnicodeDecodeError as error:
            raise SystemError(
                "<method 'headers' of 'cimpl.Message' objects> returned a result with an error set"
            ) from error


class GivesHeaderNamesNotUtf8(Consumer):
    def consume(self, *args: object, **kwargs: object) -> list:
        return [HeaderNamesNotUtf8(message) for message in super().consume(*args, **kwargs)]


def test_a_message_whose_header_names_cannot_be_read_is_read_with_its_headers_marked(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    """It failed every batch (a probe's finding): nothing behind it was ever read."""
    topic = kafka_broker.create_topic(partitions=1)
    kafka_broker.produce(topic, [process_create("{A}"), network_connect("{A}")], headers=[("origin", b"x")])
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    with SysmonPipeline(settings).connect() as con:
        reader = KafkaReader(con, settings, chunk_bytes_for(con), consumer_factory=GivesHeaderNamesNotUtf8)
        reader.plan(first_batch_ever=False)
        (chunk,) = reader.chunks(first_seq=1)
        reader.close()
    lines = chunk["landed_lines"]
    assert lines.column("kafka_offset").to_pylist() == [0, 1]
    assert lines.column("kafka_headers").to_pylist() == [UNREADABLE_HEADERS] * 2
    assert json.loads(UNREADABLE_HEADERS) == {"unreadable": "a header name is not UTF-8"}


def test_a_value_wrapped_in_json_whitespace_newlines_included_is_parsed(tmp_path: Path, kafka_broker: Broker) -> None:
    """A file's line never starts with a newline; a message's value may (JSON allows it around the object)."""
    topic = kafka_broker.create_topic(partitions=1)
    create, connect = (json.dumps(event).encode() for event in (process_create("{A}"), network_connect("{A}")))
    kafka_broker.produce(topic, [b"\n" + create, b"\r\n\t" + connect + b"\n", b" \n\r\n"])
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    SysmonPipeline(settings).run_batch(batch_time=T0)
    assert lake_rows(settings, "SELECT source_offset, error FROM winlogbeat_rejects") == [(2, "empty message value")]
    assert lake_rows(settings, "SELECT count(*) FROM sysmon_join") == [(1,)]


def test_sigkill_mid_batch_and_between_batches_neither_loses_nor_repeats_a_message(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    topic = sample_topic(tmp_path, kafka_broker, 2000, partitions=2, seed=5)
    clean = kafka_settings(tmp_path / "clean", kafka_broker, topic)
    SysmonPipeline(clean).run_batch(batch_time=T0)

    crashed = kafka_settings(tmp_path / "crashed", kafka_broker, topic)
    env = {
        **os.environ,
        "SYSMON_SOURCE": "kafka",
        "SYSMON_KAFKA_BOOTSTRAP": kafka_broker.bootstrap,
        "SYSMON_KAFKA_TOPIC": topic,
        "SYSMON_DATA_DIR": str(crashed.data_dir),
        "SYSMON_LANDING_DIR": str(crashed.landing_dir),
    }
    for point, n in [("inside-chunk", 3), ("between-chunks", 5), ("after-ingest", 0), ("between-steps", 0)]:
        if point in ("after-ingest", "between-steps"):  # more to read, so this run's ingest has work to commit
            kafka_broker.produce(
                topic, [process_create(f"{{LATE-{point}}}"), network_connect(f"{{LATE-{point}}}")], partition=0
            )
        died = subprocess.run(
            [sys.executable, "-m", "tests.crash_points", point, str(n)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            check=False,
        )
        assert died.returncode == -signal.SIGKILL, (point, died.stderr.decode()[-2000:])
    SysmonPipeline(crashed).run_batch(batch_time=T0)
    SysmonPipeline(clean).run_batch(batch_time=T0)

    offsets = ingested(crashed)
    assert len(offsets) == len(set(offsets)) == 2000 + 4
    assert sorted(offsets) == sorted(ingested(clean))
    assert snapshot(crashed) == snapshot(clean)


def test_dagster_assets_read_kafka_and_the_freshness_check_follows_the_topic(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    from dagster import AssetCheckEvaluation, materialize

    from dbt_like import Project
    from sysmon_assets.dagster_layer.assets import build_assets
    from sysmon_assets.dagster_layer.resources import resources_from_settings
    from sysmon_assets.micro_batch.recipe_project import SQL_DIR

    topic = kafka_broker.create_topic(partitions=2)
    settings = kafka_settings(tmp_path, kafka_broker, topic)

    def freshness_of_a_batch() -> AssetCheckEvaluation:
        result = materialize(
            build_assets(Project(SQL_DIR, settings.variables())), resources=resources_from_settings(settings)
        )
        assert result.success
        return next(e for e in result.get_asset_check_evaluations() if e.check_name == "landing_freshness")

    # a batch records where each partition ends, but reading no message is no sign of life
    assert not freshness_of_a_batch().passed
    assert lake_rows(settings, "SELECT count(*) FROM ingest.kafka_offsets") == [(2,)]
    kafka_broker.produce(topic, [process_create("{D}"), network_connect("{D}")], partition=0)
    freshness = freshness_of_a_batch()
    assert freshness.passed
    assert freshness.metadata["topic"].value == topic
    assert lake_rows(settings, "SELECT process_guid FROM sysmon_join") == [("{D}",)]


def test_transaction_markers_are_passed_without_a_gap_and_the_lag_reaches_zero(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    kafka_broker.produce(topic, [process_create(f"{{T{i}}}") for i in range(3)], partition=0, transactional_id="tx-a")
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    pipeline = SysmonPipeline(settings)
    pipeline.run_batch(batch_time=T0)
    assert stored_offsets(settings) == [(0, 4)]  # 3 records and the commit marker
    assert consumer_lag(settings) == {0: PartitionLag(lag=0, end=4)}
    kafka_broker.produce(
        topic, [network_connect("{T0}"), network_connect("{T1}")], partition=0, transactional_id="tx-a"
    )
    pipeline.run_batch(batch_time=T0)
    assert ingested(settings) == [(0, 0), (0, 1), (0, 2), (0, 4), (0, 5)]
    assert stored_offsets(settings) == [(0, 7)]
    assert consumer_lag(settings)[0].lag == 0
    assert source_events(settings) == []
    assert lake_rows(settings, "SELECT count(*) FROM sysmon_join") == [(2,)]


def test_a_failed_batch_commits_to_the_group_only_what_the_lake_holds(
    tmp_path: Path, kafka_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    kafka_broker.produce(topic, [process_create(f"{{F{i}}}") for i in range(6)], partition=0, one_per_request=True)
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    commit_offsets, calls = KafkaReader.commit_offsets, []

    def fails_on_the_third_message(self: KafkaReader, con: object) -> None:
        calls.append(1)
        if len(calls) == 4:  # the first batch's empty chunk, then one chunk per message
            raise RuntimeError("disk full")
        commit_offsets(self, con)

    monkeypatch.setattr(KafkaReader, "commit_offsets", fails_on_the_third_message)
    with pytest.raises(RuntimeError, match="disk full"):
        SysmonPipeline(settings, chunk_bytes=1).run_batch(batch_time=T0)
    assert stored_offsets(settings) == [(0, 2)]
    assert consumer_lag(settings)[0].lag == 4  # the group follows the lake, not what was fetched
    monkeypatch.setattr(KafkaReader, "commit_offsets", commit_offsets)
    SysmonPipeline(settings).run_batch(batch_time=T0)
    assert ingested(settings) == [(0, offset) for offset in range(6)]
    assert consumer_lag(settings)[0].lag == 0


def read_then_recreated(root: Path, broker: Broker, messages: int) -> Settings:
    """A pipeline's settings after a batch read {OLD0}..{OLD2} from a topic since recreated, holding ``messages``
    new ones ({NEW0}, ...)."""
    topic = broker.create_topic(partitions=1)
    broker.produce(topic, [process_create(f"{{OLD{i}}}") for i in range(3)], partition=0)
    settings = kafka_settings(root, broker, topic)
    SysmonPipeline(settings).run_batch(batch_time=T0)
    broker.recreate_topic(topic)
    broker.produce(topic, [process_create(f"{{NEW{i}}}") for i in range(messages)], partition=0)
    return settings


def test_a_topic_recreated_since_the_last_batch_is_recorded_and_read_from_its_start(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    """The new topic holds more messages than the old one did: by offsets alone, its first ones would be skipped."""
    settings = read_then_recreated(tmp_path, kafka_broker, messages=5)
    SysmonPipeline(settings).run_batch(batch_time=T0)
    assert lake_rows(
        settings, "SELECT _batch_id, _kafka.offset, event_data.ProcessGuid FROM winlogbeat_stream ORDER BY _seq"
    ) == [(1, i, f"{{OLD{i}}}") for i in range(3)] + [(2, i, f"{{NEW{i}}}") for i in range(5)]
    ((event, detail),) = lake_rows(settings, "SELECT event, detail FROM ingest.file_events")
    assert event == "offsets_reset"
    assert detail.startswith("the topic was recreated (id ")
    assert detail.endswith("read from its earliest offset 0, not the stored next offset 3")
    assert stored_offsets(settings) == [(0, 5)]


def test_a_topic_id_one_batch_could_not_look_up_is_kept_so_a_later_recreation_is_noticed(
    tmp_path: Path, kafka_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    kafka_broker.produce(topic, [process_create(f"{{OLD{i}}}") for i in range(3)], partition=0)
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    SysmonPipeline(settings).run_batch(batch_time=T0)
    kafka_broker.produce(topic, [process_create("{OLD3}")], partition=0)
    with monkeypatch.context() as lookup:
        lookup.setattr(kafka_source, "topic_id", lambda settings, topic: None)  # the describe request timed out
        SysmonPipeline(settings).run_batch(batch_time=T0)
    kafka_broker.recreate_topic(topic)
    kafka_broker.produce(topic, [process_create(f"{{NEW{i}}}") for i in range(6)], partition=0)
    SysmonPipeline(settings).run_batch(batch_time=T0)
    assert lake_rows(settings, "SELECT _kafka.offset, event_data.ProcessGuid FROM winlogbeat_stream ORDER BY _seq") == [
        (i, f"{{OLD{i}}}") for i in range(4)
    ] + [(i, f"{{NEW{i}}}") for i in range(6)]
    ((event, _),) = lake_rows(settings, "SELECT event, detail FROM ingest.file_events")
    assert event == "offsets_reset"


def test_a_reset_in_a_batch_that_could_not_look_the_topic_id_up_is_not_reset_again_by_the_next(
    tmp_path: Path, kafka_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The stored id named the topic before the reset: kept, the next batch would take the new topic's id for a
    recreation since, and read it all again."""
    settings = read_then_recreated(tmp_path, kafka_broker, messages=2)
    with monkeypatch.context() as lookup:
        lookup.setattr(kafka_source, "topic_id", lambda settings, topic: None)  # the describe request timed out
        _, chunks = read_one_batch(settings, ResetsOutOfRange, commit=True)  # the stored offset 3: past the end
    assert chunks == [[0, 1]]
    assert lake_rows(settings, "SELECT next_offset, topic_id FROM ingest.kafka_offsets") == [(2, None)]
    kafka_broker.produce(settings.kafka_topic, [process_create("{NEW2}")], partition=0)
    SysmonPipeline(settings).run_batch(batch_time=T0)
    assert ingested(settings)[3:] == [(0, 2)]
    assert [event for event, _ in source_events(settings)] == ["offsets_reset"]


def test_a_message_timestamp_no_timestamp_can_hold_is_null_with_its_reason(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    """A producer that sets CreateTime in nanoseconds: past what a TIMESTAMP holds (about 9.2e15 ms)."""
    topic = kafka_broker.create_topic(partitions=1)
    kafka_broker.produce(topic, [process_create("{A}")], partition=0)
    kafka_broker.produce(topic, [network_connect("{A}")], partition=0, timestamp=1_700_000_000_000_000_000)
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    SysmonPipeline(settings).run_batch(batch_time=T0)
    assert lake_rows(
        settings, "SELECT _kafka.offset, _kafka.timestamp IS NULL, _coercion_errors FROM winlogbeat_stream ORDER BY 1"
    ) == [
        (0, False, []),
        (1, True, [{"field": "kafka.timestamp", "value": "1700000000000000000"}]),
    ]
    assert lake_rows(settings, "SELECT count(*) FROM sysmon_join") == [(1,)]


def test_a_stored_offset_past_the_partitions_end_is_recorded_and_the_partition_read_again(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    topic = kafka_broker.create_topic(partitions=1)
    kafka_broker.produce(topic, [process_create(f"{{R{i}}}") for i in range(3)], partition=0, one_per_request=True)
    settings = kafka_settings(tmp_path, kafka_broker, topic)
    pipeline = SysmonPipeline(settings)
    pipeline.run_batch(batch_time=T0)
    with open_lake(settings) as con:  # as if the topic had been truncated or recreated
        con.execute("UPDATE ingest.kafka_offsets SET next_offset = 100")

    reader, chunks = read_one_batch(settings, ResetsOutOfRange)
    assert chunks == [[0, 1, 2]]
    assert [(p.partition, p.position) for p in reader.partitions] == [(0, 3)]
    ((event, detail),) = [(e["event"], e["detail"]) for e in reader.file_events]
    assert event == "offsets_reset"
    assert "stored next offset 100" in detail and "from offset 0" in detail


def test_a_gap_is_recorded_only_when_the_earliest_offset_moved_past_the_position(
    tmp_path: Path, kafka_broker: Broker
) -> None:
    """Tansu cannot delete records, so the consumer reports an earliest offset as retention would leave it;
    the jump itself (past a transaction marker) comes from the real broker."""
    topic = kafka_broker.create_topic(partitions=1)
    for name in ("tx-1", "tx-2"):
        kafka_broker.produce(topic, [process_create(None)] * 3, partition=0, transactional_id=name)
    # offsets: records 0-2, marker 3, records 4-6, marker 7
    settings = kafka_settings(tmp_path, kafka_broker, topic, kafka_max_messages=3)
    SysmonPipeline(settings).run_batch(batch_time=T0)
    assert stored_offsets(settings) == [(0, 3)]

    class RetainedFrom4(Consumer):
        def get_watermark_offsets(self, partition: TopicPartition, *args, **kwargs) -> tuple[int, int]:
            low, high = super().get_watermark_offsets(partition, *args, **kwargs)
            return max(low, 4), high

    reader, chunks = read_one_batch(settings, RetainedFrom4)
    assert chunks == [[4, 5, 6]]
    assert [(p.partition, p.position) for p in reader.partitions] == [(0, 7)]  # the limit of 3 came first
    assert reader.file_events == [
        {"path": f"kafka:{topic}/0", "event": "offsets_skipped", "detail": "offsets 3..3 were no longer in the topic"}
    ]


OLD_OFFSETS_TABLE = (
    'CREATE TABLE ingest.kafka_offsets (topic VARCHAR, "partition" INTEGER, next_offset BIGINT, updated_at TIMESTAMP)'
)


@pytest.mark.parametrize("altered", [False, True], ids=["without topic ids", "topic_id added by ALTER TABLE"])
def test_an_offsets_table_from_before_topic_ids_is_made_anew_with_its_rows(tmp_path: Path, altered: bool) -> None:
    """A lake of 2026-12-01 to 12-03 has no topic_id column; one a later version upgraded has it by ALTER TABLE, after
    which DuckLake 0.3 failed every commit of its offsets (a probe's finding: every Kafka batch failed)."""
    settings = Settings.from_env({"SYSMON_DATA_DIR": str(tmp_path / "data")})
    with open_lake(settings) as con:
        con.execute(f"CREATE SCHEMA ingest; {OLD_OFFSETS_TABLE}")
        con.execute("INSERT INTO ingest.kafka_offsets VALUES ('winlogbeat', 0, 300, TIMESTAMP '2026-12-02 10:00')")
        if altered:
            con.execute("ALTER TABLE ingest.kafka_offsets ADD COLUMN topic_id VARCHAR")
        kafka_source.remake_offsets_with_topic_ids(con)
        con.execute("INSERT INTO ingest.kafka_offsets VALUES ('winlogbeat', 1, 7, TIMESTAMP '2026-12-08 10:00', 'id')")
        assert con.execute("SELECT * FROM ingest.kafka_offsets ORDER BY ALL").fetchall() == [
            ("winlogbeat", 0, 300, datetime(2026, 12, 2, 10), None),
            ("winlogbeat", 1, 7, datetime(2026, 12, 8, 10), "id"),
        ]
        snapshot = con.execute("SELECT id FROM lake.current_snapshot()").fetchone()
        kafka_source.remake_offsets_with_topic_ids(con)  # as it is now: left alone
        assert con.execute("SELECT id FROM lake.current_snapshot()").fetchone() == snapshot
