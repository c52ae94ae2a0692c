"""The recipe's "optionally query a sample" SELECTs, as DuckDB SQL in sql/queries/, run and return rows."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sysmon_assets import connect
from tests.conftest import Lake

ROOT = Path(__file__).resolve().parents[1]
QUERIES = sorted((ROOT / "sql" / "queries").glob("*.sql"))


@pytest.fixture(scope="module")
def sample_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("queries"))
    for sample in (ROOT / "sample_data").glob("*.ndjson"):
        (lake.landing / sample.name).write_bytes(sample.read_bytes())
    lake.batch()
    return lake


def query_command(lake: Lake, *args: str) -> str:
    """Standard output of ``python -m sysmon_assets.query ARGS`` with the lake's settings in the environment."""
    env = {**os.environ, "SYSMON_DATA_DIR": str(lake.data), "SYSMON_LANDING_DIR": str(lake.landing)}
    return subprocess.run(
        [sys.executable, "-m", "sysmon_assets.query", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_there_is_one_query_per_sampled_recipe_step() -> None:
    assert [q.stem for q in QUERIES] == [
        "sysmon_join_sample",
        "sysmon_network_connect_sample",
        "sysmon_process_create_sample",
        "winlogbeat_stream_sample",
    ]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.stem)
def test_sample_queries_run_and_return_rows(sample_lake: Lake, query: Path) -> None:
    with connect(sample_lake.settings) as con:
        rows = con.sql(query.read_text()).fetchall()
    assert rows
    assert all(any(value is not None for value in row) for row in rows)


def test_the_join_sample_has_the_recipe_output_columns(sample_lake: Lake) -> None:
    with connect(sample_lake.settings) as con:
        relation = con.sql((ROOT / "sql/queries/sysmon_join_sample.sql").read_text())
        assert relation.columns == [
            "event_time",
            "src_host_name",
            "dst_ip_addr",
            "process_command_line",
            "parent_process_command_line",
            "user_account",
        ]


def test_the_query_command_prints_a_table(sample_lake: Lake) -> None:
    output = query_command(sample_lake, "sql/queries/sysmon_join_sample.sql")
    assert "process_command_line" in output and "rows" in output


def test_the_query_command_prints_json_rows(sample_lake: Lake) -> None:
    sql = "SELECT process_guid, count(*) AS n FROM sysmon_join GROUP BY ALL ORDER BY ALL"
    expected = sample_lake.rows(sql)
    assert expected
    assert json.loads(query_command(sample_lake, "--json", sql)) == [list(row) for row in expected]
