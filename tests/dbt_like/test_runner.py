"""dbt_like's incremental runner on a small generic project that knows nothing of Sysmon."""

from __future__ import annotations

import dataclasses
import json
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pytest

from dbt_like import ConcurrentWriterError, Project, ProjectError, open_batch, runner
from dbt_like.compiler import Shard
from dbt_like.sql import literal
from sysmon_assets.settings import Settings
from sysmon_assets.storage.lake import attach, connection_config
from tests.conftest import RecordingConnection, profile_operators, profile_to

T0 = datetime(2026, 1, 1)
TABLES = ["events", "orders", "catalog", "priced"]

MODELS = {
    "events.sql": """-- Raw events from a supplied source.
{{ config(materialized='stream') }}
SELECT id AS _seq, kind, item FROM {{ source('feed') }}
""",
    "orders.sql": """-- Only orders.
{{ config(materialized='stream') }}
SELECT _seq, item FROM {{ ref('events') }} WHERE kind = 'order'
""",
    "catalog.sql": """-- Latest price per item.
{{ config(materialized='table', unique_key='item') }}
SELECT _seq, item FROM {{ ref('events') }} WHERE kind = 'price'
""",
    "priced.sql": """-- Orders with a catalogued item, retried while the item is missing.
{{ config(materialized='stream', retry_unmatched='orders', retry_grace_minutes=10) }}
SELECT o._seq, o.item FROM {{ ref('orders') }} AS o JOIN {{ ref('catalog') }} AS c ON o.item = c.item
""",
}


@pytest.fixture
def project(tmp_path: Path) -> Project:
    models = tmp_path / "models"
    models.mkdir()
    for name, sql in MODELS.items():
        (models / name).write_text(sql)
    return Project(models)


def feed(*rows: tuple[int, str, str]) -> dict[str, pd.DataFrame]:
    return {"feed": pd.DataFrame(rows, columns=["id", "kind", "item"])}


def run_all(project: Project, con: duckdb.DuckDBPyConnection, rows: list, run_key: str, at: datetime = T0) -> dict:
    batch = open_batch(con, run_key, at)
    results = {"events": project.run_step(con, "events", batch, source_chunks=[feed(*rows)])[0]}
    for name in ["orders", "catalog", "priced"]:
        results[name] = project.run_step(con, name, batch)[0]
    return results


def test_discovers_models_in_dependency_order_with_descriptions(project: Project) -> None:
    assert list(project.models) == ["events", "catalog", "orders", "priced"]
    assert project.models["priced"].refs == ("orders", "catalog")
    assert project.models["events"].description == "Raw events from a supplied source."
    assert project.configs["catalog"]["materialized"] == "table"


def test_a_stream_step_reads_only_what_its_input_gained(project: Project) -> None:
    con = duckdb.connect()
    first = run_all(project, con, [(1, "order", "a"), (2, "price", "a")], "r1")
    second = run_all(project, con, [(3, "order", "a")], "r2")
    assert (first["orders"].rows_in, second["orders"].rows_in) == (2, 1)
    assert second["orders"].offsets_before == {"events": 1}
    assert second["orders"].offsets_after == {"events": 2}
    assert con.execute("SELECT _seq, _batch_id FROM priced ORDER BY 1").fetchall() == [(1, 1), (3, 2)]


def test_a_step_with_nothing_new_changes_nothing(project: Project) -> None:
    con = duckdb.connect()
    run_all(project, con, [(1, "order", "a"), (2, "price", "a")], "r1")
    before = {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}
    results = run_all(project, con, [], "r2")
    assert all(result.rows_written == 0 for result in results.values())
    assert before == {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in TABLES}


class CountingConnection:
    """A connection that counts the transactions opened on it."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self._con, self.begins = con, 0

    def begin(self) -> duckdb.DuckDBPyConnection:
        self.begins += 1
        return self._con.begin()

    def __getattr__(self, name: str) -> object:
        return getattr(self._con, name)


def test_an_idle_step_reads_its_row_count_in_its_one_transaction(project: Project) -> None:
    con = duckdb.connect()
    run_all(project, con, [(1, "order", "a"), (2, "price", "a")], "r1")
    counting = CountingConnection(con)
    idle = project.run_step(counting, "orders", open_batch(con, "r2", T0))[0]
    assert (counting.begins, idle.rows_written, idle.table_rows) == (1, 0, 1)
    # a step that writes commits, then reads its tests and row count in a second transaction
    project.run_step(con, "events", open_batch(con, "r3", T0), source_chunks=[feed((3, "order", "b"))])
    counting = CountingConnection(con)
    busy = project.run_step(counting, "orders", open_batch(con, "r3", T0))[0]
    assert (counting.begins, busy.rows_written, busy.table_rows) == (2, 1, 2)


def test_table_upsert_keeps_the_latest_row_per_key(project: Project) -> None:
    con = duckdb.connect()
    run_all(project, con, [(1, "price", "a"), (2, "price", "b")], "r1")
    run_all(project, con, [(4, "price", "a"), (3, "price", "a")], "r2")
    assert con.execute("SELECT item, _seq, _batch_id FROM catalog ORDER BY item").fetchall() == [
        ("a", 4, 2),
        ("b", 2, 1),
    ]


def test_unmatched_rows_are_retried_until_the_grace_period_ends(project: Project) -> None:
    con = duckdb.connect()
    first = run_all(project, con, [(1, "order", "x"), (2, "order", "y")], "r1", T0)
    assert first["priced"].pending == 2
    second = run_all(project, con, [(3, "price", "x")], "r2", T0 + timedelta(minutes=5))
    assert (second["priced"].rows_written, second["priced"].pending) == (1, 1)
    third = run_all(project, con, [(4, "price", "y")], "r3", T0 + timedelta(minutes=11))
    assert (third["priced"].rows_written, third["priced"].expired, third["priced"].pending) == (0, 1, 0)


def project_with_a_report(tmp_path: Path) -> Project:
    """The models and a view over ``priced``, so that ``priced`` is not the last step (the last always commits: it
    marks the batch whole)."""
    models = tmp_path / "models"
    models.mkdir()
    for name, sql in {
        **MODELS,
        "report.sql": "{{ config(materialized='view') }} SELECT * FROM {{ ref('priced') }}",
    }.items():
        (models / name).write_text(sql)
    return Project(models)


@pytest.mark.parametrize("opened_by", ["function", "project"])
def test_waiting_rows_keep_a_step_busy_only_when_they_could_match_something_new(tmp_path: Path, opened_by: str) -> None:
    """``open_batch`` (the function) leaves every step to find out in a transaction that it has nothing to do, and
    a step that wrote no rows to read its tests and row count in another; ``Project.open_batch`` (a writer alone on
    its lake) tells both from the lake as the batch opened."""
    project = project_with_a_report(tmp_path)
    con = duckdb.connect()
    idle_begins = 1 if opened_by == "function" else 0
    no_rows_begins = 2 if opened_by == "function" else 1

    def batch(rows: list, run_key: str, minutes: int) -> tuple[int, object]:
        """Every step but ``priced``, then ``priced`` on a connection counting its transactions."""
        opener = open_batch if opened_by == "function" else project.open_batch
        at = opener(con, run_key, T0 + timedelta(minutes=minutes))
        project.run_step(con, "events", at, source_chunks=[feed(*rows)])
        for name in ["orders", "catalog"]:
            project.run_step(con, name, at)
        counting = CountingConnection(con)
        result = project.run_step(counting, "priced", at)[0]
        return counting.begins, result

    assert batch([(1, "order", "x")], "r1", 0)[1].pending == 1
    begins, idle = batch([], "r2", 1)  # nothing new: the waiting order cannot match anything new
    assert (begins, idle.rows_written, idle.expired, idle.table_rows) == (idle_begins, 0, 0, 0)
    begins, busy = batch([(2, "price", "y")], "r3", 2)  # the catalog changed (not for x): x is tried again
    assert (begins, busy.rows_written, busy.pending) == (no_rows_begins, 0, 1)
    begins, matched = batch([(3, "price", "x"), (4, "order", "z")], "r4", 3)
    assert (begins, matched.rows_written, matched.pending) == (2, 1, 1)
    assert batch([], "r5", 4)[0] == idle_begins
    begins, expired = batch([], "r6", 14)  # z's grace period (10 minutes) has passed: it leaves the retry
    assert (begins, expired.expired, expired.pending) == (no_rows_begins, 1, 0)
    assert con.execute("SELECT item FROM priced").fetchall() == [("x",)]


OUTCOMES = {
    "outcomes.sql": """-- Each order once, when its wait for a price ended: priced in time, or not.
{{ config(materialized='stream') }}
SELECT _seq, item, 'priced' AS outcome FROM {{ ref('priced') }}
UNION ALL
SELECT _seq, item, 'unpriced' AS outcome FROM {{ unmatched('priced') }}
""",
    "late.sql": """-- The orders that were not priced in time.
{{ config(materialized='stream') }}
SELECT _seq, item FROM {{ unmatched('priced') }} WHERE _seq NOT IN (SELECT _seq FROM {{ ref('priced') }})
""",
    "report.sql": "{{ config(materialized='view') }} SELECT * FROM {{ ref('outcomes') }}",
}


@pytest.mark.parametrize("opened_by", ["function", "project"])
def test_a_model_reads_each_row_a_retried_model_stopped_waiting_for_once(tmp_path: Path, opened_by: str) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name, sql in {**MODELS, **OUTCOMES}.items():
        (models / name).write_text(sql)
    project = Project(models)
    project.let_go_of_unmatched_at = 2
    con = duckdb.connect()
    kept = "SELECT seq, batch_id FROM dbt_like.unmatched ORDER BY ALL"

    def batch(rows: list, run_key: str, minutes: int, steps: tuple[str, ...] = ("outcomes", "report")) -> None:
        opener = open_batch if opened_by == "function" else project.open_batch
        at = opener(con, run_key, T0 + timedelta(minutes=minutes))
        project.run_step(con, "events", at, source_chunks=[feed(*rows)])
        for name in ["orders", "catalog", "priced", *steps]:
            project.run_step(con, name, at)

    batch([(1, "order", "x"), (2, "order", "y")], "r1", 0)
    batch([(3, "price", "x")], "r2", 5)
    batch([], "r3", 11)  # y's grace (10 minutes) ends in a batch that brings nothing
    batch([], "r4", 12)
    batch([(4, "price", "y"), (5, "order", "z")], "r5", 13)  # too late for y
    batch([], "r6", 30)
    outcomes = con.execute("SELECT _seq, item, outcome, _batch_id FROM outcomes ORDER BY _seq").fetchall()
    assert outcomes == [(1, "x", "priced", 2), (2, "y", "unpriced", 3), (5, "z", "unpriced", 6)]
    assert con.execute(kept).fetchall() == [(2, 3), (5, 6)]  # two kept: late has not read them
    batch([(6, "order", "w")], "r7", 31, steps=("late", "outcomes", "report"))
    assert con.execute("SELECT _seq, item FROM late ORDER BY _seq").fetchall() == [(2, "y"), (5, "z")]
    assert con.execute(kept).fetchall() == []  # every reader has read them: let go of
    batch([], "r8", 42, steps=("late", "outcomes", "report"))  # w's grace ends: one row, kept
    assert con.execute(kept).fetchall() == [(6, 8)]


def test_a_lagging_step_reports_the_rows_that_stopped_waiting_it_read_once(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name, sql in {**MODELS, **OUTCOMES}.items():
        (models / name).write_text(sql)
    project, con = Project(models), duckdb.connect()
    batches = [[(1, "order", "x"), (2, "order", "y")], [(3, "price", "x")], [], [(4, "order", "z"), (5, "price", "z")]]
    for number, (rows, minutes) in enumerate(zip(batches, [0, 5, 11, 12], strict=True), start=1):
        at = open_batch(con, f"r{number}", T0 + timedelta(minutes=minutes))  # y's grace ends in batch 3
        project.run_step(con, "events", at, source_chunks=[feed(*rows)])
        for name in ["orders", "catalog", "priced"]:
            project.run_step(con, name, at)
    counting = CountingConnection(con)
    late = project.run_step(counting, "late", at)[0]
    # a transaction for each of priced's batches 2 and 4 and for batch 3, where y's wait ended; then the tests
    assert counting.begins == 4
    assert (late.offsets_before, late.offsets_after) == ({"priced": 0}, {"priced": 4})
    assert late.unmatched_read == {"priced": 1}
    assert con.execute("SELECT _seq, item FROM late").fetchall() == [(2, "y")]


def test_a_lagging_step_with_a_side_model_reads_one_batch_per_transaction_and_each_row_once(project: Project) -> None:
    """A side model reads the rows its step wrote in the transaction: not the earlier transactions' again."""
    (project.models_dir / "order_log.sql").write_text(
        "{{ config(materialized='stream', part_of='orders') }} SELECT _seq, item FROM {{ ref('orders') }}"
    )
    project, con = Project(project.models_dir), duckdb.connect()
    for number in (1, 2, 3):
        at = open_batch(con, f"r{number}", T0)
        project.run_step(con, "events", at, source_chunks=[feed((number, "order", f"item{number}"))])
    counting = CountingConnection(con)
    (result, _) = project.run_step(counting, "orders", at)
    assert (counting.begins, result.offsets_after) == (4, {"events": 3})  # a transaction per batch, then the tests
    assert con.execute("SELECT _seq FROM order_log ORDER BY 1").fetchall() == [(1,), (2,), (3,)]


@pytest.mark.parametrize("stopped", ["orders", "all"])
def test_a_retention_that_spares_unread_rows_loses_no_outcome(tmp_path: Path, stopped: str) -> None:
    """A retention of 15 minutes (longer than the grace) runs while a step lags (orders: its runs failed) or the
    whole pipeline is stopped (x waits, then is given up): deleting what unread_rows holds, no outcome is lost."""
    models = tmp_path / "models"
    models.mkdir()
    for name, sql in {**MODELS, **OUTCOMES}.items():
        (models / name).write_text(sql)
    project, con = Project(models), duckdb.connect()
    every = ["orders", "catalog", "priced", "outcomes", "late"]

    def batch(minute: int, rows: list, steps: list[str]) -> None:
        at = project.open_batch(con, f"r{minute}", T0 + timedelta(minutes=minute))
        project.run_step(con, "events", at, source_chunks=[feed(*rows)])
        for name in steps:
            project.run_step(con, name, at)

    batch(-1, [(9, "price", "z")], every)
    batch(0, [(1, "order", "x")], [] if stopped == "orders" else every)
    if stopped == "orders":
        batch(8, [], [])
    older = f"SELECT batch_id FROM dbt_like.batches WHERE started_at < {literal(T0 + timedelta(minutes=1))}"
    for table in ["events", "orders", "priced", "outcomes", "late"]:  # at minute 16: what t=0 wrote, if read
        con.execute(f"DELETE FROM {table} WHERE _batch_id IN ({older}) AND NOT {project.unread_rows(con, table)}")
    batch(16, [], every)
    batch(40, [], every)
    assert con.execute("SELECT _seq, item, outcome FROM outcomes").fetchall() == [(1, "x", "unpriced")]


def test_a_retention_keeps_given_up_rows_until_their_own_shards_readers_read_them(tmp_path: Path) -> None:
    """x's wait ends in shard 0's batch 3, whose outcomes and late have not run yet; shard 1's have read through its
    batch 6 (batch ids interleave). x is unread until shard 0's readers have read it: a retention keeps it."""
    models = tmp_path / "models"
    models.mkdir()
    for name, sql in {**MODELS, **OUTCOMES}.items():
        (models / name).write_text(sql)
    shard = [Project(models, shard=Shard(index, 2)) for index in range(2)]
    con, run_keys = duckdb.connect(), iter(range(9))
    every = ["orders", "catalog", "priced", "outcomes", "late"]

    def batch(index: int, minute: int, rows: list, steps: list[str]) -> None:
        at = shard[index].open_batch(con, f"r{next(run_keys)}", T0 + timedelta(minutes=minute))
        shard[index].run_step(con, "events", at, source_chunks=[feed(*rows)])
        for name in steps:
            shard[index].run_step(con, name, at)

    batch(0, 0, [(1, "order", "x")], every[:3])
    batch(1, 0, [(2, "price", "y")], every)
    batch(0, 11, [], every[:3])  # x's wait ends
    batch(1, 11, [(3, "order", "y")], every)
    batch(1, 12, [(4, "order", "y")], every)
    older = f"SELECT batch_id FROM dbt_like.batches WHERE started_at < {literal(T0 + timedelta(minutes=1))}"
    for table in ["events", "orders", "priced", "outcomes", "late"]:
        con.execute(f"DELETE FROM {table} WHERE _batch_id IN ({older}) AND NOT {shard[1].unread_rows(con, table)}")
    # kept wherever its arrival number is: a reader of unmatched() may read its other forms by it
    assert con.execute("SELECT _seq FROM events WHERE _batch_id = 1").fetchall() == [(1,)]
    batch(0, 20, [], every)
    assert con.execute("SELECT _seq, item, outcome FROM outcomes WHERE item = 'x'").fetchall() == [(1, "x", "unpriced")]
    assert con.execute("SELECT _seq, item FROM late").fetchall() == [(1, "x")]


def test_unread_rows_are_kept_for_a_reader_that_never_ran_and_per_shard(project: Project) -> None:
    """events is read by orders and catalog. A batch that stopped after orders: catalog never read its rows. With
    two shards, one shard's progress says nothing of the other's rows, and an idle shard holds back none of them."""
    con = duckdb.connect()
    at = project.open_batch(con, "r1", T0)
    project.run_step(con, "events", at, source_chunks=[feed((1, "price", "a"))])
    project.run_step(con, "orders", at)
    assert con.execute(f"SELECT _seq FROM events WHERE {project.unread_rows(con, 'events')}").fetchall() == [(1,)]

    shard = [Project(project.models_dir, shard=Shard(index, 2)) for index in range(2)]
    con = duckdb.connect()
    unread = "SELECT _batch_id FROM events WHERE {} ORDER BY 1"
    run_keys = iter(range(10))

    def batches(*runs: tuple[int, list[str]]) -> None:
        for index, steps in runs:
            at = shard[index].open_batch(con, f"r{next(run_keys)}", T0)
            for name in steps:
                rows = [feed((at.batch_id, "price", f"item{at.batch_id}"))] if name == "events" else None
                shard[index].run_step(con, name, at, source_chunks=rows)

    batches((0, TABLES), (1, ["events"]), (0, TABLES))  # batch 2, shard 1's, was read by no step but its ingest
    for reading in (*shard, Project(project.models_dir)):  # a project of another shard count too: the lake's counts
        assert con.execute(unread.format(reading.unread_rows(con, "events"))).fetchall() == [(2,)]
    batches((1, TABLES), (0, TABLES), (0, TABLES))  # shard 1 reads batches 2 and 4, then stays idle
    assert con.execute("SELECT list(_batch_id ORDER BY 1) FROM events").fetchall() == [([1, 2, 3, 4, 5, 7],)]
    assert con.execute(unread.format(shard[1].unread_rows(con, "events"))).fetchall() == []


def test_a_side_model_of_a_chunk_fed_step_reads_each_chunks_rows_once(project: Project) -> None:
    (project.models_dir / "event_log.sql").write_text(
        "{{ config(materialized='stream', part_of='events') }} SELECT _seq, item FROM {{ ref('events') }}"
    )
    project, con = Project(project.models_dir), duckdb.connect()
    batch = open_batch(con, "r1", T0)
    project.run_step(con, "events", batch, source_chunks=[feed((1, "order", "a")), feed((2, "order", "b"))])
    # the batch's step run again (a run that stopped after those chunks, going on): its rows are not read again
    project.run_step(con, "events", batch, source_chunks=[feed((3, "price", "b"))])
    assert con.execute("SELECT _seq FROM event_log ORDER BY 1").fetchall() == [(1,), (2,), (3,)]


def test_a_side_model_of_a_step_numbering_a_batch_downwards_fails_it_rather_than_miss_rows(project: Project) -> None:
    (project.models_dir / "event_log.sql").write_text(
        "{{ config(materialized='stream', part_of='events') }} SELECT _seq, item FROM {{ ref('events') }}"
    )
    project, con = Project(project.models_dir), duckdb.connect()
    batch = open_batch(con, "r1", T0)
    with pytest.raises(ProjectError, match=r"model events wrote 1 row\(s\) in this transaction, 1 of them with a _seq"):
        project.run_step(con, "events", batch, source_chunks=[feed((5, "order", "a")), feed((2, "order", "b"))])
    assert con.execute("SELECT _seq FROM event_log").fetchall() == [(5,)]  # the second chunk was rolled back


def test_a_side_model_of_a_model_without_seq_reads_its_rows_of_the_batch(project: Project) -> None:
    (project.models_dir / "kinds.sql").write_text(
        "{{ config(materialized='stream') }} SELECT DISTINCT kind FROM {{ ref('events') }}"
    )
    (project.models_dir / "kind_log.sql").write_text(
        "{{ config(materialized='stream', part_of='kinds') }} SELECT kind FROM {{ ref('kinds') }}"
    )
    project, con = Project(project.models_dir), duckdb.connect()
    for number, kind in enumerate(["order", "price"], start=1):
        batch = open_batch(con, f"r{number}", T0)
        project.run_step(con, "events", batch, source_chunks=[feed((number, kind, "a"))])
        project.run_step(con, "kinds", batch)
    assert con.execute("SELECT kind FROM kind_log ORDER BY 1").fetchall() == [("order",), ("price",)]


def test_a_side_model_with_a_stream_input_of_its_own_is_refused(project: Project) -> None:
    """Its step reads the side model's inputs in each of its transactions: a catch-up would read them again."""
    (project.models_dir / "order_notes.sql").write_text(
        "{{ config(materialized='stream', part_of='orders') }} SELECT _seq, item FROM {{ ref('events') }}"
    )
    with pytest.raises(ProjectError, match=r"order_notes\.sql: a side model .* input\(s\) events "):
        Project(project.models_dir)


def test_unmatched_of_a_model_that_retries_nothing_is_refused(project: Project) -> None:
    (project.models_dir / "lost.sql").write_text(
        "SELECT _seq, item FROM {{ ref('orders') }} UNION ALL SELECT _seq, item FROM {{ unmatched('orders') }}"
    )
    con = duckdb.connect()
    run_all(project := Project(project.models_dir), con, [(1, "order", "x")], "r1")
    with pytest.raises(ProjectError, match=r"lost.sql: unmatched\('orders'\) needs a ref\(\) to a stream declaring"):
        project.run_step(con, "lost", project.open_batch(con, "r1", T0))


def test_an_input_added_to_a_model_that_has_run_is_read_from_the_batches_it_has_not_read(
    project: Project, tmp_path: Path
) -> None:
    """As dbt's incremental models: the rows it made before did not read the new input, and are not made again."""
    (project.models_dir / "returns.sql").write_text("SELECT _seq, item FROM {{ ref('events') }} WHERE kind = 'return'")
    project = Project(project.models_dir)
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    run_all(project, con, [(1, "order", "a"), (2, "return", "old")], "r1")
    project.run_step(con, "returns", project.open_batch(con, "r1", T0))
    path = project.models_dir / "orders.sql"
    path.write_text(path.read_text() + "UNION ALL SELECT _seq, 'returned ' || item FROM {{ ref('returns') }}\n")
    upgraded = Project(project.models_dir)
    at = upgraded.open_batch(con, "r2", T0)
    upgraded.run_step(con, "events", at, source_chunks=[feed((3, "return", "new"), (4, "order", "b"))])
    for name in ["returns", "orders"]:
        upgraded.run_step(con, name, at)
    assert con.execute("SELECT item, _batch_id FROM orders ORDER BY _seq").fetchall() == [
        ("a", 1),
        ("returned new", 2),
        ("b", 2),
    ]


def test_an_idle_batch_of_a_writer_alone_reports_what_the_transactions_would_have_found(tmp_path: Path) -> None:
    """Steps told idle from the lake as the batch opened report the offsets, row counts and tests that running
    them finds; a step whose input an earlier step of the batch wrote rows to runs."""
    project = project_with_a_report(tmp_path)
    con = duckdb.connect()

    def batch(opener: object, rows: list, run_key: str) -> tuple[dict[str, int], dict[str, object]]:
        at = opener(con, run_key, T0)
        project.run_step(con, "events", at, source_chunks=[feed(*rows)])
        begins, results = {}, {}
        for name in ["catalog", "orders", "priced", "report"]:
            counting = CountingConnection(con)
            results[name] = project.run_step(counting, name, at)
            begins[name] = counting.begins
        return begins, results

    batch(project.open_batch, [(1, "order", "a"), (2, "price", "a"), (3, "order", "b")], "r1")
    run_begins, ran = batch(open_batch, [], "r2")
    told_begins, told = batch(project.open_batch, [], "r3")
    assert run_begins == {"catalog": 1, "orders": 1, "priced": 1, "report": 2}
    # the view (the batch's last step) commits, but its tests need no transaction: no table it reads got rows
    assert told_begins == {"catalog": 0, "orders": 0, "priced": 0, "report": 1}
    for name in ["catalog", "orders", "priced", "report"]:
        assert [dataclasses.replace(result, tests=[]) for result in told[name]] == [
            dataclasses.replace(result, tests=[]) for result in ran[name]
        ]
        assert [(t.test, t.failures) for t in told[name][0].tests] == [(t.test, t.failures) for t in ran[name][0].tests]
    busy_begins, busy = batch(project.open_batch, [(4, "order", "a")], "r4")
    # events gained a row: all run; catalog, which wrote none, then reads the tables' figures once for the batch
    assert busy_begins == {"catalog": 2, "orders": 2, "priced": 2, "report": 2}
    assert busy["report"][0].table_rows is None  # a view's rows are not counted: that would run its query
    assert (busy["orders"][0].rows_written, busy["priced"][0].rows_written) == (1, 1)
    # a step that wrote no rows reports its table as the batch opened: it is unchanged
    assert (busy["catalog"][0].rows_written, busy["catalog"][0].table_rows) == (0, 1)


def test_steps_whose_inputs_a_retention_emptied_are_still_told_idle(tmp_path: Path) -> None:
    """A step's offset stays where it read up to when a retention deletes every row of its inputs: the lake as the
    batch opened compares it the same way the step's own run does (``_prepare``), so idle batches stay idle."""
    project = project_with_a_report(tmp_path)
    con = duckdb.connect()

    def told_idle(minutes: int, rows: list) -> dict[str, bool]:
        at = project.open_batch(con, f"r{minutes}", T0 + timedelta(minutes=minutes))
        project.run_step(con, "events", at, source_chunks=[feed(*rows)])
        told = {name: project.quiet_step(name, at) is not None for name in ["orders", "catalog", "priced"]}
        for name in ["orders", "catalog", "priced", "report"]:
            project.run_step(con, name, at)
        return told

    told_idle(0, [(1, "order", "a"), (2, "price", "a")])
    assert told_idle(1, []) == {"orders": True, "catalog": True, "priced": True}
    older = f"SELECT batch_id FROM dbt_like.batches WHERE started_at < {literal(T0 + timedelta(minutes=5))}"
    for table in ["events", "orders", "priced"]:
        con.execute(f"DELETE FROM {table} WHERE _batch_id IN ({older}) AND NOT {project.unread_rows(con, table)}")
    assert con.execute("SELECT count(*) FROM events").fetchone() == (0,)
    for minutes in (10, 11):
        assert told_idle(minutes, []) == {"orders": True, "catalog": True, "priced": True}


def test_a_step_told_idle_as_its_batch_opened_needs_no_connection(tmp_path: Path) -> None:
    """``quiet_step`` answers from the lake as ``Project.open_batch`` read it: the results running the step would
    give, or None for a step that must run (its input got rows in the batch, a source, the last step)."""
    project = project_with_a_report(tmp_path)
    con = duckdb.connect()

    def open_and_ingest(rows: list, run_key: str) -> object:
        at = project.open_batch(con, run_key, T0)
        project.run_step(con, "events", at, source_chunks=[feed(*rows)])
        return at

    open_and_ingest([(1, "order", "a"), (2, "price", "a")], "r1")
    for name in ["catalog", "orders", "priced", "report"]:
        project.run_step(con, name, project.open_batch(con, "r1", T0))
    at = open_and_ingest([], "r2")
    assert project.opened_batch("r2") == at
    told = {name: project.quiet_step(name, at) for name in ["catalog", "orders", "priced", "report", "events"]}
    assert (told["report"], told["events"]) == (None, None)
    assert {name: (r[0].rows_written, r[0].table_rows) for name, r in told.items() if r} == {
        "catalog": (0, 1),
        "orders": (0, 1),
        "priced": (0, 1),
    }
    assert project.opened_batch("no-such-run") is None
    at = open_and_ingest([(3, "order", "b")], "r3")
    assert project.quiet_step("orders", at) is None  # events got a row in this batch
    assert project.quiet_step("catalog", at) is None  # it reads events too


def test_a_model_that_gained_a_column_gets_it_in_a_batch_that_brings_no_rows(project: Project, tmp_path: Path) -> None:
    """A column found as the batch opens keeps every step from being told idle there: a model downstream may select
    it once its table has it, so each step looks at its own columns again when it runs."""
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    run_all(project, con, [(1, "order", "a"), (2, "price", "a")], "r1")
    path = project.models_dir / "catalog.sql"
    path.write_text(path.read_text().replace("SELECT ", "SELECT 'v2' AS version, ", 1))
    upgraded = Project(project.models_dir)
    at = upgraded.open_batch(con, "r2", T0)
    assert [upgraded.quiet_step(name, at) for name in ["orders", "catalog", "priced"]] == [None, None, None]
    upgraded.run_step(con, "events", at, source_chunks=[feed()])
    for name in ["orders", "catalog", "priced"]:
        assert upgraded.run_step(con, name, at)[0].rows_written == 0
    assert con.execute("SELECT item, version FROM catalog").fetchall() == [("a", None)]


def test_a_step_reads_nothing_new_while_a_table_it_reads_whole_lags_behind(tmp_path: Path) -> None:
    """A run that leaves out the table's step (or a step feeding it): the reader would meet rows without what arrived
    with them, and never read them again; it waits, and the run that completes the table reads them all."""
    models = tmp_path / "models"
    models.mkdir()
    for name, sql in MODELS.items():
        (models / name).write_text(sql)
    (models / "listed.sql").write_text(
        "{{ config(materialized='stream') }}\n"
        "SELECT o._seq, o.item, c._seq AS priced_by FROM {{ ref('orders') }} AS o "
        "LEFT JOIN {{ ref('catalog') }} AS c ON o.item = c.item\n"
    )
    project, con = Project(models), duckdb.connect()
    run_all(project, con, [(1, "price", "z")], "r1")
    project.run_step(con, "listed", open_batch(con, "r1", T0))
    partial = open_batch(con, "r2", T0)
    project.run_step(con, "events", partial, source_chunks=[feed((2, "price", "a"), (3, "order", "a"))])
    project.run_step(con, "orders", partial)
    waited = project.run_step(con, "listed", partial)[0]
    assert (waited.rows_written, waited.offsets_after, waited.notes) == (0, {"orders": 0}, {"waiting_for": ["catalog"]})
    assert project.links_to_tables_read_whole("listed") == [("catalog", "events")]
    run_all(project, con, [], "r3")
    project.run_step(con, "listed", open_batch(con, "r3", T0))
    assert con.execute("SELECT _seq, item, priced_by FROM listed").fetchall() == [(3, "a", 2)]


def test_a_failure_inside_the_step_rolls_back_rows_and_offsets(project: Project) -> None:
    con = duckdb.connect()
    run_all(project, con, [(1, "order", "a")], "r1")
    batch = open_batch(con, "r2", T0)
    project.run_step(con, "events", batch, source_chunks=[feed((2, "order", "b"))])

    def crash(_: duckdb.DuckDBPyConnection) -> None:
        raise RuntimeError("killed before commit")

    with pytest.raises(RuntimeError):
        project.run_step(con, "orders", batch, before_commit=crash)
    assert con.execute("SELECT count(*) FROM orders").fetchone() == (1,)
    assert project.run_step(con, "orders", batch)[0].rows_written == 1
    assert con.execute("SELECT _seq FROM orders ORDER BY 1").fetchall() == [(1,), (2,)]


BATCHES = [
    [(1, "order", "a")],
    [(2, "price", "a"), (3, "order", "b")],
    [(4, "price", "b"), (5, "order", "c"), (6, "price", "c")],
]


def test_a_step_that_lags_behind_catches_up_one_upstream_batch_per_transaction(project: Project) -> None:
    """A step whose last runs failed (or were not run) reads one upstream batch per transaction: what a
    transaction holds stays one batch's rows, so a step that failed for lack of memory does not fail on ever
    more. It ends with the tables a step run in every batch gives."""
    (project.models_dir / "windows.sql").write_text(
        "SELECT _seq, (SELECT count(DISTINCT _batch_id) FROM {{ ref('events') }}) AS batches_read "
        "FROM {{ ref('events') }}"
    )
    steps = ["catalog", "orders", "priced", "windows"]

    def run(steps_in_batch: dict[int, list[str]]) -> tuple[duckdb.DuckDBPyConnection, dict[str, Any]]:
        con, runs, results = duckdb.connect(), Project(project.models_dir), {}
        for number, rows in enumerate(BATCHES, start=1):
            batch = open_batch(con, f"r{number}", T0 + timedelta(minutes=number))
            runs.run_step(con, "events", batch, source_chunks=[feed(*rows)])
            results = {name: runs.run_step(con, name, batch)[0] for name in steps_in_batch.get(number, [])}
        return con, results

    every_batch, _ = run(dict.fromkeys(range(1, len(BATCHES) + 1), steps))
    lagging, results = run({len(BATCHES): steps})
    orders = results["orders"]
    assert (orders.offsets_before, orders.offsets_after, orders.rows_in, orders.rows_written) == (
        {"events": 0},
        {"events": 3},
        6,
        3,
    )
    assert (results["priced"].rows_written, results["priced"].pending) == (3, 0)
    assert lagging.execute("SELECT DISTINCT batches_read FROM windows").fetchall() == [(1,)]
    for table in [*steps, "events"]:
        query = f"SELECT * EXCLUDE (_batch_id) FROM {table} ORDER BY ALL"
        assert lagging.execute(query).fetchall() == every_batch.execute(query).fetchall(), table


def test_a_lagging_step_with_two_inputs_reads_each_batch_of_either_once(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    for name, sql in {
        "left_feed.sql": "{{ config(materialized='stream') }} SELECT id AS _seq, item FROM {{ source('feed') }}",
        "right_feed.sql": "{{ config(materialized='stream') }} SELECT id AS _seq, item FROM {{ source('feed') }}",
        "merged.sql": "SELECT _seq, item, (SELECT count(*) FROM {{ ref('left_feed') }}) + "
        "(SELECT count(*) FROM {{ ref('right_feed') }}) AS rows_read FROM {{ ref('left_feed') }} "
        "UNION ALL SELECT _seq, item, NULL FROM {{ ref('right_feed') }}",
    }.items():
        (models / name).write_text(sql)
    project, con = Project(models), duckdb.connect()
    for number, feeds in enumerate([["left_feed"], ["right_feed"], ["left_feed", "right_feed"]], start=1):
        batch = open_batch(con, f"r{number}", T0)
        for name in feeds:
            project.run_step(con, name, batch, source_chunks=[feed((number * 10 + len(name), "x", name))])
    merged = project.run_step(con, "merged", batch)[0]
    assert (merged.rows_in, merged.rows_written, merged.offsets_after) == (4, 4, {"left_feed": 3, "right_feed": 3})
    assert con.execute("SELECT _seq, rows_read FROM merged WHERE rows_read IS NOT NULL ORDER BY 1").fetchall() == [
        (19, 1),
        (39, 2),
    ]


def test_source_chunks_commit_one_by_one_with_the_source_positions(project: Project) -> None:
    con = duckdb.connect()
    con.execute("CREATE TABLE positions (chunks INTEGER)")
    batch = open_batch(con, "r1", T0)
    read = []

    def chunks():
        read.append(1)
        yield feed((1, "order", "a"), (2, "order", "b"))
        read.append(2)
        yield feed((3, "order", "c"))
        raise OSError("disk went away mid-batch")

    def record_position(con: duckdb.DuckDBPyConnection) -> None:
        con.execute("INSERT INTO positions VALUES (?)", [len(read)])

    with pytest.raises(OSError):
        project.run_step(con, "events", batch, source_chunks=chunks(), before_commit=record_position)
    # every committed row is covered by a committed position, and nothing else was kept
    assert con.execute("SELECT max(chunks) FROM positions").fetchone() == (2,)
    assert con.execute("SELECT _seq FROM events ORDER BY 1").fetchall() == [(1,), (2,), (3,)]

    def failing_chunk():
        yield feed((4, "order", "d"))

    def crash(_: duckdb.DuckDBPyConnection) -> None:
        raise RuntimeError("killed before commit")

    with pytest.raises(RuntimeError):
        project.run_step(con, "events", batch, source_chunks=failing_chunk(), before_commit=crash)
    assert con.execute("SELECT count(*) FROM events").fetchone() == (3,)


def test_a_step_fed_by_source_chunks_reads_no_offsets_for_its_chunks(project: Project) -> None:
    """Every chunk is a transaction of its own, and every lake statement costs a round of catalog work: a model
    without stream inputs keeps no offsets, so none are read for it."""
    con = duckdb.connect()
    batch = open_batch(con, "r1", T0)
    statements: list[str] = []
    chunks = [feed((1, "order", "a")), feed((2, "order", "b")), feed((3, "price", "b"))]
    project.run_step(RecordingConnection(con, statements), "events", batch, source_chunks=chunks)
    assert con.execute("SELECT _seq FROM events ORDER BY 1").fetchall() == [(1,), (2,), (3,)]
    assert len([sql for sql in statements if sql.startswith("INSERT INTO events")]) == 3
    assert [sql for sql in statements if "FROM dbt_like.offsets" in sql] == []
    # a model with a stream input reads its offsets
    project.run_step(RecordingConnection(con, statements), "orders", batch)
    assert any("FROM dbt_like.offsets" in sql for sql in statements)


def test_a_step_renders_its_model_once_whatever_its_chunks(project: Project, monkeypatch: pytest.MonkeyPatch) -> None:
    rendered: list[int] = []
    render_step = runner.render_step

    def counted(model: Any, configs: Any, variables: Any, step: Any) -> str:
        rendered.append(step.batch_id)
        return render_step(model, configs, variables, step)

    monkeypatch.setattr(runner, "render_step", counted)
    con = duckdb.connect()
    chunks = [feed((seq, "order", "a")) for seq in range(1, 6)]
    project.run_step(con, "events", open_batch(con, "r1", T0), source_chunks=chunks)
    first = len(rendered)  # the shape of the new table, then the step
    second = [feed((6, "order", "b")), feed((7, "order", "c"))]
    project.run_step(con, "events", open_batch(con, "r2", T0), source_chunks=second)

    assert first == 2
    assert rendered[first:] == [2]  # a new batch is a new rendering, once for both its chunks
    assert con.execute("SELECT count(*), max(_batch_id) FROM events").fetchone() == (7, 2)


def test_steps_of_one_run_share_a_batch(project: Project) -> None:
    con = duckdb.connect()
    assert open_batch(con, "run-a", T0) == open_batch(con, "run-a", T0 + timedelta(hours=1))
    assert open_batch(con, "run-b", T0).batch_id == 2


def test_a_model_whose_input_was_never_materialized_says_so(project: Project) -> None:
    con = duckdb.connect()
    with pytest.raises(ProjectError, match="orders reads events, which has not been materialized"):
        project.run_step(con, "orders", open_batch(con, "r1", T0))


def test_unknown_ref_is_an_error_naming_the_file(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("SELECT * FROM {{ ref('missing') }}")
    with pytest.raises(ProjectError, match=r"a\.sql: ref\(\) to unknown model\(s\) missing"):
        Project(tmp_path)


def test_bad_materialization_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("{{ config(materialized='ephemeral') }} SELECT 1")
    with pytest.raises(ProjectError, match="materialized='ephemeral'"):
        Project(tmp_path)


@dataclass
class Scanned:
    """What one statement's scans of stored tables read: lake data files opened, rows they passed on."""

    files: int
    rows: int
    sql: str


class ScanCounter:
    """A connection wrapper that records what DuckDB's profiler says each statement's table scans read (DuckDB
    1.4's ``rows_scanned`` is the table size whatever is skipped, so the scans' own figures are used)."""

    def __init__(self, con: duckdb.DuckDBPyConnection) -> None:
        self.con, self.scanned = con, []
        self.profile = Path(tempfile.mkdtemp()) / "profile.json"
        profile_to(con, self.profile)

    def execute(self, sql: str, params: list | None = None) -> duckdb.DuckDBPyConnection:
        self.profile.unlink(missing_ok=True)
        result = self.con.execute(sql, params or [])
        scans = list(_scans(json.loads(self.profile.read_text()))) if self.profile.exists() else []
        self.profile.unlink(missing_ok=True)
        files = sum(int(scan["extra_info"].get("Total Files Read", 0)) for scan in scans)
        rows = sum(scan["operator_cardinality"] for scan in scans)
        self.scanned.append(Scanned(files, rows, " ".join(sql.split())[:100]))
        return result

    def __getattr__(self, name: str):
        return getattr(self.con, name)


def _scans(profile: dict) -> Iterator[dict]:
    """The scans of stored tables in a JSON profile (a lake's or DuckDB's; not of registered sources)."""
    for operator in profile_operators(profile):
        if operator.get("operator_type") == "TABLE_SCAN" and "Table" in operator.get("extra_info", {}):
            yield operator


def test_a_dedupe_key_does_not_scan_the_history(tmp_path: Path) -> None:
    models = tmp_path / "models"
    models.mkdir()
    (models / "deliveries.sql").write_text(
        "{{ config(materialized='stream', dedupe_key='host, record') }}\n"
        "SELECT id AS _seq, host, record, payload FROM {{ source('feed') }}\n"
        "QUALIFY record IS NULL OR row_number() OVER (PARTITION BY host, record ORDER BY id) = 1\n"
    )
    (models / "latest.sql").write_text(
        "{{ config(materialized='table', unique_key='host') }}\n"
        "SELECT _seq, host, payload FROM {{ ref('deliveries') }}\n"
    )
    project = Project(models)
    history, files = 600_000, 5  # one lake data file per chunk committed
    chunks = [
        {
            "feed": pd.DataFrame(
                {
                    "id": range(start + 1, start + history // files + 1),
                    "host": [f"h{i % 1000}" for i in range(start, start + history // files)],
                    "record": range(start, start + history // files),
                    "payload": "x",
                }
            )
        }
        for start in range(0, history, history // files)
    ]
    settings = Settings(data_dir=tmp_path / "lake")
    con = attach(duckdb.connect(config=connection_config(settings)), settings)
    batch = open_batch(con, "history", T0)
    project.run_step(con, "deliveries", batch, source_chunks=chunks)
    project.run_step(con, "latest", batch)
    assert con.execute("SELECT count(*) FROM ducklake_list_files('lake', 'deliveries')").fetchone() == (files,)

    def increment(run_key: str, first_id: int, hosts: list[str], records: list, minutes: int) -> tuple[int, list]:
        counter = ScanCounter(con)
        rows = pd.DataFrame(
            {
                "id": range(first_id, first_id + len(hosts)),
                "host": hosts,
                "record": pd.array(records, dtype="Int64"),
                "payload": [f"{run_key}{i}" for i in range(len(hosts))],
            }
        )
        batch = open_batch(counter, run_key, T0 + timedelta(minutes=minutes))
        written = project.run_step(counter, "deliveries", batch, source_chunks=[{"feed": rows}])[0].rows_written
        con.execute("SET enable_profiling = 'no_output'")
        project.run_step(con, "latest", batch)
        return written, counter.scanned

    # New events (NULL records never match; every stored record lies below 10**9): no statement reads the history.
    written, scanned = increment("new", history + 1, ["h1", "new", "new"], [10**9, None, None], 1)
    assert written == 3
    widest = max(scanned, key=lambda s: s.rows)
    assert widest.rows < history / 10 and widest.files < files, widest
    # A redelivery is not appended again; the table keeps the newest row per key.
    written, _ = increment("again", history + 10, ["h1", "h2"], [1, 10**9 + 1], 2)
    assert written == 1
    assert con.execute("SELECT count(*) FROM deliveries").fetchone() == (history + 4,)
    assert con.execute("SELECT host, payload FROM latest WHERE host IN ('h1', 'h2', 'new') ORDER BY 1").fetchall() == [
        ("h1", "new0"),
        ("h2", "again1"),
        ("new", "new2"),
    ]


def test_a_new_lakes_bookkeeping_tables_keep_the_inlined_data_table_of_one_schema_version(tmp_path: Path) -> None:
    """Seeded apart from their creation, the bookkeeping tables each keep the one inlined-data table their creation
    made (a read of another version's table loads the catalog as of that version: a round of catalog queries)."""
    project = project_with_a_report(tmp_path)
    settings = Settings(data_dir=tmp_path / "lake")
    con = attach(duckdb.connect(config=connection_config(settings)), settings)
    run_batch(project, con, [(1, "order", "a"), (2, "price", "a")], "r1", T0)
    run_batch(project, con, [], "r2", T0)
    inlined = con.execute(
        "SELECT t.table_name, list(i.schema_version) FROM __ducklake_metadata_lake.ducklake_inlined_data_tables i "
        "JOIN __ducklake_metadata_lake.ducklake_table t USING (table_id) JOIN __ducklake_metadata_lake.ducklake_schema "
        "s USING (schema_id) WHERE s.schema_name = 'dbt_like' GROUP BY ALL ORDER BY ALL"
    ).fetchall()
    assert [table for table, _ in inlined] == ["batches", "guards", "offsets", "pending", "shards", "unmatched"]
    assert len({version for _, versions in inlined for version in versions}) == 1, inlined
    assert con.execute("SELECT * FROM dbt_like.shard_count").fetchall() == [(1,)]


def test_a_column_added_to_a_model_is_added_to_its_existing_table(project: Project, tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    run_all(project, con, [(1, "order", "a"), (2, "price", "a")], "r1")
    for model in ("events", "catalog"):
        path = project.models_dir / f"{model}.sql"
        path.write_text(path.read_text().replace("SELECT ", "SELECT 'v2' AS version, ", 1))
    upgraded = Project(project.models_dir)
    run_all(upgraded, con, [(3, "order", "b"), (4, "price", "a")], "r2")
    assert con.execute("SELECT _seq, version FROM events ORDER BY 1").fetchall() == [
        (1, None),
        (2, None),
        (3, "v2"),
        (4, "v2"),
    ]
    assert con.execute("SELECT item, version, _seq FROM catalog").fetchall() == [("a", "v2", 4)]


def test_a_column_added_upstream_and_selected_downstream_reaches_both_tables(project: Project, tmp_path: Path) -> None:
    """A newer version of two models: one gains a column, the next selects it (a probe's finding: binding the second
    as the batch opened, before the first's step added the column, failed every batch)."""
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    run_all(project, con, [(1, "order", "a"), (2, "price", "a")], "r1")
    events = project.models_dir / "events.sql"
    events.write_text(events.read_text().replace("kind, item", "kind, item, 'v2' AS version"))
    orders = project.models_dir / "orders.sql"
    orders.write_text(orders.read_text().replace("SELECT _seq, item", "SELECT _seq, item, version"))
    upgraded = Project(project.models_dir)
    batch = upgraded.open_batch(con, "r2", T0)
    upgraded.run_step(con, "events", batch, source_chunks=[feed((3, "order", "a"))])
    assert upgraded.run_step(con, "orders", batch)[0].rows_written == 1
    assert con.execute("SELECT _seq, version FROM orders ORDER BY _seq").fetchall() == [(1, None), (3, "v2")]


def test_a_column_whose_name_needs_quoting_or_only_changed_case_is_added_once(project: Project, tmp_path: Path) -> None:
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    run_all(project, con, [(1, "order", "a")], "r1")
    path = project.models_dir / "events.sql"
    quoted = ''''hi' AS "say ""hi""", '''
    path.write_text(path.read_text().replace("SELECT ", "SELECT " + quoted, 1).replace("_seq", "_SEQ", 1))
    run_all(Project(project.models_dir), con, [(2, "order", "b")], "r2")
    run_all(Project(project.models_dir), con, [(3, "order", "c")], "r3")
    rows = con.execute('''SELECT _seq, "say ""hi""" FROM events ORDER BY 1''').fetchall()
    assert rows == [(1, None), (2, "hi"), (3, "hi")]


def test_execute_is_false_where_a_model_is_rendered_for_its_columns_only(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dbt_like import runner
    from dbt_like.compiler import render_plain

    models = tmp_path / "models"
    models.mkdir()
    (models / "events.sql").write_text(MODELS["events.sql"])
    (models / "shaped.sql").write_text(
        "-- Says how it was rendered.\n"
        "{{ config(materialized='stream') }}\n"
        "SELECT _seq, item, {{ \"'run'\" if execute else \"'shape'\" }} AS rendered FROM {{ ref('events') }}\n"
    )
    project = Project(models)
    assert "'shape'" in render_plain(project.models["shaped"], {})[0]  # lineage and config
    renders: list[bool] = []
    render_step = runner.render_step
    monkeypatch.setattr(runner, "render_step", lambda *args: renders.append(args[3].execute) or render_step(*args))
    con = duckdb.connect(str(tmp_path / "db.duckdb"))
    for run_key, rows in (("r1", [(1, "order", "a")]), ("r2", [(2, "order", "b")])):
        batch = open_batch(con, run_key, T0)
        project.run_step(con, "events", batch, source_chunks=[feed(*rows)])
        renders.clear()
        project.run_step(con, "shaped", batch)
        # r1 creates the table from a render for its columns; a new project's first step on an existing table
        # probes its columns the same way; only the step's own rows come from a render that executes
        assert renders == [False, True], run_key
        project = Project(models)
    assert con.execute("SELECT _seq, rendered FROM shaped ORDER BY 1").fetchall() == [(1, "run"), (2, "run")]


VIEW_MODELS = {
    "events.sql": MODELS["events.sql"],
    "catalog.sql": MODELS["catalog.sql"],
    "orders_priced.sql": """-- Every order with its item's price row as the catalog holds it now.
{{ config(materialized='view') }}
SELECT o._seq, o.item, c._seq AS price_seq, o._batch_id
FROM {{ ref('events') }} AS o LEFT JOIN {{ ref('catalog') }} AS c USING (item)
WHERE o.kind = '{{ var('kind', 'order') }}'
""",
    "priced_count.sql": """-- Reads the view: a model downstream of a view gets all of it.
{{ config(materialized='table', unique_key='item') }}
SELECT item, count(price_seq) AS priced, max(_seq) AS _seq FROM {{ ref('orders_priced') }} GROUP BY item
""",
}


def view_project(models: Path, **variables: str) -> Project:
    models.mkdir(exist_ok=True)
    for name, sql in VIEW_MODELS.items():
        (models / name).write_text(sql)
    return Project(models, variables)


def run_view_project(project: Project, con: duckdb.DuckDBPyConnection, rows: list, run_key: str) -> dict:
    batch = open_batch(con, run_key, T0)
    results = {"events": project.run_step(con, "events", batch, source_chunks=[feed(*rows)])[0]}
    for name in project.primary_models()[1:]:
        results[name] = project.run_step(con, name, batch)[0]
    return results


def test_a_view_shows_the_current_rows_of_whole_inputs(tmp_path: Path) -> None:
    project = view_project(tmp_path / "models")
    con = duckdb.connect()
    run_view_project(project, con, [(1, "order", "a"), (2, "order", "b")], "r1")
    assert con.execute("SELECT _seq, item, price_seq FROM orders_priced ORDER BY 1").fetchall() == [
        (1, "a", None),
        (2, "b", None),
    ]
    results = run_view_project(project, con, [(3, "price", "a"), (4, "order", "a")], "r2")
    # the first batch's order shows the price that came later; the stream ref is the whole stream, not the delta
    assert con.execute("SELECT _seq, item, price_seq FROM orders_priced ORDER BY 1").fetchall() == [
        (1, "a", 3),
        (2, "b", None),
        (4, "a", 3),
    ]
    assert (results["orders_priced"].rows_written, results["orders_priced"].table_rows) == (0, None)  # not counted
    assert results["orders_priced"].offsets_after == {}
    assert con.execute("SELECT item, priced FROM priced_count ORDER BY 1").fetchall() == [("a", 2), ("b", 0)]


def test_a_view_is_replaced_only_when_its_query_changes(tmp_path: Path) -> None:
    settings = Settings(data_dir=tmp_path / "lake")
    con = attach(duckdb.connect(config=connection_config(settings)), settings)
    project = view_project(tmp_path / "models")
    assert project.primary_models()[-1] == "priced_count", "the view's step must not be the batch's last"

    def view_changes() -> list[list[str]]:
        """The model views each snapshot created or altered (the bookkeeping's own view left out)."""
        snapshots = con.execute(
            "SELECT list_filter(flatten([coalesce(changes['views_created'], []), coalesce(changes['views_altered'], "
            "[])]), name -> name LIKE 'main.%') AS views FROM ducklake_snapshots('lake') ORDER BY snapshot_id"
        ).fetchall()
        return [views for (views,) in snapshots if views]

    run_view_project(project, con, [(1, "order", "a")], "r1")
    assert len(view_changes()) == 1
    batch = open_batch(con, "r2", T0)
    project.run_step(con, "events", batch, source_chunks=[feed((2, "order", "b"))])
    before = con.execute("SELECT max(snapshot_id) FROM ducklake_snapshots('lake')").fetchone()
    project.run_step(con, "orders_priced", batch)
    # same query: the step has nothing to write and commits no snapshot
    assert con.execute("SELECT max(snapshot_id) FROM ducklake_snapshots('lake')").fetchone() == before
    assert con.execute("SELECT _seq FROM orders_priced ORDER BY 1").fetchall() == [(1,), (2,)]
    refunds = view_project(tmp_path / "models", kind="refund")
    run_view_project(refunds, con, [(3, "refund", "a")], "r3")
    assert len(view_changes()) == 2
    assert con.execute("SELECT _seq FROM orders_priced").fetchall() == [(3,)]


def run_batch(project: Project, con: duckdb.DuckDBPyConnection, rows: list, run_key: str, at: datetime) -> dict:
    """A batch opened by the project, each step's first result by model."""
    batch = project.open_batch(con, run_key, at)
    results = {"events": project.run_step(con, "events", batch, source_chunks=[feed(*rows)])[0]}
    for name in ["catalog", "orders", "priced", "report"]:
        results[name] = project.run_step(con, name, batch)[0]
    return results


def test_rows_a_failing_step_committed_keep_the_steps_reading_them_busy(tmp_path: Path) -> None:
    project = project_with_a_report(tmp_path)
    con = duckdb.connect()
    run_batch(project, con, [(1, "order", "a")], "r1", T0)
    batch = project.open_batch(con, "r2", T0)

    def fail() -> None:
        raise RuntimeError("after the commit")

    with pytest.raises(RuntimeError, match="after the commit"):
        project.run_step(con, "events", batch, source_chunks=[feed((2, "order", "b"))], after_commit=fail)
    counting = CountingConnection(con)
    orders = project.run_step(counting, "orders", batch)[0]
    assert (counting.begins, orders.rows_written) == (2, 1)


def test_a_batch_clock_with_a_time_zone_runs_the_steps(tmp_path: Path) -> None:
    project = project_with_a_report(tmp_path)
    con = duckdb.connect()
    run_batch(project, con, [(1, "order", "x")], "r1", T0)
    aware = run_batch(project, con, [], "r2", (T0 + timedelta(minutes=1)).replace(tzinfo=UTC))
    assert (aware["priced"].rows_written, aware["priced"].expired, aware["priced"].pending_floor) == (0, 0, 1)


def test_a_second_writer_meanwhile_is_refused_at_the_last_step(tmp_path: Path) -> None:
    project = project_with_a_report(tmp_path)
    con = duckdb.connect()
    run_batch(project, con, [(1, "order", "a")], "r1", T0)
    batch = project.open_batch(con, "r2", T0)
    project.run_step(con, "events", batch, source_chunks=[feed()])
    run_batch(Project(project.models_dir), con, [(2, "order", "a")], "r3", T0)  # another run of the same shard
    for name in ["catalog", "orders", "priced"]:
        project.run_step(con, name, batch)  # told idle from the lake as batch 2 opened
    with pytest.raises(ConcurrentWriterError, match="batch 3 of shard 0 has already written"):
        project.run_step(con, "report", batch)


def test_a_wait_with_a_time_zone_on_the_batch_clock_expires_after_its_grace(tmp_path: Path) -> None:
    """``first_seen`` holds the session's wall time; the expiry's cutoff from a clock with a time zone is too."""
    project = project_with_a_report(tmp_path)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'America/New_York'")
    run_batch(project, con, [(1, "order", "x")], "r1", T0.replace(tzinfo=UTC))
    early = run_batch(project, con, [], "r2", (T0 + timedelta(minutes=1)).replace(tzinfo=UTC))
    late = run_batch(project, con, [], "r3", (T0 + timedelta(minutes=11)).replace(tzinfo=UTC))
    assert (early["priced"].expired, late["priced"].expired) == (0, 1)
