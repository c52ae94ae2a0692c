"""The ingest's chunk size and threads follow DuckDB's memory limit (sysmon_assets/micro_batch/ingest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from sysmon_assets.micro_batch import ingest
from sysmon_assets.micro_batch.ingest import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, chunk_bytes_for, ingest_threads_for
from sysmon_assets.sample.generator import write_sample
from sysmon_assets.sources.landing_folder import LandingReader
from tests.conftest import Lake, network_connect

MiB = 2**20


@pytest.mark.parametrize(
    ("memory_limit", "expected"),
    [
        ("512MB", MIN_CHUNK_BYTES),
        ("800MB", 800e6 / 8),
        ("1GiB", 128 * MiB),
        ("4GB", MAX_CHUNK_BYTES),  # larger chunks gain little more, at ever more memory
        ("2TiB", MAX_CHUNK_BYTES),
        ("4MB", MIN_CHUNK_BYTES),
        ("100KB", MIN_CHUNK_BYTES),
    ],
)
def test_a_chunk_is_an_eighth_of_the_memory_limit_within_bounds(memory_limit: str, expected: float) -> None:
    with duckdb.connect(config={"memory_limit": memory_limit}) as con:
        # DuckDB prints the limit back truncated to a tenth of its unit
        assert chunk_bytes_for(con) == pytest.approx(expected, rel=1e-3)


def test_a_limit_set_or_reset_on_the_connection_is_the_one_read() -> None:
    with duckdb.connect(config={"memory_limit": "512MB"}) as con:
        con.execute("SET memory_limit = '800MB'")
        assert chunk_bytes_for(con) == pytest.approx(800e6 / 8, rel=1e-3)
        con.execute("SET memory_limit = '-1'")  # no limit: DuckDB prints it in PiB
        assert chunk_bytes_for(con) == MAX_CHUNK_BYTES
        con.execute("RESET memory_limit")  # DuckDB's default: 80% of the machine's memory
        assert MIN_CHUNK_BYTES <= chunk_bytes_for(con) <= MAX_CHUNK_BYTES


def test_the_pipelines_ingest_reads_in_chunks_its_memory_limit_allows(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    read_with: list[int] = []

    class Recording(LandingReader):
        def __init__(self, con: duckdb.DuckDBPyConnection, landing_dir: Path, offset_reset: str, chunk: int, **kw: Any):
            read_with.append(chunk)
            super().__init__(con, landing_dir, offset_reset, chunk, **kw)

    monkeypatch.setattr(ingest, "LandingReader", Recording)
    for memory_limit in ("600MB", "2GB"):
        lake = Lake(tmp_path / memory_limit, memory_limit=memory_limit)
        lake.land([network_connect("{A}", "10.0.0.1")])
        lake.batch()
        assert lake.count("sysmon_network_connect") == 1
    assert read_with == [pytest.approx(600e6 / 8, rel=1e-3), MAX_CHUNK_BYTES]


MB, KiB = 10**6, 2**10


@pytest.mark.parametrize(
    ("memory_limit", "mean_line", "threads"),
    [
        (100 * MB, 1.8 * KiB, 1),
        (512 * MB, 1.8 * KiB, 1),  # two ran out of memory
        (768 * MB, 1.8 * KiB, 2),
        (768 * MB, 5.7 * KiB, 1),  # two ran out of memory (review)
        (1000 * MB, 9.6 * KiB, 1),
        (2000 * MB, 1.8 * KiB, 7),
        (4000 * MB, 1.8 * KiB, 8),
        (4000 * MB, 0, 8),
    ],
)
def test_a_chunk_runs_on_as_many_threads_as_the_memory_limit_holds_for_its_lines(
    memory_limit: int, mean_line: float, threads: int
) -> None:
    assert ingest_threads_for(memory_limit, 8, mean_line) == threads


def test_a_batch_runs_under_512_mb_on_one_thread_for_the_ingest_and_the_connection_gets_its_threads_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20,000 generated events ran out of memory under 512 MB: the stream's query on two threads holds more than
    that, whatever the chunk."""
    given: list[int] = []
    threads_for = ingest.ingest_threads_for

    def recording(*args: Any) -> int:
        given.append(threads_for(*args))
        return given[-1]

    monkeypatch.setattr(ingest, "ingest_threads_for", recording)
    lake = Lake(tmp_path, memory_limit="512MB")
    write_sample(lake.landing, 20_000, files=1, hosts=12, seed=3)
    with lake.pipeline.connect() as con:
        con.execute("SET threads = 2")
        batch = lake.pipeline.project.open_batch(con, "run-1", ingest.datetime(2026, 11, 1))
        ingest.ingest(con, lake.pipeline.project, "winlogbeat_stream", batch, lake.settings, MIN_CHUNK_BYTES)
        assert con.execute("SELECT current_setting('threads')").fetchone()[0] == 2
    assert set(given) == {1} and len(given) >= 2  # the empty chunk that makes the tables, then the lines
    assert lake.count("winlogbeat_stream") == 20_000
    lake.batch()  # the other steps, on the machine's threads
    sysmon = "SELECT count(*) FROM winlogbeat_stream WHERE source_name = 'Microsoft-Windows-Sysmon'"
    assert lake.count("winlogbeat_stream_rekey") == lake.rows(sysmon)[0][0] > 0
    assert lake.count("sysmon_join") > 0
