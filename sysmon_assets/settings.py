"""Pipeline settings, read from the environment with defaults under ``./data/``."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import duckdb

OFFSET_RESETS = ("earliest", "latest")
JOIN_MODES = ("default", "ksql")
SOURCES = ("files", "kafka")
CATALOG_KINDS = ("sqlite:", "postgres:")
MAX_SHARDS = 1024


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot use; the message names the variable."""


# Upper bounds, so that a value no step can use stops the run before it starts, never mid-batch.
# The grace period becomes a DuckDB INTERVAL: ten years (for it and the freshness limit) is beyond any useful
# value and far inside what an INTERVAL holds.
MAX_MINUTES = 10 * 365 * 24 * 60
# A line is held in memory (and in one DuckDB string) whole; a Sysmon event is a few KiB.
MAX_LINE_BYTES = 1024**3


def _check_whole(variable: str, value: int, low: int, high: int) -> None:
    if not low <= value <= high:
        raise SettingsError(f"{variable}={value}: expected a whole number from {low} to {high}")


def _check_share(variable: str, value: float) -> None:
    if not (math.isfinite(value) and 0 <= value <= 1):
        raise SettingsError(f"{variable}={value}: expected a number from 0 to 1")


@lru_cache(maxsize=8)
def _memory_limit_error(text: str) -> str | None:
    """DuckDB's own complaint about a memory limit, from a throwaway in-memory connection (None: it is usable)."""
    try:
        with duckdb.connect(":memory:", config={"memory_limit": text}) as con:
            # reading the setting back allocates: a limit that overflowed to 0 bytes fails here, not mid-batch
            con.execute("SELECT current_setting('memory_limit')").fetchall()
    except duckdb.Error as error:
        return str(error).splitlines()[0]
    return None


def _check_numeric_ranges(settings: Settings) -> None:
    _check_whole("SYSMON_JOIN_GRACE_MINUTES", settings.join_grace_minutes, 0, MAX_MINUTES)
    _check_whole("SYSMON_MAX_LINE_BYTES", settings.max_line_bytes, 1, MAX_LINE_BYTES)
    _check_share("SYSMON_JOIN_COVERAGE_WARN", settings.join_coverage_warn)
    _check_whole("SYSMON_FRESHNESS_MINUTES", settings.freshness_minutes, 1, MAX_MINUTES)
    if settings.memory_limit is not None:
        error = _memory_limit_error(settings.memory_limit)
        if error:
            raise SettingsError(f"SYSMON_DUCKDB_MEMORY_LIMIT={settings.memory_limit!r}: {error} (e.g. 4GB)")


@dataclass(frozen=True)
class Settings:
    """Everything one micro-batch needs to know about where data is and how to join it."""

    landing_dir: Path = Path("data/landing")
    data_dir: Path = Path("data")
    lake_catalog: str | None = None
    lake_data_path: str | None = None
    offset_reset: str = "earliest"
    join_mode: str = "default"
    join_grace_minutes: int = 15
    max_line_bytes: int = 1024 * 1024
    join_coverage_warn: float = 0.25
    freshness_minutes: int = 60
    memory_limit: str | None = None
    snapshot_retention_days: float = 7.0
    event_retention_days: float = 0.0
    source: str = "files"
    kafka_bootstrap: str | None = None
    kafka_topic: str = "winlogbeat"
    kafka_group: str = "sysmon-assets"
    kafka_partitions: tuple[int, ...] | None = None
    kafka_max_messages: int = 200_000
    kafka_max_bytes: int = 256 * 1024 * 1024
    kafka_sink: bool = False
    kafka_sink_topic: str = "SYSMON_JOIN"
    kafka_config: tuple[tuple[str, str], ...] = ()
    shards: int = 1

    @property
    def catalog(self) -> str:
        """DuckLake's catalog: ``SYSMON_LAKE_CATALOG``, by default a SQLite file in the data folder (no server;
        docs/storage.md has the measurement behind that choice)."""
        return self.lake_catalog or f"sqlite:{self.data_dir / 'lake.sqlite'}"

    @property
    def data_path(self) -> str:
        """Where DuckLake writes its Parquet files: ``SYSMON_LAKE_DATA_PATH``, by default in the data folder."""
        return self.lake_data_path or f"{self.data_dir / 'lake_files'}/"

    def __post_init__(self) -> None:
        if self.offset_reset not in OFFSET_RESETS:
            raise SettingsError(f"SYSMON_OFFSET_RESET={self.offset_reset!r}: expected one of {OFFSET_RESETS}")
        if self.join_mode not in JOIN_MODES:
            raise SettingsError(f"SYSMON_JOIN_MODE={self.join_mode!r}: expected one of {JOIN_MODES}")
        _check_numeric_ranges(self)
        if not self.catalog.startswith(CATALOG_KINDS):
            raise SettingsError(f"SYSMON_LAKE_CATALOG={self.catalog!r}: expected sqlite:PATH or postgres:CONNECTION")
        if not 0 < self.snapshot_retention_days < 36500:
            raise SettingsError(f"SYSMON_SNAPSHOT_RETENTION_DAYS={self.snapshot_retention_days}: expected 0 < days")
        if not 0 <= self.event_retention_days < 36500:
            raise SettingsError(f"SYSMON_EVENT_RETENTION_DAYS={self.event_retention_days}: expected 0 (keep) or more")
        if self.source not in SOURCES:
            raise SettingsError(f"SYSMON_SOURCE={self.source!r}: expected one of {SOURCES}")
        if (self.source == "kafka" or self.kafka_sink) and not self.kafka_bootstrap:
            raise SettingsError("SYSMON_KAFKA_BOOTSTRAP is not set: the Kafka source and sink need host:port")
        if self.kafka_max_messages < 1 or self.kafka_max_bytes < 1:
            raise SettingsError("SYSMON_KAFKA_MAX_MESSAGES and SYSMON_KAFKA_MAX_BYTES must be 1 or more")
        self._check_shards()

    def _check_shards(self) -> None:
        if not 1 <= self.shards <= MAX_SHARDS:
            raise SettingsError(f"SYSMON_SHARDS={self.shards}: expected 1 to {MAX_SHARDS}")
        if self.shards > 1 and self.join_mode == "ksql":
            raise SettingsError("SYSMON_JOIN_MODE=ksql needs one arrival order: it cannot run with SYSMON_SHARDS > 1")
        if self.shards > 1 and self.kafka_sink:
            raise SettingsError("SYSMON_KAFKA_SINK publishes from one pipeline: it cannot run with SYSMON_SHARDS > 1")

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings shared by consumer and producer: bootstrap plus ``SYSMON_KAFKA_CONFIG``."""
        return {"bootstrap.servers": self.kafka_bootstrap or "", **dict(self.kafka_config)}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings from ``SYSMON_*`` variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        return cls(
            landing_dir=Path(env.get("SYSMON_LANDING_DIR") or cls.landing_dir),
            data_dir=Path(env.get("SYSMON_DATA_DIR") or cls.data_dir),
            lake_catalog=env.get("SYSMON_LAKE_CATALOG") or None,
            lake_data_path=env.get("SYSMON_LAKE_DATA_PATH") or None,
            offset_reset=env.get("SYSMON_OFFSET_RESET", "earliest").lower(),
            join_mode=env.get("SYSMON_JOIN_MODE", "default").lower(),
            join_grace_minutes=_whole_number(env, "SYSMON_JOIN_GRACE_MINUTES", 15),
            max_line_bytes=_whole_number(env, "SYSMON_MAX_LINE_BYTES", 1024 * 1024),
            join_coverage_warn=_number(env, "SYSMON_JOIN_COVERAGE_WARN", 0.25),
            freshness_minutes=_whole_number(env, "SYSMON_FRESHNESS_MINUTES", 60),
            memory_limit=env.get("SYSMON_DUCKDB_MEMORY_LIMIT") or None,
            snapshot_retention_days=_number(env, "SYSMON_SNAPSHOT_RETENTION_DAYS", cls.snapshot_retention_days),
            event_retention_days=_number(env, "SYSMON_EVENT_RETENTION_DAYS", cls.event_retention_days),
            source=env.get("SYSMON_SOURCE", "files").lower(),
            kafka_bootstrap=env.get("SYSMON_KAFKA_BOOTSTRAP") or None,
            kafka_topic=env.get("SYSMON_KAFKA_TOPIC") or cls.kafka_topic,
            kafka_group=env.get("SYSMON_KAFKA_GROUP") or cls.kafka_group,
            kafka_partitions=_partitions(env.get("SYSMON_KAFKA_PARTITIONS")),
            kafka_max_messages=_whole_number(env, "SYSMON_KAFKA_MAX_MESSAGES", cls.kafka_max_messages),
            kafka_max_bytes=_whole_number(env, "SYSMON_KAFKA_MAX_BYTES", cls.kafka_max_bytes),
            kafka_sink=_flag(env, "SYSMON_KAFKA_SINK"),
            kafka_sink_topic=env.get("SYSMON_KAFKA_SINK_TOPIC") or cls.kafka_sink_topic,
            kafka_config=_client_config(env.get("SYSMON_KAFKA_CONFIG")),
            shards=_whole_number(env, "SYSMON_SHARDS", cls.shards),
        )

    def variables(self) -> dict[str, object]:
        """The Jinja ``var()`` values the SQL models are rendered with."""
        return {
            "join_mode": self.join_mode,
            "join_grace_minutes": self.join_grace_minutes,
            "max_line_bytes": self.max_line_bytes,
            "source": self.source,
        }


def _number(env: dict[str, str] | os._Environ, name: str, default: float) -> float:
    return _parsed(env, name, default, float, "a number")


def _whole_number(env: dict[str, str] | os._Environ, name: str, default: int) -> int:
    return _parsed(env, name, default, int, "a whole number")


def _parsed(env: dict[str, str] | os._Environ, name: str, default: float, kind: type, expected: str) -> float | int:
    text = env.get(name, str(default))
    try:
        return kind(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r}: expected {expected}") from None


def _flag(env: dict[str, str] | os._Environ, name: str) -> bool:
    text = env.get(name, "").strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}={text!r}: expected 1/0, true/false, yes/no or on/off")


def _partitions(text: str | None) -> tuple[int, ...] | None:
    """``"0,2"`` -> ``(0, 2)``; unset means every partition of the topic."""
    if not text or not text.strip():
        return None
    try:
        return tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise SettingsError(f"SYSMON_KAFKA_PARTITIONS={text!r}: expected partition numbers such as 0,2") from None


def _client_config(text: str | None) -> tuple[tuple[str, str], ...]:
    """Extra librdkafka settings, ``key=value`` pairs separated by commas (``security.protocol=SSL,...``)."""
    pairs = []
    for item in (text or "").split(","):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise SettingsError(f"SYSMON_KAFKA_CONFIG item {item!r}: expected key=value")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)
