"""EVTX files as landed lines: each record becomes one JSON line ``{"evtx": <the record's Event object>}``.

Records are parsed with the ``evtx`` package (a Rust EVTX parser). An EVTX file's position counts
records, not bytes, so a file that grows is read on from the first record not yet read.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

import evtx

from sysmon_assets.sources.landed_lines import LandingError, no_follow, path_text

RECORDS_PER_CHUNK = 20_000
# The layout every EVTX file has: a 4 KiB file header, then chunks of 64 KiB.
HEADER_BYTES = 4096
CHUNK_BYTES = 64 * 1024


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


def _records(handle: object, path: Path, skip: int, chunk_records: int) -> Iterator[list[bytes | str]]:
    try:
        records = evtx.PyEvtxParser(handle).records_json()
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


def _json_line(data: str) -> bytes:
    # DuckDB struct fields are case-insensitive and ECS already uses `event`: the record's key is renamed
    if data.startswith('{"Event":'):
        data = '{"evtx":' + data[len('{"Event":') :]
    return data.encode("utf-8")
