"""K shards writing one lake at once give the tables one pipeline gives over the same input (but the process context
of sigma_detections' hits, which depends on what the step saw: tests.conftest.AS_THE_STEP_SAW)."""

from __future__ import annotations

import logging
import os
import subprocess
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import duckdb
import pytest
from dagster import build_schedule_context

from dbt_like import ConcurrentWriterError, ProjectError, runner
from sysmon_assets.dagster_layer.sensors import evaluate_landing
from sysmon_assets.definitions import build_definitions
from sysmon_assets.micro_batch.shards import file_shard
from sysmon_assets.micro_batch.steps import SysmonPipeline, utc_now
from sysmon_assets.settings import Settings
from sysmon_assets.sources.landed_files import file_key
from sysmon_assets.storage.lake import INLINED_SCHEMAS, batch_snapshot, open_lake
from sysmon_assets.storage.maintenance import BETWEEN_BATCHES_KEPT, expirable_snapshots, maintain, running_batch_floor
from tests.conftest import CLI_BATCH, T0, Lake, land, network_connect, process_create, snapshot
from tests.lake_servers import Postgres
from tests.recipe import shared_path
from tests.sql.test_real_data import OTRF_TARBALLS, extract_ndjson

ROOT = Path(__file__).resolve().parents[2]
SHARDS = 3


def shard_pipelines(lake: Lake, shards: int = SHARDS) -> list[SysmonPipeline]:
    settings = Settings(**{**lake.settings.__dict__, "shards": shards})
    return [SysmonPipeline(settings, shard=index) for index in range(shards)]


def run_at_once(pipelines: list[SysmonPipeline], minutes: int) -> None:
    """One batch of every shard, all started together (each on its own DuckDB instance, as K machines)."""
    start = threading.Barrier(len(pipelines))
    errors: list[BaseException] = []

    def run(pipeline: SysmonPipeline) -> None:
        start.wait()
        try:
            pipeline.run_batch(batch_time=T0 + timedelta(minutes=minutes))
        except BaseException as error:
            errors.append(error)

    threads = [threading.Thread(target=run, args=(pipeline,)) for pipeline in pipelines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors, errors


def split_lines(source: Path, into: Path, files: int) -> list[Path]:
    """The source's lines dealt round-robin into ``files`` landing files (so the shards divide them)."""
    lines = source.read_bytes().splitlines(keepends=True)
    paths = [into / f"part-{index}.ndjson" for index in range(files)]
    for index, path in enumerate(paths):
        path.write_bytes(b"".join(lines[index::files]))
    return paths


def run_in_turn(pipelines: list[SysmonPipeline], minutes: int) -> None:
    """One batch of every shard, one after the other: a shard's connections whose creates a later shard holds wait."""
    for pipeline in pipelines:
        pipeline.run_batch(batch_time=T0 + timedelta(minutes=minutes))


def assert_shards_match_one_pipeline(
    tmp_path: Path,
    fill: Callable[[Path], object],
    first_round: Callable[[list[SysmonPipeline], int], None] = run_at_once,
    **settings: object,
) -> Lake:
    one = Lake(tmp_path / "one", **settings)
    fill(one.landing)
    one.batch()
    sharded = Lake(tmp_path / "sharded", **settings)
    fill(sharded.landing)
    owners = {file_shard(file_key(path), SHARDS) for path in sharded.landing.iterdir()}
    assert owners == set(range(SHARDS)), "every shard should own part of the input"
    pipelines = shard_pipelines(sharded)
    first_round(pipelines, 0)
    # A connection whose process create another shard committed later is joined by its shard's next batch.
    run_at_once(pipelines, minutes=1)
    assert snapshot(sharded.settings) == snapshot(one.settings)
    assert sharded.count("sysmon_join") > 0
    return sharded


def test_three_shards_at_once_give_one_pipelines_tables_on_the_sample(tmp_path: Path) -> None:
    (sample,) = (ROOT / "sample_data").glob("*.ndjson")
    sharded = assert_shards_match_one_pipeline(tmp_path, lambda landing: split_lines(sample, landing, 36))
    batches = sharded.rows("SELECT DISTINCT (batch_id - 1) % 3 FROM dbt_like.batches ORDER BY 1")
    assert batches == [(0,), (1,), (2,)]
    seqs = sharded.rows("SELECT count(*), count(DISTINCT _seq) FROM winlogbeat_stream")
    assert seqs[0][0] == seqs[0][1], "arrival numbers of different shards never meet"


PROCESS_RULES = {
    "cli.yml": """title: connection from a process with a command line
id: 0b8b0c1e-5f5e-4a55-9d0a-2d1f3c1a8e01
logsource: {category: network_connection, product: windows}
detection: {sel: {CommandLine|contains: '.exe'}, condition: sel}
""",
    "unknown.yml": """title: connection from a process whose command line is unknown
id: 0b8b0c1e-5f5e-4a55-9d0a-2d1f3c1a8e02
logsource: {category: network_connection, product: windows}
detection: {sel: {Initiated: 'true'}, known: {CommandLine|contains: '.'}, condition: sel and not known}
""",
}


def test_three_shards_give_one_pipelines_detections_of_rules_that_read_the_process(tmp_path: Path) -> None:
    # a connection whose create another shard commits is joined in a later batch: the rules that read its
    # process run then, on the process, as one pipeline runs them on the same batch as its create. The first round
    # runs in turn so that some connections wait whatever the machine's timing (at once, all creates may commit
    # before any join reads them)
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in PROCESS_RULES.items():
        (rules / name).write_text(text)
    (sample,) = (ROOT / "sample_data").glob("*.ndjson")
    sharded = assert_shards_match_one_pipeline(
        tmp_path, lambda landing: split_lines(sample, landing, 36), run_in_turn, sigma_rules=rules
    )
    late = sharded.rows(
        "SELECT count(*) FROM sigma_detections AS d JOIN sysmon_network_connect AS n USING (_seq) "
        "WHERE d.rule_title LIKE 'connection from a process with%' AND d._batch_id > n._batch_id"
    )
    assert late[0][0] > 0, "some connections should have waited for a create another shard committed"


def test_three_shards_at_once_give_one_pipelines_tables_on_otrf_data(tmp_path: Path) -> None:
    tarballs = [shared_path("data", "real", "otrf-security-datasets", name) for name in sorted(OTRF_TARBALLS)]

    def fill(landing: Path) -> None:
        """Each data set in nine parts, so that the shards share every data set's events."""
        scratch = landing.parent / "scratch"
        scratch.mkdir(exist_ok=True)
        for tarball in tarballs:
            extracted = extract_ndjson(tarball, scratch)
            lines = extracted.read_bytes().splitlines(keepends=True)
            for index in range(9):
                (landing / f"{extracted.stem}-{index}.ndjson").write_bytes(b"".join(lines[index::9]))

    assert_shards_match_one_pipeline(tmp_path, fill)


def unjoined_connections(sharded: Lake, one: Lake) -> list[tuple]:
    """For each connection one pipeline joined and the shards did not: its shard, whether it still waits in
    the pending rows, and the batch that committed its process create (what a failure needs to be explained)."""
    joined = {row[0] for row in sharded.rows("SELECT _seq FROM sysmon_join")}
    guids = {row[0] for row in one.rows("SELECT DISTINCT process_guid FROM sysmon_join")}
    return [
        row
        for row in sharded.rows(
            "SELECT n._seq, n._batch_id, n.process_guid, p._batch_id AS create_batch, "
            "n._seq IN (SELECT seq FROM dbt_like.pending) AS pending "
            "FROM sysmon_network_connect AS n LEFT JOIN sysmon_process_create_table AS p USING (process_guid) "
            "ORDER BY n._seq"
        )
        if row[0] not in joined and row[2] in guids
    ]


def test_three_shards_on_a_postgres_catalog(
    tmp_path: Path, postgres: Postgres, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="dbt_like")  # lost races and retries, shown if the test fails
    (sample,) = (ROOT / "sample_data").glob("*.ndjson")
    catalogs = iter([postgres.new_catalog(), postgres.new_catalog()])
    one = Lake(tmp_path / "one", lake_catalog=next(catalogs))
    split_lines(sample, one.landing, 36)
    one.batch()
    sharded = Lake(tmp_path / "sharded", lake_catalog=next(catalogs))
    split_lines(sample, sharded.landing, 36)
    pipelines = shard_pipelines(sharded)
    run_at_once(pipelines, minutes=0)
    run_at_once(pipelines, minutes=1)
    assert unjoined_connections(sharded, one) == []
    assert snapshot(sharded.settings) == snapshot(one.settings)


def _two_shards_with_the_same_event(lake: Lake, tables_made: bool = False) -> list[SysmonPipeline]:
    """Landing files of shard 0 and shard 1 that both carry one process create (and a connection). With
    ``tables_made``, each shard has first run a batch of an event of its own, so every table exists (and a race
    is only about rows: creating a table is a turn of its own, see the test of two shards creating tables)."""
    create = process_create("{SAME}", command_line="powershell.exe -enc AAAA", record=7001)
    owners: dict[int, Path] = {}
    for index in range(100):  # empty files until each shard owns one (a file's shard hashes its inode)
        path = lake.landing / f"file-{index}.ndjson"
        path.touch()
        owners.setdefault(file_shard(file_key(path), 2), path)
        if len(owners) == 2:
            break
    pipelines = shard_pipelines(lake, shards=2)
    if tables_made:
        for shard, path in owners.items():
            land(path, [process_create(f"{{OWN-{shard}}}", record=100 + shard)])
            pipelines[shard].run_batch(batch_time=T0 - timedelta(minutes=1))
    for path in owners.values():
        land(path, [create])
    land(owners[1], [network_connect("{SAME}", record=7002)])
    return pipelines


def _commit_the_other_shard_during(first: SysmonPipeline, second: SysmonPipeline, step: str) -> list[str]:
    """Run ``second``'s whole batch inside ``first``'s ``step`` transaction (of ``first``'s whole batch), just
    before it commits."""
    return _run_during(first, step, lambda: second.run_batch(batch_time=T0))


def _run_during(
    first: SysmonPipeline, step: str, meanwhile: Callable[[], object], run_first: Callable[[], object] | None = None
) -> list[str]:
    """Run ``meanwhile`` inside ``first``'s ``step`` transaction, just before it commits (its first attempt only);
    the attempts of that step."""
    own_note = first.project.commit_note
    attempts: list[str] = []

    def note(con: object, model: str, batch: object) -> None:
        if model == step:
            attempts.append(model)
            if len(attempts) == 1:
                meanwhile()
        own_note(con, model, batch)

    first.project.commit_note = note
    (run_first or (lambda: first.run_batch(batch_time=T0)))()
    return attempts


@pytest.fixture(params=["sqlite", "postgres"])
def catalog(request: pytest.FixtureRequest) -> dict[str, str]:
    """Lake settings for either catalog: with SQLite a commit after another's fails as locked (WAL) and runs
    again whatever it wrote, so the guard matters on PostgreSQL, where only DuckLake's own checks stand."""
    return {"lake_catalog": request.getfixturevalue("postgres").new_catalog()} if request.param == "postgres" else {}


def _second_delivery_upserted_by_both_shards(lake: Lake) -> list[SysmonPipeline]:
    """The event of :func:`_two_shards_with_the_same_event`, and a second delivery of the process create (another
    record number, so it passes the dedupe) in the second shard's file: both shards upsert the process."""
    pipelines = _two_shards_with_the_same_event(lake, tables_made=True)
    second_file = next(path for path in lake.landing.glob("file-*") if file_shard(file_key(path), 2) == 1)
    land(second_file, [process_create("{SAME}", command_line="powershell.exe -enc AAAA")])
    return pipelines


@pytest.mark.parametrize("step", ["winlogbeat_stream_rekey", "sysmon_process_create_table"])
def test_two_shards_committing_the_same_event_at_once_keep_one_row(
    tmp_path: Path, step: str, catalog: dict[str, str]
) -> None:
    lake = Lake(tmp_path, **catalog)
    if step == "sysmon_process_create_table":
        first, second = _second_delivery_upserted_by_both_shards(lake)
    else:
        first, second = _two_shards_with_the_same_event(lake, tables_made=True)
    attempts = _commit_the_other_shard_during(first, second, step)
    assert len(attempts) == 2, "the step that lost the race ran again"
    assert lake.rows("SELECT count(*) FROM sysmon_process_create_table WHERE process_guid = '{SAME}'") == [(1,)]
    if step == "winlogbeat_stream_rekey":
        rekeyed = lake.rows("SELECT count(*) FROM winlogbeat_stream_rekey WHERE process_guid = '{SAME}'")
        assert rekeyed == [(2,)]  # the create once, the connection once
    for pipeline in (first, second):
        pipeline.run_batch(batch_time=T0 + timedelta(minutes=1))
    assert lake.rows("SELECT process_command_line FROM sysmon_join") == [("powershell.exe -enc AAAA",)]


def test_two_shards_creating_tables_at_once_take_turns(tmp_path: Path, catalog: dict[str, str]) -> None:
    """A step that creates a table commits only on a catalog no other writer changed meanwhile; otherwise it runs
    again. DuckLake 1.4's own retry of such a commit can commit a table another writer has just created a second
    time, and lose one writer's rows of it (seen with three shards on PostgreSQL)."""
    lake = Lake(tmp_path, **catalog)
    first, second = _two_shards_with_the_same_event(lake)
    for pipeline, run_key in ((first, "first"), (second, "second")):
        for step in ("winlogbeat_stream", "winlogbeat_stream_rekey"):
            pipeline.run_model(step, run_key, T0)
    attempts = _run_during(
        first,
        "sysmon_process_create",
        lambda: second.run_model("sysmon_network_connect", "second", T0),
        lambda: first.run_model("sysmon_process_create", "first", T0),
    )
    assert len(attempts) == 2, "the step that created a table after another writer did ran again"
    created = lake.rows(
        "SELECT name, count(*) FROM (SELECT unnest(changes['tables_created']) AS name FROM ducklake_snapshots('lake')) "
        "GROUP BY ALL HAVING count(*) > 1"
    )
    assert created == [], "every table created once"
    assert lake.rows("SELECT process_guid FROM sysmon_process_create") == [("{SAME}",)]
    assert lake.rows("SELECT process_guid FROM sysmon_network_connect") == [("{SAME}",)]


def test_without_taking_turns_the_same_race_doubles_the_row(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, postgres: Postgres
) -> None:
    """The control for the test above: on PostgreSQL the guard is what keeps the row single."""
    lake = Lake(tmp_path, lake_catalog=postgres.new_catalog())
    first, second = _two_shards_with_the_same_event(lake, tables_made=True)
    for pipeline in (first, second):
        monkeypatch.setattr(pipeline.project, "serialized_models", list)
    _commit_the_other_shard_during(first, second, "winlogbeat_stream_rekey")
    assert lake.rows("SELECT count(*) FROM sysmon_process_create WHERE process_guid = '{SAME}'") == [(2,)]


def file_of_shard(lake: Lake, shard: int, shards: int) -> Path:
    """An empty landing file that ``shard`` of ``shards`` reads (a file's shard hashes its inode)."""
    for index in range(100):
        path = lake.landing / f"shard-file-{index}.ndjson"
        path.touch()
        if file_shard(file_key(path), shards) == shard:
            return path
    raise AssertionError("no file of the shard in 100 tries")


def test_of_two_creates_of_one_guid_in_two_shards_the_keyed_table_keeps_the_highest_seq(tmp_path: Path) -> None:
    """Arrival numbers order arrivals within a shard only (docs/storage.md): shard 1's earlier create outnumbers
    shard 0's later one, where one pipeline keeps the later arrival."""
    earlier, later = process_create("{SAME}", "earlier.exe"), process_create("{SAME}", "later.exe")
    one = Lake(tmp_path / "one")
    one.land([earlier], name="a.ndjson")
    one.batch(T0)
    one.land([later], name="b.ndjson")
    one.batch(T0 + timedelta(minutes=1))
    assert one.rows("SELECT process_command_line FROM sysmon_process_create_table") == [("later.exe",)]

    sharded = Lake(tmp_path / "sharded")
    first, second = shard_pipelines(sharded, shards=2)
    land(file_of_shard(sharded, 1, 2), [earlier])
    second.run_batch(batch_time=T0)
    land(file_of_shard(sharded, 0, 2), [later])
    first.run_batch(batch_time=T0 + timedelta(minutes=1))
    creates = sharded.rows("SELECT process_command_line, _seq FROM sysmon_process_create ORDER BY _seq")
    assert [line for line, _ in creates] == ["later.exe", "earlier.exe"]
    assert sharded.rows("SELECT process_command_line FROM sysmon_process_create_table") == [("earlier.exe",)]


def test_shards_keep_the_bookkeeping_in_parquet_files_not_inlined(lake: Lake) -> None:
    """Inlined rows would make every two shards' commits conflict (each deletes its own old bookkeeping rows)."""
    land(file_of_shard(lake, 0, SHARDS), [process_create("{A}"), network_connect("{A}")])
    shard_pipelines(lake)[0].run_batch(batch_time=T0)
    with open_lake(lake.settings, read_only=True) as con:
        limits = con.execute(
            "SELECT scope_entry, value FROM ducklake_options('lake') WHERE option_name = 'data_inlining_row_limit'"
        ).fetchall()
    assert all(value == "0" for _, value in limits), limits  # DuckLake 0.3 inlines nothing unless asked
    assert {path.parts[-3] for path in lake.data.rglob("*.parquet")} >= set(INLINED_SCHEMAS)


def test_one_shard_never_runs_twice_at_once(lake: Lake) -> None:
    owned = file_of_shard(lake, 0, 2)
    land(owned, [process_create("{A}"), network_connect("{A}")])
    first, again = shard_pipelines(lake, shards=2)[0], shard_pipelines(lake, shards=2)[0]
    first.run_batch(batch_time=T0)
    own_note = first.project.commit_note

    def meanwhile(con: object, model: str, batch: object) -> None:
        if model == "sysmon_process_create":
            again.run_model("winlogbeat_stream", run_key="the-same-shard-again")
        own_note(con, model, batch)

    first.project.commit_note = meanwhile
    land(owned, [process_create("{B}"), network_connect("{B}")])  # a step with nothing new commits nothing
    with pytest.raises(ConcurrentWriterError, match="step sysmon_process_create of batch 3"):
        first.run_batch(batch_time=T0)
    first.project.commit_note = own_note
    with pytest.raises(ConcurrentWriterError, match="batch 5 of shard 0 has already written"):
        first.run_model("sysmon_network_connect", run_key=first_run_key(lake, batch_id=3))


def first_run_key(lake: Lake, batch_id: int) -> str:
    return lake.rows("SELECT run_key FROM dbt_like.batches WHERE batch_id = ?", [batch_id])[0][0]


def test_the_shard_count_of_a_lake_cannot_change(lake: Lake) -> None:
    lake.land([process_create("{A}")])
    shard_pipelines(lake, shards=2)[0].run_batch(batch_time=T0)
    with pytest.raises(ProjectError, match=r"written by 2 shard\(s\); a project of 3 cannot continue it"):
        shard_pipelines(lake, shards=3)[1].run_batch(batch_time=T0)
    with pytest.raises(ProjectError, match="a project of 1 cannot continue it"):
        lake.batch()
    # nor did the refused runs (or a maintenance run configured without the count) inline the bookkeeping again
    with open_lake(lake.settings) as con:
        limits = con.execute(
            "SELECT DISTINCT value FROM ducklake_options('lake') WHERE option_name = 'data_inlining_row_limit'"
        ).fetchall()
    assert all(value == "0" for (value,) in limits), limits


def test_with_shards_each_dagster_partition_runs_its_shards_batch(tmp_path: Path) -> None:
    lake = Lake(tmp_path, shards=SHARDS)
    (sample,) = (ROOT / "sample_data").glob("*.ndjson")
    landed = split_lines(sample, lake.landing, 36)
    definitions = build_definitions(lake.settings)
    job = definitions.resolve_job_def("sysmon_micro_batch")
    assert job.partitions_def.get_partition_keys() == ["shard-0", "shard-1", "shard-2"]
    result = job.execute_in_process(partition_key="shard-1")
    assert result.success
    owned = {file_key(path) for path in landed if file_shard(file_key(path), SHARDS) == 1}
    assert {key for (key,) in lake.rows("SELECT file_key FROM ingest.files")} == owned
    assert lake.rows("SELECT batch_id FROM dbt_like.batches") == [(2,)]
    unsharded = job.execute_in_process(raise_on_error=False)
    assert not unsharded.success
    (failure,) = [event for event in unsharded.all_events if event.is_step_failure]
    assert failure.step_key == "winlogbeat_stream"
    assert "with SYSMON_SHARDS=3 a batch is one shard's: name it" in str(failure.step_failure_data.error)
    assert lake.rows("SELECT batch_id FROM dbt_like.batches") == [(2,)]
    # a range of shards (a backfill in one run): refused as such (the message said the run named none)
    tags = {"dagster/asset_partition_range_start": "shard-0", "dagster/asset_partition_range_end": "shard-1"}
    ranged = job.execute_in_process(tags=tags, raise_on_error=False)
    (failure,) = [event for event in ranged.all_events if event.is_step_failure]
    assert "this run names the range shard-0...shard-1" in str(failure.step_failure_data.error)
    assert lake.rows("SELECT batch_id FROM dbt_like.batches") == [(2,)]
    # a key that is not one of the partitions' own (shard-1 would be another run-queue key): refused, not run
    odd = job.execute_in_process(tags={"dagster/partition": "shard-01"}, raise_on_error=False)
    (failure,) = [event for event in odd.all_events if event.is_step_failure]
    assert failure.step_key == "winlogbeat_stream"
    assert "partition shard-01 is none of shard-0, shard-1, shard-2" in str(failure.step_failure_data.error)
    assert lake.rows("SELECT batch_id FROM dbt_like.batches") == [(2,)]
    schedule = definitions.resolve_schedule_def("sysmon_every_minute")
    tick = build_schedule_context(
        scheduled_execution_time=datetime(2026, 12, 1, 0, 1, tzinfo=UTC),
        repository_def=definitions.get_repository_def(),
    )
    requests = schedule.evaluate_tick(tick).run_requests
    assert [request.partition_key for request in requests] == ["shard-0", "shard-1", "shard-2"]


def test_the_sensor_requests_a_run_for_each_shard_whose_files_grew(tmp_path: Path) -> None:
    landed = split_lines(ROOT / "sample_data" / "winlogbeat-sample.ndjson", tmp_path, 36)
    requests, _ = evaluate_landing(tmp_path, None, SHARDS)
    expected = sorted({file_shard(file_key(path), SHARDS) for path in landed})
    assert [request.partition_key for request in requests] == [f"shard-{shard}" for shard in expected]


def test_the_cli_runs_one_shards_batch(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    (sample,) = (ROOT / "sample_data").glob("*.ndjson")
    landed = split_lines(sample, lake.landing, 36)
    env = {
        **os.environ,
        "SYSMON_LANDING_DIR": str(lake.landing),
        "SYSMON_DATA_DIR": str(lake.data),
        "SYSMON_SHARDS": str(SHARDS),
    }
    refused = subprocess.run(CLI_BATCH, cwd=ROOT, env=env, capture_output=True, text=True)
    assert refused.returncode != 0 and "no '--partition' option was provided" in refused.stderr
    assert not (lake.data / "lake.sqlite").exists(), "a refused command opens no lake"
    subprocess.run([*CLI_BATCH, "--partition", "shard-2"], cwd=ROOT, env=env, check=True, capture_output=True)
    owned = {file_key(path) for path in landed if file_shard(file_key(path), SHARDS) == 2}
    assert {key for (key,) in lake.rows("SELECT file_key FROM ingest.files")} == owned
    assert lake.rows("SELECT batch_id FROM dbt_like.batches") == [(3,)]


@pytest.mark.parametrize("step_hours", [0, 2])
def test_maintenance_during_a_shards_step_leaves_it_its_files_and_its_race(
    tmp_path: Path, postgres: Postgres, step_hours: int
) -> None:
    """Another shard's batch and a maintenance run while a step is open, the step lasting moments or two hours
    (maintenance's clock moved on). A merge schedules the files it replaced for deletion at once: the step must
    still find the files it listed, then lose its race (here to the merge's own conflict; the snapshots' part is
    the next test), run again and keep one row."""
    lake = Lake(tmp_path, lake_catalog=postgres.new_catalog())
    first, second = _second_delivery_upserted_by_both_shards(lake)
    upkeeps = []

    def second_batch_then_maintenance() -> None:
        second.run_batch(batch_time=T0)
        with open_lake(lake.settings) as con:
            now = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=step_hours)
            upkeeps.append(maintain(con, now, snapshot_retention_days=7, event_retention_days=None))

    attempts = _run_during(first, "sysmon_process_create_table", second_batch_then_maintenance)
    assert sum(upkeeps[0].files_before.values()) > sum(upkeeps[0].files_after.values()), "the run merged files"
    assert len(attempts) == 2, "the step that lost the race ran again"
    assert lake.rows("SELECT count(*) FROM sysmon_process_create_table WHERE process_guid = '{SAME}'") == [(1,)]


def test_snapshots_a_running_shards_race_is_told_by_do_not_expire(tmp_path: Path, postgres: Postgres) -> None:
    """The snapshots' part of the test above, two hours on: none taken since the running shard's last complete batch
    (its step began after it) is expirable, though other batches completed since."""
    lake = Lake(tmp_path, lake_catalog=postgres.new_catalog())
    first, second = _second_delivery_upserted_by_both_shards(lake)
    expired: list[int] = []

    def second_batch_then_expiry() -> None:
        second.run_batch(batch_time=T0)
        with open_lake(lake.settings) as con:
            now = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=2)
            expired.extend(expirable_snapshots(con, now - timedelta(days=7), now - BETWEEN_BATCHES_KEPT))
            con.execute(f"CALL ducklake_expire_snapshots('lake', versions => {expired})")

    attempts = _run_during(first, "sysmon_process_create_table", second_batch_then_expiry)
    with open_lake(lake.settings, read_only=True) as con:
        _, first_complete = batch_snapshot(con, 1)  # the first shard's batch before the one running
    assert expired and max(expired) < first_complete
    assert len(attempts) == 2, "the step that lost the race ran again"
    assert lake.rows("SELECT count(*) FROM sysmon_process_create_table WHERE process_guid = '{SAME}'") == [(1,)]


def test_without_its_snapshots_ducklake_misses_a_lost_race(tmp_path: Path, postgres: Postgres) -> None:
    """The control for the test above: two transactions replace one row; the second to commit conflicts, unless the
    snapshots taken since it began have expired: then it commits, and the row is there twice."""
    outcomes = []
    for expire in (False, True):
        settings = Settings(landing_dir=tmp_path, data_dir=tmp_path / str(expire), lake_catalog=postgres.new_catalog())
        with open_lake(settings) as slow, open_lake(settings) as fast:
            slow.execute("CREATE TABLE guard (name VARCHAR); INSERT INTO guard VALUES ('x')")
            slow.execute("BEGIN; DELETE FROM guard; INSERT INTO guard VALUES ('x')")
            fast.execute("BEGIN; DELETE FROM guard; INSERT INTO guard VALUES ('x'); COMMIT")
            if expire:
                taken = fast.execute("SELECT list(snapshot_id) FROM ducklake_snapshots('lake')").fetchone()[0]
                fast.execute(f"CALL ducklake_expire_snapshots('lake', versions => {taken[1:-1]})")
            try:
                slow.execute("COMMIT")
                outcomes.append(fast.execute("SELECT count(*) FROM guard").fetchone()[0])
            except duckdb.TransactionException:
                outcomes.append("conflict")
    assert outcomes == ["conflict", 2]


def _two_shards_batches(lake: Lake, shard_of_each_batch: list[int]) -> tuple[list[SysmonPipeline], list[Path]]:
    """Two shards' pipelines and landing files, after a batch of one process (create and connection) per entry,
    run by the shard it names, a minute apart."""
    pipelines = shard_pipelines(lake, shards=2)
    files = [file_of_shard(lake, shard, 2) for shard in (0, 1)]
    for minute, shard in enumerate(shard_of_each_batch):
        land(files[shard], [process_create(f"{{P{minute}}}", record=minute), network_connect(f"{{P{minute}}}")])
        pipelines[shard].run_batch(batch_time=T0 + timedelta(minutes=minute))
    return pipelines, files


def test_a_run_keeps_the_files_it_replaced_while_a_shards_batch_may_run(
    tmp_path: Path, catalog: dict[str, str]
) -> None:
    """DuckLake schedules the files a merge replaced for deletion at once: a run deletes them only when no batch
    that began before may still be running (here one has committed its first steps), else a later run does. An idle
    shard stays idle to maintenance after the retention, when the snapshot its newest batch completed at expired."""
    lake = Lake(tmp_path, **catalog)
    pipelines, files = _two_shards_batches(lake, [1, 0, 0, 0])
    land(files[0], [process_create("{RUNNING}", record=99)])
    steps = pipelines[0].project.primary_models()
    for step in steps[:3]:
        pipelines[0].run_model(step, "running", T0 + timedelta(minutes=9))
    on_disk = set(lake.data.rglob("*.parquet"))
    with open_lake(lake.settings) as con:
        first = maintain(con, utc_now(), snapshot_retention_days=7, event_retention_days=None)
    assert sum(first.files_after.values()) < sum(first.files_before.values()), "the run merged files"
    assert first.files_deleted == 0 and set(lake.data.rglob("*.parquet")) >= on_disk
    for step in steps[3:]:
        pipelines[0].run_model(step, "running", T0 + timedelta(minutes=9))
    with open_lake(lake.settings) as con:
        second = maintain(con, utc_now() + timedelta(days=8), snapshot_retention_days=7, event_retention_days=None)
        # its completion's snapshot expired, shard 1, idle since its only batch, is not taken as running
        assert running_batch_floor(con, utc_now() + timedelta(days=1)) is None
    assert second.files_deleted > 0 and not on_disk <= set(lake.data.rglob("*.parquet"))


def test_a_batch_opening_beside_a_maintenance_run_keeps_its_files(
    tmp_path: Path, postgres: Postgres, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A batch's opening transaction lists the bookkeeping's files before its batch row commits: a maintenance run
    inside it must not delete the files its own merge replaced (no batch looks running to it then)."""
    lake = Lake(tmp_path, lake_catalog=postgres.new_catalog())
    pipelines, files = _two_shards_batches(lake, [0, 1, 0, 1])
    upkeeps = []
    add_batch = runner.find_or_add_batch

    def maintenance_inside(con: object, run_key: str, started_at: datetime, shard: object) -> object:
        added = add_batch(con, run_key, started_at, shard)
        if not upkeeps:
            with open_lake(lake.settings) as other:
                upkeeps.append(maintain(other, utc_now(), snapshot_retention_days=7, event_retention_days=None))
        return added

    monkeypatch.setattr(runner, "find_or_add_batch", maintenance_inside)
    land(files[0], [process_create("{NEW}", record=50), network_connect("{NEW}")])
    pipelines[0].run_batch(batch_time=T0 + timedelta(minutes=9))
    assert sum(upkeeps[0].files_after.values()) < sum(upkeeps[0].files_before.values()), "the run merged files"
    assert lake.rows("SELECT process_command_line FROM sysmon_join WHERE process_guid = '{NEW}'") != []
