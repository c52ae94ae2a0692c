"""Column lineage is derived from the SQL: it follows the SQL, not a hand-kept list."""

from __future__ import annotations

from pathlib import Path

from dbt_like import Project
from dbt_like.lineage import model_lineage
from sysmon_assets.micro_batch.recipe_project import SQL_DIR
from sysmon_assets.settings import Settings
from sysmon_assets.storage.lake import open_lake
from tests.conftest import Lake, network_connect, process_create
from tests.recipe import RECIPE_MODELS

PROJECT = Project(SQL_DIR, Settings().variables())


def trace(model: str, column: str) -> list[str]:
    """Follow a column upstream through single dependencies: ['model.column', ...]."""
    chain = [f"{model}.{column}"]
    while True:
        deps = model_lineage(PROJECT, model).get(column, [])
        if len(deps) != 1:
            return chain
        model, column = deps[0]
        chain.append(f"{model}.{column}")


def test_command_line_traces_back_to_the_raw_event_data() -> None:
    assert trace("sysmon_join", "process_command_line") == [
        "sysmon_join.process_command_line",
        "sysmon_process_create_table.process_command_line",
        "sysmon_process_create.process_command_line",
        "winlogbeat_stream_rekey.process_command_line",
        "winlogbeat_stream.event_data.CommandLine",
    ]
    assert trace("sysmon_join", "user_account")[1] == "sysmon_network_connect.user_account"


def test_the_ancestry_lineage_text_traces_back_to_the_images() -> None:
    """Through a view and a model whose chains come from a recursive CTE (only the process's own image is traced)."""
    assert trace("sysmon_join_ancestry", "lineage") == [
        "sysmon_join_ancestry.lineage",
        "sysmon_process_ancestry.lineage",
        "sysmon_process_create_table.process_path",
        "sysmon_process_create.process_path",
        "winlogbeat_stream_rekey.process_path",
        "winlogbeat_stream.event_data.Image",
    ]


def test_every_recipe_column_downstream_of_the_stream_has_lineage_to_a_real_column(lake: Lake) -> None:
    lake.land([process_create("{A}"), network_connect("{A}")])
    lake.batch()
    with open_lake(lake.settings, read_only=True) as con:
        for model in RECIPE_MODELS[1:]:
            lineage = model_lineage(PROJECT, model)
            output = [
                c
                for (c,) in con.execute(
                    "SELECT column_name FROM duckdb_columns() WHERE table_name = ?", [model]
                ).fetchall()
            ]
            assert {c for c in output if c != "_batch_id"} == set(lineage), model
            for deps in lineage.values():
                for table, column in deps:
                    head, *field = column.split(".")
                    con.execute(f"SELECT {head}{''.join('.' + f for f in field)} FROM {table} LIMIT 0")


def test_lineage_changes_when_the_sql_changes(tmp_path: Path) -> None:
    (tmp_path / "a.sql").write_text("SELECT 1 AS x, 2 AS y")
    (tmp_path / "b.sql").write_text("SELECT a.x AS first, a.x + a.y AS total FROM {{ ref('a') }} AS a")
    assert model_lineage(Project(tmp_path), "b") == {"first": [("a", "x")], "total": [("a", "x"), ("a", "y")]}
    (tmp_path / "b.sql").write_text("SELECT y AS first FROM {{ ref('a') }}")
    assert model_lineage(Project(tmp_path), "b") == {"first": [("a", "y")]}
