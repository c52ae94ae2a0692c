"""Publish new ``sysmon_join`` rows to a Kafka topic (default ``SYSMON_JOIN``), as the recipe's stream is.

Each message is one joined row as JSON with the names KSQL 5.1.1 gives the recipe's SYSMON_JOIN
columns: upper case, and the seven network-side columns the process table also has prefixed with the
stream's alias (``N_PROCESS_GUID``, ...), as the recipe's own sample query reads ``N_USER_ACCOUNT``.
It is keyed by the process GUID, with headers ``sysmon_pipeline`` (an id this lake
draws once, so pipelines sharing the topic are told apart), ``sysmon_batch_id`` and ``sysmon_seq``;
timestamps are epoch milliseconds, as KSQL's STRINGTOTIMESTAMP gives them. The producer is
idempotent (no duplicates from its own retries).

What was published is tracked in the lake (``ingest.kafka_sink``): a range of batches is marked
``publishing`` (committed, with the topic's end offsets at that moment) before the first message
is sent and ``done`` once the broker acknowledged every message, with the highest offset written
per partition. A restart never sends a ``done`` range again; a range left ``publishing`` by a
crash is first checked against the topic (this pipeline's messages from those end offsets on are
read back) and only the rows not found there are sent.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import duckdb
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

from dbt_like import table_exists
from dbt_like.sql import UTC_NOW, first_row, literal, literals, one_of, scalar
from sysmon_assets.kafka_client import client_config, message_headers, new_client, serve_log
from sysmon_assets.settings import Settings

LOG = logging.getLogger(__name__)

SINK_TABLE = "ingest.kafka_sink"
IDENTITY_TABLE = "ingest.pipeline_identity"
JOIN_TABLE = "sysmon_join"
_STATE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS ingest;
CREATE TABLE IF NOT EXISTS {SINK_TABLE} (
    topic VARCHAR, after_batch BIGINT, through_batch BIGINT, state VARCHAR, messages BIGINT,
    last_offsets JSON, updated_at TIMESTAMP, start_offsets JSON);
CREATE TABLE IF NOT EXISTS {IDENTITY_TABLE} (pipeline_id VARCHAR);
"""
READ_BACK_SECONDS = 60
# The columns SYSMON_JOIN selects from N that SYSMON_PROCESS_CREATE_TABLE P also has: KSQL 5.1.1 names a
# join's column that both sources carry after its source's alias, and the recipe selects all seven from N.
KSQL_ALIASED = (
    "event_date_creation",
    "process_guid",
    "process_id",
    "process_path",
    "user_account",
    "source_name",
    "log_name",
)


def unpublished_rows(con: duckdb.DuckDBPyConnection, topic: str) -> str:
    """SQL condition on the ``sysmon_join`` rows the sink has still to publish to ``topic``: those of the batches
    after the last range it completed, a range left ``publishing`` included (all of them before its first range)."""
    con.execute(_STATE_DDL)
    of_topic = one_of("topic", topic)
    return (
        f"(_batch_id > coalesce((SELECT min(after_batch) FROM {SINK_TABLE} WHERE {of_topic} "
        f"AND {one_of('state', 'publishing')}), (SELECT max(through_batch) FROM {SINK_TABLE} WHERE {of_topic}), 0))"
    )


class KafkaSinkError(RuntimeError):
    """Publishing failed; the range stays ``publishing`` and the next run completes it."""


@dataclass
class Published:
    """What one call published."""

    topic: str
    through_batch: int
    messages: int
    recovered: int = 0


def ksql_name(column: str) -> str:
    """The name KSQL's JSON output gives a ``sysmon_join`` column."""
    return f"N_{column}".upper() if column in KSQL_ALIASED else column.upper()


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _message_sql(con: duckdb.DuckDBPyConnection, after: int, through: int) -> str:
    """SELECT batch id, seq, key and JSON value of each joined row of batches ``after`` + 1 .. ``through``, under
    KSQL's column names."""
    columns = con.execute(
        f"SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = {literal(JOIN_TABLE)} "
        "AND schema_name = 'main' ORDER BY column_index"
    ).fetchall()
    fields = [
        f"{literal(ksql_name(name))}: "
        + (f"epoch_ms({_ident(name)})" if kind.startswith("TIMESTAMP") else _ident(name))
        for name, kind in columns
        if not name.startswith("_")
    ]
    return (
        f"SELECT _batch_id, _seq, process_guid, to_json({{{', '.join(fields)}}}) FROM {JOIN_TABLE} "
        f"WHERE _batch_id > {literal(after)} AND _batch_id <= {literal(through)} ORDER BY _seq"
    )


class JoinSink:
    """Publishes ``sysmon_join`` rows committed since the last publish."""

    def __init__(
        self,
        settings: Settings,
        producer_factory: Callable[[dict[str, Any]], Producer] = Producer,
        consumer_factory: Callable[[dict[str, Any]], Consumer] = Consumer,
    ) -> None:
        self.settings = settings
        self.topic = settings.kafka_sink_topic
        self._of_topic = one_of("topic", self.topic)  # the sink table's rows of this topic
        self.producer_factory = producer_factory
        self.consumer_factory = consumer_factory

    def publish(self, con: duckdb.DuckDBPyConnection) -> Published:
        """Finish a range a crash left ``publishing``, then publish every batch committed since."""
        con.execute(_STATE_DDL)
        recovered = 0
        unfinished = first_row(
            con,
            f"SELECT after_batch, through_batch FROM {SINK_TABLE} WHERE {self._of_topic} "
            f"AND {one_of('state', 'publishing')}",
        )
        if unfinished:
            recovered = self._send(con, *unfinished, already_sent=self._read_back(con, *unfinished))
        done = scalar(con, f"SELECT coalesce(max(through_batch), 0) FROM {SINK_TABLE} WHERE {self._of_topic}")
        latest = (
            scalar(con, f"SELECT coalesce(max(_batch_id), 0) FROM {JOIN_TABLE}") if table_exists(con, JOIN_TABLE) else 0
        )
        if latest <= done:
            return Published(self.topic, done, 0, recovered)
        con.execute(
            f"INSERT INTO {SINK_TABLE} (topic, after_batch, through_batch, state, start_offsets, updated_at) "
            f"VALUES ({literals(self.topic, done, latest)}, 'publishing', {literal(json.dumps(self._end_offsets()))}, "
            f"{UTC_NOW})"
        )
        return Published(self.topic, latest, self._send(con, done, latest, already_sent={}), recovered)

    def _send(
        self,
        con: duckdb.DuckDBPyConnection,
        after: int,
        through: int,
        already_sent: dict[tuple[int, int], tuple[int, int]],
    ) -> int:
        """Sends the range's rows not in ``already_sent`` ((batch id, seq) -> (partition, offset) in the topic)."""
        rows = con.execute(_message_sql(con, after, through)).fetchall()
        pipeline_id = self._pipeline_id(con).encode()
        producer = new_client(
            self.producer_factory,
            {**client_config(self.settings), "enable.idempotence": True, "acks": "all", "linger.ms": 20},
        )
        failures: list[str] = []
        last_offsets: dict[int, int] = {}
        for partition, offset in already_sent.values():
            _note_offset(last_offsets, partition, offset)

        def delivered(error: KafkaError | None, message: Any) -> None:
            if error is not None:
                failures.append(error.str())
            else:
                _note_offset(last_offsets, message.partition(), message.offset())

        sent = 0
        for batch_id, seq, guid, value in rows:
            if (batch_id, seq) in already_sent:
                continue
            headers = [
                ("sysmon_pipeline", pipeline_id),
                ("sysmon_batch_id", str(batch_id).encode()),
                ("sysmon_seq", str(seq).encode()),
            ]
            try:
                self._produce(producer, guid, value, headers, delivered)
            except KafkaException as error:
                _abandon(producer)
                raise KafkaSinkError(
                    f"publishing batch {batch_id} row {seq} (process_guid {guid}) to {self.topic}: {error}"
                ) from error
            sent += 1
        unsent = producer.flush(60)
        if unsent or failures:
            _abandon(producer)
            raise KafkaSinkError(
                f"publishing batches {after + 1}..{through} to {self.topic} at {self.settings.kafka_bootstrap}: "
                f"{unsent} unacknowledged, failures: {failures[:3]}"
            )
        con.execute(
            f"UPDATE {SINK_TABLE} SET state = 'done', messages = {len(rows)}, "
            f"last_offsets = {literal(json.dumps(self._merged_offsets(con, last_offsets)))}, updated_at = {UTC_NOW} "
            f"WHERE {self._of_topic} AND {one_of('through_batch', through)}"
        )
        return sent

    def _produce(self, producer: Producer, key: str | None, value: str, headers: list, callback: Callable) -> None:
        while True:
            try:
                producer.produce(
                    self.topic,
                    value=value.encode(),
                    key=None if key is None else key.encode(),  # '' is a key, as in KSQL
                    headers=headers,
                    on_delivery=callback,
                )
                return
            except BufferError:  # the local queue is full: let deliveries drain it
                producer.poll(0.5)

    def _pipeline_id(self, con: duckdb.DuckDBPyConnection) -> str:
        """This lake's pipeline id, drawn on first use."""
        row = first_row(con, f"SELECT pipeline_id FROM {IDENTITY_TABLE}")
        if row:
            return row[0]
        pipeline_id = str(uuid.uuid4())
        con.execute(f"INSERT INTO {IDENTITY_TABLE} VALUES ({literal(pipeline_id)})")
        return pipeline_id

    def _consumer(self) -> Consumer:
        return new_client(
            self.consumer_factory,
            {
                **client_config(self.settings),
                "group.id": f"{self.settings.kafka_group}-sink-check",
                "enable.auto.commit": False,
                "enable.partition.eof": True,
                "auto.offset.reset": "earliest",
            },
        )

    def _end_offsets(self) -> dict[str, int]:
        """The sink topic's end offset per partition ({} while the topic does not exist yet)."""
        consumer = self._consumer()
        try:
            metadata = consumer.list_topics(self.topic, timeout=15).topics.get(self.topic)
            if metadata is None or metadata.error is not None:
                return {}
            return {
                str(p): consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=15)[1]
                for p in metadata.partitions
            }
        except KafkaException as error:
            serve_log(consumer)
            raise KafkaSinkError(
                f"reading the end offsets of {self.topic} at {self.settings.kafka_bootstrap}: {error}"
            ) from error
        finally:
            consumer.close()

    def _merged_offsets(self, con: duckdb.DuckDBPyConnection, new: dict[int, int]) -> dict[str, int]:
        merged = self._done_offsets(con)
        for partition, offset in new.items():
            _note_offset(merged, partition, offset)
        return {str(partition): offset for partition, offset in sorted(merged.items())}

    def _done_offsets(self, con: duckdb.DuckDBPyConnection) -> dict[int, int]:
        text = first_row(
            con,
            f"SELECT last_offsets FROM {SINK_TABLE} WHERE {self._of_topic} AND {one_of('state', 'done')} "
            "ORDER BY through_batch DESC LIMIT 1",
        )
        return _partition_offsets(text)

    def _read_back(
        self, con: duckdb.DuckDBPyConnection, after: int, through: int
    ) -> dict[tuple[int, int], tuple[int, int]]:
        """(batch id, seq) -> (partition, offset) of this range's messages already in the topic: this pipeline's
        messages from the end offsets recorded when the range started."""
        start = first_row(
            con,
            f"SELECT start_offsets FROM {SINK_TABLE} WHERE {self._of_topic} AND {one_of('through_batch', through)}",
        )
        start_offsets = _partition_offsets(start)
        pipeline_id = self._pipeline_id(con).encode()
        consumer = self._consumer()
        found: dict[tuple[int, int], tuple[int, int]] = {}
        try:
            partitions = consumer.list_topics(self.topic, timeout=15).topics[self.topic].partitions
            # -2: the beginning of a partition with no recorded start (created since)
            consumer.assign([TopicPartition(self.topic, p, start_offsets.get(p, -2)) for p in partitions])
            ended: set[int] = set()
            deadline = time.monotonic() + READ_BACK_SECONDS
            while len(ended) < len(partitions):
                if time.monotonic() > deadline:
                    raise KafkaSinkError(
                        f"reading back {self.topic} to resume batches {after + 1}..{through}: "
                        f"no end of every partition within {READ_BACK_SECONDS} s"
                    )
                for message in consumer.consume(1000, timeout=0.2):
                    if message.error() is not None:
                        if message.error().code() == KafkaError._PARTITION_EOF:
                            ended.add(message.partition())
                        continue
                    headers = dict(message_headers(message) or [])  # unreadable: another producer's
                    if headers.get("sysmon_pipeline") == pipeline_id:
                        key = (int(headers["sysmon_batch_id"]), int(headers["sysmon_seq"]))
                        found[key] = (message.partition(), message.offset())
        except KafkaException as error:
            serve_log(consumer)
            raise KafkaSinkError(f"reading back {self.topic} at {self.settings.kafka_bootstrap}: {error}") from error
        finally:
            consumer.close()
        LOG.info("%s: %d messages of batches %d..%d were already published", self.topic, len(found), after + 1, through)
        return found


def _note_offset(offsets: dict[int, int], partition: int, offset: int) -> None:
    """Keep ``offset`` as ``partition``'s highest in ``offsets`` if it is higher than the one kept."""
    offsets[partition] = max(offset, offsets.get(partition, -1))


def _partition_offsets(row: tuple | None) -> dict[int, int]:
    """``{partition: offset}`` from a row holding a JSON object of offsets (or nothing)."""
    return {int(p): o for p, o in json.loads(row[0]).items()} if row and row[0] else {}


def _abandon(producer: Producer) -> None:
    """Drop what is still queued so nothing of a failed publish arrives after the next run's read-back."""
    producer.purge(in_queue=True, in_flight=True)
    producer.flush(5)
