"""EVTX files read record by record: skipping what was read, chunking, and damaged files as rejects."""

from __future__ import annotations

import json
import random
from datetime import timedelta
from pathlib import Path

import pytest

from sysmon_assets.micro_batch.steps import utc_now
from sysmon_assets.sources import landed_files
from sysmon_assets.sources.evtx_records import EvtxDamage, record_lines
from sysmon_assets.sources.landed_lines import LandingError
from sysmon_assets.storage.lake import open_lake
from tests.conftest import Lake, network_connect
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


def test_a_file_that_ends_inside_a_chunk_is_damage_after_its_records(tmp_path: Path) -> None:
    path = tmp_path / "cut.evtx"
    path.write_bytes(shared_path(*SAMPLE).read_bytes()[: 4096 + 30_000])
    with pytest.raises(EvtxDamage, match="ends inside a chunk: its last 30000 bytes"):
        list(record_lines(path, skip=0))


def test_damaged_evtx_files_are_rejects_and_do_not_block_later_batches(lake: Lake) -> None:
    many = shared_path("data", "real", "evtx-attack-samples", "panache_sysmon_vs_EDRTestingScript.evtx").read_bytes()
    chunk = bytearray(many)
    chunk[4096 + 65536 : 4096 + 65536 + 8] = b"XXXXXXXX"  # the second of its four chunks (records 39 to 80)
    (lake.landing / "empty.evtx").write_bytes(b"")
    (lake.landing / "random.evtx").write_bytes(random.Random(14).randbytes(70_000))
    (lake.landing / "chunk.evtx").write_bytes(bytes(chunk))
    (lake.landing / "cut.evtx").write_bytes(shared_path(*SAMPLE).read_bytes()[: 4096 + 30_000])
    lake.batch()
    lake.land([network_connect("{A}")], name="later.ndjson")
    lake.batch()
    lake.batch()
    per_file = "SELECT _source_file, count(*) FROM winlogbeat_stream GROUP BY ALL ORDER BY 1"
    assert [(Path(name).name, rows) for name, rows in lake.rows(per_file)] == [
        ("chunk.evtx", 122 - 42),
        ("later.ndjson", 1),
    ]
    rejects = lake.rows("SELECT source_file, source_offset, error FROM winlogbeat_rejects ORDER BY source_file")
    assert [(Path(name).name, offset) for name, offset, _ in rejects] == [
        ("chunk.evtx", 39),  # the damaged chunk's place among the items the parser gives
        ("cut.evtx", 1),
        ("empty.evtx", 1),
        ("random.evtx", 1),
    ]  # once each, however many batches
    errors = [error for *_, error in rejects]
    assert errors[0].startswith("EVTX record unreadable: Failed to parse chunk number 1")
    assert errors[1] == "EVTX file ends inside a chunk: its last 30000 bytes (from byte 4096) are not read"
    assert errors[2].startswith("EVTX file header unreadable:") and errors[3].startswith("EVTX file header unreadable:")


def test_an_empty_evtx_file_is_read_once_it_is_filled(lake: Lake) -> None:
    path = lake.landing / "copying.evtx"
    path.write_bytes(b"")
    lake.batch()
    with path.open("r+b") as handle:  # the copy goes on: same file
        handle.write(shared_path(*SAMPLE).read_bytes())
    lake.batch()
    records = [line for chunk in record_lines(path, skip=0) for line in chunk]
    assert lake.count("winlogbeat_stream") == len(records)
    assert lake.count("winlogbeat_rejects") == 1  # the empty file's header, seen by the first batch


PREALLOCATED = ("data", "real", "evtx-attack-samples", "panache_sysmon_vs_EDRTestingScript.evtx")  # 122 records


# (the damaged record size: chunk, record of it; the copy's cut: chunk, record of it; records before the cut)
HALF_COPIES = {
    "no damage": (None, (1, 0), 38),
    "a damaged size before the cut": ((0, 2), (1, 0), 38),
    "a damaged size after the cut": ((1, 4), (1, 0), 38),
    "a damaged size in the chunk cut, before the cut": ((1, 2), (1, 6), 44),
}


@pytest.mark.parametrize("cut_into", [20, 70, 300])
@pytest.mark.parametrize("case", sorted(HALF_COPIES))
def test_a_record_caught_half_copied_is_read_whole_once_the_copy_completes(
    case: str, cut_into: int, lake: Lake
) -> None:
    """The part of a record copied so far is not read as a record of its own (the parser read 20 bytes of record 39
    as one, and 70 of record 45), and a damaged record size's repair follows from the bytes read: both batches give
    the same records."""
    damaged, (cut_chunk, cut_record), before_cut = HALF_COPIES[case]
    whole = bytearray(shared_path(*PREALLOCATED).read_bytes())
    path, cut = lake.landing / "copied.evtx", _record_frames(bytes(whole), cut_chunk)[cut_record] + cut_into
    if damaged:
        at = _record_frames(bytes(whole), damaged[0])[damaged[1]]
        whole[at + 4 : at + 8] = bytes(4)
    path.write_bytes(whole[:cut] + bytes(len(whole) - cut))  # the copier set the full size first
    lake.batch()
    assert (lake.count("winlogbeat_stream"), lake.count("winlogbeat_rejects")) == (before_cut, 0)
    with path.open("r+b") as handle:  # the copy completes
        handle.seek(cut)
        handle.write(whole[cut:])
    lake.batch()
    assert lake.rows("SELECT list(_source_offset ORDER BY _seq) = range(1, 123) FROM winlogbeat_stream") == [(True,)]
    assert lake.count("winlogbeat_rejects") == 0


def test_records_written_into_an_evtx_file_of_unchanged_size_are_a_landing(lake: Lake) -> None:
    """Windows writes new records into a log's last chunk, and a copier may set the full size first: the size on disk
    stays, but records land (ingest.files.updated_at, which landing_freshness reads)."""
    whole = shared_path(*PREALLOCATED).read_bytes()
    path, cut = lake.landing / "copied.evtx", _record_frames(whole, 1)[0] + 20
    path.write_bytes(whole[:cut] + bytes(len(whole) - cut))
    lake.batch()
    with open_lake(lake.settings) as con:  # that landing long ago
        con.execute("UPDATE ingest.files SET updated_at = TIMESTAMP '2020-01-01'")
    with path.open("r+b") as handle:
        handle.seek(cut)
        handle.write(whole[cut:])
    started = utc_now() - timedelta(seconds=1)
    lake.batch()
    ((updated_at, position),) = lake.rows("SELECT updated_at, position FROM ingest.files")
    assert position == 122 and updated_at >= started


def test_unreadable_records_that_end_a_settled_evtx_file_are_rejects(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(landed_files, "SETTLED_SECONDS", 0.0)  # unchanged since it was written: settled
    whole = shared_path(*PREALLOCATED).read_bytes()
    (lake.landing / "cut.evtx").write_bytes(whole[:70_214] + bytes(len(whole) - 70_214))
    lake.batch()
    lake.batch()
    assert lake.count("winlogbeat_stream") == 38
    assert [
        (offset, error[:40]) for offset, error in lake.rows("SELECT source_offset, error FROM winlogbeat_rejects")
    ] == [(39, "EVTX record unreadable: not written whol")]


def _record_frames(data: bytes, chunk: int) -> list[int]:
    """The byte offsets of chunk ``chunk``'s record frames, walked by their sizes."""
    at, frames = 4096 + chunk * 65536 + 512, []
    while data[at : at + 4] == b"**\x00\x00" and int.from_bytes(data[at + 4 : at + 8], "little"):
        frames.append(at)
        at += int.from_bytes(data[at + 4 : at + 8], "little")
    return frames


DAMAGES = ["size 0", "size 27", "size 10000", "size grown by 256", "size shrunk by 8", "magic of the next"]


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_record_whose_frame_is_damaged_is_read_with_the_rest_of_its_chunk(damage: str, lake: Lake) -> None:
    """The parser finds each record by the size of the one before; where that leads to no record it skipped the
    rest of the chunk, 35 records here, with one reject naming only the damaged record."""
    data = bytearray(shared_path(*PREALLOCATED).read_bytes())
    third, fourth = _record_frames(bytes(data), 0)[2:4]  # chunk 0 holds records 1 to 38
    size = int.from_bytes(data[third + 4 : third + 8], "little")
    if damage == "magic of the next":
        data[fourth : fourth + 4] = b"XXXX"
    else:
        changed = {"size grown by 256": size + 256, "size shrunk by 8": size - 8}.get(damage) or int(damage[5:])
        data[third + 4 : third + 8] = changed.to_bytes(4, "little")
    (lake.landing / "sized.evtx").write_bytes(bytes(data))
    lake.batch()
    assert lake.rows("SELECT list(_source_offset ORDER BY _seq) = range(1, 123) FROM winlogbeat_stream") == [(True,)]
    assert lake.count("winlogbeat_rejects") == 0


def test_a_frame_lookalike_inside_a_record_is_not_taken_for_the_next_record(lake: Lake) -> None:
    """A damaged size is set to reach the next record's frame where the copy of the size ending the damaged record
    agrees: a magic and the next number inside its data (a string holding them) are passed over."""
    data = bytearray(shared_path(*PREALLOCATED).read_bytes())
    third = _record_frames(bytes(data), 0)[2]
    inside = data.index("C:\\".encode("utf-16-le"), third + 24)  # a path in record 3's strings
    data[inside : inside + 16] = b"**\x00\x00AAAA" + (4).to_bytes(8, "little")
    data[third + 4 : third + 8] = (10_000).to_bytes(4, "little")
    (lake.landing / "lookalike.evtx").write_bytes(bytes(data))
    lake.batch()
    assert lake.rows("SELECT list(_source_offset ORDER BY _seq) = range(1, 123) FROM winlogbeat_stream") == [(True,)]
    assert lake.count("winlogbeat_rejects") == 0


def test_a_chunk_whose_first_record_number_is_damaged_is_still_repaired(lake: Lake) -> None:
    data = bytearray(shared_path(*PREALLOCATED).read_bytes())
    first, second = _record_frames(bytes(data), 0)[:2]
    data[first + 8 : first + 16] = (999).to_bytes(8, "little")
    data[second + 4 : second + 8] = bytes(4)
    (lake.landing / "numbered.evtx").write_bytes(bytes(data))
    lake.batch()
    assert lake.rows("SELECT list(_source_offset ORDER BY _seq) = range(1, 123) FROM winlogbeat_stream") == [(True,)]
    assert lake.count("winlogbeat_rejects") == 0
