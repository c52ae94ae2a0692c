"""Read the ``winlogbeat`` Kafka topic since the last committed batch: the recipe's own source.

The offsets that count are stored in the lake (``ingest.kafka_offsets``) and written by
:meth:`KafkaReader.commit_offsets` inside the same transaction as the rows they cover, so a
crash before that commit re-reads the messages and a crash after it never reads them again.
Every batch seeks to the stored offsets; the consumer group's own Kafka-side offsets are
committed afterwards for monitoring (lag dashboards, the sensor) and never read back.

A batch reads each partition up to its end as of the batch (partition EOF) or up to
``kafka_max_messages`` / ``kafka_max_bytes``, whichever comes first, and hands the messages
to the ingest model in chunks shaped like landed file lines, plus the message's topic,
partition, offset, timestamp, key and headers.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple

import duckdb
import numpy as np
import pyarrow as pa
from confluent_kafka import (
    TIMESTAMP_NOT_AVAILABLE,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import AdminClient

from dbt_like.concurrency import run_again_after_lost_races
from dbt_like.sql import UTC_NOW, literal, literals, one_of, quote_identifier
from sysmon_assets.kafka_client import client_config, message_headers, new_client, serve_log
from sysmon_assets.settings import Settings
from sysmon_assets.sources.arrow_columns import bytes_array, dictionary_strings, int_array, strings_array
from sysmon_assets.sources.landed_lines import KAFKA_LINES_SCHEMA, SOURCE_NAME
from sysmon_assets.storage.lake import CATALOG_DATABASE

LOG = logging.getLogger(__name__)

OFFSETS_TABLE = "ingest.kafka_offsets"
EVENTS_TABLE = "ingest.file_events"
CHUNK_MESSAGES = 100_000
IDLE_TIMEOUT_SECONDS = 30.0
OFFSETS_COLUMNS = 'topic VARCHAR, "partition" INTEGER, next_offset BIGINT, updated_at TIMESTAMP, topic_id VARCHAR'
STATE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS ingest;
CREATE TABLE IF NOT EXISTS {OFFSETS_TABLE} ({OFFSETS_COLUMNS});
CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (
    detected_at TIMESTAMP, path VARCHAR, file_key VARCHAR, event VARCHAR, detail VARCHAR);
"""

ConsumerFactory = Callable[[dict[str, Any]], Consumer]
# The id a broker without topic ids (Kafka before 2.8) gives every topic, as confluent_kafka prints it.
NO_TOPIC_ID = "AAAAAAAAAAAAAAAAAAAAAA"


def remake_offsets_with_topic_ids(con: duckdb.DuckDBPyConnection) -> None:
    """Make the offsets table of a lake from before topic ids were kept (its ``topic_id`` missing, or added by
    ``ALTER TABLE``) anew, its rows kept, in one transaction: DuckLake 0.3 fails every later commit into a table that
    gained a column while its rows are inlined in the catalog ("table ducklake_inlined_data_3_3 has 7 columns but 8
    values were supplied")."""
    as_created = con.execute(
        f"SELECT count(*) FROM {CATALOG_DATABASE}.ducklake_column AS c "
        f"JOIN {CATALOG_DATABASE}.ducklake_table AS t USING (table_id) "
        f"JOIN {CATALOG_DATABASE}.ducklake_schema AS s USING (schema_id) "
        "WHERE s.schema_name = 'ingest' AND t.table_name = 'kafka_offsets' AND c.column_name = 'topic_id' "
        "AND s.end_snapshot IS NULL AND t.end_snapshot IS NULL AND c.end_snapshot IS NULL "
        "AND c.begin_snapshot = t.begin_snapshot"
    ).fetchone()
    if as_created is None or as_created[0]:
        return
    con.begin()
    rows = con.execute(f'SELECT topic, "partition", next_offset, updated_at FROM {OFFSETS_TABLE}').fetchall()
    con.execute(f"DROP TABLE {OFFSETS_TABLE}")
    con.execute(f"CREATE TABLE {OFFSETS_TABLE} ({OFFSETS_COLUMNS})")
    if rows:
        con.executemany(f"INSERT INTO {OFFSETS_TABLE} VALUES (?, ?, ?, ?, NULL)", rows)
    con.commit()
    LOG.info(
        "%s: made anew with a topic_id column, its %d rows kept (a lake from before topic ids)",
        OFFSETS_TABLE,
        len(rows),
    )


class KafkaSourceError(RuntimeError):
    """The topic cannot be read; the message names the bootstrap servers, topic and partition."""


@dataclass
class PartitionProgress:
    """Where reading one partition starts and (after each chunk) the next offset to read."""

    partition: int
    position: int | None  # None: not known yet (earliest of a partition never read)
    committed: int | None = None  # the position the lake holds
    stored_topic_id: str | None = None  # the topic id the lake holds with it
    stored_updated_at: datetime | None = None  # when a batch last read a message of it (None: never)
    consumed: int = 0
    consumed_bytes: int = 0
    done: bool = False
    notes: list[tuple[str, str]] = field(default_factory=list)
    notes_recorded: int = 0
    gap_checked: bool = False

    @property
    def uncommitted(self) -> bool:
        """Whether the lake does not hold this partition's position or notes yet."""
        return self.position != self.committed or self.notes_recorded < len(self.notes)


def consumer_config(settings: Settings) -> dict[str, Any]:
    """librdkafka consumer settings: manual offsets, end-of-partition events, no auto commit."""
    return {
        **client_config(settings),
        "group.id": settings.kafka_group,
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        # Only used when a stored offset no longer exists (retention, truncation): recorded, see _check_jump.
        "auto.offset.reset": "earliest",
    }


def topic_partitions(consumer: Consumer, settings: Settings, topic: str) -> list[int]:
    """The partitions of ``topic`` this pipeline reads: ``kafka_partitions`` or all of them."""
    where = f"topic {topic!r} at {settings.kafka_bootstrap}"
    try:
        metadata = consumer.list_topics(topic, timeout=15).topics.get(topic)
    except KafkaException as error:
        serve_log(consumer)
        raise KafkaSourceError(f"cannot read the metadata of {where}: {error}") from error
    if metadata is None or metadata.error is not None or not metadata.partitions:
        reason = metadata.error if metadata is not None else "not listed"
        raise KafkaSourceError(f"{where} is not available: {reason}")
    existing = sorted(metadata.partitions)
    wanted = list(settings.kafka_partitions or existing)
    missing = sorted(set(wanted) - set(existing))
    if missing:
        raise KafkaSourceError(f"SYSMON_KAFKA_PARTITIONS names {missing}, but {where} has partitions {existing}")
    return wanted


def read_topic_id(settings: Settings, topic: str) -> str | None:
    """``topic``'s id: a topic deleted and created again under its name gets a new one (Kafka 2.8 and later).
    None when the broker has none; :class:`KafkaSourceError` when the broker cannot be asked."""
    admin = new_client(AdminClient, client_config(settings))
    try:
        described = admin.describe_topics(TopicCollection([topic]))[topic].result(timeout=15)
    except KafkaException as error:
        serve_log(admin)
        where = f"topic {topic!r} at {settings.kafka_bootstrap}"
        raise KafkaSourceError(f"cannot read the id of {where}: {error}") from error
    found = None if described.topic_id is None else str(described.topic_id)
    return None if found == NO_TOPIC_ID else found


def topic_id(settings: Settings, topic: str) -> str | None:
    """:func:`read_topic_id`, or None (logged) when the broker cannot be asked: a batch then tells a recreated topic
    by its offsets alone."""
    try:
        return read_topic_id(settings, topic)
    except KafkaSourceError as error:
        LOG.warning("%s: a recreated topic is told by its offsets alone", error)
        return None


def _header_value(value: bytes | None) -> str | dict[str, str] | None:
    """A header's value as JSON holds it: its text when it is UTF-8, else ``{"base64": ...}`` (escaping its bytes
    in the text would make them look like a value that spells the escape)."""
    if value is None:
        return None
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(value).decode("ascii")}


# what _kafka.headers holds for a message whose headers confluent_kafka cannot read (the message itself is read)
UNREADABLE_HEADERS = json.dumps({"unreadable": "a header name is not UTF-8"})


def _headers_json(message: Message) -> str | None:
    headers = message_headers(message)
    if headers is None:
        return UNREADABLE_HEADERS
    if not headers:
        return None
    return json.dumps([[key, _header_value(value)] for key, value in headers])


class KafkaReader:
    """Plans and reads one batch of Kafka messages, and commits how far it got (in the lake)."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        settings: Settings,
        chunk_bytes: int,
        consumer_factory: ConsumerFactory = Consumer,
        idle_timeout: float = IDLE_TIMEOUT_SECONDS,
        owns: Callable[[int], bool] = lambda partition: True,
    ) -> None:
        """``owns(partition)``: whether this reader's shard reads the partition (by default every one)."""
        self.con = con
        self.owns = owns
        self.settings = settings
        self.topic = settings.kafka_topic
        self.chunk_bytes = chunk_bytes
        self.idle_timeout = idle_timeout
        self.consumer = new_client(consumer_factory, consumer_config(settings))
        self.partitions: list[PartitionProgress] = []
        self.topic_id: str | None = None

    def plan(self, first_batch_ever: bool) -> list[PartitionProgress]:
        """Decide, per partition, where this batch starts: the offset stored in the lake or, for a partition
        never read, the earliest offset (``latest`` on the very first batch: the end of the partition); for a
        topic recreated since the offsets were stored (its id changed), its earliest offset, recorded."""
        self.con.execute(STATE_DDL)
        run_again_after_lost_races(self.con, lambda: remake_offsets_with_topic_ids(self.con), "keeping topic ids")
        stored = {
            partition: (offset, stored_id, updated_at)
            for partition, offset, stored_id, updated_at in self.con.execute(
                f'SELECT "partition", next_offset, topic_id, updated_at FROM {OFFSETS_TABLE} '
                f"WHERE {one_of('topic', self.topic)}"
            ).fetchall()
        }
        partitions = list(filter(self.owns, topic_partitions(self.consumer, self.settings, self.topic)))
        self.topic_id = topic_id(self.settings, self.topic)
        self.partitions = []
        for partition in partitions:
            committed, stored_id, updated_at = stored.get(partition, (None, None, None))
            progress = PartitionProgress(
                partition, committed, committed=committed, stored_topic_id=stored_id, stored_updated_at=updated_at
            )
            if committed is None and first_batch_ever and self.settings.offset_reset == "latest":
                progress.position = self._end_offset(partition)
            elif committed is not None and None not in (stored_id, self.topic_id) and stored_id != self.topic_id:
                self._restart_recreated(progress, stored_id)
            self.partitions.append(progress)
        return self.partitions

    def _restart_recreated(self, progress: PartitionProgress, stored_id: str | None) -> None:
        """The topic was deleted and created again since ``progress.committed`` was stored: read the new topic's
        partition from its earliest offset (the stored offset may lie inside it, past messages never read)."""
        progress.position, _ = self._watermarks(progress.partition)
        detail = (
            f"the topic was recreated (id {self.topic_id}, was {stored_id}): read from its earliest offset "
            f"{progress.position}, not the stored next offset {progress.committed}"
        )
        LOG.warning("%s/%s: %s", self.topic, progress.partition, detail)
        progress.notes.append(("offsets_reset", detail))

    def _watermarks(self, partition: int) -> tuple[int, int]:
        try:
            return self.consumer.get_watermark_offsets(TopicPartition(self.topic, partition), timeout=15)
        except KafkaException as error:
            raise KafkaSourceError(f"cannot read the offsets of {self.topic}/{partition}: {error}") from error

    def _end_offset(self, partition: int) -> int:
        return self._watermarks(partition)[1]

    def chunks(self, first_seq: int) -> Iterator[dict[str, pa.Table]]:
        """Source chunks for the ingest models: ``{'landed_lines': frame}``, bounded in size."""
        by_partition = {progress.partition: progress for progress in self.partitions}
        self.consumer.assign(
            [
                TopicPartition(self.topic, p.partition, p.position if p.position is not None else -2)  # -2: beginning
                for p in self.partitions
            ]
        )
        seq = first_seq
        batch: list[Message] = []
        batch_bytes = 0
        for message in self._messages(by_partition):
            batch.append(message)
            batch_bytes += len(message.value() or b"")
            if batch_bytes >= self.chunk_bytes or len(batch) >= CHUNK_MESSAGES:
                yield {SOURCE_NAME: self._frame(batch, seq)}
                seq += len(batch)
                batch, batch_bytes = [], 0
        if batch or any(p.uncommitted for p in self.partitions):
            # also when no message came: positions moved past transaction markers, or a gap to record
            yield {SOURCE_NAME: self._frame(batch, seq)}

    def _messages(self, by_partition: dict[int, PartitionProgress]) -> Iterator[Message]:
        """Messages in offset order per partition until every partition reached its end or its limit."""
        last_message = time.monotonic()
        while not all(p.done for p in by_partition.values()):
            messages = self.consumer.consume(num_messages=10_000, timeout=0.2)
            if messages:
                last_message = time.monotonic()
            elif time.monotonic() - last_message > self.idle_timeout:
                waiting = sorted(p.partition for p in by_partition.values() if not p.done)
                raise KafkaSourceError(
                    f"no message or end-of-partition from {self.topic} partitions {waiting} at "
                    f"{self.settings.kafka_bootstrap} for {self.idle_timeout:.0f} s"
                )
            for message in messages:
                progress = by_partition[message.partition()]
                if progress.done:
                    continue  # fetched past this partition's limit: read again next batch
                error = message.error()
                if error is not None:
                    self._on_error(error, progress, message.offset())
                    continue
                self._check_jump(progress, message.offset())
                progress.position = message.offset() + 1
                yield message
                progress.consumed += 1
                progress.consumed_bytes += len(message.value() or b"")
                if (
                    progress.consumed >= self.settings.kafka_max_messages
                    or progress.consumed_bytes >= self.settings.kafka_max_bytes
                ):
                    progress.done = True
                    self.consumer.pause([TopicPartition(self.topic, progress.partition)])

    def _on_error(self, error: KafkaError, progress: PartitionProgress, offset: int | None) -> None:
        if error.code() == KafkaError._PARTITION_EOF:
            progress.done = True
            # The end can lie past the last message (a transaction's commit marker): the position moves there,
            # or the consumer group would lag forever.
            if offset is not None and offset >= 0 and (progress.position is None or offset > progress.position):
                self._check_jump(progress, offset)
                progress.position = offset
            return
        if error.fatal() or not error.retriable():
            raise KafkaSourceError(f"reading {self.topic}/{progress.partition}: {error.str()}")
        LOG.warning("reading %s/%s: %s (retrying)", self.topic, progress.partition, error.str())

    def _frame(self, batch: list[Message], first_seq: int) -> pa.Table:
        """One row per message, with the columns of a landed line plus the Kafka metadata."""
        partitions = np.fromiter((m.partition() for m in batch), dtype=np.int32, count=len(batch))
        offsets = np.fromiter((m.offset() for m in batch), dtype=np.int64, count=len(batch))
        values = [m.value() or b"" for m in batch]
        kinds, stamps = zip(*(m.timestamp() for m in batch), strict=True) if batch else ((), ())
        timestamps = int_array(np.array(stamps, dtype=np.int64), valid=np.array(kinds) != TIMESTAMP_NOT_AVAILABLE)
        names = [f"kafka:{self.topic}/{p.partition}" for p in self.partitions]
        index = {p.partition: i for i, p in enumerate(self.partitions)}
        columns = [
            int_array(np.arange(first_seq, first_seq + len(batch))),
            dictionary_strings(np.fromiter((index[p] for p in partitions), dtype=np.int32, count=len(batch)), names),
            pa.nulls(len(batch), pa.int64()),
            int_array(offsets),
            bytes_array(values),
            int_array(np.fromiter(map(len, values), dtype=np.int64, count=len(values))),
            pa.nulls(len(batch), pa.large_string()),  # read_error: a message is always read whole
            strings_array([self.topic] * len(batch)),
            int_array(partitions, pa.int32()),
            int_array(offsets),
            timestamps,
            bytes_array([m.key() for m in batch]),
            strings_array([_headers_json(m) for m in batch]),
        ]
        return pa.Table.from_arrays(columns, schema=KAFKA_LINES_SCHEMA)

    def _check_jump(self, progress: PartitionProgress, offset: int) -> None:
        """Record what a jump from the stored position to ``offset`` means, instead of skipping silently.

        Forward jumps are normal past transaction markers and on compacted topics; only retention
        (the earliest offset now lies past the position) is a gap. A backward jump means the stored
        position is beyond what the partition holds (truncated, or the topic recreated) and the
        consumer started again from the earliest offset.
        """
        if progress.position is None or offset == progress.position:
            return
        where = f"{self.topic}/{progress.partition}"
        if offset < progress.position:
            event = "offsets_reset"
            progress.stored_topic_id = None  # it named the topic before; the one read now may be another
            detail = (
                f"the stored next offset {progress.position} is past what the partition holds (truncated or "
                f"recreated): read again from offset {offset}"
            )
        elif not progress.gap_checked:
            progress.gap_checked = True
            earliest, _ = self._watermarks(progress.partition)
            if earliest <= progress.position:
                return
            event, detail = (
                "offsets_skipped",
                f"offsets {progress.position}..{earliest - 1} were no longer in the topic",
            )
        else:
            return
        LOG.warning("%s: %s", where, detail)
        progress.notes.append((event, detail))

    def commit_offsets(self, con: duckdb.DuckDBPyConnection) -> None:
        """Record the next offset of every partition read so far; call inside the transaction that
        commits the rows read so far."""
        read = [progress for progress in self.partitions if progress.position is not None]
        if not read:
            return
        # one statement each for all partitions: every lake statement costs a round of catalog work
        partitions = one_of(quote_identifier("partition"), *(progress.partition for progress in read))
        con.execute(f"DELETE FROM {OFFSETS_TABLE} WHERE {one_of('topic', self.topic)} AND {partitions}")
        # a batch that could not look the topic's id up keeps the stored one, or the next would miss a recreation;
        # updated_at moves with a message read, not with a position moved past markers or recorded at the end
        offsets = ", ".join(
            f"({literals(self.topic, progress.partition, progress.position)}, "
            f"{UTC_NOW if progress.consumed else literal(progress.stored_updated_at)}, "
            f"{literal(self.topic_id if self.topic_id is not None else progress.stored_topic_id)})"
            for progress in read
        )
        con.execute(
            f'INSERT INTO {OFFSETS_TABLE} (topic, "partition", next_offset, updated_at, topic_id) VALUES {offsets}'
        )
        events = [
            f"({UTC_NOW}, {literals(f'kafka:{self.topic}/{progress.partition}', '', event, detail)})"
            for progress in read
            for event, detail in progress.notes[progress.notes_recorded :]
        ]
        if events:
            con.execute(f"INSERT INTO {EVENTS_TABLE} VALUES {', '.join(events)}")

    def offsets_committed(self) -> None:
        """The transaction :meth:`commit_offsets` wrote into has committed."""
        for progress in self.partitions:
            if progress.position is not None:
                progress.committed = progress.position
                progress.notes_recorded = len(progress.notes)

    @property
    def file_events(self) -> list[dict[str, str]]:
        """What this batch noticed (offsets no longer in the topic), for run metadata."""
        return [
            {"path": f"kafka:{self.topic}/{p.partition}", "event": e, "detail": d}
            for p in self.partitions
            for e, d in p.notes
        ]

    def close(self) -> None:
        """Commit the offsets the lake holds to the consumer group (monitoring only) and leave it.

        The offsets are read back from the lake, so a batch that failed half-way shows its real lag.
        """
        try:
            stored = self.con.execute(
                f'SELECT "partition", next_offset FROM {OFFSETS_TABLE} WHERE {one_of("topic", self.topic)}'
            ).fetchall()
            if stored:
                offsets = [TopicPartition(self.topic, partition, offset) for partition, offset in stored]
                self.consumer.commit(offsets=offsets, asynchronous=False)
        except (KafkaException, duckdb.Error) as error:
            LOG.warning(
                "committing %s offsets to group %s (monitoring only): %s", self.topic, self.settings.kafka_group, error
            )
        finally:
            self.consumer.close()


class PartitionLag(NamedTuple):
    """How far the consumer group is behind one partition's end."""

    lag: int
    end: int


def consumer_lag(settings: Settings, consumer_factory: ConsumerFactory = Consumer) -> dict[int, PartitionLag]:
    """Per partition: messages beyond the consumer group's committed offset (a partition never
    committed counts from its earliest offset), and the end offset. Reads Kafka only, never the
    lake."""
    consumer = new_client(consumer_factory, consumer_config(settings))
    try:
        partitions = topic_partitions(consumer, settings, settings.kafka_topic)
        committed = consumer.committed([TopicPartition(settings.kafka_topic, p) for p in partitions], timeout=15)
        lag = {}
        for tp in committed:
            low, high = consumer.get_watermark_offsets(tp, timeout=15)
            lag[tp.partition] = PartitionLag(max(0, high - (tp.offset if tp.offset >= 0 else low)), high)
        return lag
    except KafkaException as error:
        raise KafkaSourceError(
            f"reading the lag of group {settings.kafka_group} on {settings.kafka_topic}: {error}"
        ) from error
    finally:
        consumer.close()
