"""Pipeline settings, each declared once: its field, environment variable, default, description and check.

``Settings.from_env``, the Dagster resource (``sysmon_assets.dagster_layer.resources``) and README's configuration table
(``configuration_table()``) all read the declarations below.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import Field, dataclass, field, fields
from functools import cache, lru_cache
from pathlib import Path
from typing import Any, get_type_hints

import duckdb

OFFSET_RESETS = ("earliest", "latest")
JOIN_MODES = ("default", "ksql")
SOURCES = ("files", "kafka")
CATALOG_KINDS = ("sqlite:", "postgres:")
MAX_SHARDS = 1024
# The rules of our own that SYSMON_SIGMA_RULES points at unless set.
DEFAULT_SIGMA_RULES = Path(__file__).resolve().parents[1] / "sigma_rules"


class SettingsError(ValueError):
    """A setting has a value the pipeline cannot use; the message names the variable."""


# Upper bounds, so that a value no step can use stops the run before it starts, never mid-batch.
# The grace period becomes a DuckDB INTERVAL: ten years (for it and the freshness limit) is beyond any useful
# value and far inside what an INTERVAL holds.
MAX_MINUTES = 10 * 365 * 24 * 60
# A line is held in memory (and in one DuckDB string) whole; a Sysmon event is a few KiB.
MAX_LINE_BYTES = 1024**3
# Each generation of ancestors is one more round of the ancestry's recursive queries over the process table, and
# real process trees are a few generations deep: 64 is far beyond any useful chain.
MAX_ANCESTRY_DEPTH = 64
MAX_PARTITION = 2**31 - 1  # a Kafka partition number is an INT32

# A value's problem, worded to follow "SYSMON_X=value: " ("expected ..."), or None when the value is usable.
Check = Callable[[Any], str | None]


def _whole(low: int, high: int) -> Check:
    return lambda value: None if low <= value <= high else f"expected a whole number from {low} to {high}"


def _one_of(choices: tuple[str, ...]) -> Check:
    return lambda value: None if value in choices else f"expected one of {choices}"


def _share(value: float) -> str | None:
    return None if math.isfinite(value) and 0 <= value <= 1 else "expected a number from 0 to 1"


MEMORY_AMOUNT = "a number and a unit: KB, MB, GB, TB (powers of 1000) or KiB, MiB, GiB, TiB (powers of 1024), e.g. 4GB"


@lru_cache(maxsize=8)
def _memory_limit(value: str | None) -> str | None:
    """What is wrong with a memory limit, tried on a throwaway in-memory connection (None: unset or usable). DuckDB's
    own words are not passed on: for a value without a number they are cut short ("(e.g. SET memory_limit=1GB")."""
    if value is None:
        return None
    try:
        with duckdb.connect(":memory:", config={"memory_limit": value}) as con:
            # reading the setting back allocates: a limit that overflowed to 0 bytes fails here, not mid-batch
            con.execute("SELECT current_setting('memory_limit')").fetchall()
    except duckdb.OutOfMemoryException:
        return f"no query runs under it (too small, or so large that it overflows); expected {MEMORY_AMOUNT}"
    except duckdb.Error:
        return f"expected {MEMORY_AMOUNT}"
    return None


def _rules_folder(value: Path) -> str | None:
    return None if value.is_dir() else "expected a folder of Sigma rules (*.yml and *.yaml, read recursively)"


def _utf8(value: str | Path | None) -> str | None:
    # Python reads a variable's bytes that are not UTF-8 as lone surrogates, which DuckDB's API cannot take
    try:
        str(value).encode("utf-8")
    except UnicodeEncodeError:
        return "a path DuckDB can open is UTF-8 text, and this one holds bytes that are not"
    return None


def _catalog(value: str | None) -> str | None:
    # unset means the SQLite default, always usable
    if value is not None and not value.startswith(CATALOG_KINDS):
        return "expected sqlite:PATH or postgres:CONNECTION"
    return _utf8(value)


def _data_path(value: str | None) -> str | None:
    if problem := _utf8(value):
        return problem
    if value and value.lower().startswith("s3:") and not value.startswith("s3://"):
        return "expected s3://BUCKET/PATH (DuckDB writes any other spelling to a local folder of that name)"
    # without a bucket, DuckDB took the lake's first schema name for one, at the first file a batch wrote
    bucket = value[len("s3://") :].split("/", 1)[0] if value and value.lower().startswith("s3://") else "-"
    return None if bucket else "expected s3://BUCKET/PATH: no bucket named"


def _client_pairs(pairs: tuple[tuple[str, str], ...]) -> str | None:
    # the resource carries them as the variable's text (so that Dagster keeps the variable's name, not a password),
    # which cannot hold these; the message names the key only (a value may be a password)
    for key, value in pairs:
        if "," in key + value or "=" in key or not key.strip() or key != key.strip() or value != value.strip():
            return (
                f"the pair of key {key!r}: expected key=value pairs whose key holds no = and neither holds a comma "
                "or starts or ends with a space"
            )
    return None


def setting(
    default: Any,
    env: str,
    doc: str,
    *,
    shown: str | None = None,
    check: Check | None = None,
    choices: tuple[str, ...] | None = None,
    secret: bool = False,
) -> Any:
    """A :class:`Settings` field with its variable, its description (README and the Dagster UI), how the docs
    show its default (``shown``, when not the default itself) and its check. A setting with ``choices`` is read
    case-insensitively and must be one of them; a ``secret`` one (it may hold a password) is not shown in errors."""
    if choices:
        check = _one_of(choices)
    metadata = {"env": env, "doc": doc, "shown": shown, "check": check, "choices": choices, "secret": secret}
    return field(default=default, metadata=metadata, repr=not secret)


def _kafka(doc: str) -> str:
    return f"{doc} ([docs/kafka.md](docs/kafka.md))"


@dataclass(frozen=True)
class Settings:
    """Everything one micro-batch needs to know about where data is and how to join it."""

    landing_dir: Path = setting(
        Path("data/landing"),
        "SYSMON_LANDING_DIR",
        "folder Winlogbeat's file output writes into: `*.json`, `*.ndjson` (optionally `.gz`), Winlogbeat's own "
        "`winlogbeat`, `winlogbeat.1`, ...; `*.evtx` files too",
    )
    data_dir: Path = setting(
        Path("data"),
        "SYSMON_DATA_DIR",
        "where the embedded default keeps the lake (catalog and files), and the pipeline's DuckDB spills (`spill/`)",
        check=_utf8,
    )
    lake_catalog: str | None = setting(
        None,
        "SYSMON_LAKE_CATALOG",
        "DuckLake catalog: `sqlite:PATH` or `postgres:CONNECTION` ([docs/storage.md](docs/storage.md))",
        shown="`sqlite:$SYSMON_DATA_DIR/lake.sqlite`",
        check=_catalog,
        secret=True,
    )
    lake_data_path: str | None = setting(
        None,
        "SYSMON_LAKE_DATA_PATH",
        "where the lake's Parquet files go, `s3://...` included (with the standard `AWS_*` variables)",
        shown="`$SYSMON_DATA_DIR/lake_files/`",
        check=_data_path,
    )
    offset_reset: str = setting(
        "earliest",
        "SYSMON_OFFSET_RESET",
        "as KSQL's `auto.offset.reset`: `earliest`: the first batch reads everything landed (with Kafka: in each "
        "partition); `latest`: it starts from what lands afterwards",
        choices=OFFSET_RESETS,
    )
    landing_max_bytes: int = setting(
        0,
        "SYSMON_LANDING_MAX_BYTES",
        "about how many bytes of landed lines one batch reads, shared among the files (a target, not a cap); the "
        "rest waits for the next batch ([docs/inputs.md](docs/inputs.md))",
        shown="`0` (no limit)",
        check=lambda count: None if count >= 0 else "expected 0 (no limit) or more",
    )
    join_mode: str = setting(
        "default",
        "SYSMON_JOIN_MODE",
        "`default` or `ksql` ([docs/join-semantics.md](docs/join-semantics.md))",
        choices=JOIN_MODES,
    )
    join_grace_minutes: int = setting(
        15,
        "SYSMON_JOIN_GRACE_MINUTES",
        f"how long (batch time) a connection waits for its process create; 0 to {MAX_MINUTES} (ten years)",
        check=_whole(0, MAX_MINUTES),
    )
    max_line_bytes: int = setting(
        1024 * 1024,
        "SYSMON_MAX_LINE_BYTES",
        f"longer lines are rejected without parsing; 1 to {MAX_LINE_BYTES} (1 GiB: a line is held in memory whole)",
        check=_whole(1, MAX_LINE_BYTES),
    )
    join_coverage_warn: float = setting(
        0.25,
        "SYSMON_JOIN_COVERAGE_WARN",
        "the `join_coverage` check warns below this share of enriched connections; 0 to 1",
        check=_share,
    )
    ancestry_depth: int = setting(
        8,
        "SYSMON_ANCESTRY_DEPTH",
        "how many generations of ancestors `sysmon_process_ancestry` follows per process "
        f"([docs/hunting.md](docs/hunting.md)); 1 to {MAX_ANCESTRY_DEPTH}",
        check=_whole(1, MAX_ANCESTRY_DEPTH),
    )
    freshness_minutes: int = setting(
        60,
        "SYSMON_FRESHNESS_MINUTES",
        f"the `landing_freshness` check warns when nothing landed for this long; 1 to {MAX_MINUTES}",
        check=_whole(1, MAX_MINUTES),
    )
    memory_limit: str | None = setting(
        None,
        "SYSMON_DUCKDB_MEMORY_LIMIT",
        "DuckDB `memory_limit`, e.g. `2GB`; DuckDB spills to disk beyond it; a value DuckDB does not take is "
        "refused before the run starts; the ingest reads chunks of an eighth of it, 64 to 128 MiB, each on the threads "
        "it holds for the chunk's lines ([docs/storage.md](docs/storage.md#memory-and-spilling))",
        shown="DuckDB's default (80% of RAM)",
        check=_memory_limit,
    )
    snapshot_retention_days: float = setting(
        7.0,
        "SYSMON_SNAPSHOT_RETENTION_DAYS",
        "maintenance expires the batches' snapshots older than this (time travel to a batch reaches this far back); "
        "the snapshots between two batches go after an hour (with shards, once no running batch may need them)",
        check=lambda days: None if 0 < days < 36500 else "expected more than 0 days and fewer than 36500",
    )
    event_retention_days: float = setting(
        0.0,
        "SYSMON_EVENT_RETENTION_DAYS",
        "maintenance drops the stream tables' rows (detections included) whose batch started longer ago than this, "
        "but those a step has still to read",
        shown="`0` (keep)",
        check=lambda days: None if 0 <= days < 36500 else "expected 0 (keep) or more days, fewer than 36500",
    )
    source: str = setting("files", "SYSMON_SOURCE", _kafka("`files` (the landing folder) or `kafka`"), choices=SOURCES)
    kafka_bootstrap: str | None = setting(
        None, "SYSMON_KAFKA_BOOTSTRAP", "bootstrap servers, `host:port[,host:port]`", shown="(required for Kafka)"
    )
    kafka_topic: str = setting("winlogbeat", "SYSMON_KAFKA_TOPIC", "the topic Winlogbeat writes")
    kafka_group: str = setting(
        "sysmon-assets",
        "SYSMON_KAFKA_GROUP",
        "consumer group, one per lake; its Kafka-side offsets are for monitoring and the sensor only",
    )
    kafka_partitions: tuple[int, ...] | None = setting(
        None,
        "SYSMON_KAFKA_PARTITIONS",
        _kafka("partitions this pipeline reads, e.g. `0,1`"),
        shown="all",
    )
    kafka_max_messages: int = setting(
        200_000,
        "SYSMON_KAFKA_MAX_MESSAGES",
        "at most this many messages per partition per batch",
        check=lambda count: None if count >= 1 else "expected 1 or more",
    )
    kafka_max_bytes: int = setting(
        256 * 1024 * 1024,
        "SYSMON_KAFKA_MAX_BYTES",
        "at most this many value bytes per partition per batch (the message that crosses it is the last)",
        check=lambda count: None if count >= 1 else "expected 1 or more",
    )
    kafka_sink: bool = setting(
        False, "SYSMON_KAFKA_SINK", "`1` publishes new `sysmon_join` rows after each batch", shown="off"
    )
    kafka_sink_topic: str = setting("SYSMON_JOIN", "SYSMON_KAFKA_SINK_TOPIC", "the topic the sink publishes to")
    kafka_config: tuple[tuple[str, str], ...] = setting(
        (),
        "SYSMON_KAFKA_CONFIG",
        "extra librdkafka settings for both clients, `key=value` separated by commas "
        "(`security.protocol=SASL_SSL,sasl.mechanism=PLAIN,...`)",
        shown="",
        check=_client_pairs,
        secret=True,
    )
    shards: int = setting(
        1,
        "SYSMON_SHARDS",
        "K pipelines writing one lake at once, each the Dagster partition `shard-i` "
        "([docs/storage.md](docs/storage.md))",
        check=lambda count: None if 1 <= count <= MAX_SHARDS else f"expected 1 to {MAX_SHARDS}",
    )
    sigma_rules: Path = setting(
        DEFAULT_SIGMA_RULES,
        "SYSMON_SIGMA_RULES",
        "folder of Sigma rules (`*.yml` and `*.yaml`, read recursively) that `sigma_detections` runs, e.g. a checkout "
        "of SigmaHQ's `rules/windows` ([docs/hunting.md](docs/hunting.md))",
        shown="`sigma_rules/` (ours)",
        check=_rules_folder,
    )

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
        types = field_types()
        for declared in fields(self):
            if getattr(self, declared.name) == "" and types[declared.name] in (str, str | None):
                object.__setattr__(self, declared.name, declared.default)  # empty: the default, as an empty variable
            check, value = declared.metadata["check"], getattr(self, declared.name)
            problem = check(value) if check else None
            if problem:
                shown = repr(str(value)) if isinstance(value, Path) else repr(value)  # as set: no PosixPath(...)
                named = (
                    declared.metadata["env"] if declared.metadata["secret"] else f"{declared.metadata['env']}={shown}"
                )
                raise SettingsError(f"{named}: {problem}")
        if (self.source == "kafka" or self.kafka_sink) and not self.kafka_bootstrap:
            raise SettingsError("SYSMON_KAFKA_BOOTSTRAP is not set: the Kafka source and sink need host:port")
        self._check_shards()
        self._check_event_retention()

    def _check_shards(self) -> None:
        if self.shards > 1 and self.join_mode == "ksql":
            raise SettingsError("SYSMON_JOIN_MODE=ksql needs one arrival order: it cannot run with SYSMON_SHARDS > 1")
        if self.shards > 1 and self.kafka_sink:
            raise SettingsError("SYSMON_KAFKA_SINK publishes from one pipeline: it cannot run with SYSMON_SHARDS > 1")

    def _check_event_retention(self) -> None:
        """A retention no longer than the grace a connection waits for its process create is refused as a
        mistake: events are kept longer than they may wait (maintenance spares the waiting ones in any case,
        ``dbt_like.unread_rows``)."""
        retention_minutes = self.event_retention_days * 24 * 60
        if self.join_mode == "ksql" and retention_minutes > 0:
            raise SettingsError(
                f"SYSMON_EVENT_RETENTION_DAYS={self.event_retention_days!r} with SYSMON_JOIN_MODE=ksql: that join "
                "reads the process creates of the stream sysmon_process_create, all of whose old rows a retention "
                "drops, so a long-lived process's later connections would join nothing; keep events (0) in this mode"
            )
        if self.join_mode == "default" and 0 < retention_minutes <= self.join_grace_minutes:
            raise SettingsError(
                f"SYSMON_EVENT_RETENTION_DAYS={self.event_retention_days!r} ({retention_minutes:g} minutes) would drop "
                f"connections still waiting for their process create (SYSMON_JOIN_GRACE_MINUTES="
                f"{self.join_grace_minutes}): keep events longer than the grace"
            )

    def kafka_client_config(self) -> dict[str, str]:
        """librdkafka settings shared by consumer and producer: bootstrap plus ``SYSMON_KAFKA_CONFIG``."""
        return {"bootstrap.servers": self.kafka_bootstrap or "", **dict(self.kafka_config)}

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        """Settings from ``SYSMON_*`` variables; unset ones keep their defaults."""
        env = os.environ if environ is None else environ
        types = field_types()
        return cls(
            **{
                declared.name: _read(declared, types[declared.name], env[declared.metadata["env"]])
                for declared in fields(cls)
                if declared.metadata["env"] in env
            }
        )

    @property
    def sigma_cache_dir(self) -> Path:
        """Where converted Sigma rule sets are kept, one file per rule set's content."""
        return self.data_dir / "sigma"

    def variables(self) -> dict[str, object]:
        """The Jinja ``var()`` values the SQL models are rendered with. The Sigma rules are converted here, once
        per rule set's content (then read from the cache)."""
        from sysmon_assets.hunting.sigma import load_rule_set  # pySigma loads only where rules are rendered

        return {
            "join_mode": self.join_mode,
            "join_grace_minutes": self.join_grace_minutes,
            "max_line_bytes": self.max_line_bytes,
            "source": self.source,
            "ancestry_depth": self.ancestry_depth,
            "sigma": load_rule_set(self.sigma_rules, self.sigma_cache_dir).variables(),
        }


@cache
def field_types() -> dict[str, Any]:
    """Each setting's type, resolved (the annotations are strings under ``from __future__ import annotations``)."""
    return get_type_hints(Settings)


@cache
def declaration(name: str) -> Field:
    """Setting ``name``'s field, with its variable, description and check in its metadata."""
    return next(declared for declared in fields(Settings) if declared.name == name)


def read_variable(name: str, text: str) -> Any:
    """The text of setting ``name``'s variable as the setting's value, as :meth:`Settings.from_env` reads it."""
    return _read(declaration(name), field_types()[name], text)


def client_config_text(pairs: tuple[tuple[str, str], ...]) -> str:
    """Extra librdkafka settings written as ``SYSMON_KAFKA_CONFIG`` takes them."""
    return ",".join(f"{key}={value}" for key, value in pairs)


def _read(declared: Field, kind: Any, text: str) -> Any:
    """One variable's text as its setting's value."""
    if declared.metadata["choices"]:
        return text.lower()
    return PARSERS[kind](text, declared.metadata["env"], declared.default)


def _number(text: str, name: str, default: float) -> float:
    return _parsed(text, name, float, "a number")


def _whole_number(text: str, name: str, default: int) -> int:
    return _parsed(text, name, int, "a whole number")


def _parsed(text: str, name: str, kind: type, expected: str) -> float | int:
    try:
        return kind(text)
    except ValueError:
        raise SettingsError(f"{name}={text!r}: expected {expected}") from None


def _flag(text: str, name: str, default: bool) -> bool:
    text = text.strip().lower()
    if text in ("", "0", "false", "no", "off"):
        return False
    if text in ("1", "true", "yes", "on"):
        return True
    raise SettingsError(f"{name}={text!r}: expected 1/0, true/false, yes/no or on/off")


def _partitions(text: str, name: str, default: None) -> tuple[int, ...] | None:
    """``"0,2"`` -> ``(0, 2)``; empty means every partition of the topic."""
    if not text.strip():
        return None
    try:
        partitions = tuple(sorted({int(part) for part in text.split(",") if part.strip()}))
    except ValueError:
        raise SettingsError(f"{name}={text!r}: expected partition numbers such as 0,2") from None
    if partitions and not 0 <= partitions[0] <= partitions[-1] <= MAX_PARTITION:
        raise SettingsError(f"{name}={text!r}: a Kafka partition is a number from 0 to {MAX_PARTITION}")
    return partitions


def _client_config(text: str, name: str, default: tuple) -> tuple[tuple[str, str], ...]:
    """Extra librdkafka settings, ``key=value`` pairs separated by commas (``security.protocol=SSL,...``)."""
    pairs = []
    for number, item in enumerate(text.split(","), start=1):
        if not item.strip():
            continue
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            # the item is not shown: it may be part of a password (one holding a comma is split here)
            raise SettingsError(f"{name} item {number} (of the items between commas): expected key=value")
        pairs.append((key.strip(), value.strip()))
    return tuple(pairs)


# How a variable's text becomes a value, by the setting's type; an empty variable keeps a path's or a name's
# default, as if unset.
PARSERS: dict[Any, Callable[[str, str, Any], Any]] = {
    Path: lambda text, name, default: Path(text) if text else default,
    str: lambda text, name, default: text or default,
    str | None: lambda text, name, default: text or default,
    int: _whole_number,
    float: _number,
    bool: _flag,
    tuple[int, ...] | None: _partitions,
    tuple[tuple[str, str], ...]: _client_config,
}


def configuration_table() -> str:
    """README's configuration table, one row per setting in declaration order."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for declared in fields(Settings):
        meta = declared.metadata
        shown = meta["shown"] if meta["shown"] is not None else f"`{_shown(declared.default)}`"
        rows.append(f"| `{meta['env']}` | {shown} | {meta['doc']} |")
    return "\n".join(rows) + "\n"


def _shown(default: Any) -> str:
    return f"{default:g}" if isinstance(default, float) else str(default)
