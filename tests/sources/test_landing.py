"""Reading the landing folder: growth, partial lines, rotation, gzip, offset reset, errors."""

from __future__ import annotations

import functools
import gzip
import hashlib
import io
import itertools
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable
from contextlib import suppress
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from sysmon_assets.micro_batch.steps import SysmonPipeline, utc_now
from sysmon_assets.sources import gzip_stream, landed_files
from sysmon_assets.sources import landing_folder as landing
from sysmon_assets.sources.evtx_records import record_lines
from sysmon_assets.sources.gzip_stream import inflate
from sysmon_assets.sources.landed_files import list_landed_files
from sysmon_assets.sources.landed_lines import LandingError
from sysmon_assets.storage.lake import LakeError
from tests.conftest import (
    T0,
    Lake,
    in_time_zone,
    lake_rows_in_another_process,
    land,
    land_in_shard,
    network_connect,
    process_create,
    python_prints,
)
from tests.recipe import shared_path

ROOT = Path(__file__).resolve().parents[2]


def test_a_growing_file_is_read_from_where_the_last_batch_stopped(lake: Lake) -> None:
    lake.land([network_connect("{A}", "10.0.0.1")])
    lake.batch()
    lake.land([network_connect("{A}", "10.0.0.2")])
    lake.batch()
    assert lake.rows("SELECT _source_line, _source_offset > 0, _batch_id FROM winlogbeat_stream ORDER BY 1") == [
        (1, False, 1),
        (2, True, 2),
    ]


def _land_a_line_and_40_bytes_of_the_next(path: Path) -> tuple[int, str]:
    """The first line's length with its newline, and the rest of the second line."""
    whole, partial = json.dumps(network_connect("{A}", "10.0.0.1")), json.dumps(network_connect("{A}", "10.0.0.2"))
    path.write_text(whole + "\n" + partial[:40])
    return len(whole) + 1, partial[40:]


def _finish_the_line_and_find_both(lake: Lake, path: Path, rest: str) -> None:
    with path.open("a") as handle:
        handle.write(rest + "\n")
    lake.batch()
    assert lake.rows("SELECT event_data.DestinationIp FROM winlogbeat_stream ORDER BY _seq") == [
        ("10.0.0.1",),
        ("10.0.0.2",),
    ]


def test_an_incomplete_last_line_waits_for_its_newline(lake: Lake) -> None:
    path = lake.landing / "w.ndjson"
    _, rest = _land_a_line_and_40_bytes_of_the_next(path)
    lake.batch()
    assert lake.count("winlogbeat_stream") == 1
    assert lake.count("winlogbeat_rejects") == 0
    _finish_the_line_and_find_both(lake, path, rest)


def test_a_line_its_writer_stops_in_the_middle_of_for_batches_lands_once_when_ended(lake: Lake) -> None:
    """A buffered writer flushes mid-line and may not write again for minutes: a last line that is not a complete
    JSON document waits for its writer, unchanged file or not."""
    path = lake.landing / "w.ndjson"
    _, rest = _land_a_line_and_40_bytes_of_the_next(path)
    for _ in range(3):
        lake.batch()
    assert lake.count("winlogbeat_stream") == 1
    assert lake.count("winlogbeat_rejects") == 0
    _finish_the_line_and_find_both(lake, path, rest)
    assert lake.count("winlogbeat_rejects") == 0


def test_a_cut_last_line_is_rejected_once_its_file_has_gone_unchanged_for_the_wait(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = lake.landing / "w.ndjson"
    first, _ = _land_a_line_and_40_bytes_of_the_next(path)
    lake.batch()
    lake.batch()
    assert lake.count("winlogbeat_rejects") == 0
    monkeypatch.setattr(landing, "UNFINISHED_LINE_SECONDS", 0)  # the wait is over
    lake.batch()
    rejected = lake.rows("SELECT source_line, source_offset, raw_bytes, error FROM winlogbeat_rejects")
    assert rejected == [(2, first, 40, "malformed JSON")]
    lake.batch()
    assert lake.count("winlogbeat_rejects") == 1


@pytest.mark.parametrize("finish", ["the cut line", "a newline"])
def test_lines_after_a_last_line_delivered_without_its_newline_keep_their_numbers(
    lake: Lake, monkeypatch: pytest.MonkeyPatch, finish: str
) -> None:
    """A probe's finding: a last line delivered without its newline counted as a line of its own, so when its writer
    finished it, the rest of it and every line after were numbered one too high."""
    path = lake.landing / "w.ndjson"
    _, rest = _land_a_line_and_40_bytes_of_the_next(path)
    if finish == "a newline":
        path.write_text(path.read_text() + rest)  # a whole document: delivered without a wait
    lake.batch()
    monkeypatch.setattr(landing, "UNFINISHED_LINE_SECONDS", 0)
    lake.batch()  # delivers line 2 as it stands
    with path.open("a") as handle:
        handle.write(("" if finish == "a newline" else rest) + "\n" + json.dumps(network_connect("{A}", "10.0.0.3")))
        handle.write("\n")
    lake.batch()
    numbered = lake.rows("SELECT _source_line FROM winlogbeat_stream WHERE event_data.DestinationIp = '10.0.0.3'")
    assert numbered == [(3,)]
    lines = lake.rows("SELECT line_number FROM ingest.files")
    assert lines == [(3,)]
    if finish == "the cut line":  # its two pieces: rejects of line 2
        assert lake.rows("SELECT source_line FROM winlogbeat_rejects") == [(2,), (2,)]


@pytest.mark.parametrize(
    "last_line",
    ['{"a": 1,}', '{"n": ' + "9" * 5000 + "}", "[" * 1100 + "]" * 1100, '\ufeff{"a": 1}', '{"a": "\u00e9"}'],
    ids=["trailing comma", "5000 digits", "nested 1100 deep", "byte order mark", "not ASCII"],
)
def test_a_last_line_the_stream_reads_as_json_is_delivered_a_batch_late(lake: Lake, last_line: str) -> None:
    """Whether a last line is a whole document is decided by the parser the stream uses, not by Python's."""
    path = lake.landing / "w.ndjson"
    path.write_text(json.dumps(network_connect("{A}", "10.0.0.1")) + "\n" + last_line, encoding="utf-8")
    lake.batch()
    lake.batch()
    assert lake.count("winlogbeat_stream") + lake.count("winlogbeat_rejects") == 2


def test_a_rotated_file_is_not_read_twice(lake: Lake) -> None:
    path = lake.land([network_connect("{A}", "10.0.0.1")], name="winlogbeat.ndjson")
    lake.batch()
    path.rename(lake.landing / "winlogbeat.1.ndjson")
    lake.land([network_connect("{A}", "10.0.0.2")], name="winlogbeat.ndjson")
    lake.batch()
    assert lake.count("winlogbeat_stream") == 2


def test_a_file_with_two_landed_names_is_read_once(lake: Lake) -> None:
    # rotation by hard link (link the new name, then remove the old one), caught between the two steps
    path = lake.land([network_connect("{A}", "10.0.0.1")], name="winlogbeat")
    lake.batch()
    with path.open("a") as handle:
        handle.write(json.dumps(network_connect("{A}", "10.0.0.2")) + "\n")
    os.link(path, lake.landing / "winlogbeat.1")
    lake.batch()
    assert lake.rows("SELECT event_data.DestinationIp FROM winlogbeat_stream ORDER BY _seq") == [
        ("10.0.0.1",),
        ("10.0.0.2",),
    ]
    assert lake.rows("SELECT count(*), count(DISTINCT file_key) FROM ingest.files") == [(1, 1)]


def _rotate(path: Path, new_events: list[dict[str, Any]]) -> None:
    """Winlogbeat's rotation: the file moves to ``<name>.1`` and a new file takes its name."""
    path.rename(path.with_name(path.name + ".1"))
    land(path, new_events)


ROTATION_MOMENTS = {  # where in a batch the rotation happens: what runs first, in the module under test
    "after_listing": ("scan_landing", "result"),
    "before_reading": ("_read_blocks", "call"),
    "before_commit": ("LandingReader.commit_offsets", "call"),
}


@pytest.mark.parametrize("moment", list(ROTATION_MOMENTS))
def test_a_file_rotated_during_a_batch_is_read_once(lake: Lake, monkeypatch: pytest.MonkeyPatch, moment: str) -> None:
    path = lake.land([network_connect("{A}", f"10.0.0.{i}") for i in (1, 2)], name="winlogbeat")
    lake.batch()
    land(path, [network_connect("{A}", "10.0.0.3")])
    name, when = ROTATION_MOMENTS[moment]
    owner = landing.LandingReader if "." in name else landing
    attribute = name.rpartition(".")[2]
    original = getattr(owner, attribute)
    rotated: list[bool] = []

    def rotating(*args: Any, **kwargs: Any) -> Any:
        if when == "result":
            result = original(*args, **kwargs)
        if not rotated:
            rotated.append(True)
            _rotate(path, [network_connect("{A}", "10.0.0.4"), network_connect("{A}", "10.0.0.5")])
        return result if when == "result" else original(*args, **kwargs)

    monkeypatch.setattr(owner, attribute, rotating)
    lake.batch()
    monkeypatch.undo()
    lake.batch()
    assert rotated
    assert lake.rows("SELECT event_data.DestinationIp FROM winlogbeat_stream ORDER BY 1") == [
        (f"10.0.0.{i}",) for i in range(1, 6)
    ]
    assert lake.rows("SELECT event FROM ingest.file_events") == []


def test_a_writer_rotating_during_back_to_back_batches_lands_every_event_once(lake: Lake) -> None:
    # no hooks: batches run while a writer appends and rotates, as Winlogbeat does (keeping every rotated file)
    lake.batch()  # the lake exists: batches from here on are short, so several meet a rotation
    path, total, kept = lake.landing / "winlogbeat", 3000, 20
    writer_done, batch_ran = threading.Event(), threading.Event()
    pace = random.Random(7)

    def write() -> None:
        for start in range(0, total, 25):
            land(path, [network_connect("{A}", f"10.0.{n // 250}.{n % 250}") for n in range(start, start + 25)])
            if start % 350 < 25:
                for older in range(kept, 1, -1):
                    with suppress(FileNotFoundError):
                        path.with_name(f"winlogbeat.{older - 1}").rename(path.with_name(f"winlogbeat.{older}"))
                path.rename(path.with_name("winlogbeat.1"))
                batch_ran.clear()
                batch_ran.wait(60)  # however slow the machine, batches run between rotations
            time.sleep(pace.random() * 0.05)
        writer_done.set()

    writer = threading.Thread(target=write)
    writer.start()
    batches = 0
    while not writer_done.is_set():
        lake.batch()
        batch_ran.set()
        batches += 1
    writer.join()
    lake.batch()
    assert batches > 2
    assert lake.rows("SELECT count(*), count(DISTINCT event_data.DestinationIp) FROM winlogbeat_stream") == [
        (total, total)
    ]
    assert lake.rows("SELECT event FROM ingest.file_events") == []


def test_a_file_gone_with_bytes_not_read_is_recorded_once_and_read_on_if_it_comes_back(lake: Lake) -> None:
    path = lake.landing / "events.json"
    start, rest = _land_a_line_and_40_bytes_of_the_next(path)
    lake.batch()
    outside = path.rename(lake.landing / "events.json.1")  # a name the landing folder does not read
    lake.batch()
    lake.batch()
    assert lake.rows("SELECT event, path, detail FROM ingest.file_events") == [
        (
            "vanished",
            str(path),
            f"no longer under a landed name with 40 bytes not read (from byte {start} of the {start + 40} it had when "
            "last listed): read on if it comes back under a landed name, else lost (renamed outside the landed "
            "names, or deleted)",
        )
    ]
    outside.rename(path)
    _finish_the_line_and_find_both(lake, path, rest)


def test_the_landing_folder_named_relative_then_absolute_is_read_on_without_duplicates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Paths are kept as configured (``make run``'s ``data/landing``): a deployment that later names the same folder
    by its absolute path reads each file on from where the relative name left it."""
    monkeypatch.chdir(tmp_path)
    relative = Lake(Path("here"))
    path = relative.land([process_create("{A}"), network_connect("{A}")])
    relative.batch()
    land(path, [network_connect("{A}", "10.0.0.2")])
    absolute = Lake(tmp_path / "here")
    absolute.batch(T0 + timedelta(minutes=1))
    assert absolute.rows("SELECT _source_file, _source_line FROM winlogbeat_stream ORDER BY _seq") == [
        ("here/landing/winlogbeat.ndjson", 1),
        ("here/landing/winlogbeat.ndjson", 2),
        (str(tmp_path / "here/landing/winlogbeat.ndjson"), 3),
    ]
    assert absolute.rows("SELECT dst_ip_addr FROM sysmon_join ORDER BY 1") == [("10.0.0.1",), ("10.0.0.2",)]
    assert absolute.rows("SELECT event FROM ingest.file_events") == []


def test_a_fifo_swapped_in_after_the_listing_is_not_waited_on(tmp_path: Path) -> None:
    """A probe's finding: a FIFO put in a listed file's place made the batch wait for a writer forever."""
    path = tmp_path / "events.json"
    path.write_text("{}\n")
    key = landed_files.file_key(path)
    path.unlink()
    os.mkfifo(path)
    outcome: list[str] = []

    def read() -> None:
        try:
            with landed_files.open_landed(path, key):
                outcome.append("read")
        except landed_files.FileMoved:
            outcome.append("moved")

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(10)
    waited = reader.is_alive()
    if waited:  # let the waiting open go
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    assert not waited
    assert outcome == ["moved"]


def test_a_file_saved_by_rename_with_more_lines_is_read_on_where_it_stopped(lake: Lake) -> None:
    """rsync and editors write a new copy and rename it over the old file: a new inode under the same name."""
    path = lake.landing / "events.json"
    start, rest = _land_a_line_and_40_bytes_of_the_next(path)
    lake.batch()  # the line, and 40 bytes of the next held back
    no_time = json.dumps(network_connect("{A}", "10.0.0.3", record=3, utc_time=""))  # never taken for a redelivery
    for more in ([no_time], [json.dumps(network_connect("{A}", "10.0.0.4"))]):
        copy = path.with_name("events.json.part")
        copy.write_text(path.read_text() + rest + "\n" + "\n".join(more) + "\n")
        inode = path.stat().st_ino
        os.replace(copy, path)
        assert path.stat().st_ino != inode
        rest = ""
        lake.batch()
    assert lake.rows("SELECT event_data.DestinationIp FROM winlogbeat_stream ORDER BY _seq") == [
        (f"10.0.0.{n}",) for n in range(1, 5)
    ]
    assert [event for (event,) in lake.rows("SELECT event FROM ingest.file_events")] == ["renamed over"] * 2
    assert lake.rows("SELECT path, position FROM ingest.files") == [(str(path), path.stat().st_size)]
    assert start < path.stat().st_size


def test_a_file_saved_by_rename_onto_a_deleted_files_inode_is_read_on_and_the_deleted_one_is_recorded(
    lake: Lake,
) -> None:
    """A probe's finding: a deleted file's inode, reused by an editor's copy saved by rename, read that copy from its
    start (as if the file under the inode were replaced in place) and left the deleted file's unread bytes
    unrecorded. The reuse is made here by renaming the deleted file over the saved one and rewriting it."""
    saved = lake.land([network_connect("{A}", f"10.0.0.{n}") for n in range(1, 5)], name="e.ndjson")
    deleted = lake.landing / "b.ndjson"
    _land_a_line_and_40_bytes_of_the_next(deleted)
    lake.batch()
    copy = saved.read_text() + json.dumps(network_connect("{A}", "10.0.0.5")) + "\n"
    os.replace(deleted, saved)  # b.ndjson is gone, its inode now under e.ndjson
    saved.write_text(copy)  # the copy, as if written to the reused inode and renamed
    lake.batch()
    assert lake.rows("SELECT event_data.DestinationIp, count(*) FROM winlogbeat_stream GROUP BY ALL ORDER BY ALL") == [
        ("10.0.0.1", 2),
        ("10.0.0.2", 1),
        ("10.0.0.3", 1),
        ("10.0.0.4", 1),
        ("10.0.0.5", 1),
    ]
    assert lake.rows(
        "SELECT event, path, detail LIKE '%with 40 bytes not read%' FROM ingest.file_events ORDER BY 1"
    ) == [
        ("renamed over", str(saved), False),
        ("vanished", str(deleted), True),
    ]
    assert lake.rows("SELECT path, position, file_size FROM ingest.files") == [(str(saved), len(copy), len(copy))]
    lake.batch()
    assert lake.count("winlogbeat_stream") == 6 and lake.count("ingest.file_events") == 2


def test_a_gzip_file_gone_before_it_was_read_to_its_end_is_recorded(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe's finding: only text files were recorded as vanished (logrotate deleting the oldest .gz while a
    backlog is read under SYSMON_LANDING_MAX_BYTES lost its unread lines without a word)."""
    monkeypatch.setattr(gzip_stream, "COMPRESSED_READ_BYTES", 1024)
    lake = Lake(tmp_path, landing_max_bytes=100_000)
    path = lake.landing / "old.ndjson.gz"
    path.write_bytes(gzip.compress("".join(line + "\n" for line in _lines(3_000)).encode(), mtime=0))
    lake.batch()
    read = lake.count("winlogbeat_stream")
    assert 0 < read < 3_000
    path.unlink()
    lake.batch()
    lake.batch()
    ((event, detail),) = lake.rows("SELECT event, detail FROM ingest.file_events")
    assert event == "vanished"
    assert detail.startswith(f"no longer under a landed name and not read to its end (it stopped at line {read})")


def test_a_new_file_under_a_gone_files_name_is_read_from_its_start(lake: Lake) -> None:
    path = lake.land([network_connect("{A}", "10.0.0.1")], name="winlogbeat")
    lake.batch()
    new = lake.land([network_connect("{A}", f"10.0.1.{n}") for n in range(1, 4)], name="winlogbeat.tmp")
    path.rename(path.with_name("winlogbeat.1"))
    path.with_name("winlogbeat.1").unlink()  # rotated out (keepfiles), after the new file took another inode
    new.rename(path)
    lake.batch()
    assert lake.rows("SELECT event_data.DestinationIp FROM winlogbeat_stream WHERE _batch_id = 2 ORDER BY 1") == [
        (f"10.0.1.{n}",) for n in range(1, 4)
    ]
    assert lake.count("ingest.file_events") == 0


@pytest.mark.parametrize("name", ["winlogbeat.1", "winlogbeat.1.ndjson.gz"])
def test_a_file_read_to_its_end_and_deleted_leaves_no_file_event(lake: Lake, name: str) -> None:
    path = lake.landing / name
    text = json.dumps(network_connect("{A}")) + "\n"
    path.write_bytes(gzip.compress(text.encode()) if name.endswith(".gz") else text.encode())
    lake.batch()  # within 2 s of its landing: read whole at a stat not settled yet
    assert lake.count("winlogbeat_stream") == 1
    path.unlink()  # rotation's keepfiles at work
    lake.batch()
    assert lake.count("ingest.file_events") == 0


def test_copy_truncate_rotation_lands_the_copy_again_and_the_rekey_keeps_one_delivery(lake: Lake) -> None:
    # not supported (docs/inputs.md): the copy is a new file; only the rekey's redelivery dedupe undoes it
    path = lake.land([process_create("{A}", record=1), network_connect("{A}", record=2)], name="winlogbeat")
    lake.batch()
    shutil.copy(path, path.with_name("winlogbeat.1"))
    path.write_text("")
    lake.batch()
    assert (lake.count("winlogbeat_stream"), lake.count("winlogbeat_stream_rekey"), lake.count("sysmon_join")) == (
        4,
        2,
        1,
    )


def test_gzip_files_are_read(lake: Lake) -> None:
    lines = "".join(json.dumps(e) + "\n" for e in [process_create("{A}"), network_connect("{A}")])
    with gzip.open(lake.landing / "archive.ndjson.gz", "wt") as handle:
        handle.write(lines)
    lake.batch()
    lake.batch()
    assert lake.count("sysmon_join") == 1
    assert lake.count("winlogbeat_stream") == 2


def test_only_landed_file_names_are_read_oldest_first(lake: Lake) -> None:
    landed = ["winlogbeat.2", "winlogbeat.1", "a.json", "b.ndjson", "c.json.gz", "d.evtx", "winlogbeat"]
    ignored = ["notes.txt", "d.ndjson.tmp", "winlogbeat.lock", ".hidden.json", "e.JSON", "f.jsonl", "sub/g.json"]
    # a rotated file compressed (logrotate's compress: its lines were read under its earlier name) or a writer's
    # temporary copy of one
    ignored += ["winlogbeat.3.gz", "winlogbeat.1.tmp", "winlogbeat.2x"]
    (lake.landing / "sub").mkdir()
    for age, name in enumerate(landed + ignored):
        (lake.landing / name).write_text("")
        os.utime(lake.landing / name, (1_000_000 + age, 1_000_000 + age))
    assert [p.name for p in list_landed_files(lake.landing)] == landed


def test_winlogbeat_file_output_rotation_is_read_once_in_order(lake: Lake) -> None:
    live = lake.land([process_create("{A}", "v1.exe")], name="winlogbeat")
    lake.batch()
    live.rename(lake.landing / "winlogbeat.1")  # Winlogbeat rotates, then writes a new file
    lake.land([network_connect("{A}")], name="winlogbeat")
    lake.batch()
    assert lake.count("winlogbeat_stream") == 2
    assert lake.rows("SELECT process_command_line FROM sysmon_join") == [("v1.exe",)]


def test_offset_reset_latest_starts_after_what_had_landed(tmp_path: Path) -> None:
    lake = Lake(tmp_path, offset_reset="latest")
    lake.land([network_connect("{A}", "10.0.0.1")])
    lake.batch()
    assert lake.count("winlogbeat_stream") == 0
    lake.land([network_connect("{A}", "10.0.0.2")])
    lake.land([network_connect("{A}", "10.0.0.3")], name="new.ndjson")
    lake.batch()
    assert lake.rows("SELECT event_data.DestinationIp FROM winlogbeat_stream ORDER BY 1") == [
        ("10.0.0.2",),
        ("10.0.0.3",),
    ]


def test_with_shards_offset_reset_latest_starts_each_shard_after_what_had_landed_in_its_files(tmp_path: Path) -> None:
    """Each shard's first batch starts at the end of its own files, whichever shard runs first."""
    lake = Lake(tmp_path, offset_reset="latest", shards=2)
    for shard in (0, 1):
        land_in_shard(lake, shard, network_connect("{A}", f"10.0.0.{shard}"))
    shards = [SysmonPipeline(lake.settings, shard=index) for index in (0, 1)]
    for pipeline in shards:
        pipeline.run_batch(batch_time=T0)
    assert lake.count("winlogbeat_stream") == 0
    for shard in (0, 1):
        land_in_shard(lake, shard, network_connect("{A}", f"10.0.1.{shard}"))
    for pipeline in shards:
        pipeline.run_batch(batch_time=T0)
    assert lake.rows("SELECT event_data.DestinationIp FROM winlogbeat_stream ORDER BY 1") == [
        ("10.0.1.0",),
        ("10.0.1.1",),
    ]


def test_offset_reset_earliest_reads_everything_landed(lake: Lake) -> None:
    lake.land([network_connect("{A}", "10.0.0.1")])
    lake.batch()
    assert lake.count("winlogbeat_stream") == 1


def _events(prefix: str, count: int) -> list[dict[str, Any]]:
    """``count`` processes, each created then connecting, GUIDs named after ``prefix``."""
    guids = [f"{{{prefix}-{index:05d}}}" for index in range(count)]
    return [event for guid in guids for event in (process_create(guid), network_connect(guid))]


def _lines_read(lake: Lake) -> dict[str, int]:
    return dict(lake.rows("SELECT _source_file, max(_source_line) FROM winlogbeat_stream GROUP BY ALL"))


def test_a_batch_limit_gives_every_file_a_share_until_all_is_read_as_one_batch_reads_it(tmp_path: Path) -> None:
    capped, whole = Lake(tmp_path / "capped", landing_max_bytes=300_000), Lake(tmp_path / "whole")
    backlog = {"big.ndjson": _events("B", 300), "small.ndjson": _events("S", 20), "other.ndjson": _events("O", 300)}
    for lake in (capped, whole):
        for name, events in backlog.items():
            lake.land(events, name)
    batches, before = 0, {}
    while True:
        if batches < 3:  # a writer keeps adding to one file faster than the limit: the others still advance
            for lake in (capped, whole):
                lake.land(_events(f"G{batches}", 300), "big.ndjson")
        capped.batch(T0 + timedelta(minutes=batches))
        batches += 1
        read = _lines_read(capped)
        if read == before:
            break
        landed = {path.name: len(path.read_text().splitlines()) for path in capped.landing.iterdir()}
        unfinished = [name for name, lines in before.items() if lines < landed[Path(name).name]]
        assert all(read[name] > before[name] for name in unfinished), (batches, before, read)
        before = read
    assert batches > 4  # the limit did split the backlog
    whole.batch(T0)
    columns = "* EXCLUDE (_seq, _batch_id)"
    assert capped.rows(f"SELECT {columns} FROM sysmon_join ORDER BY ALL") == whole.rows(
        f"SELECT {columns} FROM sysmon_join ORDER BY ALL"
    )
    assert capped.count("sysmon_join") == (300 * 4 + 20 + 300)


def test_a_truncated_file_is_read_anew_not_mixed(lake: Lake, caplog: pytest.LogCaptureFixture) -> None:
    path = lake.land([network_connect("{A}", "10.0.0.1"), network_connect("{A}", "10.0.0.2")])
    lake.batch()
    path.write_text(json.dumps(network_connect("{A}", "10.0.0.3")) + "\n")
    lake.batch()
    assert "shrank" in caplog.text
    assert lake.rows("SELECT event_data.DestinationIp, _source_line FROM winlogbeat_stream ORDER BY _seq")[-1] == (
        "10.0.0.3",
        1,
    )


def test_a_missing_landing_folder_is_one_clear_error(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.landing.rmdir()
    with pytest.raises(LandingError, match=f"landing folder {lake.landing} does not exist"):
        lake.batch()


def test_an_unusable_lake_catalog_names_the_path(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    (lake.data / "lake.sqlite").mkdir(parents=True)
    catalog = f"cannot open the lake (catalog sqlite:{lake.data / 'lake.sqlite'},"
    with pytest.raises(LakeError, match=re.escape(catalog)):
        lake.batch()


def test_a_corrupt_lake_catalog_names_the_path(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.data.mkdir()
    (lake.data / "lake.sqlite").write_bytes(b"this is not a sqlite file" * 1000)
    catalog = f"cannot open the lake (catalog sqlite:{lake.data / 'lake.sqlite'},"
    with pytest.raises(LakeError, match=re.escape(catalog)):
        lake.batch()


def test_another_process_opens_the_lake_while_a_pipeline_holds_it(lake: Lake) -> None:
    """No single-writer file lock: a process holding the lake open does not stop a batch, and the pipeline's
    open connection does not stop another process from reading."""
    lake.land([network_connect("{A}")])
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; from sysmon_assets.storage.lake import open_lake; "
            "from sysmon_assets.settings import Settings\n"
            f"with open_lake(Settings(data_dir=Path({str(lake.data)!r}))) as con:\n"
            "    print('ok', flush=True); time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        lake.batch()
    finally:
        holder.kill()
        holder.wait()
    with lake.pipeline.connect() as con:  # the pipeline's connection, open and in a transaction
        con.begin()
        assert con.execute("SELECT count(*) FROM winlogbeat_stream").fetchall() == [(1,)]
        assert lake_rows_in_another_process(lake.settings, "SELECT count(*) FROM winlogbeat_stream") == [[1]]
        con.rollback()


def test_an_evtx_file_whose_header_changes_is_not_read_again(lake: Lake) -> None:
    source = shared_path("data", "real", "evtx-attack-samples", "DE_sysmon-3-rdp-tun.evtx")
    copy = lake.landing / source.name
    copy.write_bytes(source.read_bytes())
    lake.batch()
    records = lake.count("winlogbeat_stream")
    with copy.open("r+b") as handle:  # Windows rewrites the header's counters as records are appended
        handle.seek(24)
        handle.write(b"\x07")
    lake.batch()
    assert lake.count("winlogbeat_stream") == records
    assert lake.count("ingest.file_events") == 0


def test_an_evtx_file_replaced_in_place_is_read_anew(lake: Lake) -> None:
    first = shared_path("data", "real", "evtx-attack-samples", "DE_sysmon-3-rdp-tun.evtx")
    second = shared_path(
        "data", "real", "evtx-attack-samples", "exec_persist_rundll32_mshta_scheduledtask_sysmon_1_3_11.evtx"
    )
    copy = lake.landing / "Sysmon.evtx"
    copy.write_bytes(first.read_bytes())
    lake.batch()
    records = lake.count("winlogbeat_stream")
    inode = copy.stat().st_ino
    copy.write_bytes(second.read_bytes())  # another log exported over it: the same inode, fewer records
    assert copy.stat().st_ino == inode
    lake.batch()
    assert lake.count("winlogbeat_stream") == records + sum(len(items) for items in record_lines(second, 0))
    assert lake.rows("SELECT event, detail FROM ingest.file_events") == [("replaced", "its first record changed")]


def test_a_file_event_is_recorded_once_however_many_chunks_the_batch_commits(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.pipeline.chunk_bytes = 4096  # several chunk commits in one batch
    first = lake.land([network_connect("{A}", "10.0.0.1")], name="a.ndjson")
    lake.batch()
    first.write_text("")  # truncated
    lake.land([network_connect("{A}", f"10.0.1.{i}") for i in range(20)], name="b.ndjson")
    lake.batch()
    assert lake.count("winlogbeat_stream") == 21
    assert lake.rows("SELECT event, path FROM ingest.file_events") == [("truncated", str(first))]


def test_a_chunk_commit_writes_only_the_file_positions_it_moved(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.pipeline.chunk_bytes = 2048  # several chunks per file
    for name in ("a", "b", "c"):
        lake.land([network_connect("{A}", f"10.0.0.{i}") for i in range(6)], name=f"{name}.ndjson")
    lake.batch()
    written: dict[str, list[int]] = {}
    commits = lake.rows(
        "SELECT snapshot_id FROM ducklake_snapshots('lake') WHERE commit_extra_info::JSON->>'step' = ? "
        "ORDER BY snapshot_id",
        ["winlogbeat_stream"],
    )
    for (snapshot,) in commits:  # the rows each chunk's commit wrote into ingest.files
        for path, position in lake.rows(
            "SELECT path, position FROM ducklake_table_insertions('lake', 'ingest', 'files', ?, ?)",
            [snapshot, snapshot],
        ):
            written.setdefault(Path(path).name, []).append(position)
    assert set(written) == {"a.ndjson", "b.ndjson", "c.ndjson"}
    for name, positions in written.items():
        assert positions == sorted(set(positions)), name  # each write moved the file on
        assert positions[-1] == (lake.landing / name).stat().st_size
        assert len(positions) > 2  # the file took several chunks
    assert lake.count("winlogbeat_stream") == 18


def test_lines_split_across_chunks_keep_their_numbers_offsets_and_bytes(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.pipeline.chunk_bytes = 100  # many blocks, and lines longer than one block
    lines = [
        json.dumps(process_create("{A}")).encode(),
        b"not json\r",
        b"",
        json.dumps(network_connect("{A}")).encode() + b"\r",
        b"   ",
        b"[1, 2]",
        json.dumps(network_connect("{A}", "10.0.0.9")).encode(),
    ]
    path = lake.landing / "w.ndjson"
    path.write_bytes(b"\n".join(lines) + b"\n")
    starts = [sum(len(line) + 1 for line in lines[:i]) for i in range(len(lines))]
    lake.batch()
    assert lake.rows("SELECT _source_line, _source_offset FROM winlogbeat_stream ORDER BY _seq") == [
        (1, starts[0]),
        (4, starts[3]),
        (7, starts[6]),
    ]
    assert lake.rows("SELECT source_line, source_offset, raw_bytes, raw_text FROM winlogbeat_rejects ORDER BY 1") == [
        (2, starts[1], 9, "not json\r"),
        (6, starts[5], 6, "[1, 2]"),
    ]
    assert lake.rows("SELECT position, line_number FROM ingest.files") == [(path.stat().st_size, len(lines))]
    assert lake.count("sysmon_join") == 2


def test_a_read_error_after_some_blocks_keeps_what_was_committed(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    lake.pipeline.chunk_bytes = 64
    path = lake.land([network_connect("{A}", f"10.0.0.{i}") for i in range(5)])
    read_blocks = landing._read_blocks

    def failing_after_two(progress: landing.FileProgress, chunk_bytes: int):  # type: ignore[no-untyped-def]
        blocks = read_blocks(progress, chunk_bytes)
        yield next(blocks)
        yield next(blocks)
        raise LandingError(f"cannot read landed file {progress.path}: disk gone")

    monkeypatch.setattr(landing, "_read_blocks", failing_after_two)
    with pytest.raises(LandingError, match="disk gone"):
        lake.batch()
    assert lake.count("winlogbeat_stream") == 2
    monkeypatch.setattr(landing, "_read_blocks", read_blocks)
    lake.batch()
    assert lake.rows("SELECT _source_line FROM winlogbeat_stream ORDER BY _seq") == [(i,) for i in range(1, 6)]
    assert lake.rows("SELECT position FROM ingest.files") == [(path.stat().st_size,)]


# --- every landed byte is ingested, rejected with a reason, or stops the batch naming the file


def test_a_batch_limit_is_a_target_each_file_giving_at_least_a_piece_of_64_kib(tmp_path: Path) -> None:
    """docs/inputs.md: N is a target, not a cap (a probe read 26 times N from 40 files)."""
    lake = Lake(tmp_path, landing_max_bytes=100_000)
    for name in "abcdefgh":
        (lake.landing / f"{name}.ndjson").write_text("".join(line + "\n" for line in _lines(400, "10.1")))
    lake.batch()
    positions = [position for (position,) in lake.rows("SELECT position FROM ingest.files")]
    # each read its whole lines of a piece of 64 KiB
    assert (
        len(positions) == 8 and min(positions) > landing.MIN_PIECE_BYTES - 2_000 and landing.MIN_PIECE_BYTES == 65_536
    )
    assert sum(positions) > 5 * 100_000 and max(positions) < (lake.landing / "a.ndjson").stat().st_size


def _lines(count: int, net: str = "10.0") -> list[str]:
    return [json.dumps(network_connect("{A}", f"{net}.{i // 250}.{i % 250}")) for i in range(count)]


def _full_flush_gzip(first: bytes, second: bytes) -> tuple[bytes, int]:
    """A gzip stream whose deflate data starts a new block, on a byte boundary, where ``second`` begins;
    with that byte's offset."""
    packer = zlib.compressobj(wbits=31)
    head = packer.compress(first) + packer.flush(zlib.Z_FULL_FLUSH)
    return head + packer.compress(second) + packer.flush(), len(head)


def _damaged_gzips(text: bytes) -> dict[str, tuple[bytes, int]]:
    """Damaged gzip files of ``text``, each with how many of its uncompressed bytes can be read."""
    whole = gzip.compress(text, mtime=0)
    cut = whole[: len(whole) * 2 // 3]
    flushed, block = _full_flush_gzip(text[: len(text) // 2], text[len(text) // 2 :])
    return {
        "truncated": (cut, len(zlib.decompressobj(wbits=31).decompress(cut))),
        "bad CRC": (whole[:-8] + bytes([whole[-8] ^ 0xFF]) + whole[-7:], len(text)),
        "trailing garbage": (whole + b"this is not gzip\n", len(text)),
        # a deflate block header of type 3 (reserved): zlib.error "invalid block type"
        "zlib error": (flushed[:block] + bytes([flushed[block] | 0b110]) + flushed[block + 1 :], len(text) // 2),
    }


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        ("truncated", "the file is truncated"),
        ("bad CRC", "incorrect data check"),
        ("trailing garbage", "are not a gzip stream"),
        ("zlib error", "invalid block type"),
    ],
)
def test_a_damaged_gzip_lands_what_decompresses_and_rejects_the_rest_once(lake: Lake, damage: str, reason: str) -> None:
    lines = _lines(400)
    text = "".join(line + "\n" for line in lines).encode()
    starts = [0, *itertools.accumulate(len(line) + 1 for line in lines)]
    data, readable = _damaged_gzips(text)[damage]
    (lake.landing / "archive.ndjson.gz").write_bytes(data)
    lake.batch()
    lake.land(_lines(3, "10.9"), name="later.ndjson")
    lake.batch()
    lake.batch()
    complete = text[:readable].count(b"\n")
    stream = lake.rows("SELECT _source_line, _source_offset FROM winlogbeat_stream WHERE _source_file LIKE '%.gz'")
    assert sorted(stream) == [(i + 1, starts[i]) for i in range(complete)]
    rejects = lake.rows("SELECT source_offset, error, raw_bytes FROM winlogbeat_rejects ORDER BY source_offset")
    if readable > starts[complete]:  # the bytes of a line the damage cut short: a reject of their own
        assert rejects.pop(0) == (starts[complete], "malformed JSON", readable - starts[complete])
    ((offset, error, raw_bytes),) = rejects
    assert (offset, raw_bytes) == (readable, 0)
    assert error.startswith("gzip") and reason in error, error
    assert lake.count("winlogbeat_stream") == complete + 3  # the later file is read


def test_a_symlink_in_the_landing_folder_is_skipped_and_recorded_never_followed(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    lake = Lake(tmp_path / "lake")
    secret = tmp_path / "secret"
    secret.write_text("root:x:0:0:the secret:/root:/bin/bash\n" + json.dumps(network_connect("{S}", "10.6.6.6")) + "\n")
    secret.chmod(0o600)
    (lake.landing / "winlogbeat.ndjson").symlink_to(secret)
    (lake.landing / "winlogbeat.1").symlink_to(tmp_path / "nowhere")  # dangling
    os.mkfifo(lake.landing / "fifo.json")
    (lake.landing / "folder.ndjson").mkdir()
    lake.land([network_connect("{A}", "10.0.0.1")], name="real.ndjson")
    reported = lake.batch()["winlogbeat_stream"][0].notes["source_events"]
    lake.batch()
    assert lake.rows("SELECT event_data.DestinationIp FROM winlogbeat_stream") == [("10.0.0.1",)]
    assert lake.count("winlogbeat_rejects") == 0
    events = lake.rows("SELECT path, event, split_part(detail, ':', 1) FROM ingest.file_events ORDER BY path")
    assert [(Path(path).name, event, what) for path, event, what in events] == [
        ("fifo.json", "skipped", "a FIFO"),
        ("folder.ndjson", "skipped", "a folder"),
        ("winlogbeat.1", "skipped", f"a symbolic link to {tmp_path / 'nowhere'}"),
        ("winlogbeat.ndjson", "skipped", f"a symbolic link to {secret}"),
    ]  # once each, however many batches
    assert sorted(Path(event["path"]).name for event in reported) == [Path(path).name for path, *_ in events]
    assert "winlogbeat.ndjson is a symbolic link" in caplog.text
    assert lake.rows("SELECT path FROM ingest.files") == [(str(lake.landing / "real.ndjson"),)]


def test_the_bookkeeping_times_are_utc_whatever_the_hosts_time_zone(lake: Lake) -> None:
    # DuckDB's now() is a TIMESTAMPTZ, which a TIMESTAMP column stores in the session's time zone, the host's
    lake.wrap_connections(in_time_zone("Pacific/Kiritimati"))  # UTC+14
    lake.land([network_connect("{A}", "10.0.0.1")])
    (lake.landing / "folder.ndjson").mkdir()  # an entry the batch records in ingest.file_events
    started = utc_now() - timedelta(seconds=1)
    lake.batch()
    times = lake.rows(
        "SELECT updated_at FROM ingest.files UNION ALL SELECT detected_at FROM ingest.file_events "
        "UNION ALL SELECT committed_at FROM dbt_like.guards"
    )
    assert len(times) >= 3
    assert all(started <= time <= utc_now() for (time,) in times), times


def test_a_file_name_that_is_not_utf8_is_read_and_shown_with_its_bytes_escaped(lake: Lake) -> None:
    lake.land([network_connect("{A}", "10.0.0.1")], name="good.ndjson")
    latin1 = os.path.join(os.fsencode(lake.landing), b"Ereignisse_M\xe4rz.ndjson")  # a Latin-1 name
    with open(latin1, "wb") as handle:
        handle.write(json.dumps(network_connect("{A}", "10.0.0.2")).encode() + b"\n")
    lake.batch()
    lake.land([network_connect("{A}", "10.0.0.3")], name="good.ndjson")
    lake.batch()
    shown = str(lake.landing / "Ereignisse_M\\xe4rz.ndjson")
    assert lake.rows("SELECT event_data.DestinationIp, _source_file FROM winlogbeat_stream ORDER BY _seq") == [
        ("10.0.0.1", str(lake.landing / "good.ndjson")),
        ("10.0.0.2", shown),
        ("10.0.0.3", str(lake.landing / "good.ndjson")),
    ]
    assert shown in {path for (path,) in lake.rows("SELECT path FROM ingest.files")}


def _reads_mode_000_files() -> bool:
    """Whether this process reads a file whose mode forbids it (root, with its capability to override modes)."""
    with tempfile.TemporaryDirectory() as folder:
        probe = Path(folder) / "probe"
        probe.write_text("x")
        probe.chmod(0)
        try:
            probe.read_text()
        except PermissionError:
            return False
        return True


def without_mode_override(test: Callable[..., None]) -> Callable[..., None]:
    """Run ``test`` where file modes hold. As root (which reads mode-000 files), the test runs again in a
    child pytest whose bounding set lacks the capabilities that override file modes (``setpriv``)."""

    @functools.wraps(test)
    def run(*args: object, **kwargs: object) -> None:
        if not _reads_mode_000_files():
            test(*args, **kwargs)
            return
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root without setpriv to drop the capability to read mode-000 files")
        node = f"{Path(__file__).relative_to(ROOT)}::{test.__name__}"
        done = subprocess.run(
            [
                setpriv,
                "--bounding-set=-dac_override,-dac_read_search",
                sys.executable,
                "-m",
                "pytest",
                "-q",
                "-p",
                "no:cacheprovider",
                node,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert done.returncode == 0 and " passed" in done.stdout, done.stdout[-3000:] + done.stderr[-3000:]

    return run


def test_a_symlink_swapped_in_after_the_listing_is_an_error_not_followed(tmp_path: Path) -> None:
    (tmp_path / "secret").write_text("the secret\n")
    link = tmp_path / "winlogbeat.ndjson"
    link.symlink_to(tmp_path / "secret")
    with pytest.raises(LandingError, match=re.escape(f"cannot read landed file {link}")):
        landed_files.fingerprint(link, landed_files.file_key(link), 100)


@without_mode_override
def test_an_unreadable_landing_folder_stops_the_batch_naming_it(lake: Lake) -> None:
    lake.land([network_connect("{A}")])
    lake.landing.chmod(0)
    try:
        with pytest.raises(LandingError, match=re.escape(f"cannot list the landing folder {lake.landing}")):
            lake.batch()
    finally:
        lake.landing.chmod(0o755)


@without_mode_override
def test_an_unreadable_landed_file_stops_the_batch_naming_it(lake: Lake) -> None:
    lake.land([network_connect("{A}")], name="a.ndjson")
    path = lake.land([network_connect("{A}")], name="b.ndjson")
    path.chmod(0)
    with pytest.raises(LandingError, match=re.escape(f"cannot read landed file {path}")):
        lake.batch()
    path.chmod(0o644)
    lake.batch()
    assert lake.count("winlogbeat_stream") == 2


def test_a_last_line_is_tested_as_json_with_no_bound_parameter() -> None:
    """DuckDB 1.4 imports pandas on a process's first bound parameter (docs/architecture.md): 0.3-0.5 s of a batch
    that meets a finished file's last line. Its bytes go in as a literal, NUL and quote included."""
    script = (
        "import sys; from sysmon_assets.sources.landing_folder import _is_json_document as is_json; "
        'print(is_json(b\'{"a": "it\\\'s \\\\u0000\\xe9"}\'), is_json(b\'{"a"\'), is_json(b"\'\\x00"), '
        "'pandas' in sys.modules)"
    )
    assert python_prints(script) == ["True", "False", "False", "False"]


def test_a_last_line_of_nul_padding_waits_for_its_writer_and_fails_no_batch(lake: Lake) -> None:
    """A crash or a preallocating writer leaves a file's end as NUL bytes with no newline: no JSON document (spelled
    out as a SQL literal, 600 NULs went past DuckDB's expression depth and failed every batch)."""
    path = lake.landing / "w.ndjson"
    land(path, [process_create("{NU-0001}"), network_connect("{NU-0001}")])
    with path.open("ab") as handle:
        handle.write(b"\x00" * 600)
    lake.batch()
    lake.batch()  # the file is unchanged: finished, and its last line is tested as JSON
    assert lake.count("winlogbeat_stream") == 2
    assert lake.count("winlogbeat_rejects") == 0  # it waits for its writer (UNFINISHED_LINE_SECONDS)


@pytest.mark.parametrize("newline", ["\n", "\r\n"])
def test_a_finished_file_without_a_final_newline_delivers_its_last_line_once(lake: Lake, newline: str) -> None:
    lines = _lines(400)
    path = lake.landing / "export.ndjson"
    path.write_bytes(newline.join(lines).encode())  # a copied export: no newline after the last line
    lake.batch()
    assert lake.count("winlogbeat_stream") == 399  # the last line may still be being written
    lake.batch()
    lake.batch()
    assert lake.count("winlogbeat_stream") == 400  # unchanged in size for a batch: finished
    later = _lines(2, "10.9")
    with path.open("ab") as handle:  # the writer ends the line after all, and goes on
        handle.write((newline + newline.join(later) + newline).encode())
    lake.batch()
    starts = list(itertools.accumulate(len(line) + len(newline) for line in [*lines, *later]))
    assert lake.rows("SELECT _source_line, _source_offset FROM winlogbeat_stream ORDER BY _seq")[-3:] == [
        (400, starts[398]),
        (401, starts[399]),
        (402, starts[400]),
    ]
    assert lake.rows("SELECT count(*), count(DISTINCT event_data.DestinationIp) FROM winlogbeat_stream") == [(402, 402)]
    assert lake.count("winlogbeat_rejects") == 0


def test_a_file_rewritten_in_place_with_the_same_first_kilobyte_is_read_anew(lake: Lake) -> None:
    head = json.dumps(process_create("{A}", "cmd.exe /c " + "x" * 1100))  # longer than the fingerprinted head
    path = lake.land([head, network_connect("{A}", "10.0.0.1")])
    lake.batch()
    inode = path.stat().st_ino
    with path.open("r+") as handle:  # same inode, same first kilobyte, other lines after it
        handle.truncate(0)
        handle.write("\n".join([head, *(json.dumps(network_connect("{A}", f"10.0.0.{i}")) for i in (7, 8))]) + "\n")
    assert path.stat().st_ino == inode
    lake.batch()
    assert lake.rows("SELECT event, path FROM ingest.file_events") == [("replaced", str(path))]
    assert lake.rows("SELECT _source_line, event_data.DestinationIp FROM winlogbeat_stream WHERE _batch_id = 2") == [
        (1, None),
        (2, "10.0.0.7"),
        (3, "10.0.0.8"),
    ]


def counted_fingerprints(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """The files whose identity a batch checks by reading their bytes, as the batch reads them."""
    opened: list[Path] = []
    read = landing.head_and_tail_fingerprints

    def counting(path: Path, key: str, head_start: int, head_bytes: int, end: int) -> tuple[str, str]:
        opened.append(path)
        return read(path, key, head_start, head_bytes, end)

    monkeypatch.setattr(landing, "head_and_tail_fingerprints", counting)
    monkeypatch.setattr(landed_files, "SETTLED_SECONDS", 0.0)  # a file is settled as soon as it is listed
    return opened


def test_a_settled_file_unchanged_since_the_last_batch_is_not_opened(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = counted_fingerprints(monkeypatch)
    lake.land([network_connect("{A}", "10.0.0.1")], name="a.ndjson")
    lake.batch()
    lake.batch()
    grown = lake.land([network_connect("{A}", "10.0.0.2")], name="a.ndjson")
    lake.batch()  # its stat changed: its bytes are checked before it is read on
    assert opened == [grown]
    assert lake.rows("SELECT _source_line, _batch_id FROM winlogbeat_stream ORDER BY 1") == [(1, 1), (2, 3)]


def test_a_settled_file_rewritten_with_its_size_and_times_restored_is_read_anew(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted_fingerprints(monkeypatch)
    path = lake.land([network_connect("{A}", "10.0.0.1")])
    lake.batch()
    before = path.stat()
    time.sleep(0.05)  # the change time moves on, at whatever granularity the file system keeps it
    path.write_text(path.read_text().replace("10.0.0.1", "10.0.0.9"))
    os.utime(path, ns=(before.st_atime_ns, before.st_mtime_ns))  # size and modification time as recorded
    assert (path.stat().st_size, path.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    lake.batch()
    assert lake.rows("SELECT event FROM ingest.file_events") == [("replaced",)]
    assert lake.rows("SELECT event_data.DestinationIp FROM winlogbeat_stream ORDER BY _seq") == [
        ("10.0.0.1",),
        ("10.0.0.9",),
    ]


def test_a_file_changed_within_the_settling_time_is_checked_by_its_bytes_next_batch(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = counted_fingerprints(monkeypatch)
    monkeypatch.setattr(landed_files, "SETTLED_SECONDS", 3600.0)  # no file is settled: no stat is recorded
    path = lake.land([network_connect("{A}", "10.0.0.1")])
    lake.batch()
    lake.batch()
    assert opened == [path]
    assert lake.rows("SELECT count(*) FROM ingest.file_stats") == [(0,)]


def counted_opens(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the files a batch opens to read, as it opens them; every file settled once listed."""
    opened: list[str] = []
    real = landing.open_landed

    def counting(path: Path, key: str) -> Any:
        opened.append(path.name)
        return real(path, key)

    monkeypatch.setattr(landing, "open_landed", counting)
    monkeypatch.setattr(landed_files, "SETTLED_SECONDS", 0.0)
    return opened


def test_settled_gzip_and_evtx_files_read_whole_are_not_read_again_until_they_change(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Their positions count what they hold uncompressed or parsed, not their bytes: a batch would inflate or parse
    each whole to find nothing new."""
    opened = counted_opens(monkeypatch)
    gz = lake.landing / "a.ndjson.gz"
    gz.write_bytes(gzip.compress("".join(line + "\n" for line in _lines(30)).encode(), mtime=0))
    shutil.copyfile(
        shared_path("data", "real", "evtx-attack-samples", "DE_sysmon-3-rdp-tun.evtx"), lake.landing / "b.evtx"
    )
    lake.batch()
    assert sorted(set(opened)) == ["a.ndjson.gz", "b.evtx"]
    read = lake.count("winlogbeat_stream")
    opened.clear()
    lake.batch()
    lake.batch()
    assert opened == []
    with gz.open("ab") as handle:  # a second gzip member: the file's stat changes
        handle.write(gzip.compress("".join(line + "\n" for line in _lines(5, "10.9")).encode(), mtime=0))
    lake.batch()
    assert set(opened) == {"a.ndjson.gz"}
    assert lake.count("winlogbeat_stream") == read + 5
    assert lake.rows("SELECT count(*) FROM winlogbeat_stream GROUP BY _source_file ORDER BY 1") == [
        (35,),
        (read - 30,),
    ]


def test_a_damaged_gzip_read_as_far_as_it_reads_is_rejected_once_and_not_inflated_again(
    lake: Lake, monkeypatch: pytest.MonkeyPatch
) -> None:
    opened = counted_opens(monkeypatch)
    data = gzip.compress("".join(line + "\n" for line in _lines(200)).encode(), mtime=0)
    (lake.landing / "cut.ndjson.gz").write_bytes(data[: len(data) // 2])
    lake.batch()
    opened.clear()
    lake.batch()
    assert opened == []
    assert [error.split(",")[0] for (error,) in lake.rows("SELECT error FROM winlogbeat_rejects ORDER BY 1")] == [
        "gzip stream ends early",
        "malformed JSON",
    ]


def test_a_gzip_file_a_batch_limit_stops_in_is_read_on_by_the_next_batches(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    counted_opens(monkeypatch)
    monkeypatch.setattr(gzip_stream, "COMPRESSED_READ_BYTES", 1024)  # else one read inflates this whole file
    lake = Lake(tmp_path, landing_max_bytes=100_000)
    (lake.landing / "big.ndjson.gz").write_bytes(
        gzip.compress("".join(line + "\n" for line in _lines(3_000)).encode(), mtime=0)
    )
    counts = [0]
    while len(counts) < 30 and counts[-1] < 3_000:
        lake.batch(T0 + timedelta(minutes=len(counts)))
        counts.append(lake.count("winlogbeat_stream"))
    assert counts[-1] == 3_000 and len(counts) > 5
    assert counts == sorted(set(counts))  # every batch read on


def test_gzip_members_and_zero_padding_between_them_are_read_as_pythons_gzip_reads_them() -> None:
    text = b"".join(b"line %d\n" % i for i in range(50_000))
    stream = gzip.compress(text, mtime=0) + b"\0" * 100 + gzip.compress(text, mtime=0)
    assert b"".join(inflate(io.BytesIO(stream))) == gzip.decompress(stream) == text * 2


def test_a_gzip_caught_mid_copy_is_read_on_when_the_copy_completes(lake: Lake) -> None:
    lines = _lines(400)
    text = "".join(line + "\n" for line in lines).encode()
    data = gzip.compress(text, mtime=0)
    path = lake.landing / "copied.ndjson.gz"
    path.write_bytes(data[: len(data) // 2])
    lake.batch()
    with path.open("ab") as handle:
        handle.write(data[len(data) // 2 :])
    lake.batch()
    lake.batch()
    rejects = lake.rows(
        "SELECT source_offset, error, raw_bytes FROM winlogbeat_rejects ORDER BY source_offset, raw_bytes"
    )
    # the line the copy cut: its two parts are rejects, with the truncation between them; every other line lands
    assert [error.split(",")[0] for _, error, _ in rejects] == [
        "malformed JSON",
        "gzip stream ends early",
        "malformed JSON",
    ]
    (start, _, first), (cut, _, _), (rest, _, second) = rejects
    assert start + first == cut == rest
    assert text[start : start + first + second + 1] == lines[text.count(b"\n", 0, start)].encode() + b"\n"
    assert lake.count("winlogbeat_stream") == 399


@pytest.mark.parametrize("kind", ["text", "gzip"])
@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 10_000])
def test_lines_are_read_whole_wherever_the_pieces_cut_them(
    tmp_path: Path, kind: str, chunk_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Lines shorter and longer than a piece, one cut by every piece boundary, a blank line and an unterminated
    last line of a finished file: each line once, with its line number, byte offset and newline."""
    lines = [b"{}", b"", b"x" * 1500, b'{"a": 1}', b"y" * 3, b"z" * 40, b"last"]
    data = b"\n".join(lines)
    path = tmp_path / ("w.ndjson.gz" if kind == "gzip" else "w.ndjson")
    path.write_bytes(gzip.compress(data) if kind == "gzip" else data)
    monkeypatch.setattr(landing, "UNFINISHED_LINE_SECONDS", 0)  # long unchanged: its last line is delivered
    progress = landing.FileProgress(landed_files.file_key(path), path, 0, 0, path.stat().st_size, finished=True)
    read = [landing._text_frame(*block, progress, 1) for block in landing._read_blocks(progress, chunk_bytes)]
    rows = [row for frame in read for row in frame.select(["source_line", "source_offset", "line"]).to_pylist()]
    offsets = [sum(len(line) + 1 for line in lines[:i]) for i in range(len(lines))]
    assert rows == [
        {"source_line": i + 1, "source_offset": offsets[i], "line": line + (b"" if i == len(lines) - 1 else b"\n")}
        for i, line in enumerate(lines)
    ]
    # the last line is not over: what its writer (or a gzip member appended) adds to it is of the same line
    assert (progress.position, progress.line) == (len(data), len(lines) - 1)
    if kind == "text":  # the tail fingerprint follows what was read, not a read of the name at commit
        assert progress.tail_sha256 == hashlib.sha256(data[-landed_files.FINGERPRINT_BYTES :]).hexdigest()
