"""EVTX files as landed lines: each record becomes one JSON line ``{"evtx": <the record's Event object>}``.

Records are parsed with the ``evtx`` package (a Rust EVTX parser). An EVTX file's position counts
records, not bytes, so a file that grows is read on from the first record not yet read.
"""

from __future__ import annotations

import io
import os
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, NamedTuple

import evtx

from sysmon_assets.sources.landed_lines import LandingError, no_follow, path_text

RECORDS_PER_CHUNK = 20_000
# The layout every EVTX file has: a 4 KiB file header, then chunks of 64 KiB.
HEADER_BYTES = 4096
CHUNK_BYTES = 64 * 1024
# A chunk: its magic, the first and last record numbers, then the first and last record ids (the records' own
# headers number them so, which need not be their EventRecordID); its records from byte 512, each framed by a
# magic, its size and its id.
CHUNK_MAGIC = b"ElfChnk\x00"
CHUNK_IDS_AT, CHUNK_IDS_END = 24, 40
CHUNK_HEADER_BYTES = 512
RECORD_MAGIC = b"**\x00\x00"


class EvtxDamage(LandingError):
    """The parser cannot read on in an EVTX file; ``reason`` says why (the message also names the file)."""

    def __init__(self, path: Path, reason: str) -> None:
        super().__init__(f"cannot read EVTX file {path_text(path)}: {reason}")
        self.reason = reason


def record_lines(path: Path, skip: int, chunk_records: int = RECORDS_PER_CHUNK) -> Iterator[list[bytes | str]]:
    """Lists of at most ``chunk_records`` items, one per record of ``path`` after the first ``skip``: the
    record as a JSON line, or (a ``str``) why the parser could not read it (a damaged chunk is one such item).

    Raises :class:`EvtxDamage` when the file header cannot be read, or after the last record when the file
    ends inside a chunk (the parser skips such a chunk without a word); an unreadable file is a
    :class:`LandingError`.
    """
    try:
        handle = open(path, "rb", opener=no_follow)  # noqa: SIM115 -- closed below, after the records
    except OSError as error:
        raise LandingError(f"cannot read EVTX file {path_text(path)}: {error}") from error
    with handle:
        yield from open_record_lines(handle, path, skip, chunk_records)


def open_record_lines(
    handle: BinaryIO, path: Path, skip: int, chunk_records: int = RECORDS_PER_CHUNK
) -> Iterator[list[bytes | str]]:
    """:func:`record_lines` of the EVTX file open in ``handle`` (named ``path`` in messages)."""
    yield from _records(handle, path, skip, chunk_records)
    size = os.fstat(handle.fileno()).st_size
    cut = (size - HEADER_BYTES) % CHUNK_BYTES
    if size > HEADER_BYTES and cut:
        raise EvtxDamage(
            path, f"EVTX file ends inside a chunk: its last {cut} bytes (from byte {size - cut}) are not read"
        )


def _records(handle: BinaryIO, path: Path, skip: int, chunk_records: int) -> Iterator[list[bytes | str]]:
    try:
        records = evtx.PyEvtxParser(handle).records_json()
    except (OSError, RuntimeError) as error:
        raise EvtxDamage(path, f"EVTX file header unreadable: {error}") from error
    lines: list[bytes | str] = []
    for index, record in enumerate(_items(records, handle), start=1):
        if index <= skip:
            continue
        lines.append(record if isinstance(record, str) else _json_line(record["data"]))
        if len(lines) >= chunk_records:
            yield lines
            lines = []
    if lines:
        yield lines


def _items(records: Iterator[dict], handle: BinaryIO) -> Iterator[dict | str]:
    """The parser's records, and for each record it cannot read, why (a ``str``). The parser gives up on the
    rest of a chunk whose record it cannot frame (a damaged size): those records are read again from a copy of
    the chunk in which the damaged record's size reaches the next record; any still unread are named in the
    damaged record's reason."""
    last_id: int | None = None
    unreadable: str | None = None  # held until the next record shows whether the parser skipped the chunk's rest
    while True:
        try:
            record: dict | None = next(records)
        except StopIteration:
            record = None
        except RuntimeError as error:
            if unreadable is not None:
                yield unreadable
            unreadable = f"EVTX record unreadable: {error}"
            continue
        if unreadable is not None:
            skipped = _skipped_rest(handle, last_id, None if record is None else record["event_record_id"])
            yield from _read_again(handle, unreadable, skipped) if skipped else [unreadable]
            unreadable = None
        if record is None:
            return
        last_id = record["event_record_id"]
        yield record


class _Skipped(NamedTuple):
    """Records ``first``..``last`` of the chunk at byte ``chunk_offset``, after the unreadable ``first - 1``."""

    chunk_offset: int
    first: int
    last: int


def _skipped_rest(handle: BinaryIO, last_id: int | None, next_id: int | None) -> _Skipped | None:
    """The rest of the chunk the parser left after an unreadable record that followed ``last_id`` (None: the
    file's first), if the next record it gave (``next_id``; None: none) is not in that chunk."""
    chunks = _chunk_ids(handle)
    bad_chunk = 0
    if last_id is not None:
        holding = [i for i, (_, first, last) in enumerate(chunks) if first <= last_id <= last]
        if not holding:
            return None
        bad_chunk = holding[0] + (last_id == chunks[holding[0]][2])
    if bad_chunk >= len(chunks):
        return None
    offset, first, last = chunks[bad_chunk]
    if first > last or (next_id is not None and first <= next_id <= last):
        return None
    bad_id = last_id + 1 if last_id is not None and first <= last_id else first
    return _Skipped(offset, bad_id + 1, last) if bad_id < last else None


def _chunk_ids(handle: BinaryIO) -> list[tuple[int, int, int]]:
    """(byte offset, first record id, last record id) of each whole chunk of the file, in file order; a chunk
    whose header is not one is (offset, 1, 0)."""
    chunks = []
    for offset in range(HEADER_BYTES, os.fstat(handle.fileno()).st_size - CHUNK_BYTES + 1, CHUNK_BYTES):
        header = os.pread(handle.fileno(), CHUNK_IDS_END, offset)
        first, last = struct.unpack_from("<QQ", header, CHUNK_IDS_AT) if header[:8] == CHUNK_MAGIC else (1, 0)
        chunks.append((offset, first, last))
    return chunks


def _read_again(handle: BinaryIO, unreadable: str, skipped: _Skipped) -> Iterator[dict | str]:
    """The unreadable record's reason, then the ``skipped`` records read from a copy of their chunk whose unreadable
    record's size is patched to reach the next record's frame; the reason names those still unread."""
    chunk = bytearray(os.pread(handle.fileno(), CHUNK_BYTES, skipped.chunk_offset))
    bad, after = _frame(chunk, skipped.first - 1), _frame(chunk, skipped.first)
    again: list[dict | str] = []
    if bad is not None and after is not None:
        struct.pack_into("<I", chunk, bad + 4, after - bad)
        copy = evtx.PyEvtxParser(io.BytesIO(os.pread(handle.fileno(), HEADER_BYTES, 0) + bytes(chunk)))
        again = list(_parsed(copy.records_json()))
        ids = [item["event_record_id"] if isinstance(item, dict) else None for item in again]
        again = again[ids.index(skipped.first) :] if skipped.first in ids else []
    read = {item["event_record_id"] for item in again if isinstance(item, dict)}
    unread = [i for i in range(skipped.first, skipped.last + 1) if i not in read]
    if unread:
        unreadable += (
            f"; the parser lost its place in the chunk at byte {skipped.chunk_offset}: {len(unread)} of its records, "
            f"numbered {unread[0]} to {unread[-1]} in their record headers, are not read"
        )
    yield unreadable
    yield from again


def _parsed(records: Iterator[dict]) -> Iterator[dict | str]:
    while True:
        try:
            yield next(records)
        except StopIteration:
            return
        except RuntimeError as error:
            yield f"EVTX record unreadable: {error}"


def _frame(chunk: bytes, record_id: int) -> int | None:
    """Where record ``record_id``'s frame (its magic, size and id) starts in ``chunk``."""
    at = chunk.find(RECORD_MAGIC, CHUNK_HEADER_BYTES)
    while at != -1:
        if at + 16 <= len(chunk) and struct.unpack_from("<Q", chunk, at + 8)[0] == record_id:
            return at
        at = chunk.find(RECORD_MAGIC, at + 1)
    return None


def _json_line(data: str) -> bytes:
    # DuckDB struct fields are case-insensitive and ECS already uses `event`: the record's key is renamed
    if data.startswith('{"Event":'):
        data = '{"evtx":' + data[len('{"Event":') :]
    return data.encode("utf-8")
