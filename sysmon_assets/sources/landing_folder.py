"""Read what landed in the landing folder since the last committed batch.

Files are tracked by device and inode (as Filebeat's registry does), so a file renamed by
rotation is not read again; a file that grows is read from where the last batch stopped. A name is
opened only to read the inode the listing saw under it (:class:`FileMoved` otherwise), so a rotation
during a batch never mixes two files' bytes under one key (the listing and a file's identity:
``landed_files.py``).
An incomplete last line (no newline yet) waits for the next batch; if the file has not changed
size by then, it is finished and the line is delivered if it is a whole JSON document, or once the file has gone
unchanged for ``UNFINISHED_LINE_SECONDS`` if not. A fingerprint of each file's first bytes
and of the bytes before its stored position detects a file replaced in place (or a reused inode),
and a file that shrank was truncated: both are recorded in ``ingest.file_events`` and read anew,
never mixed with the old offset. A new file under the name of a file gone from the listing that begins with
every byte read of it was saved by rename (rsync, an editor): it is read on from there (``renamed over``). A
file whose size, modification and change times are those recorded
(``ingest.file_stats``) once it had been unchanged for a while (``landed_files.SETTLED_SECONDS``) is that same file and
is not opened: a write, a truncation or a new file on the inode changes its change time; nor is a gzip or EVTX
file read as far as it reads at that stat (``ingest.files_read_whole``). Positions are written
by :meth:`LandingReader.commit_offsets`, inside the same lake transaction as the rows, so a crash never loses or
repeats a line.

Only regular files are read: a symbolic link (or a FIFO, a folder) with a landed name is recorded
as ``skipped`` and never followed. What cannot be read of a damaged ``.gz`` or ``.evtx`` file is
a row of ``winlogbeat_rejects`` (see :class:`~sysmon_assets.sources.landed_lines.Unreadable`).

``*.evtx`` files are read record by record (``evtx_records.py``): each record lands as one
JSON line, and its position counts records, not bytes.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from functools import cached_property
from pathlib import Path
from typing import BinaryIO, NamedTuple, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from dbt_like.sql import UTC_NOW, literal, literals, one_of
from sysmon_assets.sources.arrow_columns import bytes_array, strings_array
from sysmon_assets.sources.evtx_records import EvtxDamage, open_record_lines
from sysmon_assets.sources.gzip_stream import GzipDamage, inflate
from sysmon_assets.sources.landed_files import (
    FINGERPRINT_BYTES,
    FileMoved,
    LandedFile,
    Skipped,
    bytes_before,
    fingerprint,
    head_and_tail_fingerprints,
    open_landed,
    read_at,
    scan_landing,
)
from sysmon_assets.sources.landed_lines import (
    SOURCE_NAME,
    Unreadable,
    empty_chunk,
    lines_table,
    path_text,
    unreadable_table,
)

LOG = logging.getLogger(__name__)
T = TypeVar("T")

STATE_TABLE = "ingest.files"
EVENTS_TABLE = "ingest.file_events"
STATS_TABLE = "ingest.file_stats"
READ_WHOLE_TABLE = "ingest.files_read_whole"
# ingest.files_read_whole's stat of a gzip or EVTX file read as far as it reads at a stat not settled yet
READ_WHOLE_UNSETTLED = ""
# The smallest piece a file is read in under a per-batch limit, however many files share it.
MIN_PIECE_BYTES = 64 * 1024
# An EVTX file's header and its chunks' headers change as records are appended; a record, once written, does not.
# The file's first record (past the 4 KiB file header and the first chunk's 512-byte header) tells the file: its
# header's first 24 bytes hold the record's number and the time it was written.
EVTX_FIRST_RECORD, EVTX_RECORD_HEADER_BYTES = 4096 + 512, 24
# A finished file's last line without newline that is not a whole JSON document waits this long after the file's last
# change for its writer to go on (docs/inputs.md, "Finished files"; _wait_for_writer).
UNFINISHED_LINE_SECONDS = 600
NEWLINE = ord("\n")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
STATE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS ingest;
CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    file_key VARCHAR, path VARCHAR, position BIGINT, line_number BIGINT,
    head_bytes BIGINT, head_sha256 VARCHAR, updated_at TIMESTAMP,
    file_size BIGINT, tail_sha256 VARCHAR, read_error VARCHAR);
CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (
    detected_at TIMESTAMP, path VARCHAR, file_key VARCHAR, event VARCHAR, detail VARCHAR);
CREATE TABLE IF NOT EXISTS {STATS_TABLE} (file_key VARCHAR, file_stat VARCHAR);
CREATE TABLE IF NOT EXISTS {READ_WHOLE_TABLE} (file_key VARCHAR, file_stat VARCHAR);
"""
# New landing state goes into a table of its own (as ingest.file_stats did), not a new column: on a lake whose
# rows are inlined in the catalog, DuckLake 0.3 breaks every insert into a table after ADD COLUMN.

Block = tuple[bytes | memoryview, np.ndarray]


class Stored(NamedTuple):
    """A file's row of ``ingest.files``."""

    position: int
    line: int
    head_bytes: int
    head_sha256: str
    file_size: int | None
    tail_sha256: str | None
    read_error: str | None
    file_stat: str | None  # of ingest.file_stats: the file's stat when its identity was last checked, if settled
    path: str
    updated_at: datetime | None  # when a batch last found the file new or of another size (UTC)
    read_whole_stat: str | None  # of ingest.files_read_whole: see FileProgress.read_whole_stat


class Vanished(NamedTuple):
    """A file no longer under a landed name, whose last listing saw bytes not read yet (see
    :meth:`LandingReader.plan`): recorded in ``ingest.file_events`` as ``vanished``."""

    path: str
    key: str
    detail: str


@dataclass
class FileProgress:
    """Where reading one landed file starts and (after reading) where it stopped."""

    key: str
    path: Path
    position: int
    line: int
    size: int
    notes: list[tuple[str, str]] = field(default_factory=list)
    notes_recorded: bool = False
    head_bytes: int = 0
    head_sha256: str = ""
    # unchanged in size since the last batch: a last line without newline is delivered (see _wait_for_writer)
    finished: bool = False
    waits_for_writer_until: float | None = None  # epoch seconds: when its last line, held back for its writer, is due
    holds_back_last_line: bool = False  # this batch read up to a last line without newline, for the next to deliver
    read_error: str | None = None  # why reading stopped short of the end, as last recorded
    stored_read_error: str | None = None  # the same, as the previous batch left it
    recorded: tuple | None = None  # the state last written to ingest.files
    # ingest.files.updated_at: when a batch found the file new or of another size; None: this batch did (now)
    updated_at: datetime | None = None
    file_stat: str | None = None  # as the listing saw it, if settled (see SETTLED_SECONDS)
    recorded_stat: str | None = None  # as ingest.file_stats holds it
    # A gzip or EVTX file's settled stat when a batch last read it as far as it reads (its end, or damage already
    # recorded): while its stat stays that, it holds nothing unread, and is not opened (nor inflated or parsed).
    read_whole_stat: str | None = None
    recorded_read_whole_stat: str | None = None  # as ingest.files_read_whole holds it
    # SHA-256 of the (up to) FINGERPRINT_BYTES bytes before the position (a gzip file: before its size on disk, as
    # positions count uncompressed bytes); kept from what was read, never read back by name at commit, when the
    # name may already be another file's. EVTX files are rewritten as records are added: their tail is not kept.
    tail_sha256: str | None = EMPTY_SHA256
    tail: bytes = b""  # those bytes themselves, once this batch reads the file (a text file's)
    adopted: str | None = None  # the key of the file renamed over, whose reading this one goes on with

    @property
    def state(self) -> tuple:
        """What ``ingest.files`` keeps of this file (but the tail fingerprint, which follows the position)."""
        return (self.position, self.line, self.head_bytes, self.head_sha256, self.size, self.read_error)

    def advance(self, positions: int, lines: int, data: bytes | memoryview = b"") -> None:
        """Move past ``lines`` lines taking ``positions`` (bytes, or EVTX records); ``data``: a text file's bytes
        moved past."""
        self.position += positions
        self.line += lines
        self.read_error = None
        if data and self.kind == "text":
            self.tail = (self.tail + bytes(data[-FINGERPRINT_BYTES:]))[-FINGERPRINT_BYTES:]
            self.tail_sha256 = hashlib.sha256(self.tail).hexdigest()

    @cached_property
    def kind(self) -> str:
        """``evtx``, ``gzip`` or ``text``: how the file is read and what its position counts."""
        return _kind(self.path)

    @property
    def head_start(self) -> int:
        """Where the bytes fingerprinted as the file's head start: an EVTX file's first record, else byte 0."""
        return EVTX_FIRST_RECORD if self.kind == "evtx" else 0


def _kind(path: Path) -> str:
    return {".evtx": "evtx", ".gz": "gzip"}.get(path.suffix, "text")


def _text_pieces(handle: BinaryIO, start: int, size: int, chunk_bytes: int) -> Iterator[bytes]:
    """The bytes of a plain file from ``start`` up to the ``size`` it had when the batch was planned."""
    handle.seek(start)
    remaining = size - start
    while remaining > 0 and (piece := handle.read(min(chunk_bytes, remaining))):
        remaining -= len(piece)
        yield piece


def _gzip_pieces(handle: BinaryIO, skip: int, chunk_bytes: int) -> Iterator[bytes]:
    """The decompressed bytes after the first ``skip``, in pieces of about ``chunk_bytes``; on damage, the
    bytes decompressed before it come first, then :class:`GzipDamage`."""
    parts: list[bytes] = []
    size = 0
    try:
        for piece in inflate(handle):
            if skip:
                cut = min(skip, len(piece))
                piece, skip = piece[cut:], skip - cut
            parts.append(piece)
            size += len(piece)
            if size >= chunk_bytes:
                yield b"".join(parts)
                parts, size = [], 0
    except GzipDamage:
        if parts:
            yield b"".join(parts)
        raise
    if parts:
        yield b"".join(parts)


def _unterminated(line: bytes) -> Block:
    """A last line without newline, as a block: its "newline" lies just past its end."""
    return line, np.array([len(line)], dtype=np.int64)


def _is_json_document(line: bytes) -> bool:
    """Whether ``line`` is one whole JSON document, as the stream reads JSON (DuckDB's ``json_valid``), whatever its
    bytes that are not UTF-8."""
    if b"\x00" in line:  # never in JSON text (a string escapes it); a literal spells each one out (chr(0))
        return False
    with duckdb.connect() as con:
        text = line.decode("utf-8", "replace").lstrip("\ufeff")
        return bool(con.execute(f"SELECT json_valid({literal(text)})").fetchall()[0][0])


def _wait_for_writer(progress: FileProgress, line: bytes, changed_ns: int) -> None:
    """A finished file's last line has no newline: unless it is a whole JSON document (a copied export's last
    event), it may be a line its writer stopped in the middle of (a buffered writer flushes mid-line, then may not
    write for minutes), and waits until the file has gone unchanged for ``UNFINISHED_LINE_SECONDS`` (by its change
    time, which a copy that keeps timestamps does not carry)."""
    due = changed_ns / 1e9 + UNFINISHED_LINE_SECONDS
    if time.time() < due and not _is_json_document(line):
        progress.waits_for_writer_until = due


def _read_blocks(progress: FileProgress, chunk_bytes: int) -> Iterator[Block | Unreadable]:
    """Blocks of complete lines (newlines kept) from the file's current position, each with the positions
    of its newlines. A partial last line is held back, unless the file is finished (a gzip stream always
    is); a damaged gzip stream ends with what could be read, then an :class:`Unreadable`.

    A piece's lines are not copied: its block is a view of it. Only the line that straddles two pieces is
    (a block of its own)."""
    start = progress.position
    with open_landed(progress.path, progress.key) as handle:
        if progress.kind == "gzip":
            pieces = _gzip_pieces(handle, start, chunk_bytes)
        else:
            progress.tail = bytes_before(handle, start)
            pieces = _text_pieces(handle, start, progress.size, chunk_bytes)
        pending = b""
        done = start  # where pending starts
        is_newline = np.empty(0, dtype=bool)  # reused: a new array per piece costs its page faults every time
        try:
            for piece in pieces:
                if len(is_newline) < len(piece):
                    is_newline = np.empty(len(piece), dtype=bool)
                found = is_newline[: len(piece)]
                np.equal(np.frombuffer(piece, dtype=np.uint8), NEWLINE, out=found)
                newlines = np.flatnonzero(found)
                if len(newlines) == 0:
                    pending += piece
                    continue
                first, end = int(newlines[0]) + 1, int(newlines[-1]) + 1
                skipped = 0
                if pending:
                    straddling = pending + piece[:first]
                    done += len(straddling)
                    yield straddling, np.array([len(straddling) - 1], dtype=np.int64)
                    newlines, skipped = newlines[1:], first
                if len(newlines):
                    done += end - skipped
                    yield memoryview(piece)[skipped:end], newlines - skipped
                pending = piece[end:]
        except GzipDamage as damage:
            if pending:
                yield _unterminated(pending)
                done += len(pending)
            if done > start or damage.reason != progress.stored_read_error:
                LOG.warning("%s: %s; read up to uncompressed byte %d", path_text(progress.path), damage.reason, done)
                yield Unreadable(done, damage.reason)
            return
        if pending and progress.finished and progress.kind == "text":
            _wait_for_writer(progress, pending, os.fstat(handle.fileno()).st_ctime_ns)
    if pending and (progress.kind == "gzip" or (progress.finished and progress.waits_for_writer_until is None)):
        yield _unterminated(pending)
    progress.holds_back_last_line = bool(pending) and not progress.finished and progress.kind != "gzip"


def _read_ahead(items: Iterator[T]) -> Iterator[T]:
    """``items``, with the next one read in a thread while the caller works on the current one.

    DuckDB releases the GIL while it ingests a chunk, so reading the next block overlaps with it;
    the positions still advance only when the caller takes a block.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="landing-read") as pool:
        upcoming = pool.submit(next, items, None)
        while (item := upcoming.result()) is not None:
            upcoming = pool.submit(next, items, None)
            yield item


def _may_hold_unread(progress: FileProgress) -> bool:
    """Whether a file may hold lines not read yet: a text file short of its size; a gzip or EVTX file (whose
    positions do not count the file's bytes) unless a batch read it whole at the stat it still has."""
    if progress.kind == "text":
        return progress.position < progress.size
    return progress.file_stat is None or progress.read_whole_stat != progress.file_stat


def _text_frame(block: bytes | memoryview, newlines: np.ndarray, progress: FileProgress, first_seq: int) -> pa.Table:
    """One row per line: sequence number, file, line number, byte offset, raw bytes and their length.

    The lines stay in the block as read (no copy per line): each value is a line with its newline
    (a finished file's last line may have none), and ``line_bytes`` is its length without it.
    """
    starts = np.zeros(len(newlines) + 1, dtype=np.int64)
    starts[1:] = np.minimum(newlines + 1, len(block))
    lines = pa.Array.from_buffers(pa.large_binary(), len(newlines), [None, pa.py_buffer(starts), pa.py_buffer(block)])
    offsets = progress.position + starts[:-1]
    frame = lines_table(lines, newlines - starts[:-1], path_text(progress.path), first_seq, progress.line + 1, offsets)
    # a last line delivered without its newline is not over: what its writer adds to it is of the same line, and
    # its newline, when stepped over, ends it (_step_over_newline_of_delivered_line)
    unended = int(len(newlines) > 0 and newlines[-1] >= len(block))
    progress.advance(len(block), len(newlines) - unended, block)
    return frame


def _evtx_frame(items: list[bytes | str], progress: FileProgress, first_seq: int) -> pa.Table:
    """One row per EVTX record (a record the parser could not read: a reject with its reason); the offset
    column holds the record's index in the file."""
    indexes = np.arange(progress.position + 1, progress.position + 1 + len(items), dtype=np.int64)
    lines = [b"" if isinstance(item, str) else item for item in items]
    errors = [item if isinstance(item, str) else None for item in items]
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    first_line, source = progress.line + 1, path_text(progress.path)
    frame = lines_table(bytes_array(lines), lengths, source, first_seq, first_line, indexes, strings_array(errors))
    progress.advance(len(items), len(items))
    return frame


def _unreadable_frame(unreadable: Unreadable, progress: FileProgress, first_seq: int) -> pa.Table:
    """The reject row for the part of a file that could not be read; the file's position stays where reading
    stopped, and the reason is kept so that the same damage is not recorded again by the next batch."""
    progress.read_error = unreadable.reason
    source = path_text(progress.path)
    return unreadable_table(unreadable.reason, source, first_seq, progress.line + 1, unreadable.offset)


def _evtx_items(progress: FileProgress) -> Iterator[list[bytes | str] | Unreadable]:
    """An EVTX file's records after its position, in lists, and an :class:`Unreadable` where the parser cannot
    go on (unless the previous batch recorded the same, with nothing read since).

    Unreadable records that end the file wait while it is being written (not settled, ``SETTLED_SECONDS``): a
    copier that sets the whole size first fills the records in afterwards, and a record caught half-written
    is read whole by a later batch. Once the file has settled they are what they are: rejects."""
    start, read = progress.position, 0
    waiting: list[bytes | str] = []
    try:
        for items in _evtx_record_lines(progress, start):
            readable = len(items)
            while readable and isinstance(items[readable - 1], str):
                readable -= 1
            if readable:
                ready, waiting = [*waiting, *items[:readable]], list(items[readable:])
                read += len(ready)
                yield ready
            else:
                waiting += items
        if waiting and progress.file_stat is not None:
            read += len(waiting)
            yield waiting
    except EvtxDamage as damage:
        if read or damage.reason != progress.stored_read_error:
            LOG.warning("%s: %s", path_text(progress.path), damage.reason)
            yield Unreadable(start + read + 1, damage.reason)


def _evtx_record_lines(progress: FileProgress, skip: int) -> Iterator[list[bytes | str]]:
    with open_landed(progress.path, progress.key) as handle:
        yield from open_record_lines(handle, progress.path, skip)


class LandingReader:
    """Plans and reads one batch of landed lines, and commits how far it got."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        landing_dir: Path,
        offset_reset: str,
        chunk_bytes: int,
        owns: Callable[[str], bool] = lambda key: True,
        max_bytes: int = 0,
    ) -> None:
        """``owns(file_key)``: whether this reader's shard reads the file (by default every file); ``max_bytes``:
        about how many bytes of lines one batch reads at most (0: no limit; see :meth:`chunks`)."""
        self.con = con
        self.owns = owns
        self.landing_dir = landing_dir
        self.offset_reset = offset_reset
        self.chunk_bytes = chunk_bytes
        self.max_bytes = max_bytes
        self.files: list[FileProgress] = []
        self.skipped: list[Skipped] = []  # not yet recorded in ingest.file_events
        self.recorded_skips: list[Skipped] = []  # recorded by this batch
        self.vanished: list[Vanished] = []  # not yet recorded
        self.reused: set[str] = set()  # keys whose file was deleted and whose inode a new file took
        self.recorded_vanished: list[Vanished] = []  # recorded by this batch
        # files this batch left lines of for the next: stopped at their share of max_bytes, or holding back a last
        # line without newline (the next batch delivers it if the file has not grown, see _wait_for_writer)
        self.left_for_next_batch = 0

    def plan(self, first_batch_ever: bool) -> list[FileProgress]:
        """Decide, per landed file, where this batch starts reading.

        On the very first batch, ``offset_reset='latest'`` starts every file at its end.
        """
        known = {
            row[0]: Stored(*row[1:])
            for row in self.con.execute(
                "SELECT file_key, position, line_number, head_bytes, head_sha256, file_size, tail_sha256, read_error, "
                f"{STATS_TABLE}.file_stat, path, updated_at, {READ_WHOLE_TABLE}.file_stat FROM {STATE_TABLE} "
                f"LEFT JOIN {STATS_TABLE} USING (file_key) LEFT JOIN {READ_WHOLE_TABLE} USING (file_key)"
            ).fetchall()
        }
        files, skipped = scan_landing(self.landing_dir)
        owned = [entry for entry in skipped if self.owns(entry.key)]
        self.skipped, self.recorded_skips = self._not_yet_recorded(owned), []
        listed = {landed.key for landed in files}
        unlisted: dict[str, dict[str, Stored]] = {}  # by path: the files a new one may have been renamed over
        for key, stored in known.items():
            if key not in listed and self.owns(key):
                unlisted.setdefault(stored.path, {})[key] = stored
        self.reused = set()
        planned = (
            self._plan_file(landed, known, unlisted, first_batch_ever) for landed in files if self.owns(landed.key)
        )
        self.files = [progress for progress in planned if progress is not None]
        adopted = {progress.adopted for progress in self.files if progress.adopted}
        self.vanished, self.recorded_vanished = self._vanished(known, (listed - self.reused) | adopted), []
        return self.files

    def _vanished(self, known: dict[str, Stored], listed: set[str]) -> list[Vanished]:
        """The known files no longer listed whose last listing saw lines not read yet (a text file: a partial last
        line, lines appended as the batch ran; a gzip or EVTX file: one the last batch did not read to its end):
        renamed outside the landed names, those lines are not read unless the file comes back; deleted, they are
        lost. Each is logged and recorded once: the record marks what was left as accounted for."""
        vanished = []
        for key, stored in known.items():
            if key in listed or not self.owns(key):
                continue
            if _kind(Path(stored.path)) == "text":
                unread = (stored.file_size or 0) - stored.position
                left = f"with {unread} bytes not read (from byte {stored.position} of the {stored.file_size} it had"
                left += " when last listed)"
            else:
                unread = stored.read_whole_stat is None
                unit = "record" if _kind(Path(stored.path)) == "evtx" else "line"
                left = f"and not read to its end (it stopped at {unit} {stored.line})"
            if unread <= 0:
                continue
            detail = (
                f"no longer under a landed name {left}: read on if it comes back under a landed name, else lost "
                "(renamed outside the landed names, or deleted)"
            )
            LOG.warning("%s is %s", stored.path, detail)
            vanished.append(Vanished(stored.path, key, detail))
        return vanished

    def _not_yet_recorded(self, skipped: list[Skipped]) -> list[Skipped]:
        """The skipped entries no earlier batch recorded, each logged once."""
        if not skipped:
            return []
        recorded = set(
            self.con.execute(f"SELECT file_key, path FROM {EVENTS_TABLE} WHERE event = 'skipped'").fetchall()
        )
        new = [entry for entry in skipped if (entry.key, path_text(entry.path)) not in recorded]
        for entry in new:
            LOG.warning("%s is %s", path_text(entry.path), entry.detail)
        return new

    def _plan_file(
        self,
        landed: LandedFile,
        known: dict[str, Stored],
        unlisted: dict[str, dict[str, Stored]],
        first_batch_ever: bool,
    ) -> FileProgress | None:
        """Where reading ``landed`` starts; None if it moved since the listing (a later batch reads it)."""
        try:
            return self._planned(landed, known, unlisted, first_batch_ever)
        except FileMoved:
            _log_moved(landed.path)
            return None

    def _planned(
        self,
        landed: LandedFile,
        known: dict[str, Stored],
        unlisted: dict[str, dict[str, Stored]],
        first_batch_ever: bool,
    ) -> FileProgress:
        path, key, size = landed.path, landed.key, landed.size
        progress = FileProgress(key, path, 0, 0, size, file_stat=landed.stat)
        if key in known:
            self._resume(progress, known[key])
        if key in known and progress.notes and known[key].path != path_text(path):
            # another file under another name: the known one was deleted and its inode reused (an editor's copy)
            LOG.info("%s holds the inode of %s, deleted: a new file", path_text(path), known[key].path)
            progress.notes.clear()
            self.reused.add(key)
        if key not in known or key in self.reused:
            _take_over_renamed(progress, unlisted.get(path_text(path), {}))
        if first_batch_ever and self.offset_reset == "latest":
            self._skip_to_end(progress)
        progress.head_bytes = _head_bytes(progress.kind, size)
        stored = known.get(key)
        if progress.recorded and stored.head_bytes == progress.head_bytes:
            progress.head_sha256 = stored.head_sha256  # _resume found these bytes unchanged
        else:
            progress.head_sha256 = fingerprint(path, key, progress.head_bytes, progress.head_start)
        if progress.kind == "gzip" and not (progress.recorded and stored.file_size == size):
            with open_landed(path, key) as handle:
                progress.tail_sha256 = hashlib.sha256(bytes_before(handle, size)).hexdigest()
        return progress

    @staticmethod
    def _resume(progress: FileProgress, stored: Stored) -> None:
        event = _identity_change(progress, stored)
        if event:
            LOG.warning("%s was %s (%s): reading it anew from the start", path_text(progress.path), event[0], event[1])
            progress.notes.append(event)
            return
        progress.position, progress.line = stored.position, stored.line
        progress.read_error = progress.stored_read_error = stored.read_error
        progress.finished = stored.file_size == progress.size
        progress.updated_at = stored.updated_at if progress.finished else None
        progress.recorded = (*stored[:5], stored.read_error)
        progress.recorded_stat = stored.file_stat
        progress.read_whole_stat = progress.recorded_read_whole_stat = stored.read_whole_stat
        progress.tail_sha256 = stored.tail_sha256
        if progress.kind == "text":
            _step_over_newline_of_delivered_line(progress)

    def _skip_to_end(self, progress: FileProgress) -> None:
        if progress.kind == "evtx":
            try:
                for items in _evtx_record_lines(progress, progress.position):
                    progress.advance(len(items), len(items))
            except EvtxDamage:
                pass  # what lies before the start is not read: neither is its damage
            return
        for item in _read_blocks(progress, self.chunk_bytes):
            if not isinstance(item, Unreadable):
                progress.advance(len(item[0]), len(item[1]), item[0])

    def chunks(self, first_seq: int) -> Iterator[dict[str, pa.Table]]:
        """Source chunks for the ingest models: ``{'landed_lines': frame}`` of about ``chunk_bytes``, small
        files' lines together (each chunk is a commit); a last empty chunk when no line was read but something
        must be recorded (a file's size, a file event).

        With ``max_bytes``, each file that may hold unread lines gets an equal share of what is left of it when
        its turn comes (a file that needs less leaves the rest to the files after it), read in pieces no larger
        than its share: every file advances in every batch, however fast another grows. A file stops at the
        first piece that reaches its share, so a batch reads about ``max_bytes`` (a line is never cut)."""
        seq, frames, size = first_seq, [], 0
        unread, left = self._files_with_unread(), self.max_bytes
        self.left_for_next_batch = 0
        for progress in self.files:
            share = left // max(unread, 1) if self.max_bytes else 0
            piece = min(self.chunk_bytes, max(share, MIN_PIECE_BYTES)) if self.max_bytes else self.chunk_bytes
            unread -= _may_hold_unread(progress)
            taken, stopped = 0, False
            try:
                for item in self._items(progress, piece):
                    frames.append(self._frame(item, progress, seq))
                    seq += frames[-1].num_rows
                    size += frames[-1].nbytes
                    taken += frames[-1].nbytes
                    if size >= self.chunk_bytes:
                        yield {SOURCE_NAME: pa.concat_tables(frames)}
                        frames, size = [], 0
                    if self.max_bytes and taken >= share:
                        stopped, progress.read_whole_stat = True, None
                        break  # the rest waits for the next batch
                else:
                    _note_read_whole(progress)
            except FileMoved:  # before its first item: the file keeps the state planning gave it
                _log_moved(progress.path)
            left = max(left - taken, 0)
            self.left_for_next_batch += (stopped and _may_hold_unread(progress)) or progress.holds_back_last_line
        if frames:
            yield {SOURCE_NAME: pa.concat_tables(frames)}
        if self._unrecorded():
            yield empty_chunk()

    @property
    def writer_due(self) -> float | None:
        """When the first of the last lines this batch held back for their writers is due (epoch seconds)."""
        return min(filter(None, (progress.waits_for_writer_until for progress in self.files)), default=None)

    def _files_with_unread(self) -> int:
        """How many of the batch's files may hold lines not read yet."""
        return sum(map(_may_hold_unread, self.files))

    @staticmethod
    def _items(progress: FileProgress, piece_bytes: int) -> Iterator[Block | Unreadable | list[bytes | str]]:
        if not _may_hold_unread(progress):
            return iter(())  # read to its end already: an idle batch over many files opens none of them
        if progress.kind == "evtx":
            return _evtx_items(progress)
        if progress.size - progress.position > piece_bytes:
            return _read_ahead(_read_blocks(progress, piece_bytes))
        return _read_blocks(progress, piece_bytes)  # one block: nothing to read ahead

    @staticmethod
    def _frame(item: Block | Unreadable | list[bytes | str], progress: FileProgress, seq: int) -> pa.Table:
        if isinstance(item, Unreadable):
            return _unreadable_frame(item, progress, seq)
        if isinstance(item, list):
            return _evtx_frame(item, progress, seq)
        return _text_frame(*item, progress, seq)

    def _unrecorded(self) -> bool:
        """Whether a state or an event is not in the lake yet."""
        files = any(
            p.recorded != p.state
            or (p.notes and not p.notes_recorded)
            or p.read_whole_stat != p.recorded_read_whole_stat
            for p in self.files
        )
        return files or bool(self.skipped) or bool(self.vanished)

    def commit_offsets(self, con: duckdb.DuckDBPyConnection) -> None:
        """Record how far each file was read, and (once) what was noticed; call inside the transaction
        that commits the rows read so far."""
        # A chunk moves some files on: the others' rows would be rewritten unchanged on every chunk's commit.
        moved = [progress for progress in self.files if progress.recorded != progress.state]
        if moved:
            _replace_rows(
                con,
                STATE_TABLE,
                moved,
                _state_rows(moved),
                f"* REPLACE (coalesce(updated_at, {UTC_NOW}) AS updated_at)",
            )
        adopted = [progress.adopted for progress in self.files if progress.adopted and not progress.notes_recorded]
        for table in (STATE_TABLE, STATS_TABLE, READ_WHOLE_TABLE) if adopted else ():
            con.execute(f"DELETE FROM {table} WHERE {one_of('file_key', *adopted)}")
        self._commit_stats(con)
        for progress in self.files:
            if not progress.notes_recorded:
                for event, detail in progress.notes:
                    self._record_event(con, progress.path, progress.key, event, detail)
        for entry in self.skipped:
            self._record_event(con, entry.path, entry.key, "skipped", entry.detail)
        for gone in self.vanished:
            self._record_event(con, Path(gone.path), gone.key, "vanished", gone.detail)
        accounted = [gone for gone in self.vanished if gone.key not in self.reused]  # a reused key's row is new
        texts = [gone.key for gone in accounted if _kind(Path(gone.path)) == "text"]
        others = [gone.key for gone in accounted if _kind(Path(gone.path)) != "text"]
        if texts:
            con.execute(f"UPDATE {STATE_TABLE} SET file_size = position WHERE {one_of('file_key', *texts)}")
        if others:
            con.execute(f"DELETE FROM {READ_WHOLE_TABLE} WHERE {one_of('file_key', *others)}")
            rows = ", ".join(f"({literals(key, READ_WHOLE_UNSETTLED)})" for key in others)
            con.execute(f"INSERT INTO {READ_WHOLE_TABLE} VALUES {rows}")

    def _commit_stats(self, con: duckdb.DuckDBPyConnection) -> None:
        """Record the settled stats of the files whose identity this batch checked (planning did, for every file),
        and of those it read whole: with a commit that happens anyway, so a batch with nothing else to record still
        commits nothing."""
        _replace_changed_stats(con, STATS_TABLE, self.files, lambda p: (p.recorded_stat, p.file_stat))
        _replace_changed_stats(
            con, READ_WHOLE_TABLE, self.files, lambda p: (p.recorded_read_whole_stat, p.read_whole_stat)
        )

    def offsets_committed(self) -> None:
        """The transaction :meth:`commit_offsets` wrote into has committed: later chunks need not repeat it."""
        for progress in self.files:
            progress.notes_recorded = True
            progress.recorded = progress.state
            progress.recorded_stat = progress.file_stat
            progress.recorded_read_whole_stat = progress.read_whole_stat
        self.recorded_skips += self.skipped
        self.skipped = []
        self.recorded_vanished += self.vanished
        self.vanished = []

    @staticmethod
    def _record_event(con: duckdb.DuckDBPyConnection, path: Path, key: str, event: str, detail: str) -> None:
        con.execute(f"INSERT INTO {EVENTS_TABLE} VALUES ({UTC_NOW}, {literals(path_text(path), key, event, detail)})")

    @property
    def file_events(self) -> list[dict[str, str]]:
        """What this batch noticed about files (truncated, replaced, renamed over, skipped, vanished), for run
        metadata."""
        events = [{"path": path_text(p.path), "event": e, "detail": d} for p in self.files for e, d in p.notes]
        skips = self.recorded_skips + self.skipped
        events += [{"path": path_text(s.path), "event": "skipped", "detail": s.detail} for s in skips]
        gone = self.recorded_vanished + self.vanished
        return events + [{"path": v.path, "event": "vanished", "detail": v.detail} for v in gone]


def _note_read_whole(progress: FileProgress) -> None:
    """A gzip or EVTX file a batch read as far as it reads: settled, the next batch need not read it again unless
    its stat changes; not settled, the next batch reads on, but it holds nothing unread if it vanishes (a text
    file's position tells both already)."""
    if progress.kind != "text":
        progress.read_whole_stat = progress.file_stat or READ_WHOLE_UNSETTLED


def _replace_changed_stats(
    con: duckdb.DuckDBPyConnection,
    table: str,
    files: list[FileProgress],
    stats: Callable[[FileProgress], tuple[str | None, str | None]],
) -> None:
    """Replace ``table``'s (file_key, file_stat) rows of the files whose stat (as ``stats`` gives it: recorded, now)
    changed; a file whose stat is now None keeps no row."""
    changed = [(progress, now) for progress in files for recorded, now in [stats(progress)] if recorded != now]
    if changed:
        kept = [(progress.key, now) for progress, now in changed if now is not None]
        rows = pa.table({"file_key": [key for key, _ in kept], "file_stat": [stat for _, stat in kept]})
        _replace_rows(con, table, [progress for progress, _ in changed], rows)


def _replace_rows(
    con: duckdb.DuckDBPyConnection, table: str, files: list[FileProgress], rows: pa.Table, select: str = "*"
) -> None:
    """Replace ``table``'s rows of ``files`` (by file_key) with ``rows``: one DELETE and one INSERT for all of
    them, as each lake statement costs catalog work."""
    con.execute(f"DELETE FROM {table} WHERE {one_of('file_key', *(p.key for p in files))}")
    if rows.num_rows:
        con.register("__file_rows", rows)
        try:
            con.execute(f"INSERT INTO {table} BY NAME SELECT {select} FROM __file_rows")
        finally:
            con.unregister("__file_rows")


def _updated_at(progress: FileProgress) -> datetime | None:
    """``ingest.files.updated_at`` of a file's row (None: now). An EVTX file's new records can land without its size
    changing (Windows writes them into the log's last chunk; a copier may set the full size first): records read
    past the recorded position are a landing."""
    if progress.kind == "evtx" and progress.recorded is not None and progress.position != progress.recorded[0]:
        return None
    return progress.updated_at


def _state_rows(files: list[FileProgress]) -> pa.Table:
    """``ingest.files`` rows for ``files`` (``updated_at`` NULL, written as now, where something landed:
    :func:`_updated_at`)."""
    tails = [None if p.kind == "evtx" else p.tail_sha256 for p in files]
    return pa.table(
        {
            "file_key": [p.key for p in files],
            "path": [path_text(p.path) for p in files],
            "position": pa.array([p.position for p in files], pa.int64()),
            "line_number": pa.array([p.line for p in files], pa.int64()),
            "head_bytes": pa.array([p.head_bytes for p in files], pa.int64()),
            "head_sha256": [p.head_sha256 for p in files],
            "file_size": pa.array([p.size for p in files], pa.int64()),
            "tail_sha256": pa.array(tails, pa.string()),
            "read_error": pa.array([p.read_error for p in files], pa.string()),
            "updated_at": pa.array([_updated_at(p) for p in files], pa.timestamp("us")),
        }
    )


def _head_bytes(kind: str, size: int) -> int:
    """How many bytes of a file of ``kind`` and ``size`` are fingerprinted as its head (from ``head_start``)."""
    if kind == "evtx":
        return EVTX_RECORD_HEADER_BYTES if size >= EVTX_FIRST_RECORD + EVTX_RECORD_HEADER_BYTES else 0
    return min(size, FINGERPRINT_BYTES)


def _identity_change(progress: FileProgress, stored: Stored) -> tuple[str, str] | None:
    """``(event, detail)`` when the file under this key is no longer the one the stored position belongs to."""
    if stored.file_stat is not None and stored.file_stat == progress.file_stat:
        return None  # unchanged since it settled: not opened
    size = progress.size
    ends = {"text": stored.position, "gzip": stored.file_size or 0}.get(progress.kind, 0)
    head_end = progress.head_start + stored.head_bytes if stored.head_bytes else 0
    if size < head_end or size < ends:
        return ("truncated", f"shrank from {max(ends, head_end)} to {size} bytes")
    check_tail = progress.kind != "evtx" and bool(stored.tail_sha256)
    head, tail = head_and_tail_fingerprints(
        progress.path, progress.key, progress.head_start, stored.head_bytes, ends if check_tail else 0
    )
    if stored.head_bytes and head != stored.head_sha256:
        what = "first record" if progress.kind == "evtx" else f"first {stored.head_bytes} bytes"
        return ("replaced", f"its {what} changed")
    if check_tail and tail != stored.tail_sha256:
        before = min(ends, FINGERPRINT_BYTES)
        return ("replaced", f"the {before} bytes before byte {ends} changed (an inode reused, or rewritten in place)")
    return None


def _take_over_renamed(progress: FileProgress, before: dict[str, Stored]) -> None:
    """A new file under the name of files no longer listed (``before``): if it begins with what was read of one of
    them (as fingerprinted: see _identity_change), a writer saving by rename (as rsync and editors do) replaced
    that one with a longer copy, and reading goes on where it stopped (``renamed over``). Any other new file is
    read from its start: after a rotation the name's earlier files are gone, or listed under other names."""
    same = [
        (key, stored)
        for key, stored in before.items()
        if stored.position > 0 and _identity_change(progress, stored._replace(file_stat=None)) is None
    ]
    if not same:
        return
    key, stored = max(same, key=lambda item: item[1].position)
    LandingReader._resume(progress, stored._replace(file_stat=None))
    if progress.notes:  # it changed since the check: a new file after all, read from its start
        progress.notes.clear()
        return
    progress.recorded = progress.recorded_stat = None  # this key has no state row yet
    progress.adopted = key
    detail = f"begins with what was read of file {key} (up to position {stored.position}): read on from there"
    LOG.info("%s was renamed over (%s)", path_text(progress.path), detail)
    progress.notes.append(("renamed over", detail))


def _step_over_newline_of_delivered_line(progress: FileProgress) -> None:
    """A finished file's last line was delivered without its newline: if the writer has since ended it, the
    newline (``\n`` or ``\r\n``) belongs to that line, and the next line starts after it (not a line of its own)."""
    if progress.position == 0 or progress.position >= progress.size:
        return
    with open_landed(progress.path, progress.key) as handle:
        around = read_at(handle, progress.position - 1, 3)
        ending = next((end for end in (b"\n", b"\r\n") if around[1:].startswith(end)), None)
        if ending and around[0] != NEWLINE:
            progress.position += len(ending)
            progress.line += 1
            progress.tail_sha256 = hashlib.sha256(bytes_before(handle, progress.position)).hexdigest()


def _log_moved(path: Path) -> None:
    LOG.info(
        "%s was rotated away or removed since the listing: a later batch reads it under its new name", path_text(path)
    )
