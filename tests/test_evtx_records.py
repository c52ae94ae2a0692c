"""EVTX files read record by record: skipping what was read, chunking, and files that cannot be read."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sysmon_assets.evtx_records import record_lines
from sysmon_assets.landed_lines import LandingError
from tests.recipe import shared_path

SAMPLE = ("data", "real", "evtx-attack-samples", "DE_sysmon-3-rdp-tun.evtx")


def test_every_record_is_one_evtx_json_line_and_skipped_records_are_not_read_again() -> None:
    path = shared_path(*SAMPLE)
    everything = [line for chunk in record_lines(path, skip=0) for line in chunk]
    assert len(everything) > 3
    first = json.loads(everything[0])
    assert set(first) == {"evtx"} and "System" in first["evtx"]
    rest = [line for chunk in record_lines(path, skip=3, chunk_records=2) for line in chunk]
    assert rest == everything[3:]


def test_chunks_hold_at_most_chunk_records_lines() -> None:
    chunks = list(record_lines(shared_path(*SAMPLE), skip=0, chunk_records=2))
    assert all(len(chunk) == 2 for chunk in chunks[:-1]) and 1 <= len(chunks[-1]) <= 2


def test_a_file_that_is_not_evtx_is_an_error_naming_it(tmp_path: Path) -> None:
    path = tmp_path / "broken.evtx"
    path.write_bytes(b"not an evtx file at all" * 100)
    with pytest.raises(LandingError, match=f"cannot read EVTX file {path}"):
        next(record_lines(path, skip=0))
