"""One measured run of the benchmark, executed in its own process so its peak memory is its own.

    python bench/runs.py <kind> <landing folder> <data folder> [memory limit] [batch time, ISO]

The lake is the project's: ``Settings(landing_dir=<landing folder>, data_dir=<data folder>)``, so a SQLite
catalog ``<data folder>/lake.sqlite`` and Parquet files under ``<data folder>/lake_files/``, unless
``SYSMON_LAKE_CATALOG`` names another catalog (the benchmark's PostgreSQL runs). Kinds:

- ``reference``: the floor, a plain DuckDB script of the recipe that reads every NDJSON file of the landing
  folder with ``read_ndjson(columns=...)`` and keeps all six recipe tables (the raw stream included) in the
  lake, opened as the project opens it (``open_lake``: same extensions, same catalog and files);
- ``project``: one micro-batch in-process, step by step (``SysmonPipeline.run_model``), on one held lake
  connection as a Dagster run holds it;
- ``scans``: the same, recording every statement's rows scanned and time (DuckDB's profiler);
- ``open``: opening the lake as a batch opens it (``LakeConnections``) and a first query of it, nothing else: an
  idle batch's fixed cost; with the seconds of loading each extension alone (DuckDB checks an extension's
  signature on every load) in another in-memory DuckDB of the same process;
- ``maintain``: one maintenance run (``sysmon_assets.storage.maintenance.maintain``, snapshots kept 7 days, no
  event retention), with data files per table before and after;
- ``idle-N``: N one-minute idle batches in-process (the first a minute after the batch time), a maintenance run
  after every tenth (at its batch's clock, so no snapshot is old enough to expire: the lake keeps every one), and
  at checkpoints the snapshots kept, the median of the last 50 idle batches and one ``sysmon_assets.connect()``;
- ``reader``: until SIGTERM, a loop of ``sysmon_assets.connect()`` + ``SELECT count(*) FROM sysmon_join``
  (timed together) and the same query on a connection held from the start (timed alone); prints ``ready``
  after its first round;
- ``sigma-load``: load the Sigma rule set (``SYSMON_SIGMA_RULES``) as a new process does, from the cache under
  the data folder or converting it, then again in the same process;
- ``sigma-rules``: each converted rule alone over the process creates and connects of the lake (built by a
  ``project`` run), timed, the slowest listed; the CPU seconds of planning the sigma_detections query; and the rules
  as one scan with a CASE per rule vs a UNION ALL of one SELECT per rule.

``SYSMON_SIGMA_RULES`` (the rules the batch runs) and ``SYSMON_LAKE_CATALOG`` are read from the environment.

Prints one JSON object (last line).
"""

from __future__ import annotations

import dataclasses
import json
import os
import resource
import signal
import statistics
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dbt_like import Project  # noqa: E402
from dbt_like.compiler import StepContext, render_step  # noqa: E402
from dbt_like.sql import quote_string, scalar  # noqa: E402
from sysmon_assets import connect  # noqa: E402
from sysmon_assets.hunting import sigma  # noqa: E402
from sysmon_assets.micro_batch.recipe_project import SQL_DIR  # noqa: E402
from sysmon_assets.micro_batch.steps import SysmonPipeline, utc_now  # noqa: E402
from sysmon_assets.settings import Settings  # noqa: E402
from sysmon_assets.storage.lake import LAKE, LakeError, open_lake  # noqa: E402
from sysmon_assets.storage.lake import connection_config as lake_config  # noqa: E402
from sysmon_assets.storage.lake import extensions as lake_extensions  # noqa: E402
from sysmon_assets.storage.lake_connections import LakeConnections  # noqa: E402
from sysmon_assets.storage.maintenance import maintain  # noqa: E402

EVENT_DATA = [
    "UtcTime",
    "ProcessGuid",
    "ProcessId",
    "Image",
    "FileVersion",
    "Description",
    "Product",
    "Company",
    "CommandLine",
    "CurrentDirectory",
    "User",
    "LogonGuid",
    "LogonId",
    "TerminalSessionId",
    "IntegrityLevel",
    "Hashes",
    "ParentProcessGuid",
    "ParentProcessId",
    "ParentImage",
    "ParentCommandLine",
    "Protocol",
    "Initiated",
    "SourceIsIpv6",
    "SourceIp",
    "SourceHostname",
    "SourcePort",
    "SourcePortName",
    "DestinationIsIpv6",
    "DestinationIp",
    "DestinationHostname",
    "DestinationPort",
    "DestinationPortName",
]
INTEGERS = {"ProcessId", "TerminalSessionId", "ParentProcessId", "SourcePort", "DestinationPort"}
READER_QUERY = "SELECT count(*) FROM sysmon_join"


def reference_sql(files: list[Path]) -> str:
    """The recipe as one plain DuckDB script keeping its six tables: the raw stream as ``read_ndjson`` types it
    (the recipe's CREATE STREAM fields), then flatten, split, latest per key and join from that table. No
    offsets, no metadata columns, no rejects, one input layout."""
    struct = ", ".join(f'"{f}" {"INTEGER" if f in INTEGERS else "VARCHAR"}' for f in EVENT_DATA)
    fields = ["source_name", "type", "task", "log_name", "computer_name"]
    columns = (
        "{"
        + "".join(f"'{field}': 'VARCHAR', " for field in fields)
        + f"'record_number': 'BIGINT', 'event_id': 'INTEGER', 'event_data': 'STRUCT({struct})'}}"
    )
    paths = ", ".join(f"'{p}'" for p in files)
    return f"""
    CREATE TABLE winlogbeat_stream AS SELECT * FROM read_ndjson([{paths}], columns={columns});
    CREATE TABLE rekey AS
      SELECT try_strptime(event_data.UtcTime, '%Y-%m-%d %H:%M:%S.%g') AS event_date_creation,
             upper(trim(event_data.ProcessGuid)) AS process_guid, event_data.*, event_id, source_name, log_name
      FROM winlogbeat_stream
      WHERE source_name = 'Microsoft-Windows-Sysmon';
    CREATE TABLE process_create AS SELECT * FROM rekey WHERE event_id = 1;
    CREATE TABLE process_create_table AS SELECT * FROM process_create WHERE process_guid IS NOT NULL
      QUALIFY row_number() OVER (PARTITION BY process_guid) = 1;
    CREATE TABLE network_connect AS SELECT * FROM rekey WHERE event_id = 3;
    CREATE TABLE joined AS SELECT n.*, p.CommandLine AS process_command_line, p.Hashes AS hashes,
      p.ParentImage AS parent_process_path, p.ParentCommandLine AS parent_process_command_line
      FROM network_connect n JOIN process_create_table p ON n.process_guid = p.process_guid;
    """


def run_open(settings: Settings) -> dict[str, Any]:
    """Seconds to open the lake and read one row of the batch table (each run of a batch pays them once), then
    seconds to load each extension the lake needs in a fresh in-memory DuckDB."""
    start = time.perf_counter()
    connections = LakeConnections(settings)
    try:
        with connections() as con:
            con.execute("SELECT count(*) FROM dbt_like.batches").fetchall()
    finally:
        connections.close()
    opened = time.perf_counter() - start
    loads = {}
    with closing(duckdb.connect(config=lake_config(settings))) as con:
        for extension in lake_extensions(settings):
            start = time.perf_counter()
            con.execute(f"LOAD {extension}")
            loads[extension] = time.perf_counter() - start
    return {"seconds": opened, "load_seconds": loads}


def run_reference(settings: Settings) -> dict[str, Any]:
    """Seconds of the plain script over every NDJSON file of the landing folder, opening and closing the lake
    included (as the project's batch includes them)."""
    start = time.perf_counter()
    with open_lake(settings) as con:
        con.execute(reference_sql(sorted(settings.landing_dir.glob("*.ndjson"))))
    return {"seconds": time.perf_counter() - start}


class _Profiled:
    """A connection that records each statement's rows scanned and time (DuckDB's profiler)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, log: list[dict[str, Any]], output: Path) -> None:
        self._con, self._log, self._output = con, log, output
        con.execute(f"SET profiling_output = {quote_string(str(output))}")
        con.execute("SET enable_profiling = 'json'")

    def execute(self, sql: str, params: list | None = None) -> duckdb.DuckDBPyConnection:
        self._output.unlink(missing_ok=True)
        result = self._con.execute(sql, params or [])
        query = json.loads(self._output.read_text()) if self._output.exists() else {}
        self._log.append(
            {
                "rows_scanned": query.get("cumulative_rows_scanned", 0),
                "seconds": query.get("latency", 0.0),
                "sql": " ".join(sql.split())[:140],
            }
        )
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def run_project(
    settings: Settings, profile: bool = False, batch_time: datetime | None = None, shard: int = 0
) -> dict[str, Any]:
    """Seconds per recipe step of one micro-batch (of ``shard``), and in all (opening and closing the lake
    included)."""
    log: list[dict[str, Any]] = []
    connections = LakeConnections(settings)

    @contextmanager
    def profiled() -> Iterator[Any]:
        with connections() as con:
            yield _Profiled(con, log, settings.data_dir.with_name(settings.data_dir.name + ".profile.json"))

    pipeline = SysmonPipeline(settings, connect=profiled if profile else connections, shard=shard)
    steps, cpu_steps, peaks = {}, {}, {}
    run_key = f"bench-{uuid.uuid4()}"
    start = time.perf_counter()
    try:  # the connection is held for the batch, as the Dagster resource holds it for a run
        for name in pipeline.project.primary_models():
            step_start, step_cpu = time.perf_counter(), time.process_time()
            pipeline.run_model(name, run_key, batch_time)
            steps[name] = time.perf_counter() - step_start
            # CPU seconds of all the process's threads: on a busy machine, steadier than the wall clock
            cpu_steps[name] = time.process_time() - step_cpu
            peaks[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    finally:
        connections.close()
    result = {"seconds": time.perf_counter() - start, "steps": steps, "cpu_steps": cpu_steps, "peak_gb_after": peaks}
    if profile:
        result["statements"] = log
    return result


def run_maintain(settings: Settings, now: datetime | None = None) -> dict[str, Any]:
    """One maintenance run over the lake at ``now`` (default the clock): seconds, data files per table before and
    after, files deleted."""
    start = time.perf_counter()
    with open_lake(settings) as con:
        upkeep = maintain(con, now or utc_now(), 7, None)
    return {
        "seconds": time.perf_counter() - start,
        "files_before": upkeep.files_before,
        "files_after": upkeep.files_after,
        "files_deleted": upkeep.files_deleted,
    }


def run_idle(settings: Settings, count: int, first_clock: datetime) -> dict[str, Any]:
    """``count`` idle one-minute batches after ``first_clock``, a maintenance run after every tenth; the lake's
    snapshots, idle batch seconds and ``connect()`` seconds at checkpoints (a tenth of the way each)."""
    idle: list[float] = []
    checkpoints = []
    for index in range(1, count + 1):
        clock = first_clock + timedelta(minutes=index)
        idle.append(run_project(settings, batch_time=clock)["seconds"])
        if index % 10 == 0:
            run_maintain(settings, clock)
        if index % max(count // 10, 1) == 0 or index == count:
            start = time.perf_counter()
            connect(settings).close()
            connected = time.perf_counter() - start
            with open_lake(settings) as con:
                snapshots = scalar(con, f"SELECT count(*) FROM ducklake_snapshots({quote_string(LAKE)})")
            recent = idle[-50:]
            checkpoints.append(
                {"batches": index, "snapshots": snapshots, "idle": statistics.median(recent), "connect": connected}
            )
    return {"checkpoints": checkpoints}


def run_reader(settings: Settings) -> dict[str, Any]:
    """Read the lake as analysts do until SIGTERM: latencies of connect + count, and of the count alone on a
    connection held from the start, the errors, and the distinct counts seen (the batches that became
    visible)."""
    stopping = []
    signal.signal(signal.SIGTERM, lambda *_: stopping.append(True))
    timed = {"connect_and_query": [], "query": []}
    errors: list[str] = []
    counts = set()
    held = connect(settings)
    while not stopping:
        for kind in timed:
            start = time.perf_counter()
            try:
                if kind == "query":
                    held.execute(READER_QUERY).fetchone()
                else:
                    with closing(connect(settings)) as con:
                        counts.add(con.execute(READER_QUERY).fetchone()[0])
            except (duckdb.Error, LakeError) as error:
                errors.append(f"{kind}: {error}"[:300])
                continue
            timed[kind].append(time.perf_counter() - start)
        if len(timed["query"]) == 1:
            print("ready", flush=True)
    held.close()
    return {**timed, "errors": errors, "distinct_counts": len(counts)}


def run_sigma_load(settings: Settings) -> dict[str, Any]:
    """Seconds to load the rule set in a new process (from the cache, or converting it when the cache has no file
    for its content), whether it converted, and seconds to load it again in the same process (what each further
    batch of a long-running process pays)."""
    cached = set(settings.sigma_cache_dir.glob("*.json"))
    start = time.perf_counter()
    rule_set = sigma.load_rule_set(settings.sigma_rules, settings.sigma_cache_dir)
    first = time.perf_counter() - start
    start = time.perf_counter()
    sigma.load_rule_set(settings.sigma_rules, settings.sigma_cache_dir)
    return {
        "seconds": first,
        "converted": set(settings.sigma_cache_dir.glob("*.json")) != cached,
        "again_seconds": time.perf_counter() - start,
        "rules": len(rule_set.rules),
        "failures": len(rule_set.failures),
    }


def _planning_seconds(con: duckdb.DuckDBPyConnection, settings: Settings) -> float:
    """CPU seconds of the sigma_detections step's query over no new events: what planning its rules costs a batch
    whatever its size (the median of three)."""
    project = Project(SQL_DIR, settings.variables())
    model = project.models["sigma_detections"]
    step = StepContext(batch_id=0, batch_time="2026-01-01 00:00:00", upper_bounds=dict.fromkeys(model.refs, 0))
    query = render_step(model, project.configs, project.variables, step)
    seconds = []
    for _ in range(3):
        start = time.process_time()
        con.execute(f"SELECT count(*) FROM ({query})").fetchall()
        seconds.append(time.process_time() - start)
    return sorted(seconds)[1]


def _scan_shapes(con: duckdb.DuckDBPyConnection, rule_set: sigma.RuleSet) -> dict[str, float]:
    """Seconds (wall) of the two shapes the rules' query could take over the events tables: one scan with a CASE per
    rule in a list (the model's), or a UNION ALL of one SELECT per rule (which needs max_expression_depth raised)."""
    con.execute("SET max_expression_depth TO 100000")
    scans, unions = [], []
    for event_id in sigma.EVENT_FIELDS:
        rules = [(index, rule) for index, rule in enumerate(rule_set.rules) if rule.event_id == event_id]
        cases = ", ".join(f"CASE WHEN {rule.condition} THEN {index} END" for index, rule in rules)
        scans.append(f"SELECT unnest(list_filter([{cases}], i -> i IS NOT NULL)) AS i FROM events_{event_id}")
        unions += [f"SELECT {index} AS i FROM events_{event_id} WHERE {rule.condition}" for index, rule in rules]
    seconds = {}
    for shape, query in (("one_scan", " UNION ALL ".join(scans)), ("union_all", " UNION ALL ".join(unions))):
        start = time.perf_counter()
        con.execute(f"SELECT count(*) FROM ({query})").fetchall()
        seconds[shape] = time.perf_counter() - start
    return seconds


def run_sigma_rules(settings: Settings, top: int = 10) -> dict[str, Any]:
    """Each rule's condition alone over the lake's process creates (event 1) and connects (event 3, with their
    process), in the text columns the model gives the rules (sysmon_assets.hunting.sigma_backend.EVENT_FIELDS):
    seconds per rule."""
    rule_set = sigma.load_rule_set(settings.sigma_rules, settings.sigma_cache_dir)
    timed = []
    with open_lake(settings, read_only=True) as con:
        for event_id in sigma.EVENT_FIELDS:
            columns = ", ".join(
                f'CAST({source} AS VARCHAR) AS "{name}", lower(CAST({source} AS VARCHAR)) AS "{lowered}"'
                for name, lowered, source in rule_set.variables()["columns"][event_id]
            )
            join = "LEFT JOIN sysmon_process_create_table AS p USING (process_guid)" if event_id == 3 else ""
            con.execute(
                f"CREATE TEMP TABLE events_{event_id} AS SELECT {columns} FROM winlogbeat_stream_rekey AS e {join} "
                f"WHERE e.event_id = {event_id}"
            )
        for rule in rule_set.rules:
            start = time.perf_counter()
            con.execute(f"SELECT count(*) FROM events_{rule.event_id} WHERE {rule.condition}").fetchall()
            timed.append((time.perf_counter() - start, rule.title))
        events = {event_id: con.execute(f"SELECT count(*) FROM events_{event_id}").fetchone()[0] for event_id in (1, 3)}
        planning = _planning_seconds(con, settings)
        shapes = _scan_shapes(con, rule_set)
    timed.sort(reverse=True)
    return {
        "planning_cpu_seconds": planning,
        "shapes_seconds": shapes,
        "events": events,
        "rules": len(timed),
        "seconds_all_alone": sum(seconds for seconds, _ in timed),
        "slowest": [{"seconds": seconds, "title": title} for seconds, title in timed[:top]],
    }


def main() -> None:
    """Run one kind and print its JSON result."""
    kind, landing, data_dir = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    memory_limit = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
    batch_time = datetime.fromisoformat(sys.argv[5]) if len(sys.argv) > 5 else None
    catalog = os.environ.get("SYSMON_LAKE_CATALOG") or None
    settings = Settings(landing_dir=landing, data_dir=data_dir, lake_catalog=catalog, memory_limit=memory_limit)
    if os.environ.get("SYSMON_SIGMA_RULES"):
        settings = dataclasses.replace(settings, sigma_rules=Path(os.environ["SYSMON_SIGMA_RULES"]))
    if kind == "reference":
        result = run_reference(settings)
    elif kind in ("project", "scans"):
        result = run_project(settings, profile=kind == "scans", batch_time=batch_time)
    elif kind.startswith("shard-"):  # shard-I-of-K: shard I's batch of K shards
        index, _, count = kind.removeprefix("shard-").partition("-of-")
        settings = dataclasses.replace(settings, shards=int(count))
        result = run_project(settings, batch_time=batch_time, shard=int(index))
    elif kind.startswith("idle-"):
        result = run_idle(settings, int(kind.removeprefix("idle-")), batch_time or utc_now())
    elif kind == "open":
        result = run_open(settings)
    elif kind == "maintain":
        result = run_maintain(settings)
    elif kind == "reader":
        result = run_reader(settings)
    elif kind == "sigma-load":
        result = run_sigma_load(settings)
    elif kind == "sigma-rules":
        result = run_sigma_rules(settings)
    else:
        raise SystemExit(f"unknown kind {kind!r}")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
