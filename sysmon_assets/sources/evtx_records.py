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
from typing import BinaryIO

import evtx

from sysmon_assets.sources.landed_lines import LandingError, no_follow, path_text

RECORDS_PER_CHUNK = 20_000
# The layout every EVTX file has: a 4 KiB file header, then chunks of 64 KiB.
HEADER_BYTES = 4096
CHUNK_BYTES = 64 * 1024
# A chunk: its magic, then the numbers of its first and last records (twice: at bytes 8 and 24); its records from
# byte 512, each framed by a magic, its size, its number and at its end its size again.
CHUNK_MAGIC = b"ElfChnk\x00"
CHUNK_IDS_AT = 24
CHUNK_HEADER_BYTES = 512
RECORD_MAGIC = b"**\x00\x00"
RECORD_MIN_BYTES = 28


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
        records = evtx.PyEvtxParser(_with_record_frames_repaired(handle)).records_json()
    except (OSError, RuntimeError) as error:
        raise EvtxDamage(path, f"EVTX file header unreadable: {error}") from error
    lines: list[bytes | str] = []
    index = 0
    while True:
        try:
            record: dict | str = next(records)
        except StopIteration:
            break
        except RuntimeError as error:
            record = f"EVTX record unreadable: {error}"
        index += 1
        if index <= skip:
            continue
        lines.append(record if isinstance(record, str) else _json_line(record["data"]))
        if len(lines) >= chunk_records:
            yield lines
            lines = []
    if lines:
        yield lines


def _with_record_frames_repaired(handle: BinaryIO) -> BinaryIO:
    """``handle``, or a reader of its file whose damaged record frames read repaired. The parser finds each record
    by the size of the one before and, where that leads to no record (a size or a magic damaged), skips the rest
    of the chunk without a word. A record is framed by a magic, its size, its number and a copy of its size ending
    it, so the next one can be found; only framing bytes read differently, so how many records the parser gives
    for the bytes read follows from those bytes alone (a file being copied gives the same records every batch)."""
    size = os.fstat(handle.fileno()).st_size
    repairs = [
        repair
        for offset in range(HEADER_BYTES, size - CHUNK_BYTES + 1, CHUNK_BYTES)
        for repair in _frame_repairs(os.pread(handle.fileno(), CHUNK_BYTES, offset), offset)
    ]
    return io.BufferedReader(_RepairedFile(handle.fileno(), size, repairs)) if repairs else handle


class _RepairedFile(io.RawIOBase):
    """The file open as ``fd``, read with ``repairs`` ((file offset, bytes) each) in place of its own bytes there."""

    def __init__(self, fd: int, size: int, repairs: list[tuple[int, bytes]]) -> None:
        self.fd, self.size, self.repairs, self.position = fd, size, repairs, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        self.position = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: self.size}[whence] + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: bytearray | memoryview) -> int:
        data = bytearray(os.pread(self.fd, len(buffer), self.position))
        for at, value in self.repairs:
            start, stop = max(at, self.position), min(at + len(value), self.position + len(data))
            if start < stop:
                data[start - self.position : stop - self.position] = value[start - at : stop - at]
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def _frame_repairs(chunk: bytes, offset: int) -> list[tuple[int, bytes]]:
    """(file offset, bytes that read there) for each record frame of ``chunk`` that does not lead to the next
    record: a record's size set to reach the next record's frame, found by its magic and number where the copy of
    the size ending the damaged record says it ends; a magic restored where the size leads to the next record's
    number. None for a chunk whose header names no records."""
    if chunk[:8] != CHUNK_MAGIC:
        return []
    first, last = struct.unpack_from("<QQ", chunk, CHUNK_IDS_AT)
    repairs: list[tuple[int, bytes]] = []
    # the first record starts right after the header, unless the chunk is damaged there
    starts = chunk[CHUNK_HEADER_BYTES : CHUNK_HEADER_BYTES + 4] == RECORD_MAGIC
    at = CHUNK_HEADER_BYTES if starts or _holds_id(chunk, CHUNK_HEADER_BYTES, first) else None
    for record_id in range(first, min(last, first + CHUNK_BYTES // RECORD_MIN_BYTES) + 1):
        if at is None:
            break
        if chunk[at : at + 4] != RECORD_MAGIC:
            repairs.append((offset + at, RECORD_MAGIC))
        if record_id == last:
            break
        size = struct.unpack_from("<I", chunk, at + 4)[0]
        if _holds_id(chunk, at + size, record_id + 1):
            at += size
            continue
        following = _frame(chunk, record_id + 1, at + RECORD_MIN_BYTES)
        while following is not None and struct.unpack_from("<I", chunk, following - 4)[0] != following - at:
            following = _frame(chunk, record_id + 1, following + 1)  # a magic and number inside the record's data
        if following is not None:
            repairs.append((offset + at + 4, struct.pack("<I", following - at)))
        at = following
    return repairs


def _holds_id(chunk: bytes, at: int, record_id: int) -> bool:
    """Whether a record frame numbered ``record_id`` starts at ``at``, its magic aside."""
    return CHUNK_HEADER_BYTES <= at <= len(chunk) - 16 and struct.unpack_from("<Q", chunk, at + 8)[0] == record_id


def _frame(chunk: bytes, record_id: int, start: int) -> int | None:
    """Where record ``record_id``'s frame (its magic, size and number) starts in ``chunk``, from ``start``."""
    at = chunk.find(RECORD_MAGIC, start)
    while at != -1 and not _holds_id(chunk, at, record_id):
        at = chunk.find(RECORD_MAGIC, at + 1)
    return None if at == -1 else at


def _json_line(data: str) -> bytes:
    # DuckDB struct fields are case-insensitive and ECS already uses `event`: the record's key is renamed
    if data.startswith('{"Event":'):
        data = '{"evtx":' + data[len('{"Event":') :]
    return data.encode("utf-8")
