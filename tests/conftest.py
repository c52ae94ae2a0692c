"""Shared helpers: hand-written Winlogbeat 6.x events, landing files, and table snapshots."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

import duckdb
import pytest

from dbt_like import table_columns
from dbt_like.sql import quote_string
from sysmon_assets.micro_batch.shards import file_shard
from sysmon_assets.micro_batch.steps import SysmonPipeline
from sysmon_assets.settings import Settings
from sysmon_assets.sources.landed_files import file_key
from sysmon_assets.storage.lake import open_lake
from tests.recipe import HUNTING_MODELS, RECIPE_MODELS

Wrapper = TypeVar("Wrapper")
SYSMON = "Microsoft-Windows-Sysmon"
SYSMON_CHANNEL = "Microsoft-Windows-Sysmon/Operational"
T0 = datetime(2026, 11, 1, 12, 0, 0)
# One micro-batch the way users run it.
CLI_BATCH = [
    sys.executable,
    "-m",
    "dagster",
    "asset",
    "materialize",
    "-m",
    "sysmon_assets.definitions",
    "--select",
    "*",
]

_record_numbers = iter(range(1, 10**9))


def sysmon_event(
    event_id: int,
    guid: str | None,
    utc_time: str = "2026-11-01 10:00:00.123",
    *,
    computer: str = "HOST1.corp",
    record: int | str | None = None,
    provider: str = SYSMON,
    **event_data: Any,
) -> dict[str, Any]:
    """A Winlogbeat 6.x event as the recipe's topic carries it (integers shipped as strings)."""
    data: dict[str, Any] = {"UtcTime": utc_time, "ProcessId": "4242", "Image": r"C:\Windows\System32\cmd.exe"}
    if guid is not None:
        data["ProcessGuid"] = guid
    data.update(event_data)
    return {
        "@timestamp": "2026-11-01T10:00:01.000Z",
        "source_name": provider,
        "type": "wineventlog",
        "task": "Process Create (rule: ProcessCreate)" if event_id == 1 else "Network connection detected",
        "log_name": SYSMON_CHANNEL if provider == SYSMON else "System",
        "computer_name": computer,
        "event_id": event_id,
        "record_number": str(record if record is not None else next(_record_numbers)),
        "event_data": data,
    }


def process_create(guid: str | None, command_line: str = "cmd.exe /c whoami", **kwargs: Any) -> dict[str, Any]:
    """A Sysmon ProcessCreate (event 1) with the fields the join reads."""
    fields = {
        "CommandLine": command_line,
        "Hashes": "SHA1=00",
        "ParentImage": r"C:\Windows\explorer.exe",
        "ParentCommandLine": "explorer.exe",
        "LogonGuid": "{L}",
        "LogonId": "0x3e7",
        "TerminalSessionId": "1",
        "CurrentDirectory": "C:\\",
        "IntegrityLevel": "High",
        "ParentProcessGuid": "{P}",
        "ParentProcessId": "100",
        "User": r"CORP\alice",
        "Description": "Windows Command Processor",
        "Product": "Windows",
        "Company": "MS",
        "FileVersion": "10.0",
    }
    fields.update(kwargs.pop("event_data", {}))
    return sysmon_event(1, guid, **kwargs, **fields)


def network_connect(guid: str | None, dst_ip: str = "10.0.0.1", **kwargs: Any) -> dict[str, Any]:
    """A Sysmon NetworkConnect (event 3) with the fields the join reads."""
    fields = {
        "User": r"CORP\alice",
        "Protocol": "tcp",
        "Initiated": "true",
        "SourceIsIpv6": "false",
        "SourceIp": "10.0.0.9",
        "SourceHostname": "HOST1.corp",
        "SourcePort": "50000",
        "SourcePortName": "",
        "DestinationIsIpv6": "false",
        "DestinationIp": dst_ip,
        "DestinationHostname": "",
        "DestinationPort": "443",
        "DestinationPortName": "https",
    }
    fields.update(kwargs.pop("event_data", {}))
    return sysmon_event(3, guid, **kwargs, **fields)


def python_prints(script: str) -> list[str]:
    """The words ``script`` prints, run by this Python in a new process (whose imports start from none)."""
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True).stdout.split()


def land(path: Path, events: Iterable[dict[str, Any] | str], mode: str = "a") -> None:
    """Append events (dicts as JSON, strings as raw lines) to a landing file, one per line."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open(mode, encoding="utf-8", newline="\n") as handle:
        for event in events:
            handle.write((event if isinstance(event, str) else json.dumps(event)) + "\n")


def free_port() -> int:
    """A TCP port on loopback that nothing listens on now (for a server a test starts)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def lake_rows(settings: Settings, sql: str, params: list | None = None) -> list[tuple]:
    """Rows of a query on the lake's newest snapshot (a read-only connection of its own)."""
    with open_lake(settings, read_only=True) as con:
        return con.execute(sql, params or []).fetchall()


# Reads the lake in a process of its own (argv: data dir, catalog, data path, SQL) and prints the rows as JSON.
READ_IN_ANOTHER_PROCESS = """
import json, sys
from pathlib import Path
from sysmon_assets.storage.lake import open_lake
from sysmon_assets.settings import Settings
settings = Settings(data_dir=Path(sys.argv[1]), lake_catalog=sys.argv[2], lake_data_path=sys.argv[3])
with open_lake(settings, read_only=True) as con:
    print(json.dumps(con.execute(sys.argv[4]).fetchall(), default=str))
"""


def lake_rows_in_another_process(settings: Settings, sql: str) -> list[list]:
    """Rows of a query on the lake, read by another Python process (lists: they came through JSON)."""
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            READ_IN_ANOTHER_PROCESS,
            str(settings.data_dir),
            settings.catalog,
            settings.data_path,
            sql,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


class PlanRecorder:
    """A connection wrapper that records DuckDB's physical plan (EXPLAIN as JSON) of each statement starting with
    ``prefix``, then runs the statement."""

    def __init__(self, con: duckdb.DuckDBPyConnection, prefix: str) -> None:
        self.con, self.prefix, self.plans = con, prefix, []

    def execute(self, sql: str, params: list | None = None) -> duckdb.DuckDBPyConnection:
        if sql.startswith(self.prefix):
            explained = self.con.execute(f"EXPLAIN (FORMAT json) {sql}", params or []).fetchall()
            self.plans.append(json.loads("".join(row[1] for row in explained)))
        return self.con.execute(sql, params or [])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


class RecordingConnection:
    """A connection wrapper that records each statement's SQL text in ``statements``, then runs it."""

    def __init__(self, con: duckdb.DuckDBPyConnection, statements: list[str]) -> None:
        self.con, self.statements = con, statements

    def execute(self, sql: str, params: list | None = None) -> duckdb.DuckDBPyConnection:
        self.statements.append(sql)
        return self.con.execute(sql, params or [])

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def plan_nodes(plan: dict | list, name: str) -> Iterator[dict]:
    """The operators called ``name`` (FILTER, DUCKLAKE_SCAN, ...) of a plan recorded by :class:`PlanRecorder`."""
    for node in plan if isinstance(plan, list) else [plan]:
        if node.get("name", "").strip() == name:
            yield node
        yield from plan_nodes(node.get("children", []), name)


def profile_to(con: duckdb.DuckDBPyConnection, output: Path) -> None:
    """Have DuckDB's profiler write each statement's profile of ``con`` to ``output``, as JSON."""
    con.execute("SET enable_profiling = 'json'")
    con.execute(f"SET profiling_output = {quote_string(str(output))}")


def profile_operators(operator: dict) -> Iterator[dict]:
    """Every operator of a JSON profile written by DuckDB's profiler (see :func:`profile_to`), depth first."""
    yield operator
    for child in operator.get("children", []):
        yield from profile_operators(child)


def wrap_connections(pipeline: SysmonPipeline, wrap: Callable[[duckdb.DuckDBPyConnection], Wrapper]) -> list[Wrapper]:
    """Hand every connection ``pipeline`` opens from now on through ``wrap`` (a recording or profiling wrapper, or
    ``in_time_zone``); the returned list fills with the wrappers as the connections open."""
    wrappers: list[Wrapper] = []
    connect = pipeline.connect

    @contextmanager
    def wrapped() -> Iterator[Wrapper]:
        with connect() as con:
            wrappers.append(wrap(con))
            yield wrappers[-1]

    pipeline.connect = wrapped
    return wrappers


def in_time_zone(zone: str) -> Callable[[duckdb.DuckDBPyConnection], duckdb.DuckDBPyConnection]:
    """A ``wrap_connections`` wrapper giving each connection the session time zone ``zone``, as DuckDB takes it
    from a host set to that zone."""

    def wrap(con: duckdb.DuckDBPyConnection) -> duckdb.DuckDBPyConnection:
        con.execute(f"SET TimeZone = {quote_string(zone)}")
        return con

    return wrap


class Lake:
    """A landing folder plus a lake (SQLite catalog, local files) under ``tmp_path`` with a pipeline over them."""

    def __init__(self, root: Path, **settings: Any) -> None:
        self.landing = root / "landing"
        self.landing.mkdir(parents=True, exist_ok=True)
        self.data = root / "data"
        self.settings = Settings(landing_dir=self.landing, data_dir=self.data, **settings)
        self.pipeline = SysmonPipeline(self.settings)

    def land(self, events: Iterable[dict[str, Any] | str], name: str = "winlogbeat.ndjson") -> Path:
        """Append events to a file of the landing folder."""
        path = self.landing / name
        land(path, events)
        return path

    def wrap_connections(self, wrap: Callable[[duckdb.DuckDBPyConnection], Wrapper]) -> list[Wrapper]:
        """Hand every connection the pipeline opens from now on through ``wrap`` (see ``wrap_connections``)."""
        return wrap_connections(self.pipeline, wrap)

    def batch(self, at: datetime = T0) -> dict:
        """Run one micro-batch with its clock at ``at``."""
        return self.pipeline.run_batch(batch_time=at)

    def rows(self, sql: str, params: list | None = None) -> list[tuple]:
        """Rows of a query on the lake's newest snapshot (read-only connection)."""
        return lake_rows(self.settings, sql, params)

    def count(self, table: str) -> int:
        """Row count of a table."""
        return self.rows(f"SELECT count(*) FROM {table}")[0][0]


# Columns written as the step saw other tables, so they depend on how events were cut into batches: a Sigma hit of a
# rule that reads only a connection's own fields carries the process context known in the connection's batch, NULL
# when the create came in a later one (docs/hunting.md).
AS_THE_STEP_SAW = {
    "sigma_detections": {
        "process_command_line",
        "parent_process_path",
        "parent_process_command_line",
        "parent_process_guid",
    }
}


def snapshot(settings: Settings, tables: Iterable[str] = RECIPE_MODELS + HUNTING_MODELS) -> dict[str, list[tuple]]:
    """Every table's (and view's) columns but the ``_`` metadata (and those of ``AS_THE_STEP_SAW``), as sorted
    rows: equal means same content."""
    with open_lake(settings, read_only=True) as con:
        result = {}
        for table in tables:
            left_out = AS_THE_STEP_SAW.get(table, set())
            columns = [c for c, _ in table_columns(con, table) if not c.startswith("_") and c not in left_out]
            rows = con.execute(f"SELECT {', '.join(columns)} FROM {table}").fetchall()
            result[table] = sorted(rows, key=repr)
        return result


@pytest.fixture
def lake(tmp_path: Path) -> Lake:
    """A fresh landing folder and lake."""
    return Lake(tmp_path)


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A file system of 2 MiB of its own (tmpfs), to fill up."""
    mount, umount = shutil.which("mount"), shutil.which("umount")
    if os.geteuid() != 0 or mount is None or umount is None:
        pytest.skip("mounting a small file system needs root, mount and umount")
    disk = tmp_path / "small-disk"
    disk.mkdir()
    subprocess.run([mount, "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(disk)], check=True)
    yield disk
    subprocess.run([umount, "--lazy", str(disk)], check=True)


@pytest.fixture(scope="session")
def kafka_broker(tmp_path_factory: pytest.TempPathFactory):
    """A real tansu broker on loopback for the whole test session."""
    from tests.kafka_broker import broker_fixture

    yield from broker_fixture(tmp_path_factory)


@pytest.fixture(scope="session")
def postgres():
    """A real PostgreSQL server (pgserver) for the whole test session: DuckLake catalogs."""
    from tests.lake_servers import postgres_fixture

    yield from postgres_fixture()


@pytest.fixture(scope="session")
def s3():
    """A real S3-compatible server (moto) on loopback for the whole test session: lake data files."""
    from tests.lake_servers import s3_fixture

    yield from s3_fixture()


def land_in_shard(lake: Lake, shard: int, event: dict) -> None:
    """Land ``event`` in a new file of ``lake``'s landing folder that its shard ``shard`` reads."""
    for number in range(100):
        path = lake.landing / f"file-{number}.ndjson"
        if not path.exists() and not path.with_suffix(".other-shard").exists():
            lake.land([event], name=path.name)
            if file_shard(file_key(path), lake.settings.shards) == shard:
                return
            path.rename(path.with_suffix(".other-shard"))  # not a landed name; its inode stays taken
    raise AssertionError("no file fell to the shard")
