"""Settings every Kafka client of the pipeline shares, and librdkafka's own log routed through Python's logging.

Left to itself librdkafka writes its log to stderr from its own threads: with a broker that refuses connections that
is one identical "Connection refused" line every 50 ms, about 290 before a 15 s metadata request gives up and the
pipeline's one-line error follows. Handed a Python logger, librdkafka queues its lines until the client is served
(``poll``, ``consume``, ``flush``), and here each distinct line is logged at most once a minute, whichever client
logs it.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any, Protocol, TypeVar

from confluent_kafka import KafkaException, Message

from sysmon_assets.settings import Settings, SettingsError

LIBRDKAFKA_LOG = logging.getLogger("sysmon_assets.librdkafka")
REPEAT_AFTER_SECONDS = 60.0
# lines that carry offsets or timestamps never repeat: the memory of lines seen is dropped past this many
MAX_REMEMBERED = 1000


# what differs between two clients' or two moments' copies of one line: the client's name, librdkafka's count of
# the identical lines it left out, how long the attempt took
CLIENT_NAME = re.compile(r" \[rdkafka#[a-z]+-\d+\]")
SUPPRESSED_COUNT = re.compile(r"(, )?\d+ identical error\(s\) suppressed")
ELAPSED = re.compile(r"\(after \d+ms in state ")


def _said(line: str) -> str:
    """The line without what makes copies of it differ."""
    return ELAPSED.sub("(in state ", SUPPRESSED_COUNT.sub("", CLIENT_NAME.sub("", line)))


class OncePerMinute(logging.Filter):
    """Passes a record unless the same line, from any client, passed in the last ``REPEAT_AFTER_SECONDS``."""

    def __init__(self) -> None:
        super().__init__()
        self.last_passed: dict[str, float] = {}

    def filter(self, record: logging.LogRecord) -> bool:
        text, now = _said(record.getMessage()), time.monotonic()
        if now - self.last_passed.get(text, -math.inf) < REPEAT_AFTER_SECONDS:
            return False
        if len(self.last_passed) >= MAX_REMEMBERED:
            self.last_passed.clear()
        self.last_passed[text] = now
        return True


LIBRDKAFKA_LOG.addFilter(OncePerMinute())


class Served(Protocol):
    def poll(self, timeout: float) -> Any: ...


def client_config(settings: Settings) -> dict[str, Any]:
    """librdkafka settings of a consumer, producer or admin client: ``settings.kafka_client_config()`` plus the log."""
    return {**settings.kafka_client_config(), "logger": LIBRDKAFKA_LOG}


Client = TypeVar("Client")


def new_client(factory: Callable[[dict[str, Any]], Client], config: dict[str, Any]) -> Client:
    """``factory(config)``; a setting librdkafka refuses is a :class:`SettingsError` naming the variables the
    client's settings come from, not a bare librdkafka error from deep inside a batch or a sensor tick."""
    try:
        return factory(config)
    except KafkaException as error:
        reason = error.args[0].str() if error.args and hasattr(error.args[0], "str") else str(error)
        raise SettingsError(
            f"librdkafka refuses the Kafka client settings (SYSMON_KAFKA_CONFIG, SYSMON_KAFKA_BOOTSTRAP): {reason}"
        ) from error


def serve_log(client: Served) -> None:
    """Log what librdkafka has queued (the cause of a failed request: "Connection refused", a TLS error, ...)."""
    client.poll(0)


def message_headers(message: Message) -> list[tuple[str, bytes | None]] | None:
    """A message's headers, or None when they cannot be read: confluent_kafka decodes their names as UTF-8, and a
    producer may send any bytes (the broker does not check), which it reports as a SystemError."""
    try:
        return message.headers() or []
    except SystemError as error:
        if isinstance(error.__cause__ or error.__context__, UnicodeDecodeError):
            return None
        raise
