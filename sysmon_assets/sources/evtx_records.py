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
UNFINISHED_MAGIC = b"..\x00\x00"  # no record's: the parser cannot read a record so marked
UNFINISHED_AS_PARSED = "found `[2E, 2E,  0,  0]`"  # how the parser's error names that magic
UNFINISHED = "not written whole (it ends before its size says, or without the copy of its size that ends a record)"
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
            record = f"EVTX record unreadable: {UNFINISHED if UNFINISHED_AS_PARSED in str(error) else error}"
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
    """A reader of ``handle``'s file whose damaged record frames read repaired (:class:`_RepairedFile`)."""
    return io.BufferedReader(_RepairedFile(handle.fileno()), buffer_size=CHUNK_BYTES)


class _RepairedFile(io.RawIOBase):
    """The EVTX file open as ``fd``, each whole chunk read with its damaged record frames repaired.

    The parser finds each record by the size of the one before and, where that leads to no record (a size or a
    magic damaged), skips the rest of the chunk without a word. A record is framed by a magic, its size, its number
    and a copy of its size ending it, so the next one can be found (:func:`_frame_repairs`). The repairs of a chunk
    are found in the bytes of it that are read, and only framing bytes read differently, so what the parser gives
    follows from the bytes it reads (a file being copied gives the same records in every batch)."""

    def __init__(self, fd: int) -> None:
        self.fd, self.position = fd, 0
        self.chunk_offset, self.chunk = -1, b""  # the last chunk read, repaired

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        start = {os.SEEK_SET: 0, os.SEEK_CUR: self.position, os.SEEK_END: os.fstat(self.fd).st_size}[whence]
        self.position = start + offset
        return self.position

    def tell(self) -> int:
        return self.position

    def readinto(self, buffer: bytearray | memoryview) -> int:
        """Bytes from the position: the file header as it is, then within one chunk (a cut chunk as it is)."""
        offset = self.position
        if offset < HEADER_BYTES:
            data = os.pread(self.fd, min(len(buffer), HEADER_BYTES - offset), offset)
        else:
            chunk_offset = offset - (offset - HEADER_BYTES) % CHUNK_BYTES
            if chunk_offset != self.chunk_offset:
                chunk = os.pread(self.fd, CHUNK_BYTES, chunk_offset)
                self.chunk_offset, self.chunk = chunk_offset, _repaired(chunk) if len(chunk) == CHUNK_BYTES else chunk
            data = self.chunk[offset - chunk_offset : offset - chunk_offset + len(buffer)]
        buffer[: len(data)] = data
        self.position += len(data)
        return len(data)


def _repaired(chunk: bytes) -> bytes:
    """``chunk`` with the repairs :func:`_frame_repairs` finds in it."""
    repairs = _frame_repairs(chunk)
    if not repairs:
        return chunk
    repaired = bytearray(chunk)
    for at, value in repairs:
        repaired[at : at + len(value)] = value
    return bytes(repaired)


def _frame_repairs(chunk: bytes) -> list[tuple[int, bytes]]:
    """(offset in the chunk, bytes that read there) for each record frame of ``chunk`` that does not lead to the next
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
            repairs.append((at, RECORD_MAGIC))
        size = struct.unpack_from("<I", chunk, at + 4)[0]
        if record_id < last and _holds_id(chunk, at + size, record_id + 1):
            at += size
            continue
        following = _frame(chunk, record_id + 1, at + RECORD_MIN_BYTES) if record_id < last else None
        while following is not None and struct.unpack_from("<I", chunk, following - 4)[0] != following - at:
            following = _frame(chunk, record_id + 1, following + 1)  # a magic and number inside the record's data
        if following is not None:
            repairs.append((at + 4, struct.pack("<I", following - at)))
        elif not _written_whole(chunk, at, size):
            # the last record found is not there whole (a copy still running): the parser could read the part there
            # as a record of its own; unreadable, it is read once it is whole, or is a reject once the file settled
            repairs.append((at, UNFINISHED_MAGIC))
        at = following
    return repairs


def _written_whole(chunk: bytes, at: int, size: int) -> bool:
    """Whether the record at ``at`` ends where its size says, with the copy of its size."""
    end = at + size
    return size >= RECORD_MIN_BYTES and end <= len(chunk) and struct.unpack_from("<I", chunk, end - 4)[0] == size


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
