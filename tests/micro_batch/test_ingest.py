"""The ingest's chunk size follows DuckDB's memory limit (sysmon_assets/micro_batch/ingest.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import duckdb
import pytest

from sysmon_assets.micro_batch import ingest
from sysmon_assets.micro_batch.ingest import MAX_CHUNK_BYTES, MIN_CHUNK_BYTES, chunk_bytes_for
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
