"""Benchmark: the project's micro-batch into its DuckLake against a plain DuckDB script of the recipe on the same files.

    python bench/benchmark.py --events 1000000 --files 4 --repeat 3
    python bench/benchmark.py --history 5000000 --increment 10000 --steady 100 --memory-limit 2GB --repeat 3
    python bench/benchmark.py --readers 10 --increment 10000 --repeat 3
    python bench/benchmark.py --shards 3 --events 1000000 --files 12 --repeat 3
    python bench/benchmark.py --small-files 2000 --repeat 3
    python bench/benchmark.py --aged 3000 --increment 10000 --repeat 3
    python bench/benchmark.py --sigma ../shared/data/sigma/rules --increment 10000 --backlog 1000000 --repeat 3

Every measured run is its own process (``bench/runs.py`` or the Dagster CLI), so each peak RSS is that
run's own; every lake is the project's (a SQLite catalog plus Parquet files in a data folder) unless said
otherwise. Runs alternate within one invocation, and medians are printed, each beside the floor measured
in the same invocation:

- throughput: the floor is a plain script that reads the NDJSON with ``read_ndjson(columns=...)`` and keeps
  all six recipe tables, the raw stream included, in a fresh lake opened as the project opens it; against it
  the project's batch in-process (per step) and ``dagster asset materialize --select '*'``; the target
  ratio is (CLI batch - CLI empty batch) / floor (at most 1.5, aim 1.25);
- fixed cost: an empty batch through the CLI and in-process, with Python/Dagster start-up apart, and
  Dagster's own floor: the project's asset graph doing nothing (``bench/dagster_floor.py``);
- storage: bytes per event on disk of the whole lake (catalog and Parquet files; aim at most 150), the
  project's and the floor's;
- incremental cost (``--history``): a batch of ``--increment`` new events over a copy of a lake holding
  ``--history`` events vs the same batch over an empty lake (target at most 1.2x), with the slowest
  statements of the batch over the history (DuckDB's profiler); with
  ``--steady K``, K consecutive such batches over a copy of the history, one maintenance run, then the next
  batch over that lake vs over an empty lake; with ``--maintain-every M`` too, a maintenance run after every M of
  the K batches (as a schedule every M minutes runs it), and its seconds;
- readers (``--readers N``): N batches in a row while a reader process loops ``sysmon_assets.connect()`` +
  ``SELECT count(*) FROM sysmon_join``; median and p99 latency of connect + query and of the query alone on a
  held connection, and the errors, with the default SQLite catalog and with PostgreSQL (``pgserver``);
- shards (``--shards K``): K = 1 .. K shard processes over one landing folder started at once on one lake
  (events/s in all on this machine), and each shard alone on a fresh lake (its part of the input only): the
  slowest of those is what one machine per shard would take, catalog contention aside;
- small files (``--small-files N``): N files of 6 events against the same events in one file, in-process
  (target at most 2x), and an idle batch over the N files (target at most 1 s), beside what opening the lake alone
  costs a process (and loading each extension alone);
- aged lake (``--aged N``): N one-minute idle batches after a first batch of ``--increment`` events, a maintenance
  run after every tenth, every snapshot kept (a week of one-minute batches keeps about 10,000: the batches' own),
  with the snapshots kept, an idle batch and ``connect()`` at checkpoints; then the next ``--increment`` events
  over a copy of that lake vs over a young lake (the same first batch only), alternating;
- Sigma (``--sigma RULES``): the seconds a folder of Sigma rules adds to a batch of ``--increment`` events and to
  a first batch over a backlog of ``--backlog`` events (in-process, each against the same batch with an empty
  rules folder, alternating; aims: under 1 s for 10,000 events, under a minute for 1,000,000), per rule, the
  slowest rules alone; and what loading the rule set costs a new process from the cache vs converting it, and a
  further batch of the same process (the conversion is cached by the rules' content).

Generated data and the history lake are cached under ``--workdir`` (default ``bench/out``, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dagster_floor import GRAPH_VARIABLE  # noqa: E402
from bench.runs import READER_QUERY  # noqa: E402
from sysmon_assets.definitions import build_definitions  # noqa: E402
from sysmon_assets.sample.generator import FleetSimulator  # noqa: E402
from sysmon_assets.settings import Settings  # noqa: E402

RUNS = [sys.executable, str(ROOT / "bench" / "runs.py")]
CLI = [sys.executable, "-m", "dagster", "asset", "materialize", "-m", "sysmon_assets.definitions", "--select", "*"]
FLOOR_CLI = [*CLI[:6], "bench.dagster_floor", *CLI[7:]]
START = datetime(2026, 11, 1, 8, 0, 0)
WARM_UP = 1000


def generate(folder: Path, counts: list[int], seed: int = 1, hosts: int = 25, skip: int = 0) -> list[Path]:
    """One seeded fleet's events, the first ``counts[0]`` into file 0, the next ``counts[1]`` into file 1, ...
    (the first ``skip`` files' events are generated but not written)."""
    if folder.exists():
        return sorted(folder.glob("*.ndjson"))
    partial = folder.with_suffix(".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    events = FleetSimulator(seed, hosts, START).events(sum(counts))
    for index, count in enumerate(counts):
        if index < skip:
            for _ in zip(range(count), events, strict=False):
                pass
            continue
        with (partial / f"winlogbeat-{index:03d}.ndjson").open("w", encoding="utf-8", newline="\n") as handle:
            for _, event in zip(range(count), events, strict=False):
                handle.write(json.dumps(event, ensure_ascii=False) + "\n")
    partial.rename(folder)
    return sorted(folder.glob("*.ndjson"))


def landing_with(folder: Path, files: list[Path]) -> Path:
    """A landing folder holding (hard links to) exactly ``files``."""
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for path in files:
        os.link(path, folder / path.name)
    return folder


def measured(command: list[str], env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run ``command``; its wall seconds, peak RSS (GB) and, if it printed JSON last, that result."""
    start = time.perf_counter()
    process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    _, status, usage = os.wait4(process.pid, 0)
    wall = time.perf_counter() - start
    out, err = process.stdout.read(), process.stderr.read()
    if os.waitstatus_to_exitcode(status) != 0:
        raise SystemExit(f"{' '.join(command[:4])} failed:\n{err[-3000:]}")
    lines = out.strip().splitlines()
    result = json.loads(lines[-1]) if lines and lines[-1].startswith("{") else {}
    return {**result, "wall": wall, "rss_gb": usage.ru_maxrss / 1e6}


def fresh(data_dir: Path) -> Path:
    """``data_dir`` emptied: the next run creates a new lake in it."""
    shutil.rmtree(data_dir, ignore_errors=True)
    return data_dir


def copy_of(source: Path, data_dir: Path) -> Path:
    """A copy of the data folder ``source`` (catalog and Parquet files) at ``data_dir``, written through to disk
    (so the batch's first SQLite commit does not wait for the kernel to write back the whole copy).

    DuckLake's catalog records its data path: a copy opens only at the path its original was built at, so
    each lake is built at the path its copies are used at and kept (cached) under another name."""
    shutil.copytree(source, fresh(data_dir))
    os.sync()
    return data_dir


def run(
    kind: str,
    landing: Path,
    data_dir: Path,
    memory_limit: str | None,
    at: datetime | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """One child run of ``bench/runs.py`` (``at``: the batch clock, default now; ``env``: extra variables)."""
    command = [*RUNS, kind, str(landing), str(data_dir), memory_limit or ""]
    return measured(command + ([at.isoformat()] if at else []), {**os.environ, **env} if env else None)


def run_cli(
    landing: Path, data_dir: Path, memory_limit: str | None, dagster_home: Path | None = None
) -> dict[str, Any]:
    """One micro-batch the way users run it: the Dagster CLI, all assets (``dagster_home``: a persistent
    Dagster instance instead of the temporary one the CLI creates without DAGSTER_HOME)."""
    env = {**os.environ, "SYSMON_LANDING_DIR": str(landing), "SYSMON_DATA_DIR": str(data_dir)}
    if dagster_home:
        dagster_home.mkdir(parents=True, exist_ok=True)
        env["DAGSTER_HOME"] = str(dagster_home)
    if memory_limit:
        env["SYSMON_DUCKDB_MEMORY_LIMIT"] = memory_limit
    return measured(CLI, env)


def asset_graph() -> dict[str, dict[str, list[str]]]:
    """The project's asset graph as ``bench/dagster_floor.py`` takes it: each asset's dependencies and checks."""
    graph = build_definitions(Settings(landing_dir=Path(), data_dir=Path("unused"))).resolve_asset_graph()
    return {
        key.to_user_string(): {
            "deps": sorted(parent.to_user_string() for parent in graph.get(key).parent_keys),
            "checks": sorted(check.name for check in graph.get(key).check_keys),
        }
        for key in graph.toposorted_asset_keys
    }


def run_dagster_floor(graph: dict[str, dict[str, list[str]]], dagster_home: Path) -> dict[str, Any]:
    """``graph``'s no-op run through the same CLI and persistent instance: Dagster's own cost for it."""
    dagster_home.mkdir(parents=True, exist_ok=True)
    return measured(FLOOR_CLI, {**os.environ, GRAPH_VARIABLE: json.dumps(graph), "DAGSTER_HOME": str(dagster_home)})


def median(runs: list[dict[str, Any]], key: str) -> float:
    """Median of ``key`` over runs."""
    return statistics.median(r[key] for r in runs)


def step_medians(runs: list[dict[str, Any]]) -> dict[str, float]:
    """Median seconds of each recipe step over runs of the ``project`` kind."""
    return {name: statistics.median(r["steps"][name] for r in runs) for name in runs[0]["steps"]}


def throughput(args: argparse.Namespace) -> None:
    """The floor, the project in-process and through the CLI, alternating; then empty batches."""
    landing = args.workdir / f"landing-{args.events}-{args.files}"
    files = generate(landing, [args.events // args.files + (i < args.events % args.files) for i in range(args.files)])
    size = sum(p.stat().st_size for p in files)
    print(f"## throughput: {args.events:,} events, {len(files)} files, {size / 1e9:.2f} GB of NDJSON")
    reference_lake, project_lake, cli_lake = (args.workdir / name for name in ("reference", "project", "cli"))
    reference, project, cli = [], [], []
    for rep in range(args.repeat):
        reference.append(run("reference", landing, fresh(reference_lake), args.memory_limit))
        project.append(run("project", landing, fresh(project_lake), args.memory_limit))
        cli.append(run_cli(landing, fresh(cli_lake), args.memory_limit))
        print(
            f"rep {rep + 1}: floor {reference[-1]['seconds']:.2f} s, project {project[-1]['seconds']:.2f} s, "
            f"cli {cli[-1]['wall']:.2f} s"
        )
    ref, proj = median(reference, "seconds"), median(project, "seconds")
    print(
        f"FLOOR: plain script keeping the six tables in a DuckLake  {ref:7.2f} s  {args.events / ref:10,.0f} "
        f"events/s  peak RSS {median(reference, 'rss_gb'):.2f} GB"
    )
    print(
        f"project in-process       {proj:7.2f} s  {args.events / proj:10,.0f} events/s  "
        f"peak RSS {median(project, 'rss_gb'):.2f} GB  {proj / ref:.2f}x the floor"
    )
    steps = step_medians(project)
    print("  per step: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in steps.items()))
    peaks = {name: statistics.median(r["peak_gb_after"][name] for r in project) for name in steps}
    print("  peak RSS so far after each step: " + ", ".join(f"{name} {gb:.2f} GB" for name, gb in peaks.items()))
    storage("project's lake", project_lake, args.events, size)
    storage("floor's lake", reference_lake, args.events, size)

    empty_cli = [run_cli(landing, cli_lake, args.memory_limit) for _ in range(args.repeat)]
    home = args.workdir / "dagster-home"
    shutil.rmtree(home, ignore_errors=True)
    run_cli(landing, cli_lake, args.memory_limit, home)  # creates the instance's storage
    floor_home = args.workdir / "dagster-home-floor"
    shutil.rmtree(floor_home, ignore_errors=True)
    graph = asset_graph()
    run_dagster_floor(graph, floor_home)  # creates the instance's storage
    floors, single, empty_home = [], [], []
    for _ in range(args.repeat):  # alternating with the project's empty batch in its own persistent instance
        floors.append(run_dagster_floor(graph, floor_home))
        single.append(run_dagster_floor({}, floor_home))
        empty_home.append(run_cli(landing, cli_lake, args.memory_limit, home))
    empty = [run("project", landing, project_lake, args.memory_limit) for _ in range(args.repeat)]
    imports = [measured([sys.executable, "-c", "import sysmon_assets.definitions"]) for _ in range(args.repeat)]
    bare = [measured([sys.executable, "-c", "pass"]) for _ in range(args.repeat)]
    full, fixed = median(cli, "wall"), median(empty_cli, "wall")
    print(f"dagster CLI batch        {full:7.2f} s  peak RSS {median(cli, 'rss_gb'):.2f} GB")
    print(
        f"dagster CLI empty batch  {fixed:7.2f} s  (python start {median(bare, 'wall'):.2f} s, "
        f"import dagster + definitions {median(imports, 'wall'):.2f} s)"
    )
    print(f"dagster CLI empty batch with a persistent DAGSTER_HOME  {median(empty_home, 'wall'):.2f} s")
    checks = sum(len(shape["checks"]) for shape in graph.values())
    print(
        f"DAGSTER FLOOR, the same CLI and instance: the project's graph ({len(graph)} assets, {checks} checks) doing "
        f"nothing {median(floors, 'wall'):.2f} s; one asset doing nothing {median(single, 'wall'):.2f} s"
    )
    empty_batch = median(empty, "seconds")
    print(
        f"in-process empty batch   {empty_batch:7.3f} s; the rest of the CLI's empty batch is Dagster's run "
        f"machinery: {fixed - median(imports, 'wall') - empty_batch:.2f} s"
    )
    print(
        f"THROUGHPUT RATIO (CLI batch - CLI empty batch) / floor = {(full - fixed) / ref:.2f}x "
        f"({full - fixed:.2f} s vs {ref:.2f} s; target at most 1.5x, aim 1.25x)"
    )


def shard_runs(landing: Path, data_dir: Path, shards: int, which: list[int], memory_limit: str | None) -> dict:
    """Shards ``which`` of ``shards`` started at once on one fresh lake: wall seconds until the last finished, and
    each shard's own seconds and rows."""
    fresh(data_dir)
    commands = [
        [*RUNS, f"shard-{index}-of-{shards}", str(landing), str(data_dir), memory_limit or ""] for index in which
    ]
    start = time.perf_counter()
    processes = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for command in commands
    ]
    outputs = [process.communicate() for process in processes]
    wall = time.perf_counter() - start
    for process, (_, err) in zip(processes, outputs, strict=True):
        if process.returncode:
            raise SystemExit(f"a shard failed:\n{err[-3000:]}")
    seconds = [json.loads(out.strip().splitlines()[-1])["seconds"] for out, _ in outputs]
    return {"wall": wall, "seconds": seconds}


def sharded(args: argparse.Namespace) -> None:
    """K = 1..``args.shards`` shards over one landing folder, started at once on this machine; and each shard
    alone (its part of the input only), the figure one machine per shard would see."""
    landing = args.workdir / f"landing-{args.events}-{args.files}"
    files = generate(landing, [args.events // args.files + (i < args.events % args.files) for i in range(args.files)])
    print(f"## shards: {args.events:,} events in {len(files)} files, K pipelines on one lake, {os.cpu_count()} cores")
    together: dict[int, list[dict]] = {k: [] for k in range(1, args.shards + 1)}
    alone: dict[int, list[float]] = {k: [] for k in range(1, args.shards + 1)}
    for rep in range(args.repeat):
        for k in together:
            together[k].append(shard_runs(landing, args.workdir / "shards-lake", k, list(range(k)), args.memory_limit))
            alone[k].append(
                max(
                    shard_runs(landing, args.workdir / "shards-lake", k, [i], args.memory_limit)["wall"]
                    for i in range(k)
                )
            )
            print(
                f"rep {rep + 1}, K={k}: together {together[k][-1]['wall']:.2f} s, "
                f"slowest shard alone {alone[k][-1]:.2f} s"
            )
    for k in together:
        wall = statistics.median(run["wall"] for run in together[k])
        slowest_alone = statistics.median(alone[k])
        print(
            f"SHARDS K={k}: on this machine {wall:7.2f} s  {args.events / wall:10,.0f} events/s in all; "
            f"slowest shard alone {slowest_alone:.2f} s -> on {k} machine(s) about {args.events / slowest_alone:,.0f} "
            "events/s (one shard per machine, the lake's catalog and storage shared)"
        )


def small_files(args: argparse.Namespace) -> None:
    """``args.small_files`` files of 6 events against the same events in one file (target at most 2x), then an
    idle batch over the many files (target at most 1 s); in-process batches on fresh lakes, alternating."""
    count = args.small_files * 6
    folder = args.workdir / f"small-files-{args.small_files}"
    many = generate(folder, [6] * args.small_files, seed=9)
    one = args.workdir / f"small-files-{args.small_files}-as-one"
    if not one.exists():
        one.mkdir(parents=True)
        with (one / "winlogbeat-000.ndjson").open("wb") as handle:
            for path in many:
                handle.write(path.read_bytes())
    print(f"## small files: {count:,} events in {len(many):,} files of 6 vs in one file")
    lakes = {"many": args.workdir / "small-many-lake", "one": args.workdir / "small-one-lake"}
    many_runs, one_runs, idle, idle_one, opens = [], [], [], [], []
    for rep in range(args.repeat):
        one_runs.append(run("project", one, fresh(lakes["one"]), args.memory_limit))
        many_runs.append(run("project", folder, fresh(lakes["many"]), args.memory_limit))
        idle.append(run("project", folder, lakes["many"], args.memory_limit))
        idle_one.append(run("project", one, lakes["one"], args.memory_limit))
        opens.append(run("open", folder, lakes["many"], args.memory_limit))
        print(
            f"rep {rep + 1}: one file {one_runs[-1]['seconds']:.2f} s, {len(many)} files "
            f"{many_runs[-1]['seconds']:.2f} s, idle batch over them {idle[-1]['seconds']:.2f} s, "
            f"over the one file {idle_one[-1]['seconds']:.2f} s"
        )
    one_s, many_s, idle_s, idle_one_s = (median(r, "seconds") for r in (one_runs, many_runs, idle, idle_one))
    print(
        f"SMALL FILES: {len(many)} files {many_s:.2f} s / one file {one_s:.2f} s = {many_s / one_s:.2f}x "
        f"(target at most 2x); idle batch over them {idle_s:.2f} s (target at most 1 s), over the one file "
        f"{idle_one_s:.2f} s (each run opens the lake: its fixed cost)"
    )
    loads = {name: statistics.median(r["load_seconds"][name] for r in opens) for name in opens[0]["load_seconds"]}
    print(
        f"  opening the lake and a first query, nothing else: {median(opens, 'seconds'):.2f} s; loading an extension "
        f"alone (DuckDB checks its signature on every load): "
        + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in loads.items())
    )


def aged(args: argparse.Namespace) -> None:
    """The next batch over a lake that has kept the snapshots of ``args.aged`` batches vs over a young lake."""
    files = generate(args.workdir / f"aged-{args.increment}", [args.increment, args.increment], seed=3)
    first, both = landing_with(args.workdir / "aged-first", files[:1]), landing_with(args.workdir / "aged-both", files)
    work, cache = args.workdir / "lake-aged-work", args.workdir / f"lake-aged-{args.aged}"  # built at work: copy_of
    first_clock = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=args.aged + 2)
    next_clock = first_clock + timedelta(minutes=args.aged + 1)
    print(f"## aged lake: {args.aged:,} idle one-minute batches after one of {args.increment:,} events")
    if not cache.exists():
        run("project", first, fresh(work), args.memory_limit, first_clock)
        aging = run(f"idle-{args.aged}", first, work, args.memory_limit, first_clock)
        for point in aging["checkpoints"]:
            print(
                f"after {point['batches']:,} batches: {point['snapshots']:,} snapshots, an idle batch "
                f"{point['idle']:.3f} s (median of the last 50), connect() {point['connect']:.3f} s"
            )
        work.rename(cache)
    young, old = [], []
    for rep in range(args.repeat):
        old.append(run("project", both, copy_of(cache, work), args.memory_limit, next_clock))
        run("project", first, fresh(args.workdir / "lake-young"), args.memory_limit, first_clock)
        young.append(run("project", both, args.workdir / "lake-young", args.memory_limit, next_clock))
        print(f"rep {rep + 1}: over the aged lake {old[-1]['seconds']:.3f} s, the young {young[-1]['seconds']:.3f} s")
    aged_s, young_s = median(old, "seconds"), median(young, "seconds")
    print(
        f"AGED RATIO the next batch over the aged lake / over the young = {aged_s / young_s:.2f}x "
        f"({aged_s:.3f} s vs {young_s:.3f} s)"
    )
    for label, runs in (("over the aged lake", old), ("over the young", young)):
        print(f"  {label}: " + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in step_medians(runs).items()))


def storage(label: str, data_dir: Path, events: int, ndjson_bytes: int | None = None) -> None:
    """Bytes per event on disk of the whole lake in ``data_dir`` (catalog and Parquet files), and per table."""
    sizes: dict[str, int] = {}
    for path in data_dir.rglob("*"):
        if path.is_file():
            parts = path.relative_to(data_dir).parts
            key = "/".join(parts[1:-1]) if len(parts) > 2 else parts[0]  # lake_files/<schema>/<table>/x.parquet
            sizes[key] = sizes.get(key, 0) + path.stat().st_size
    total = sum(sizes.values())
    ndjson = f" (the NDJSON: {ndjson_bytes / events:.0f})" if ndjson_bytes else ""
    print(f"STORAGE, {label}: {total / events:.0f} bytes per event{ndjson}, {total / 1e6:.1f} MB for {events:,} events")
    largest = sorted(sizes.items(), key=lambda item: -item[1])
    print("  " + ", ".join(f"{name} {size / events:.1f}" for name, size in largest if size / events >= 0.05))


def incremental(args: argparse.Namespace) -> None:
    """A batch of ``increment`` new events over a copy of a ``history``-event lake vs over an empty lake."""
    data = args.workdir / f"fleet-{args.history}-{WARM_UP}-{args.increment}"
    files = generate(data, [args.history, WARM_UP, args.increment], seed=3)
    history_landing, warm_up_landing, increment_landing = (
        landing_with(data / name, [path]) for name, path in zip(("history", "warm-up", "increment"), files, strict=True)
    )
    work = args.workdir / "lake-over-history"
    history = args.workdir / f"history-{args.history}"  # built at ``work``, see copy_of
    print(f"## incremental: {args.increment:,} new events over {args.history:,} events of history")
    if not history.exists():
        # The history is a day old, and a small batch an hour later (the next events of the same fleet) brings
        # it to a running pipeline's state: unmatched connections past the grace period have left the join's retry.
        day_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
        built = run("project", history_landing, fresh(work), args.memory_limit, day_ago)
        print(
            f"history built in one batch: {built['seconds']:.1f} s, peak RSS {built['rss_gb']:.2f} GB "
            f"(memory limit {args.memory_limit or 'DuckDB default'})"
        )
        storage("history lake after that batch", work, args.history, files[0].stat().st_size)
        run("project", warm_up_landing, work, args.memory_limit, day_ago + timedelta(hours=1))
        work.rename(history)
    over_history, over_empty = increment_series(args, history, increment_landing)
    loaded, empty = (median(r, "seconds") for r in (over_history, over_empty))
    print(
        f"INCREMENTAL RATIO over history / over empty = {loaded / empty:.2f}x ({loaded:.3f} s vs {empty:.3f} s, "
        f"peak RSS {median(over_history, 'rss_gb'):.2f} GB vs {median(over_empty, 'rss_gb'):.2f} GB; "
        f"target at most 1.2x)"
    )
    # beside the wall clock: the steps' CPU seconds (all threads of the run's process), which leave out waiting
    cpu_loaded, cpu_empty = (
        statistics.median(sum(r["cpu_steps"].values()) for r in runs) for runs in (over_history, over_empty)
    )
    print(f"  the steps' CPU seconds: {cpu_loaded:.3f} s vs {cpu_empty:.3f} s = {cpu_loaded / cpu_empty:.2f}x")
    for label, runs in (("over history", over_history), ("over empty", over_empty)):
        print(f"  {label}: " + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in step_medians(runs).items()))
    scans = run("scans", increment_landing, copy_of(history, work), args.memory_limit)["statements"]
    # DuckDB 1.4.4's profiler counts a lake table's rows as scanned whether or not its files are skipped, so
    # the statements are ranked by time; their row counts are no measure of what was read.
    print("statements of the batch over history that took the longest (DuckDB profiler):")
    for statement in sorted(scans, key=lambda s: -s["seconds"])[: args.top]:
        print(f"  {statement['seconds']:.4f} s  {statement['sql'][:120]}")
    if args.steady:
        steady(args, history, empty)


def increment_series(
    args: argparse.Namespace, lake: Path, landing: Path
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``args.repeat`` times, alternating: the batch of ``landing``'s files over a copy of ``lake`` (built at
    ``lake-over-history``), and over an empty lake."""
    work, empty_lake = args.workdir / "lake-over-history", args.workdir / "lake-over-empty"
    over_lake, over_empty = [], []
    for rep in range(args.repeat):
        over_lake.append(run("project", landing, copy_of(lake, work), args.memory_limit))
        over_empty.append(run("project", landing, fresh(empty_lake), args.memory_limit))
        loaded, empty = over_lake[-1]["seconds"], over_empty[-1]["seconds"]
        print(f"rep {rep + 1}: over history {loaded:.3f} s, over empty {empty:.3f} s")
    return over_lake, over_empty


def steady(args: argparse.Namespace, history: Path, empty_seconds: float) -> None:
    """``args.steady`` consecutive one-minute batches of the fleet's next ``increment`` events each over a copy of
    the history, one maintenance run, then the fleet's next batch over that lake vs over an empty lake."""
    counts = [args.history, WARM_UP] + [args.increment] * (args.steady + 1)
    data = args.workdir / f"fleet-{args.history}-{WARM_UP}-{args.increment}-steady{args.steady}"
    files = generate(data, counts, seed=3, skip=2)  # the history's two files, as incremental() generated them
    work = copy_of(history, args.workdir / "lake-over-history")
    landing = landing_with(data / "landing", [])
    batches: list[float] = []
    upkeeps: list[float] = []
    # One-minute batches, as a schedule runs them: their clocks end a minute before the next batch's (now), so
    # connections still waiting for their process leave the join's retry after the grace period, as they would.
    first_clock = datetime.now(UTC).replace(tzinfo=None) - timedelta(minutes=len(files))
    for index, path in enumerate(files[:-1]):
        os.link(path, landing / path.name)  # the next batch's file lands
        clock = first_clock + timedelta(minutes=index)
        batches.append(run("project", landing, work, args.memory_limit, clock)["seconds"])
        if args.maintain_every and (index + 1) % args.maintain_every == 0 and index + 1 < len(files) - 1:
            upkeeps.append(run("maintain", landing, work, args.memory_limit)["seconds"])
    every = f", maintenance after every {args.maintain_every}" if args.maintain_every else ", no maintenance"
    print(f"## steady: {args.steady} consecutive batches of {args.increment:,} events each over the history{every}")
    if upkeeps:
        print(
            f"maintenance runs between the batches: {len(upkeeps)}, first {upkeeps[0]:.2f} s, then median "
            f"{statistics.median(upkeeps[1:] or upkeeps):.2f} s, max {max(upkeeps[1:] or upkeeps):.2f} s"
        )
    print(
        f"per batch: mean {statistics.mean(batches):.3f} s, median {statistics.median(batches):.3f} s, max "
        f"{max(batches):.3f} s ({statistics.median(batches) / empty_seconds:.2f}x the batch over an empty lake "
        f"by the median); first {min(10, len(batches))} {statistics.mean(batches[:10]):.3f} s, "
        f"last {min(10, len(batches))} {statistics.mean(batches[-10:]):.3f} s by the mean"
    )
    print("  " + ", ".join(f"{s:.2f}" for s in batches))
    storage("lake before maintenance", work, args.history + WARM_UP + args.steady * args.increment)
    upkeep = run("maintain", landing, work, args.memory_limit)
    print(
        f"maintenance (maintain(con, utc_now(), 7, None)): {upkeep['seconds']:.2f} s, "
        f"{upkeep['files_deleted']} files deleted; data files per table before -> after:"
    )
    before, after = upkeep["files_before"], upkeep["files_after"]
    print("  " + ", ".join(f"{table} {before[table]} -> {after.get(table, 0)}" for table in before))
    storage("lake after maintenance", work, args.history + WARM_UP + args.steady * args.increment)
    maintained = fresh(args.workdir / f"maintained-{args.history}-{args.steady}")
    work.rename(maintained)
    over_lake, over_empty = increment_series(args, maintained, landing_with(data / "next", files[-1:]))
    loaded, empty = (median(r, "seconds") for r in (over_lake, over_empty))
    print(
        f"STEADY RATIO after {args.steady} batches and one maintenance run: the next batch over that lake / over "
        f"an empty lake = {loaded / empty:.2f}x ({loaded:.3f} s vs {empty:.3f} s; target at most 1.2x)"
    )
    for label, runs in (("over the maintained lake", over_lake), ("over empty", over_empty)):
        print(f"  {label}: " + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in step_medians(runs).items()))
    shutil.rmtree(maintained)


@contextmanager
def postgres_catalogs() -> Iterator[Any]:
    """A PostgreSQL server (the ``pgserver`` wheel) for the run; yields a function returning a fresh database as
    a ``SYSMON_LAKE_CATALOG`` value. Run as root, pgserver runs PostgreSQL as an unprivileged user, which must
    reach the folder: it is made under /tmp, open to all."""
    import pgserver

    root = Path(tempfile.mkdtemp(prefix="bench-pg-", dir="/tmp"))
    root.chmod(0o755)
    server = pgserver.get_server(root / "data", cleanup_mode="stop")

    def new_catalog() -> str:
        name = f"lake_{uuid.uuid4().hex[:12]}"
        server.psql(f"CREATE DATABASE {name};")
        return f"postgres:dbname={name} host={root / 'data'} user=postgres"

    try:
        yield new_catalog
    finally:
        server.cleanup()
        shutil.rmtree(root, ignore_errors=True)


def read_during_batches(
    args: argparse.Namespace, files: list[Path], data_dir: Path, env: dict[str, str]
) -> tuple[dict[str, Any], list[float]]:
    """A fresh lake given ``files[0]``; then a reader process loops while each next file lands and is batched."""
    landing = landing_with(args.workdir / "readers-landing", files[:1])
    run("project", landing, fresh(data_dir), args.memory_limit, env=env)
    command = [*RUNS, "reader", str(landing), str(data_dir), args.memory_limit or ""]
    reader = subprocess.Popen(command, cwd=ROOT, env={**os.environ, **env}, stdout=subprocess.PIPE, text=True)
    if reader.stdout.readline().strip() != "ready":
        raise SystemExit(f"the reader did not start (exit code {reader.wait()})")
    batches = []
    try:
        for path in files[1:]:
            os.link(path, landing / path.name)
            batches.append(run("project", landing, data_dir, args.memory_limit, env=env)["seconds"])
    finally:
        reader.send_signal(signal.SIGTERM)
    out, _ = reader.communicate()
    if reader.returncode != 0:
        raise SystemExit(f"the reader failed (exit code {reader.returncode})")
    return json.loads(out.strip().splitlines()[-1]), batches


def latency(samples: list[float]) -> str:
    """Median and p99 of ``samples`` in ms."""
    if len(samples) < 2:
        return f"{len(samples)} samples"
    p99 = statistics.quantiles(samples, n=100, method="inclusive")[98]
    return f"median {statistics.median(samples) * 1000:.1f} ms, p99 {p99 * 1000:.1f} ms ({len(samples)} samples)"


def readers(args: argparse.Namespace) -> None:
    """Reader latency while ``args.readers`` batches of ``increment`` events run, per catalog, alternating."""
    data = args.workdir / f"fleet-readers-{args.increment}-{args.readers}"
    files = generate(data, [args.increment] * (args.readers + 1), seed=5)
    print(
        f"## readers: {args.readers} batches of {args.increment:,} events in a row after a first one, while a "
        f"reader loops connect + `{READER_QUERY}`"
    )
    results: dict[str, list[tuple[dict[str, Any], list[float]]]] = {"SQLite catalog (default)": [], "PostgreSQL": []}
    with postgres_catalogs() as new_catalog:
        for rep in range(args.repeat):
            for label in results:
                env = {"SYSMON_LAKE_CATALOG": new_catalog()} if label == "PostgreSQL" else {}
                results[label].append(read_during_batches(args, files, args.workdir / "readers-lake", env))
                print(f"rep {rep + 1}, {label}: batches median {statistics.median(results[label][-1][1]):.3f} s")
    for label, series in results.items():
        batches = [seconds for _, times in series for seconds in times]
        pooled = {kind: [s for read, _ in series for s in read[kind]] for kind in ("connect_and_query", "query")}
        errors = [error for read, _ in series for error in read["errors"]]
        print(f"READERS, {label}: batches median {statistics.median(batches):.3f} s, max {max(batches):.3f} s")
        print(f"  connect + count: {latency(pooled['connect_and_query'])}")
        print(f"  count on a held connection: {latency(pooled['query'])}")
        seen = [read["distinct_counts"] for read, _ in series]
        print(f"  errors: {len(errors)}; distinct counts a reader saw per series: {seen}")
        for error in sorted(set(errors))[:5]:
            print(f"    {error}")


def with_cache(data_dir: Path, cache: Path) -> Path:
    """A fresh data folder holding the converted rule set, as a pipeline that ran before holds it."""
    shutil.copytree(cache, fresh(data_dir) / cache.name)
    return data_dir


def sigma_cost(args: argparse.Namespace) -> None:
    """Seconds a folder of Sigma rules adds to a batch and to a backlog, per rule, and its conversion's cost."""
    rules = args.sigma.resolve()
    no_rules = args.workdir / "no-sigma-rules"
    no_rules.mkdir(exist_ok=True)
    print(f"## Sigma: the rules of {rules}")
    warm = args.workdir / "sigma-conversion"
    cold = run("sigma-load", Path(), fresh(warm), None, env={"SYSMON_SIGMA_RULES": str(rules)})
    loads = [run("sigma-load", Path(), warm, None, env={"SYSMON_SIGMA_RULES": str(rules)}) for _ in range(args.repeat)]
    print(
        f"SIGMA CONVERSION: {cold['rules']} rules converted, {cold['failures']} not evaluated (listed); converting in "
        f"a new process {cold['seconds']:.2f} s (converted: {cold['converted']}); loading the unchanged rule set in a "
        f"new process from the cache {median(loads, 'seconds'):.3f} s (converted: {any(r['converted'] for r in loads)}"
        f"); again in the same process {median(loads, 'again_seconds') * 1000:.1f} ms"
    )
    cache = warm / Settings().sigma_cache_dir.name
    for label, events in (("batch", args.increment), ("backlog", args.backlog)):
        landing = generate(args.workdir / f"sigma-{label}-{events}", [events], seed=5)[0].parent
        lakes = {kind: args.workdir / f"sigma-{label}-lake-{kind}" for kind in ("with", "without")}
        with_rules, without = [], []
        for rep in range(args.repeat if events <= args.increment else 1):
            env = {"SYSMON_SIGMA_RULES": str(rules)}
            with_rules.append(run("project", landing, with_cache(lakes["with"], cache), args.memory_limit, env=env))
            env = {"SYSMON_SIGMA_RULES": str(no_rules)}
            without.append(run("project", landing, fresh(lakes["without"]), args.memory_limit, env=env))
            print(
                f"{label} rep {rep + 1}: with the rules {with_rules[-1]['seconds']:.2f} s (sigma_detections "
                f"{with_rules[-1]['steps']['sigma_detections']:.2f} s), without {without[-1]['seconds']:.2f} s "
                f"(sigma_detections {without[-1]['steps']['sigma_detections']:.2f} s)"
            )
        batch, bare = median(with_rules, "seconds"), median(without, "seconds")
        step = statistics.median(r["steps"]["sigma_detections"] for r in with_rules)
        bare_step = statistics.median(r["steps"]["sigma_detections"] for r in without)
        cpu = statistics.median(r["cpu_steps"]["sigma_detections"] for r in with_rules)
        bare_cpu = statistics.median(r["cpu_steps"]["sigma_detections"] for r in without)
        alone = run("sigma-rules", landing, lakes["with"], args.memory_limit, env={"SYSMON_SIGMA_RULES": str(rules)})
        added = batch - bare
        print(
            f"SIGMA {label.upper()} of {events:,} events ({alone['events']['1']:,} creates, {alone['events']['3']:,} "
            f"connects): the batch {bare:.2f} s without rules, {batch:.2f} s with {cold['rules']} rules: "
            f"{added:+.2f} s added; the sigma_detections step {step:.2f} s with the rules, {bare_step:.2f} s without: "
            f"{step - bare_step:+.2f} s ({(step - bare_step) / cold['rules'] * 1000:.2f} ms per rule), CPU "
            f"{cpu:.2f} s vs {bare_cpu:.2f} s"
        )
        print(f"  planning the rules' query (no events): {alone['planning_cpu_seconds']:.2f} s CPU")
        shapes = alone["shapes_seconds"]
        print(
            f"  the rules over those events as one scan with a CASE per rule {shapes['one_scan']:.2f} s, "
            f"as a UNION ALL of a SELECT per rule {shapes['union_all']:.2f} s"
        )
        print(
            f"  each rule alone over those events: {alone['seconds_all_alone']:.2f} s in all; the slowest: "
            + ", ".join(f"{rule['title']} {rule['seconds'] * 1000:.0f} ms" for rule in alone["slowest"][:5])
        )


def main() -> None:
    """Parse arguments and run the throughput, incremental or readers benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-limit", default=None, help="DuckDB memory_limit for every run, e.g. 2GB")
    parser.add_argument("--history", type=int, default=0, help="run the incremental benchmark over this history")
    parser.add_argument("--increment", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=8, help="slowest statements listed")
    parser.add_argument("--steady", type=int, default=0, help="then this many consecutive batches over the history")
    parser.add_argument("--maintain-every", type=int, default=0, help="with --steady: maintenance every M batches")
    parser.add_argument("--readers", type=int, default=0, help="reader latency during this many batches")
    parser.add_argument("--shards", type=int, default=0, help="K = 1 .. this many shards at once, and each alone")
    parser.add_argument("--small-files", type=int, default=0, help="this many files of 6 events vs one file")
    parser.add_argument("--aged", type=int, default=0, help="the next batch after this many idle batches vs young")
    parser.add_argument("--sigma", type=Path, default=None, help="the seconds this folder of Sigma rules adds")
    parser.add_argument("--backlog", type=int, default=1_000_000, help="with --sigma: the backlog's events")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    args.workdir = args.workdir.resolve()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; python {sys.version.split()[0]}; {datetime.now():%Y-%m-%d %H:%M}")
    if args.sigma:
        sigma_cost(args)
    elif args.readers:
        readers(args)
    elif args.shards:
        sharded(args)
    elif args.small_files:
        small_files(args)
    elif args.aged:
        aged(args)
    elif args.history:
        incremental(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
