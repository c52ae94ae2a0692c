"""dbt_like's bookkeeping tables in a lake (dbt_like/state.py)."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from dbt_like import ProjectError
from dbt_like.compiler import Shard
from dbt_like.state import STATE_DDL, ensure_state
from sysmon_assets.settings import Settings
from sysmon_assets.storage.lake import attach, connection_config
from tests.lake_servers import Postgres


def test_two_runs_seeding_a_new_lake_at_once_leave_one_shard_count(tmp_path: Path, postgres: Postgres) -> None:
    """Two transactions that record a new lake's shard count at once conflict: the later one fails (a project runs
    it again, then finds the count), so the lake never holds two counts. On PostgreSQL only DuckLake's own checks
    stand between them (with SQLite the later commit fails as locked whatever it wrote)."""
    settings = Settings(data_dir=tmp_path / "lake", lake_catalog=postgres.new_catalog())
    first, second = (attach(duckdb.connect(config=connection_config(settings)), settings) for _ in range(2))
    first.execute(STATE_DDL)
    for con in (first, second):
        con.begin()
    ensure_state(first, Shard(0, 1))
    ensure_state(second, Shard(0, 2))
    first.commit()
    with pytest.raises(duckdb.TransactionException, match="shard_count"):
        second.commit()
    assert first.execute("SELECT shard_count FROM dbt_like.shards").fetchall() == [(1,)]
    with pytest.raises(
        ProjectError, match=r"written by 1 shard\(s\); a project of .* with the lake's shard count, or write a new lake"
    ):
        ensure_state(second, Shard(0, 2))
