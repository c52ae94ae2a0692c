"""dbt_like's project macros, in-step dedupe, side models' ref() and the as_of join, on a small generic project
that knows nothing of Sysmon."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import duckdb
import pandas as pd
import pytest

from dbt_like import Project, ProjectError, open_batch

T0 = datetime(2026, 1, 1)
COLUMNS = ["id", "host", "number", "kind", "item"]

MODELS = {
    "macros/shout.sql": """{#- An item in upper case, marked. -#}
{% macro shout(text) -%}upper({{ text }}) || '{{ mark }}'{%- endmacro %}
{% set mark = '!' %}
""",
    "events.sql": """-- Raw events; a redelivery repeats (host, number).
{{ config(materialized='stream', dedupe_key='host, number') }}
SELECT id AS _seq, host, number, kind, {{ shout('item') }} AS item FROM {{ source('feed') }}
""",
    "seen.sql": """-- Which ids the events step kept, written in its transaction.
{{ config(materialized='stream', part_of='events') }}
SELECT _seq FROM {{ ref('events') }}
""",
    "prices.sql": """-- Price changes.
{{ config(materialized='stream') }}
SELECT _seq, item, number AS price FROM {{ ref('events') }} WHERE kind = 'price'
""",
    "catalog.sql": """-- Latest price per item.
{{ config(materialized='table', unique_key='item') }}
SELECT _seq, item, price FROM {{ ref('prices') }}
""",
    "orders.sql": """-- Orders.
{{ config(materialized='stream') }}
SELECT _seq, item FROM {{ ref('events') }} WHERE kind = 'order'
""",
    "priced.sql": """-- Each order with the item's price: as it stood when the order arrived with var('as_of').
{{ config(materialized='stream', as_of=({'catalog': ref('prices', full=True)} if var('as_of', false) else none)) }}
SELECT o._seq, o.item, c.price FROM {{ ref('orders') }} AS o INNER JOIN {{ ref('catalog') }} AS c ON o.item = c.item
""",
}


COLUMNS = ["id", "host", "number", "kind", "item"]


def make_project(tmp_path: Path, as_of: bool = False) -> Project:
    models = tmp_path / "models"
    for name, sql in MODELS.items():
        (models / name).parent.mkdir(parents=True, exist_ok=True)
        (models / name).write_text(sql)
    return Project(models, {"as_of": as_of})


def run(project: Project, con: duckdb.DuckDBPyConnection, rows: list[tuple], run_key: str) -> None:
    batch = open_batch(con, run_key, T0)
    frame = pd.DataFrame(rows, columns=COLUMNS)
    project.run_step(con, "events", batch, source_chunks=[{"feed": frame}])
    for name in ["prices", "catalog", "orders", "priced"]:
        project.run_step(con, name, batch)


def test_models_call_the_project_macros_and_see_their_values(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    assert "macros" not in project.models  # a macro file is not a model
    con = duckdb.connect()
    run(project, con, [(1, "a", 1, "order", "pen")], "b1")
    assert con.sql("SELECT item FROM events").fetchall() == [("PEN!",)]


def test_a_cached_macro_call_renders_once_per_process_for_the_same_arguments(tmp_path: Path) -> None:
    models = tmp_path / "models"
    (models / "macros").mkdir(parents=True)
    (models / "macros" / "slow.sql").write_text(
        f"-- {tmp_path}\n"  # a project of its own: no call cached by another test's project
        "{% macro plus_one(n) %}{{ var('calls').append(n) or '' }}{{ n }} + 1{% endmacro %}\n"
    )
    (models / "numbers.sql").write_text(
        "SELECT {{ cached(plus_one, 1) }} AS a, {{ cached(plus_one, 1) }} AS b, {{ cached(plus_one, 2) }} AS c, "
        "{{ plus_one(1) }} AS d FROM {{ source('feed') }}"
    )
    calls: list[int] = []
    project = Project(models, {"calls": calls})
    con = duckdb.connect()
    for run_key in ["b1", "b2"]:
        feed = pd.DataFrame({"_seq": [1]})
        project.run_step(con, "numbers", open_batch(con, run_key, T0), source_chunks=[{"feed": feed}])

    assert con.sql("SELECT DISTINCT a, b, c, d FROM numbers").fetchall() == [(2, 2, 3, 2)]
    # the cached calls once each, in the first rendering; the plain call in every rendering: the config, the new
    # table's shape, and each batch's step
    assert calls == [1, 2, 1, 1, 1, 1]


def test_a_macro_may_not_call_ref_or_source(tmp_path: Path) -> None:
    make_project(tmp_path)
    (tmp_path / "models" / "macros" / "bad.sql").write_text("{% macro bad() %}{{ ref('events') }}{% endmacro %}")
    with pytest.raises(ProjectError, match=r"bad\.sql: a macro cannot call ref"):
        make_project(tmp_path)


def test_dedupe_key_keeps_the_first_delivery_within_a_step_and_across_steps(tmp_path: Path) -> None:
    project = make_project(tmp_path)
    con = duckdb.connect()
    # (a, 1) three times in one step: the first by _seq stays; a NULL key part never matches
    run(
        project,
        con,
        [
            (3, "a", 1, "order", "x"),
            (1, "a", 1, "order", "y"),
            (2, "a", 1, "order", "z"),
            (4, None, 2, "order", "p"),
            (5, None, 2, "order", "q"),
            (6, "b", 1, "order", "r"),
        ],
        "b1",
    )
    run(project, con, [(7, "a", 1, "order", "again"), (8, "b", 2, "order", "new")], "b2")
    rows = con.sql("SELECT _seq, item FROM events ORDER BY _seq").fetchall()
    assert rows == [(1, "Y!"), (4, "P!"), (5, "Q!"), (6, "R!"), (8, "NEW!")]
    # the side model read, through ref(), the rows its step wrote into events
    assert [r[0] for r in con.sql("SELECT _seq FROM seen ORDER BY _seq").fetchall()] == [1, 4, 5, 6, 8]


BOTH_TAGS = "UNION(i INTEGER, s VARCHAR)"


@pytest.mark.parametrize(
    ("key", "items"),
    [
        ("CAST(item AS TIMESTAMP)", ["infinity", "-infinity", "2026-01-01 00:00:00"]),
        # DuckDB writes the offset of 1 January 1 in Amsterdam (+00:17:30) without its seconds
        ("CAST(item AS TIMESTAMPTZ)", ["0001-01-01 00:17:30+00:17:30", "2026-01-01 01:00:00+01"]),
        ("CAST(item AS TIMESTAMPTZ)", ["infinity", "-infinity"]),
        # a UNION's text drops its tag: 7 tagged i reads back as the text '7'
        (
            f"CASE WHEN item SIMILAR TO '[0-9]+' THEN union_value(i := CAST(item AS INTEGER))::{BOTH_TAGS} "
            f"ELSE union_value(s := item)::{BOTH_TAGS} END",
            ["7", "5x"],
        ),
        # DuckDB writes an interval of 2^31 hours as text it cannot read back
        ("to_hours(CAST(item AS BIGINT))", ["2147483648", "1"]),
        # nested keys: BETWEEN refuses a STRUCT or a list, and an array's text drops a leading space
        ("{'t': item}", ["b", "a"]),
        ("[item, item]", ["b", "a"]),
        ("CAST([item, 'x'] AS VARCHAR[2])", [" a", "b"]),
        ("[CAST(item AS TIMESTAMPTZ)]", ["0001-01-01 00:17:30+00:17:30", "2026-01-01 01:00:00+01"]),
    ],
)
def test_a_dedupe_key_finds_its_values_in_the_table(tmp_path: Path, key: str, items: list[str]) -> None:
    """The key ranges hold the values as DuckDB holds them (Python clamps an infinite time to a finite one), or
    leave out a column whose values DuckDB's text does not give back."""
    models = {
        "events.sql": "{{ config(materialized='stream', dedupe_key='host, seen_at') }}\n"
        f"SELECT id AS _seq, host, {key} AS seen_at FROM {{{{ source('feed') }}}}\n"
    }
    for name, sql in models.items():
        (tmp_path / "models" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "models" / name).write_text(sql)
    project, con = Project(tmp_path / "models", {}), duckdb.connect()
    con.execute("SET TimeZone = 'Europe/Amsterdam'")
    for run_key, first_id in (("b1", 1), ("b2", 10)):
        rows = [(first_id + index, "a", 1, "k", item) for index, item in enumerate(items)]
        frame = pd.DataFrame(rows, columns=COLUMNS)
        project.run_step(con, "events", open_batch(con, run_key, T0), source_chunks=[{"feed": frame}])
    assert [seq for (seq,) in con.sql("SELECT _seq FROM events ORDER BY _seq").fetchall()] == list(
        range(1, len(items) + 1)
    )


def test_a_table_keyed_on_two_columns_keeps_the_latest_row_of_each_pair(tmp_path: Path) -> None:
    models = {
        **MODELS,
        "events.sql": MODELS["events.sql"].replace(", dedupe_key='host, number'", ""),
        "latest.sql": "{{ config(materialized='table', unique_key='host, number') }}\n"
        "SELECT _seq, host, number, item FROM {{ ref('events') }}\n",
    }
    for name, sql in models.items():
        (tmp_path / "models" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "models" / name).write_text(sql)
    project, con = Project(tmp_path / "models", {}), duckdb.connect()
    for run_key, rows in (("b1", [(1, "a", 1, "k", "x"), (2, "a", 2, "k", "y")]), ("b2", [(3, "a", 1, "k", "z")])):
        batch = open_batch(con, run_key, T0)
        frame = pd.DataFrame(rows, columns=COLUMNS)
        project.run_step(con, "events", batch, source_chunks=[{"feed": frame}])
        project.run_step(con, "latest", batch)
    assert con.sql("SELECT host, number, item FROM latest ORDER BY ALL").fetchall() == [("a", 1, "Z!"), ("a", 2, "Y!")]


def test_a_dedupe_keys_order_by_that_ties_keeps_every_tied_row(tmp_path: Path) -> None:
    events = MODELS["events.sql"].replace("dedupe_key='host, number'", "dedupe_key='host', order_by='number'")
    models = {"macros/shout.sql": MODELS["macros/shout.sql"], "events.sql": events}
    for name, sql in models.items():
        (tmp_path / "models" / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "models" / name).write_text(sql)
    project, con = Project(tmp_path / "models", {}), duckdb.connect()
    frame = pd.DataFrame([(1, "a", 1, "k", "x"), (2, "a", 1, "k", "y"), (3, "a", 2, "k", "z")], columns=COLUMNS)
    project.run_step(con, "events", open_batch(con, "b1", T0), source_chunks=[{"feed": frame}])
    assert con.sql("SELECT _seq FROM events ORDER BY 1").fetchall() == [(1,), (2,)]  # tied on number 1: both


@pytest.mark.parametrize("batches", [1, 2])
def test_rows_whose_key_is_null_are_all_kept_in_one_batch_as_in_two(tmp_path: Path, batches: int) -> None:
    project, con = make_project(tmp_path), duckdb.connect()
    rows = [
        (1, "h", 1, "price", None),
        (2, "h", 2, "price", "x"),
        (3, "h", 3, "price", None),
        (4, "h", 4, "price", "x"),
    ]
    for index in range(batches):
        run(project, con, rows[index * 4 // batches : (index + 1) * 4 // batches], f"b{index}")
    assert con.sql("SELECT _seq, item FROM catalog ORDER BY _seq").fetchall() == [(1, None), (3, None), (4, "X!")]


@pytest.mark.parametrize(("as_of", "expected"), [(False, [(2, 20), (4, 20)]), (True, [(4, 10)])])
def test_as_of_joins_each_row_to_the_table_as_it_stood_when_the_row_arrived(
    tmp_path: Path, as_of: bool, expected: list[tuple]
) -> None:
    project = make_project(tmp_path, as_of)
    assert set(project.models["priced"].refs) == {"orders", "catalog", "prices"}  # as_of names the stream
    con = duckdb.connect()
    # an order before any price, a price of 10, an order, then a price of 20 within the same step
    run(
        project,
        con,
        [
            (2, "h", 1, "order", "pen"),
            (3, "h", 10, "price", "pen"),
            (4, "h", 2, "order", "pen"),
            (5, "h", 20, "price", "pen"),
        ],
        "b1",
    )
    assert con.sql("SELECT _seq, price FROM priced ORDER BY _seq").fetchall() == expected


def test_an_as_of_join_waits_for_its_stream_to_read_as_far_as_its_other_inputs(tmp_path: Path) -> None:
    """A batch run without the stream the table is built from (a run of part of the steps): the orders it read
    would join a stream that lacks their prices, and an as-of join does not retry; they wait for it instead."""
    project = make_project(tmp_path, as_of=True)
    con = duckdb.connect()
    run(project, con, [(1, "h", 1, "order", "ink")], "b1")
    batch = open_batch(con, "b2", T0)
    frame = pd.DataFrame([(2, "h", 10, "price", "pen"), (3, "h", 2, "order", "pen")], columns=COLUMNS)
    project.run_step(con, "events", batch, source_chunks=[{"feed": frame}])
    for name in ["orders", "priced"]:  # not prices, nor catalog
        project.run_step(con, name, batch)
    assert con.sql("SELECT count(*) FROM priced").fetchall() == [(0,)]
    run(project, con, [], "b3")
    assert con.sql("SELECT _seq, price FROM priced").fetchall() == [(3, 10)]


SETTINGS_MODELS = {
    "events.sql": """-- Raw events.
{{ config(materialized='stream') }}
SELECT id AS _seq, kind FROM {{ source('feed') }}
""",
    "tuned.sql": """-- What DuckDB's settings were while its step ran.
{{ config(materialized='stream', duckdb_settings={'disabled_optimizers': 'cte_filter_pusher', 'threads': 1}) }}
SELECT _seq, current_setting('disabled_optimizers') AS disabled, current_setting('threads') AS threads
FROM {{ ref('events') }}
""",
    "plain.sql": """-- The same, in a step with no settings.
{{ config(materialized='stream') }}
SELECT _seq, current_setting('disabled_optimizers') AS disabled, current_setting('threads') AS threads
FROM {{ ref('events') }}
""",
}


def settings_project(tmp_path: Path, models: dict[str, str]) -> Project:
    for name, sql in models.items():
        (tmp_path / name).write_text(sql)
    return Project(tmp_path)


def test_a_models_duckdb_settings_hold_for_its_step_and_are_set_back_after(tmp_path: Path) -> None:
    project = settings_project(tmp_path, SETTINGS_MODELS)
    con = duckdb.connect(config={"threads": 2})
    batch = open_batch(con, "r1", T0)
    project.run_step(con, "events", batch, source_chunks=[{"feed": pd.DataFrame({"id": [1], "kind": ["a"]})}])
    for name in ["tuned", "plain"]:
        project.run_step(con, name, batch)
    assert con.execute("SELECT disabled, threads FROM tuned").fetchall() == [("cte_filter_pusher", 1)]
    assert con.execute("SELECT disabled, threads FROM plain").fetchall() == [("", 2)]
    assert con.execute("SELECT current_setting('threads'), current_setting('disabled_optimizers')").fetchone() == (
        2,
        "",
    )


def test_a_models_duckdb_settings_are_set_back_after_its_step_fails(tmp_path: Path) -> None:
    failing = {
        **SETTINGS_MODELS,
        "tuned.sql": SETTINGS_MODELS["tuned.sql"].replace("AS threads", "AS threads, error('bad row') AS failure"),
    }
    project = settings_project(tmp_path, failing)
    con = duckdb.connect(config={"threads": 2})
    batch = open_batch(con, "r1", T0)
    project.run_step(con, "events", batch, source_chunks=[{"feed": pd.DataFrame({"id": [1], "kind": ["a"]})}])
    with pytest.raises(duckdb.Error, match="bad row"):
        project.run_step(con, "tuned", batch)
    assert con.execute("SELECT current_setting('threads'), current_setting('disabled_optimizers')").fetchone() == (
        2,
        "",
    )


@pytest.mark.parametrize("settings", ["'threads=1'", "{1: 'x'}", "{'threads; DROP TABLE events': 1}"])
def test_duckdb_settings_that_are_not_named_settings_are_refused_naming_the_model(
    tmp_path: Path, settings: str
) -> None:
    declared = "duckdb_settings={'disabled_optimizers': 'cte_filter_pusher', 'threads': 1}"
    models = {
        **SETTINGS_MODELS,
        "tuned.sql": SETTINGS_MODELS["tuned.sql"].replace(declared, f"duckdb_settings={settings}"),
    }
    # refused as the project loads, before any step runs
    with pytest.raises(ProjectError, match=r"tuned\.sql: duckdb_settings="):
        settings_project(tmp_path, models)


def test_a_well_shaped_name_that_is_no_duckdb_setting_fails_the_step(tmp_path: Path) -> None:
    declared = "duckdb_settings={'disabled_optimizers': 'cte_filter_pusher', 'threads': 1}"
    models = {
        **SETTINGS_MODELS,
        "tuned.sql": SETTINGS_MODELS["tuned.sql"].replace(declared, "duckdb_settings={'threds': 1}"),
    }
    project, con = settings_project(tmp_path, models), duckdb.connect()
    batch = open_batch(con, "r1", T0)
    project.run_step(con, "events", batch, source_chunks=[{"feed": pd.DataFrame({"id": [1], "kind": ["a"]})}])
    with pytest.raises(duckdb.CatalogException, match="threds"):
        project.run_step(con, "tuned", batch)
    assert con.execute("SELECT count(*) FROM events").fetchone() == (1,)
