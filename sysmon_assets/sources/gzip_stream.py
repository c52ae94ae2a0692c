"""A landed ``.gz`` file decompressed as far as it can be read, and where and why it could not go on.

Python's ``gzip`` module raises on a truncated stream, a bad CRC or trailing garbage and drops the
data it had decompressed in that read; this reader hands on every byte zlib produced before the
damage, then raises :class:`GzipDamage`. A gzip stream cannot be resynchronised after damage, so
reading ends there.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from typing import BinaryIO

# Compressed bytes per decompress call: bounds one call's output (deflate expands at most ~1032x).
COMPRESSED_READ_BYTES = 64 * 1024
# A gzip header and trailer (CRC-32 and length, which zlib checks) around a deflate stream.
GZIP_WBITS = 16 + zlib.MAX_WBITS
# A failure within a member's fixed header means the bytes there are not gzip at all (e.g. trailing garbage).
GZIP_HEADER_BYTES = 10


class GzipDamage(Exception):
    """The stream cannot be read on; ``reason`` says why and at which compressed byte."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def inflate(handle: BinaryIO) -> Iterator[bytes]:
    """The decompressed bytes of every member of the gzip stream in ``handle``, piece by piece; raises
    :class:`GzipDamage` after the last byte that could be decompressed."""
    inflater = None  # None between members
    at = member_at = 0  # compressed offsets of data's first byte and of the current member
    data = b""
    while True:
        if not data:
            data = handle.read(COMPRESSED_READ_BYTES)
            if not data:
                break
        if inflater is None:
            # zero padding after a member is allowed, as Python's gzip module allows it
            stripped = data.lstrip(b"\0")
            at, data = at + len(data) - len(stripped), stripped
            if not data:
                continue
            inflater = zlib.decompressobj(GZIP_WBITS)
            member_at = at
        before = inflater.copy()
        try:
            piece = inflater.decompress(data)
        except zlib.error as error:
            yield from _salvage(before, data, at, member_at, error)
            return  # not reached: _salvage raises
        if piece:
            yield piece
        rest = inflater.unused_data if inflater.eof else b""
        at, data = at + len(data) - len(rest), rest
        if inflater.eof:
            inflater = None
    if inflater is not None:
        raise GzipDamage(f"gzip stream ends early, at compressed byte {at}: the file is truncated")


def _salvage(inflater: zlib._Decompress, data: bytes, at: int, member_at: int, error: zlib.error) -> Iterator[bytes]:
    """The bytes ``inflater`` gives for ``data`` up to the byte where decompressing it failed, then
    :class:`GzipDamage` naming that byte (the call that failed returned nothing)."""
    for index in range(len(data)):
        try:
            piece = inflater.decompress(data[index : index + 1])
        except zlib.error:
            where = at + index
            if where - member_at < GZIP_HEADER_BYTES:
                raise GzipDamage(
                    f"gzip: the bytes from compressed byte {member_at} on are not a gzip stream ({error})"
                ) from error
            raise GzipDamage(f"gzip stream damaged at compressed byte {where}: {error}") from error
        if piece:
            yield piece
    raise GzipDamage(f"gzip stream damaged after compressed byte {at}: {error}") from error
