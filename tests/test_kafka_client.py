import logging
import socket
from pathlib import Path

import pytest
from confluent_kafka import Consumer, KafkaException

import sysmon_assets.kafka_client as kafka_client
from sysmon_assets.kafka_client import LIBRDKAFKA_LOG, OncePerMinute, client_config, serve_log
from sysmon_assets.settings import Settings, SettingsError


def _record(text: str) -> logging.LogRecord:
    return logging.LogRecord("sysmon_assets.librdkafka", logging.ERROR, __file__, 1, text, None, None)


def test_a_line_passes_once_a_minute(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr(kafka_client.time, "monotonic", lambda: clock[0])
    once = OncePerMinute()
    assert once.filter(_record("Connection refused"))
    assert once.filter(_record("another line"))
    clock[0] += 59
    assert not once.filter(_record("Connection refused"))
    clock[0] += 2
    assert once.filter(_record("Connection refused"))


def test_a_line_counts_once_whichever_client_logs_it_and_however_many_copies_librdkafka_left_out() -> None:
    once = OncePerMinute()
    refused = "[thrd:b/bootstrap]: b/bootstrap: Connect to ipv4#127.0.0.1:9 failed: Connection refused"
    assert once.filter(_record(f"FAIL [rdkafka#consumer-1] {refused} (after 0ms in state CONNECT)"))
    assert not once.filter(_record(f"FAIL [rdkafka#producer-2] {refused} (after 0ms in state CONNECT)"))
    repeated = f"FAIL [rdkafka#consumer-3] {refused} (after 0ms in state CONNECT, 29 identical error(s) suppressed)"
    assert not once.filter(_record(repeated))
    # a retry on a busy machine took a millisecond longer (seen in CI: two "refused" lines in one test)
    assert not once.filter(_record(f"FAIL [rdkafka#consumer-1] {refused} (after 1ms in state CONNECT)"))
    assert once.filter(_record("FAIL [rdkafka#consumer-1] [thrd:b/bootstrap]: another line"))


def test_the_memory_of_lines_is_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(kafka_client, "MAX_REMEMBERED", 3)
    once = OncePerMinute()
    for offset in range(10):
        assert once.filter(_record(f"fetch at offset {offset}"))
    assert len(once.last_passed) <= 3


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_unreachable_broker_is_logged_once_with_its_cause(caplog: pytest.LogCaptureFixture) -> None:
    # left to itself librdkafka printed this refusal to stderr every 50 ms (about 290 lines in 15 s)
    port = _closed_port()
    settings = Settings.from_env({"SYSMON_SOURCE": "kafka", "SYSMON_KAFKA_BOOTSTRAP": f"127.0.0.1:{port}"})
    consumer = Consumer({**client_config(settings), "group.id": "unreachable"})
    try:
        with caplog.at_level(logging.DEBUG, logger=LIBRDKAFKA_LOG.name), pytest.raises(KafkaException):
            consumer.list_topics("winlogbeat", timeout=3)
        serve_log(consumer)
    finally:
        consumer.close()
    refusals = [r for r in caplog.records if f"127.0.0.1:{port} failed: Connection refused" in r.getMessage()]
    assert len(refusals) == 1


@pytest.mark.parametrize(
    ("config", "named"),
    [((("foo", "bar"),), '"foo"'), ((("security.protocol", "bogus"),), '"bogus"')],
)
def test_a_client_setting_librdkafka_refuses_is_a_settings_error_naming_the_variable(
    tmp_path: Path, config: tuple, named: str
) -> None:
    from sysmon_assets.micro_batch.steps import SysmonPipeline
    from sysmon_assets.sinks.kafka_sink import JoinSink
    from sysmon_assets.sources.kafka_source import consumer_lag, topic_id

    settings = Settings(
        landing_dir=tmp_path,
        data_dir=tmp_path / "data",
        source="kafka",
        kafka_bootstrap="127.0.0.1:1",
        kafka_config=config,
        kafka_sink=True,
    )
    every_client = [
        lambda: SysmonPipeline(settings).run_batch(),
        lambda: consumer_lag(settings),
        lambda: JoinSink(settings)._consumer(),
        lambda: topic_id(settings, "winlogbeat"),
    ]
    for start in every_client:
        with pytest.raises(SettingsError, match="SYSMON_KAFKA_CONFIG") as refused:
            start()
        assert named in str(refused.value)
