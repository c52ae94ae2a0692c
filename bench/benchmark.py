"""Benchmark: one micro-batch of the project against a plain DuckDB script on the same files.

Generates N seeded events into M files (cached under --workdir), then alternates, for each
repetition, the plain DuckDB reference (read_ndjson with explicit columns -> flatten -> split ->
latest per key -> join, into a fresh DuckDB file) and the project's batch into a fresh file,
and prints medians and their ratio. Also times an empty batch (nothing new landed).

    python bench/benchmark.py --events 1000000 --files 4 --repeat 3
"""

from __future__ import annotations

import argparse
import resource
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import duckdb

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sysmon_assets.pipeline import SysmonPipeline  # noqa: E402
from sysmon_assets.sample import write_sample  # noqa: E402
from sysmon_assets.serving import parquet_folder  # noqa: E402
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
INTEGERS = {"ProcessId", "TerminalSessionId", "ParentProcessId", "SourcePort", "DestinationPort"}


def reference_sql(files: list[Path]) -> str:
    """The recipe as one plain DuckDB script (no offsets, no metadata, no rejects)."""
    struct = ", ".join(f'"{f}" {"INTEGER" if f in INTEGERS else "VARCHAR"}' for f in EVENT_DATA)
    columns = (
        "{'source_name': 'VARCHAR', 'log_name': 'VARCHAR', 'computer_name': 'VARCHAR', "
        f"'event_id': 'INTEGER', 'event_data': 'STRUCT({struct})'}}"
    )
    paths = ", ".join(f"'{p}'" for p in files)
    return f"""
    CREATE TABLE rekey AS
      SELECT try_strptime(event_data.UtcTime, '%Y-%m-%d %H:%M:%S.%g') AS event_date_creation,
             upper(trim(event_data.ProcessGuid)) AS process_guid, event_data.*, event_id, source_name, log_name
      FROM read_ndjson([{paths}], columns={columns})
      WHERE source_name = 'Microsoft-Windows-Sysmon';
    CREATE TABLE process_create AS SELECT * FROM rekey WHERE event_id = 1;
    CREATE TABLE process_create_table AS SELECT * FROM process_create WHERE process_guid IS NOT NULL
      QUALIFY row_number() OVER (PARTITION BY process_guid) = 1;
    CREATE TABLE network_connect AS SELECT * FROM rekey WHERE event_id = 3;
    CREATE TABLE joined AS SELECT n.*, p.CommandLine AS process_command_line, p.Hashes AS hashes,
      p.ParentImage AS parent_process_path, p.ParentCommandLine AS parent_process_command_line
      FROM network_connect n JOIN process_create_table p ON n.process_guid = p.process_guid;
    """


def run_reference(files: list[Path], db: Path) -> float:
    db.unlink(missing_ok=True)
    start = time.perf_counter()
    with duckdb.connect(str(db)) as con:
        con.execute(reference_sql(files))
    return time.perf_counter() - start


def fresh(db: Path) -> Settings:
    """Settings for a brand-new DuckDB file (and query database) at ``db``."""
    settings = Settings(landing_dir=Path(), duckdb_path=db)
    db.unlink(missing_ok=True)
    settings.query_db_path.unlink(missing_ok=True)
    shutil.rmtree(parquet_folder(settings.query_db_path), ignore_errors=True)
    return settings


def run_project(landing: Path, db: Path) -> tuple[float, float, int]:
    """(seconds for the six recipe steps, seconds to publish the query database, rows joined)."""
    fresh(db)
    pipeline = SysmonPipeline(Settings(landing_dir=landing, duckdb_path=db))
    start = time.perf_counter()
    results = {name: pipeline.run_model(name, "bench") for name in pipeline.project.primary_models()}
    steps = time.perf_counter() - start
    pipeline.publish("bench")
    return steps, time.perf_counter() - start - steps, results["sysmon_join"][0].rows_written


def run_cli(landing: Path, db: Path) -> float:
    fresh(db)
    env = {"SYSMON_LANDING_DIR": str(landing), "SYSMON_DUCKDB_PATH": str(db), "PATH": str(Path(sys.executable).parent)}
    start = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "sysmon_assets.definitions", "--select", "*"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    return time.perf_counter() - start


def main() -> None:
    """Generate data (once), run both sides alternately, print medians and ratios."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    parser.add_argument("--cli", action="store_true", help="also run full batches through the dagster CLI")
    args = parser.parse_args()

    landing = args.workdir / f"landing-{args.events}-{args.files}"
    if not landing.exists():
        tmp = landing.with_suffix(".tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        write_sample(tmp, args.events, files=args.files, seed=1)
        tmp.rename(landing)
    files = sorted(landing.glob("*.ndjson"))
    size = sum(p.stat().st_size for p in files)
    print(f"{args.events} events, {len(files)} files, {size / 1e9:.2f} GB of NDJSON")

    reference, project, publish, cli, joined = [], [], [], [], 0
    for rep in range(args.repeat):
        reference.append(run_reference(files, args.workdir / "reference.duckdb"))
        steps, published, joined = run_project(landing, args.workdir / "project.duckdb")
        project.append(steps)
        publish.append(published)
        if args.cli:
            cli.append(run_cli(landing, args.workdir / "cli.duckdb"))
        print(
            f"rep {rep + 1}: reference {reference[-1]:.2f} s, project steps {project[-1]:.2f} s, "
            f"publish {publish[-1]:.2f} s" + (f", cli {cli[-1]:.2f} s" if cli else "")
        )
    empty = [run_project_again(landing, args.workdir / "project.duckdb") for _ in range(args.repeat)]
    db_bytes = (args.workdir / "project.duckdb").stat().st_size
    parquet_bytes = sum(p.stat().st_size for p in parquet_folder(fresh_settings(args.workdir)).rglob("*.parquet"))
    ref_median, proj_median = statistics.median(reference), statistics.median(project)
    print(f"sysmon_join rows: {joined}")
    print(f"reference median {ref_median:.2f} s ({args.events / ref_median:,.0f} events/s)")
    print(
        f"project   median {proj_median:.2f} s ({args.events / proj_median:,.0f} events/s), "
        f"ratio {proj_median / ref_median:.2f}x (the six recipe steps, in-process)"
    )
    print(f"publish   median {statistics.median(publish):.2f} s (query database: Parquet export and swap)")
    if cli:
        print(f"cli       median {statistics.median(cli):.2f} s (dagster asset materialize, all assets)")
    print(f"empty batch (in-process) median {statistics.median(empty):.3f} s")
    print(
        f"DuckDB file {db_bytes / 1e6:.0f} MB, {db_bytes / args.events:.0f} bytes per event; "
        f"query database Parquet {parquet_bytes / 1e6:.0f} MB, {parquet_bytes / args.events:.0f} bytes per event"
    )
    print(f"peak RSS of this process {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")


def fresh_settings(workdir: Path) -> Path:
    """The query database path of the project's benchmark file."""
    return Settings(landing_dir=Path(), duckdb_path=workdir / "project.duckdb").query_db_path


def run_project_again(landing: Path, db: Path) -> float:
    """A batch with nothing new landed, on an existing file."""
    pipeline = SysmonPipeline(Settings(landing_dir=landing, duckdb_path=db))
    start = time.perf_counter()
    pipeline.run_batch()
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
