"""Benchmark: the project's micro-batch against a plain DuckDB script of the recipe on the same files.

    python bench/benchmark.py --events 1000000 --files 4 --repeat 3
    python bench/benchmark.py --history 5000000 --increment 10000 --memory-limit 2GB --repeat 3

Every measured run is its own process (``bench/runs.py`` or the Dagster CLI), so each peak RSS
is that run's own. Runs alternate within one invocation, and medians are printed:

- throughput: the plain script, the project in-process, and ``dagster asset materialize
  --select '*'``; the target ratio is (CLI batch - CLI empty batch) / plain script; the plain script
  that also keeps the raw stream table is the least a batch keeping it (target 5) can cost;
- fixed cost: an empty batch through the CLI and in-process, with Python/Dagster start-up apart, and
  Dagster's own floor: the project's asset graph doing nothing (``bench/dagster_floor.py``);
- incremental cost (``--history``): a batch of ``--increment`` new events over a history of
  ``--history`` events vs the same batch over an empty file, with the rows DuckDB scanned per
  statement (its profiler) as the proof that no statement reads the whole history;
- storage: bytes per event of the DuckDB file and of the query database's Parquet files.

Generated data is cached under ``--workdir`` (default ``bench/out``, git-ignored).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.dagster_floor import GRAPH_VARIABLE  # noqa: E402
from bench.runs import COMPACT_EVERY_VARIABLE  # noqa: E402
from sysmon_assets.definitions import build_definitions  # noqa: E402
from sysmon_assets.pipeline import COMPACT_EVERY_BATCHES  # noqa: E402
from sysmon_assets.sample import FleetSimulator  # noqa: E402
from sysmon_assets.serving import parquet_folder  # noqa: E402
from sysmon_assets.settings import Settings  # noqa: E402

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


def fresh(db: Path) -> Path:
    """Remove a DuckDB file and its query database; return ``db``."""
    settings = Settings(landing_dir=Path(), duckdb_path=db)
    for path in (db, db.with_name(db.name + ".wal"), settings.query_db_path):
        path.unlink(missing_ok=True)
    shutil.rmtree(parquet_folder(settings.query_db_path), ignore_errors=True)
    return db


def copy_of(db: Path, target: Path) -> Path:
    """A copy of the DuckDB file ``db`` at ``target``, written through to disk.

    Without the sync the batch's first checkpoint (DuckDB fsyncs the file) waits for the kernel to
    write back the whole fresh copy: 0.3-0.5 s for 1.1 GB, which is the benchmark's, not the batch's.
    """
    shutil.copy(db, fresh(target))
    os.sync()
    return target


def run(
    kind: str,
    landing: Path,
    db: Path,
    memory_limit: str | None,
    at: datetime | None = None,
    compact_every: int | None = None,
) -> dict[str, Any]:
    """One child run of ``bench/runs.py`` (``at``: the batch clock, default now; ``compact_every``: merge row
    groups every this many batches instead of the pipeline's ``COMPACT_EVERY_BATCHES``)."""
    command = [sys.executable, str(ROOT / "bench" / "runs.py"), kind, str(landing), str(db), memory_limit or ""]
    env = {**os.environ, COMPACT_EVERY_VARIABLE: str(compact_every)} if compact_every else None
    return measured(command + ([at.isoformat()] if at else []), env)


def run_cli(landing: Path, db: Path, memory_limit: str | None, dagster_home: Path | None = None) -> dict[str, Any]:
    """One micro-batch the way users run it: the Dagster CLI, all assets (``dagster_home``: a persistent
    Dagster instance instead of the temporary one the CLI creates without DAGSTER_HOME)."""
    env = {**os.environ, "SYSMON_LANDING_DIR": str(landing), "SYSMON_DUCKDB_PATH": str(db)}
    if dagster_home:
        dagster_home.mkdir(parents=True, exist_ok=True)
        env["DAGSTER_HOME"] = str(dagster_home)
    if memory_limit:
        env["SYSMON_DUCKDB_MEMORY_LIMIT"] = memory_limit
    return measured(CLI, env)


def asset_graph() -> dict[str, dict[str, list[str]]]:
    """The project's asset graph as ``bench/dagster_floor.py`` takes it: each asset's dependencies and checks."""
    graph = build_definitions(Settings(landing_dir=Path(), duckdb_path=Path("unused.duckdb"))).resolve_asset_graph()
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


def throughput(args: argparse.Namespace) -> None:
    """The plain script, the project in-process and through the CLI, alternating; then empty batches."""
    landing = args.workdir / f"landing-{args.events}-{args.files}"
    files = generate(landing, [args.events // args.files + (i < args.events % args.files) for i in range(args.files)])
    size = sum(p.stat().st_size for p in files)
    print(f"## throughput: {args.events:,} events, {len(files)} files, {size / 1e9:.2f} GB of NDJSON")
    reference, reference_stream, project, cli = [], [], [], []
    for rep in range(args.repeat):
        reference.append(run("reference", landing, fresh(args.workdir / "reference.duckdb"), args.memory_limit))
        reference_stream.append(
            run("reference_stream", landing, fresh(args.workdir / "reference.duckdb"), args.memory_limit)
        )
        project.append(run("project", landing, fresh(args.workdir / "project.duckdb"), args.memory_limit))
        cli.append(run_cli(landing, fresh(args.workdir / "cli.duckdb"), args.memory_limit))
        print(
            f"rep {rep + 1}: reference {reference[-1]['seconds']:.2f} s "
            f"(keeping the raw stream {reference_stream[-1]['seconds']:.2f} s), project {project[-1]['seconds']:.2f} s "
            f"(+ publish {project[-1]['publish']:.2f} s), cli {cli[-1]['wall']:.2f} s"
        )
    empty_cli = [run_cli(landing, args.workdir / "cli.duckdb", args.memory_limit) for _ in range(args.repeat)]
    home = args.workdir / "dagster-home"
    shutil.rmtree(home, ignore_errors=True)
    run_cli(landing, args.workdir / "cli.duckdb", args.memory_limit, home)  # creates the instance's storage
    floor_home = args.workdir / "dagster-home-floor"
    shutil.rmtree(floor_home, ignore_errors=True)
    graph = asset_graph()
    run_dagster_floor(graph, floor_home)  # creates the instance's storage
    floors, single, empty_home = [], [], []
    for _ in range(args.repeat):  # alternating with the project's empty batch in its own persistent instance
        floors.append(run_dagster_floor(graph, floor_home))
        single.append(run_dagster_floor({}, floor_home))
        empty_home.append(run_cli(landing, args.workdir / "cli.duckdb", args.memory_limit, home))
    empty = [run("project", landing, args.workdir / "project.duckdb", args.memory_limit) for _ in range(args.repeat)]
    imports = [measured([sys.executable, "-c", "import sysmon_assets.definitions"]) for _ in range(args.repeat)]
    bare = [measured([sys.executable, "-c", "pass"]) for _ in range(args.repeat)]
    ref = median(reference, "seconds")
    ref_rss, proj_rss = median(reference, "rss_gb"), median(project, "rss_gb")
    print(f"plain DuckDB script      {ref:7.2f} s  {args.events / ref:10,.0f} events/s  peak RSS {ref_rss:.2f} GB")
    kept = median(reference_stream, "seconds")
    print(
        f"plain script that also keeps the raw stream table {kept:.2f} s = {kept / ref:.2f}x the plain script "
        f"(the least any batch that keeps it can cost)"
    )
    steps_total, publish = median(project, "seconds"), median(project, "publish")
    proj = steps_total + publish
    print(
        f"project in-process       {proj:7.2f} s  {args.events / proj:10,.0f} events/s  peak RSS {proj_rss:.2f} GB  "
        f"ratio {proj / ref:.2f}x  (recipe steps {steps_total:.2f} s + query database {publish:.2f} s)"
    )
    steps = {name: statistics.median(r["steps"][name] for r in project) for name in project[0]["steps"]}
    print("  per step: " + ", ".join(f"{name} {seconds:.2f} s" for name, seconds in steps.items()))
    peaks = {name: statistics.median(r["peak_gb_after"][name] for r in project) for name in steps}
    print("  peak RSS so far after each step: " + ", ".join(f"{name} {gb:.2f} GB" for name, gb in peaks.items()))
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
    empty_steps, empty_publish = median(empty, "seconds"), median(empty, "publish")
    print(
        f"in-process empty batch   {empty_steps + empty_publish:7.3f} s  (recipe steps {empty_steps:.3f} s + query "
        f"database {empty_publish:.3f} s); the rest of the CLI's empty batch is Dagster's run machinery: "
        f"{fixed - median(imports, 'wall') - empty_steps - empty_publish:.2f} s"
    )
    print(f"THROUGHPUT RATIO (CLI batch - CLI empty batch) / plain script = {(full - fixed) / ref:.2f}x")
    storage(args.workdir / "project.duckdb", args.events, size)


def storage(db: Path, events: int, ndjson_bytes: int) -> None:
    """Bytes per event on disk."""
    parquet = sum(
        p.stat().st_size
        for p in parquet_folder(Settings(landing_dir=Path(), duckdb_path=db).query_db_path).rglob("*.parquet")
    )
    print(
        f"storage: NDJSON {ndjson_bytes / events:.0f} B/event, DuckDB file {db.stat().st_size / events:.0f} B/event, "
        f"query database Parquet {parquet / events:.0f} B/event"
    )


def incremental(args: argparse.Namespace) -> None:
    """A batch of ``increment`` new events over a ``history``-event file vs over an empty file."""
    data = args.workdir / f"fleet-{args.history}-{WARM_UP}-{args.increment}"
    files = generate(data, [args.history, WARM_UP, args.increment], seed=3)
    landings = [data / "history", data / "warm-up", data / "increment"]
    for folder, path in zip(landings, files, strict=True):
        folder.mkdir(exist_ok=True)
        if not (folder / path.name).exists():
            os.link(path, folder / path.name)
    history_landing, warm_up_landing, increment_landing = landings
    history_db = args.workdir / f"history-{args.history}.duckdb"
    print(f"## incremental: {args.increment:,} new events over {args.history:,} events of history")
    if not history_db.exists():
        # The history is a day old, and a small batch an hour later (the next events of the same fleet) brings it
        # to a running pipeline's state: unmatched connections past the grace period have left the join's retry,
        # and the file has been written to since it was built (the first write to a freshly built file of
        # several GB pays a one-time checkpoint of about 0.3 s).
        day_ago = datetime.now(UTC).replace(tzinfo=None) - timedelta(days=1)
        building = fresh(args.workdir / "building.duckdb")
        built = run("project", history_landing, building, args.memory_limit, day_ago)
        print(
            f"history built in one batch: {built['seconds']:.1f} s, peak RSS {built['rss_gb']:.2f} GB "
            f"(memory limit {args.memory_limit or 'DuckDB default'})"
        )
        storage(building, args.history, files[0].stat().st_size)
        run("project", warm_up_landing, building, args.memory_limit, day_ago + timedelta(hours=1))
        shutil.move(building, history_db)
    over_history, over_empty = [], []
    for rep in range(args.repeat):
        target = copy_of(history_db, args.workdir / "increment.duckdb")
        over_history.append(run("project", increment_landing, target, args.memory_limit))
        over_empty.append(
            run("project", increment_landing, fresh(args.workdir / "increment.duckdb"), args.memory_limit)
        )
        loaded, empty = (r[-1]["seconds"] + r[-1]["publish"] for r in (over_history, over_empty))
        print(f"rep {rep + 1}: over history {loaded:.3f} s, over empty {empty:.3f} s")
    loaded, empty = (
        median(over_history, "seconds") + median(over_history, "publish"),
        median(over_empty, "seconds") + median(over_empty, "publish"),
    )
    print(
        f"INCREMENTAL RATIO over history / over empty = {loaded / empty:.2f}x ({loaded:.3f} s vs {empty:.3f} s, "
        f"peak RSS {median(over_history, 'rss_gb'):.2f} GB vs {median(over_empty, 'rss_gb'):.2f} GB)"
    )
    for label, runs in (("over history", over_history), ("over empty", over_empty)):
        steps = {name: statistics.median(r["steps"][name] for r in runs) for name in runs[0]["steps"]}
        print(
            f"  {label}: "
            + ", ".join(f"{name} {seconds:.3f} s" for name, seconds in steps.items())
            + f", query database {median(runs, 'publish'):.3f} s"
        )
    if args.steady:
        steady(args, history_db, files[1], empty)
    target = copy_of(history_db, args.workdir / "increment.duckdb")
    scans = run("scans", increment_landing, target, args.memory_limit)["statements"]
    print("statements of the batch over history that scanned the most rows (DuckDB profiler):")
    for statement in sorted(scans, key=lambda s: -s["rows_scanned"])[: args.top]:
        print(f"  {statement['rows_scanned']:>10,} rows  {statement['seconds']:.4f} s  {statement['sql'][:110]}")
    print(
        f"  most rows any statement scanned: {max(s['rows_scanned'] for s in scans):,} "
        f"(history: {args.history:,} events)"
    )


def steady(args: argparse.Namespace, history_db: Path, warm_up: Path, empty_seconds: float) -> None:
    """``args.steady`` consecutive batches of the fleet's next ``increment`` events each: the running pipeline's
    cost per batch, row-group merges included, batch by batch alternating between three series. Over two copies
    of the history: merging every ``COMPACT_EVERY_BATCHES`` batches (the pipeline's policy) against merging at
    every checkpoint (DuckDB's default). Over an empty file given the same first two batches' ids (an empty
    batch, then the warm-up file), so its merges fall on the same batches: the pipeline's policy again, which
    makes the flatness of a running pipeline's cost one ratio."""
    counts = [args.history, WARM_UP] + [args.increment] * args.steady
    data = args.workdir / f"fleet-{args.history}-{WARM_UP}-{args.increment}-steady{args.steady}"
    files = generate(data, counts, seed=3, skip=2)  # the history's two files, as incremental() generated them
    every = COMPACT_EVERY_BATCHES
    history, empty = (
        f"merge every {every} batches, over the history",
        f"merge every {every} batches, over an empty file",
    )
    policies = {history: (every, True), "merge at every checkpoint, over the history": (1, True), empty: (every, False)}
    landings, targets, runs = {}, {}, {}
    for index, (policy, (_, over_history)) in enumerate(policies.items()):
        landings[policy] = data / f"landing-{index}"
        shutil.rmtree(landings[policy], ignore_errors=True)
        landings[policy].mkdir()
        target = args.workdir / f"steady-{index}.duckdb"
        targets[policy] = copy_of(history_db, target) if over_history else fresh(target)
        runs[policy] = []
        if not over_history:  # batches 1 and 2, as in the history
            run("project", landings[policy], targets[policy], args.memory_limit)
            os.link(warm_up, landings[policy] / warm_up.name)
            run("project", landings[policy], targets[policy], args.memory_limit)
    for path in files:
        for policy, (compact_every, _) in policies.items():
            os.link(path, landings[policy] / path.name)  # the next batch's file lands
            runs[policy].append(
                run("project", landings[policy], targets[policy], args.memory_limit, compact_every=compact_every)
            )
    print(f"## steady: {args.steady} consecutive batches of {args.increment:,} events each (batches 3 onwards)")
    means = {}
    for policy, results in runs.items():
        seconds = [r["seconds"] + r["publish"] for r in results]
        means[policy] = (statistics.mean(seconds), statistics.median(seconds))
        print(
            f"STEADY, {policy}: mean {means[policy][0]:.3f} s ({means[policy][0] / empty_seconds:.2f}x the single "
            f"batch over an empty file), median {means[policy][1]:.3f} s, max {max(seconds):.3f} s"
        )
        print("  per batch: " + ", ".join(f"{s:.2f}" for s in seconds))
        slowest = sorted(range(len(results)), key=lambda i: -seconds[i])[:2]
        for index in slowest:  # batches 1 and 2 came before the series
            result = results[index]
            steps = ", ".join(f"{name} {sec:.2f}" for name, sec in result["steps"].items())
            print(f"  batch {index + 3} ({seconds[index]:.2f} s): {steps}, query database {result['publish']:.2f} s")
    (mean, median), (empty_mean, empty_median) = means[history], means[empty]
    print(
        f"STEADY RATIO, merging every {every} batches: over the history / over an empty file = "
        f"{mean / empty_mean:.2f}x by the mean, {median / empty_median:.2f}x by the median"
    )


def main() -> None:
    """Parse arguments and run the throughput or the incremental benchmark."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--events", type=int, default=100_000)
    parser.add_argument("--files", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--memory-limit", default=None, help="DuckDB memory_limit for every run, e.g. 2GB")
    parser.add_argument("--history", type=int, default=0, help="run the incremental benchmark over this history")
    parser.add_argument("--increment", type=int, default=10_000)
    parser.add_argument("--top", type=int, default=8, help="statements listed by rows scanned")
    parser.add_argument("--steady", type=int, default=0, help="then this many consecutive batches over the history")
    parser.add_argument("--workdir", type=Path, default=ROOT / "bench" / "out")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} cores; python {sys.version.split()[0]}; {datetime.now():%Y-%m-%d %H:%M}")
    if args.history:
        incremental(args)
    else:
        throughput(args)


if __name__ == "__main__":
    main()
