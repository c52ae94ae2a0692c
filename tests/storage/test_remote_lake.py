"""Past one machine: the whole pipeline with a PostgreSQL catalog and its data files on an S3-compatible
server, read back from another process, and equal to the embedded default's tables."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from sysmon_assets import connect
from sysmon_assets.micro_batch.steps import SysmonPipeline
from sysmon_assets.sample.generator import write_sample
from sysmon_assets.settings import Settings
from sysmon_assets.storage.lake import INLINED_SCHEMAS, LakeError, open_lake
from tests.conftest import CLI_BATCH, Lake, process_create, snapshot
from tests.lake_servers import S3, Postgres

QUERY = [sys.executable, "-m", "sysmon_assets.query", "--json"]


@pytest.fixture(scope="module")
def halves(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, bytes]:
    path, *_ = write_sample(tmp_path_factory.mktemp("sample"), 1200, files=1, hosts=6, seed=11)
    lines = path.read_bytes().splitlines(keepends=True)
    return b"".join(lines[:600]), b"".join(lines[600:])


def land_bytes(lake: Lake, data: bytes) -> None:
    with (lake.landing / "winlogbeat.ndjson").open("ab") as handle:
        handle.write(data)


def lake_environ(lake: Lake, s3: S3) -> dict[str, str]:
    return {
        **os.environ,
        **s3.environ(),
        "SYSMON_LANDING_DIR": str(lake.landing),
        "SYSMON_DATA_DIR": str(lake.data),
        "SYSMON_LAKE_CATALOG": lake.settings.catalog,
        "SYSMON_LAKE_DATA_PATH": lake.settings.data_path,
    }


def test_postgres_catalog_and_s3_files_give_the_embedded_lakes_tables(
    tmp_path: Path, postgres: Postgres, s3: S3, halves: tuple[bytes, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.environ().items():
        monkeypatch.setenv(name, value)
    bucket = s3.new_bucket()
    remote = Lake(tmp_path / "remote", lake_catalog=postgres.new_catalog(), lake_data_path=f"s3://{bucket}/lake/")
    embedded = Lake(tmp_path / "embedded")
    for lake in (remote, embedded):
        land_bytes(lake, halves[0])
        lake.batch()
        land_bytes(lake, halves[1])
    embedded.batch()
    # the second batch as users run it: the Dagster CLI, configured by environment variables only
    subprocess.run(CLI_BATCH, env=lake_environ(remote, s3), check=True, capture_output=True, cwd=tmp_path)

    assert snapshot(remote.settings) == snapshot(embedded.settings)
    assert embedded.count("sysmon_join") > 100
    keys = s3.keys(bucket)
    assert keys and all(key.startswith("lake/") for key in keys)
    assert any(key.endswith(".parquet") for key in keys)
    # the bookkeeping schemas' rows are inlined in the PostgreSQL catalog, as in the embedded one
    assert not [key for key in keys if key.split("/")[1] in INLINED_SCHEMAS]
    assert not any(remote.data.rglob("*.parquet")), "a remote lake keeps no data files locally"
    assert not (remote.data / "lake.sqlite").exists()

    # another process reads the tables back through the analysts' entry point
    sql = "SELECT count(*), count(DISTINCT process_guid), max(_batch_id) FROM sysmon_join"
    printed = subprocess.run([*QUERY, sql], env=lake_environ(remote, s3), check=True, capture_output=True, text=True)
    assert json.loads(printed.stdout) == [list(row) for row in embedded.rows(sql)]
    # an endpoint that does not answer fails the query where it reads the files, naming the variable that set it
    unreachable = {**lake_environ(remote, s3), "AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    failed = subprocess.run([*QUERY, sql], env=unreachable, capture_output=True, text=True)
    assert failed.returncode == 1
    assert f"(the lake's data: s3://{bucket}/lake/ at AWS_ENDPOINT_URL=http://127.0.0.1:1)" in failed.stderr


def test_a_new_catalog_is_refused_over_s3_files_of_another_lake_or_a_bucket_that_does_not_exist(
    tmp_path: Path, postgres: Postgres, s3: S3, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in s3.environ().items():
        monkeypatch.setenv(name, value)
    data_path = f"s3://{s3.new_bucket()}/lake/"
    first = Lake(tmp_path / "first", lake_catalog=postgres.new_catalog(), lake_data_path=data_path)
    first.land([process_create("{A}")])
    first.batch()
    for catalog in (postgres.new_catalog(), None):  # another database, or the forgotten setting (the default)
        second = Settings(landing_dir=first.landing, data_dir=tmp_path / "second", lake_catalog=catalog,
                          lake_data_path=data_path)  # fmt: skip
        with pytest.raises(LakeError, match=rf"its data path {data_path} already holds data files \(s3://"):
            SysmonPipeline(second).run_batch()
    missing = Settings(landing_dir=first.landing, data_dir=tmp_path / "third", lake_catalog=postgres.new_catalog(),
                       lake_data_path="s3://no-such-bucket/lake/")  # fmt: skip
    endpoint = re.escape(s3.environ()["AWS_ENDPOINT_URL"])
    with pytest.raises(
        LakeError,
        match=rf"cannot list SYSMON_LAKE_DATA_PATH=s3://no-such-bucket/lake/ at AWS_ENDPOINT_URL={endpoint} \(does",
    ):
        SysmonPipeline(missing).run_batch()
    assert first.count("winlogbeat_stream") == 1


def test_connect_to_a_postgres_database_holding_no_lake_says_so(tmp_path: Path, postgres: Postgres) -> None:
    catalog = postgres.new_catalog()
    settings = Settings(landing_dir=tmp_path, data_dir=tmp_path / "data", lake_catalog=catalog)
    with pytest.raises(LakeError, match=r"^no lake at postgres:.* yet: run a micro-batch first$"):
        connect(settings)


def open_at_once(settings: Settings, writers: int) -> list[LakeError]:
    """``writers`` threads (each its own DuckDB instance) opening the lake at the same moment: their errors."""
    start = threading.Barrier(writers)
    errors: list[LakeError] = []

    def open_it() -> None:
        start.wait()
        try:
            with open_lake(settings) as con:
                con.execute("SELECT count(*) FROM ducklake_snapshots('lake')").fetchall()
        except LakeError as error:
            errors.append(error)

    threads = [threading.Thread(target=open_it) for _ in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return errors


def test_writers_opening_a_new_postgres_catalog_at_once_all_open_it(tmp_path: Path, postgres: Postgres) -> None:
    """Shards started together all create the new catalog's tables and set its options: the slower ones find a
    table already there or an option row another just changed, and open the lake again."""
    for attempt in range(8):
        catalog = postgres.new_catalog()
        settings = Settings(landing_dir=tmp_path, data_dir=tmp_path / f"data-{attempt}", lake_catalog=catalog)
        assert open_at_once(settings, writers=3) == []
