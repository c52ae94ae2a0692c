"""One measured run of the benchmark, executed in its own process so its peak memory is its own.

    python bench/runs.py <kind> <landing folder> <duckdb file> [memory limit] [batch time, ISO]

Kinds: ``reference`` (the plain DuckDB script), ``reference_stream`` (the same, keeping the raw stream
table too), ``project`` (one micro-batch in-process, step by
step, then the query database), ``scans`` (the same, recording every statement's rows scanned
from DuckDB's profiler). Prints one JSON object.
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import closing, contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sysmon_assets import pipeline as pipeline_module  # noqa: E402
from sysmon_assets.pipeline import SysmonPipeline  # noqa: E402
from sysmon_assets.settings import Settings  # noqa: E402

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
COMPACT_EVERY_VARIABLE = "BENCH_COMPACT_EVERY_BATCHES"
INTEGERS = {"ProcessId", "TerminalSessionId", "ParentProcessId", "SourcePort", "DestinationPort"}


def reference_sql(files: list[Path], keep_stream: bool = False) -> str:
    """The recipe as one plain DuckDB script (no offsets, no metadata, no rejects); ``keep_stream``: it also
    keeps the raw stream as a table (as target 5 asks) and flattens from that table, not from the files."""
    struct = ", ".join(f'"{f}" {"INTEGER" if f in INTEGERS else "VARCHAR"}' for f in EVENT_DATA)
    fields = (
        ["source_name", "type", "task", "log_name", "computer_name"]
        if keep_stream
        else ["source_name", "log_name", "computer_name"]
    )
    columns = (
        "{"
        + "".join(f"'{field}': 'VARCHAR', " for field in fields)
        + ("'record_number': 'BIGINT', " if keep_stream else "")
        + f"'event_id': 'INTEGER', 'event_data': 'STRUCT({struct})'}}"
    )
    paths = ", ".join(f"'{p}'" for p in files)
    events = f"read_ndjson([{paths}], columns={columns})"
    stream = ""
    if keep_stream:
        stream, events = f"CREATE TABLE winlogbeat_stream AS SELECT * FROM {events};", "winlogbeat_stream"
    return f"""
    {stream}
    CREATE TABLE rekey AS
      SELECT try_strptime(event_data.UtcTime, '%Y-%m-%d %H:%M:%S.%g') AS event_date_creation,
             upper(trim(event_data.ProcessGuid)) AS process_guid, event_data.*, event_id, source_name, log_name
      FROM {events}
      WHERE source_name = 'Microsoft-Windows-Sysmon';
    CREATE TABLE process_create AS SELECT * FROM rekey WHERE event_id = 1;
    CREATE TABLE process_create_table AS SELECT * FROM process_create WHERE process_guid IS NOT NULL
      QUALIFY row_number() OVER (PARTITION BY process_guid) = 1;
    CREATE TABLE network_connect AS SELECT * FROM rekey WHERE event_id = 3;
    CREATE TABLE joined AS SELECT n.*, p.CommandLine AS process_command_line, p.Hashes AS hashes,
      p.ParentImage AS parent_process_path, p.ParentCommandLine AS parent_process_command_line
      FROM network_connect n JOIN process_create_table p ON n.process_guid = p.process_guid;
    """


def run_reference(landing: Path, db: Path, memory_limit: str | None, keep_stream: bool = False) -> dict[str, Any]:
    """Seconds of the plain script over every NDJSON file in ``landing``."""
    start = time.perf_counter()
    with duckdb.connect(str(db), config={"memory_limit": memory_limit} if memory_limit else {}) as con:
        con.execute(reference_sql(sorted(landing.glob("*.ndjson")), keep_stream))
    return {"seconds": time.perf_counter() - start}


class _Profiled:
    """A connection that records each statement's rows scanned and time (DuckDB's profiler)."""

    def __init__(self, con: duckdb.DuckDBPyConnection, log: list[dict[str, Any]]) -> None:
        self._con, self._log = con, log

    def execute(self, sql: str, params: list | None = None) -> duckdb.DuckDBPyConnection:
        result = self._con.execute(sql, params or [])
        query = json.loads(self._con.get_profiling_information(format="json")).get("query", {})
        self._log.append(
            {
                "rows_scanned": query.get("total_rows_scanned", 0),
                "seconds": query.get("total_time", 0.0),
                "sql": " ".join(sql.split())[:140],
            }
        )
        return result

    def __getattr__(self, name: str) -> Any:
        return getattr(self._con, name)


def run_project(
    landing: Path, db: Path, memory_limit: str | None, profile: bool = False, batch_time: datetime | None = None
) -> dict[str, Any]:
    """Seconds per recipe step and for the query database, for one micro-batch."""
    settings = Settings(landing_dir=landing, duckdb_path=db, memory_limit=memory_limit)
    log: list[dict[str, Any]] = []

    @contextmanager
    def profiled() -> Iterator[Any]:
        with closing(duckdb.connect(str(db), config=settings.duckdb_config())) as con:
            con.execute("SET enable_profiling = 'no_output'")
            yield _Profiled(con, log)

    pipeline = SysmonPipeline(settings, connect=profiled if profile else None)
    steps, peaks = {}, {}
    run_key = f"bench-{uuid.uuid4()}"
    start = time.perf_counter()
    with pipeline.connect():  # held open for the batch, as the Dagster resource holds it for a run
        for name in pipeline.project.primary_models():
            step_start = time.perf_counter()
            pipeline.run_model(name, run_key, batch_time)
            steps[name] = time.perf_counter() - step_start
            peaks[name] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
        publish_start = time.perf_counter()
        pipeline.publish(run_key, batch_time)
    end = time.perf_counter()  # with closing the file, as the run's end closes it
    result = {"seconds": publish_start - start, "steps": steps, "publish": end - publish_start, "peak_gb_after": peaks}
    if profile:
        result["statements"] = log
    return result


def main() -> None:
    """Run one kind and print its JSON result."""
    kind, landing, db = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    memory_limit = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] else None
    batch_time = datetime.fromisoformat(sys.argv[5]) if len(sys.argv) > 5 else None
    if os.environ.get(COMPACT_EVERY_VARIABLE):  # the benchmark's comparison of merge policies
        pipeline_module.COMPACT_EVERY_BATCHES = int(os.environ[COMPACT_EVERY_VARIABLE])
    if kind in ("reference", "reference_stream"):
        result = run_reference(landing, db, memory_limit, keep_stream=kind == "reference_stream")
    else:
        result = run_project(landing, db, memory_limit, profile=kind == "scans", batch_time=batch_time)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
