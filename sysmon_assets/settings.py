"""Pipeline settings, read from the environment with defaults under ``./data/``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

OFFSET_RESETS = ("earliest", "latest")
JOIN_MODES = ("default", "ksql")
SOURCES = ("files", "kafka")


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot use; the message names the variable."""


@dataclass(frozen=True)
class Settings:
    """Everything one micro-batch needs to know about where data is and how to join it."""

    landing_dir: Path = Path("data/landing")
    duckdb_path: Path = Path("data/sysmon.duckdb")
    offset_reset: str = "earliest"
    join_mode: str = "default"
    join_grace_minutes: int = 15
    max_line_bytes: int = 1024 * 1024
    query_db: Path | None = None
    join_coverage_warn: float = 0.25
    freshness_minutes: int = 60
    memory_limit: str | None = None
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

    def duckdb_config(self) -> dict[str, str]:
        """DuckDB connection settings: ``memory_limit`` (e.g. ``2GB``; DuckDB spills beyond it) when set; a
        write-ahead log of up to 1 GB before an automatic checkpoint, so ingest's per-chunk commits do not each
        rewrite the table (each step checkpoints when it ends); and no row-group merging at those checkpoints
        (the pipeline compacts every ``COMPACT_EVERY_BATCHES`` batches instead)."""
        memory = {"memory_limit": self.memory_limit} if self.memory_limit else {}
        return {"checkpoint_threshold": "1GB", "max_vacuum_tasks": "0", **memory}

    @property
    def query_db_path(self) -> Path:
        """The analysts' read-only query database: ``SYSMON_QUERY_DB``, by default beside the DuckDB file."""
        return self.query_db or self.duckdb_path.with_name(self.duckdb_path.stem + "_query.duckdb")

    def __post_init__(self) -> None:
        if self.offset_reset not in OFFSET_RESETS:
            raise SettingsError(f"SYSMON_OFFSET_RESET={self.offset_reset!r}: expected one of {OFFSET_RESETS}")
        if self.join_mode not in JOIN_MODES:
            raise SettingsError(f"SYSMON_JOIN_MODE={self.join_mode!r}: expected one of {JOIN_MODES}")
        if self.join_grace_minutes < 0:
            raise SettingsError(f"SYSMON_JOIN_GRACE_MINUTES={self.join_grace_minutes}: must be 0 or more")
        if self.max_line_bytes < 1:
            raise SettingsError(f"SYSMON_MAX_LINE_BYTES={self.max_line_bytes}: must be 1 or more")
        if self.source not in SOURCES:
            raise SettingsError(f"SYSMON_SOURCE={self.source!r}: expected one of {SOURCES}")
        if (self.source == "kafka" or self.kafka_sink) and not self.kafka_bootstrap:
            raise SettingsError("SYSMON_KAFKA_BOOTSTRAP is not set: the Kafka source and sink need host:port")
        if self.kafka_max_messages < 1 or self.kafka_max_bytes < 1:
            raise SettingsError("SYSMON_KAFKA_MAX_MESSAGES and SYSMON_KAFKA_MAX_BYTES must be 1 or more")

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings shared by consumer and producer: bootstrap plus ``SYSMON_KAFKA_CONFIG``."""
        return {"bootstrap.servers": self.kafka_bootstrap or "", **dict(self.kafka_config)}

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        """Settings from ``SYSMON_*`` variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        return cls(
            landing_dir=Path(env.get("SYSMON_LANDING_DIR") or cls.landing_dir),
            duckdb_path=Path(env.get("SYSMON_DUCKDB_PATH") or cls.duckdb_path),
            offset_reset=env.get("SYSMON_OFFSET_RESET", "earliest").lower(),
            join_mode=env.get("SYSMON_JOIN_MODE", "default").lower(),
            join_grace_minutes=_whole_number(env, "SYSMON_JOIN_GRACE_MINUTES", 15),
            max_line_bytes=_whole_number(env, "SYSMON_MAX_LINE_BYTES", 1024 * 1024),
            query_db=Path(env["SYSMON_QUERY_DB"]) if env.get("SYSMON_QUERY_DB") else None,
            join_coverage_warn=_number(env, "SYSMON_JOIN_COVERAGE_WARN", 0.25),
            freshness_minutes=_whole_number(env, "SYSMON_FRESHNESS_MINUTES", 60),
            memory_limit=env.get("SYSMON_DUCKDB_MEMORY_LIMIT") or None,
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
