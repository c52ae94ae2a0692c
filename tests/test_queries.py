"""The recipe's "optionally query a sample" SELECTs, as DuckDB SQL in sql/queries/, run and return rows."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sysmon_assets.query import run_query
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


def test_there_is_one_query_per_sampled_recipe_step() -> None:
    assert [q.stem for q in QUERIES] == [
        "sysmon_join_sample",
        "sysmon_network_connect_sample",
        "sysmon_process_create_sample",
        "winlogbeat_stream_sample",
    ]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.stem)
def test_sample_queries_run_and_return_rows(sample_lake: Lake, query: Path) -> None:
    rows = run_query(sample_lake.db, query.read_text()).fetchall()
    assert rows
    assert all(any(value is not None for value in row) for row in rows)


def test_the_join_sample_has_the_recipe_output_columns(sample_lake: Lake) -> None:
    relation = run_query(sample_lake.db, (ROOT / "sql/queries/sysmon_join_sample.sql").read_text())
    assert relation.columns == [
        "event_time",
        "src_host_name",
        "dst_ip_addr",
        "process_command_line",
        "parent_process_command_line",
        "user_account",
    ]


def test_the_query_command_prints_a_table(sample_lake: Lake) -> None:
    output = subprocess.run(
        [
            sys.executable,
            "-m",
            "sysmon_assets.query",
            "sql/queries/sysmon_join_sample.sql",
            "--db",
            str(sample_lake.db),
        ],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    assert "process_command_line" in output and "rows" in output
