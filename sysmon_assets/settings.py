"""Pipeline settings, read from the environment with defaults under ``./data/``."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

OFFSET_RESETS = ("earliest", "latest")
JOIN_MODES = ("default", "ksql")


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

    def duckdb_config(self) -> dict[str, str]:
        """DuckDB connection settings: ``memory_limit`` (e.g. ``2GB``; DuckDB spills beyond it) when set."""
        return {"memory_limit": self.memory_limit} if self.memory_limit else {}

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
        )

    def variables(self) -> dict[str, object]:
        """The Jinja ``var()`` values the SQL models are rendered with."""
        return {
            "join_mode": self.join_mode,
            "join_grace_minutes": self.join_grace_minutes,
            "max_line_bytes": self.max_line_bytes,
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
