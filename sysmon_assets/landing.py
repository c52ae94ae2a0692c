"""Read what landed in the landing folder since the last committed batch.

Files are tracked by device and inode (as Filebeat's registry does), so a file renamed by
rotation is not read again; a file that grows is read from where the last batch stopped;
an incomplete last line (no newline yet) waits for the next batch. A fingerprint of each
file's first bytes detects a file replaced in place, and a file that shrank was truncated:
both are recorded in ``ingest.file_events`` and read anew, never mixed with the old offset.
Positions are written by :meth:`LandingReader.commit_offsets`, inside the same lake
transaction as the rows, so a crash never loses or repeats a line.

``*.evtx`` files are read record by record (``evtx_records.py``): each record lands as one
JSON line, and its position counts records, not bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, TypeVar

import duckdb
import numpy as np
import pyarrow as pa

from sysmon_assets.arrow_columns import bytes_array
from sysmon_assets.evtx_records import record_lines
from sysmon_assets.landed_lines import SOURCE_NAME, LandingError, lines_table

LOG = logging.getLogger(__name__)
T = TypeVar("T")

STATE_TABLE = "ingest.files"
EVENTS_TABLE = "ingest.file_events"
# NDJSON files (optionally gzipped), EVTX files, and the names Winlogbeat's file output itself
# writes and rotates to (``winlogbeat``, ``winlogbeat.1``, ...).
PATTERNS = ("*.json", "*.ndjson", "*.json.gz", "*.ndjson.gz", "*.evtx", "winlogbeat", "winlogbeat.[0-9]*")
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024
FINGERPRINT_BYTES = 1024
NEWLINE = ord("\n")
STATE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS ingest;
CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    file_key VARCHAR, path VARCHAR, position BIGINT, line_number BIGINT,
    head_bytes BIGINT, head_sha256 VARCHAR, updated_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS {EVENTS_TABLE} (
    detected_at TIMESTAMP, path VARCHAR, file_key VARCHAR, event VARCHAR, detail VARCHAR);
"""


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
    recorded: tuple[int, int, int, str] | None = None  # the position this batch last wrote to ingest.files

    @property
    def state(self) -> tuple[int, int, int, str]:
        """What ``ingest.files`` keeps of this file: position, line, and the head it was fingerprinted by."""
        return (self.position, self.line, self.head_bytes, self.head_sha256)

    def advance(self, positions: int, lines: int) -> None:
        """Move past ``lines`` lines taking ``positions`` (bytes, or EVTX records)."""
        self.position += positions
        self.line += lines

    @property
    def kind(self) -> str:
        """``evtx``, ``gzip`` or ``text``: how the file is read and what its position counts."""
        return {".evtx": "evtx", ".gz": "gzip"}.get(self.path.suffix, "text")


def list_landed_files(landing_dir: Path) -> list[Path]:
    """Landed files, oldest first (rotated files before the one being written); a missing folder is an
    error that names it."""
    if not landing_dir.is_dir():
        raise LandingError(f"landing folder {landing_dir} does not exist or is not a folder (set SYSMON_LANDING_DIR)")
    files = {path for pattern in PATTERNS for path in landing_dir.glob(pattern) if path.is_file()}
    return sorted(files, key=lambda path: (path.stat().st_mtime_ns, path.name))


def file_key(path: Path) -> str:
    """A name-independent identity for a file: ``device:inode``."""
    stat = path.stat()
    return f"{stat.st_dev}:{stat.st_ino}"


def landing_snapshot(landing_dir: Path) -> dict[str, int]:
    """``{file_key: size}`` of every landed file: cheap to compare between sensor ticks."""
    return {file_key(path): path.stat().st_size for path in list_landed_files(landing_dir)}


def fingerprint(path: Path, length: int) -> str:
    """SHA-256 of the first ``length`` bytes of the file as stored on disk."""
    try:
        with path.open("rb") as handle:
            return hashlib.sha256(handle.read(length)).hexdigest()
    except OSError as error:
        raise LandingError(f"cannot read landed file {path}: {error}") from error


@contextmanager
def _open(progress: FileProgress) -> Iterator[BinaryIO]:
    try:
        opener = gzip.open if progress.kind == "gzip" else open
        with opener(progress.path, "rb") as handle:
            handle.seek(progress.position)
            yield handle
    except OSError as error:
        raise LandingError(f"cannot read landed file {progress.path}: {error}") from error


def _read_blocks(progress: FileProgress, chunk_bytes: int) -> Iterator[tuple[bytes, np.ndarray]]:
    """Blocks of complete lines (newlines kept) from the file's current position, each with the
    positions of its newlines; a partial last line is held back."""
    with _open(progress) as handle:
        pending = b""
        remaining = None if progress.kind == "gzip" else progress.size - progress.position
        while remaining is None or remaining > 0:
            want = chunk_bytes if remaining is None else min(chunk_bytes, remaining)
            try:
                block = handle.read(want)
            except (EOFError, gzip.BadGzipFile):
                LOG.info("%s: compressed stream ends early; its tail waits for the next batch", progress.path)
                break
            if not block:
                break
            if remaining is not None:
                remaining -= len(block)
            if pending:
                block = pending + block
            newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == NEWLINE)
            if len(newlines) == 0:
                pending = block
                continue
            end = int(newlines[-1]) + 1
            pending = block[end:]
            yield (block if end == len(block) else block[:end]), newlines


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


def _text_frame(block: bytes, newlines: np.ndarray, progress: FileProgress, first_seq: int) -> pa.Table:
    """One row per line: sequence number, file, line number, byte offset, raw bytes and their length.

    The lines stay in the block as read (no copy per line): each value is a line with its newline,
    and ``line_bytes`` is its length without it.
    """
    starts = np.zeros(len(newlines) + 1, dtype=np.int64)
    starts[1:] = newlines + 1
    lines = pa.Array.from_buffers(pa.large_binary(), len(newlines), [None, pa.py_buffer(starts), pa.py_buffer(block)])
    offsets = progress.position + starts[:-1]
    frame = lines_table(lines, np.diff(starts) - 1, str(progress.path), first_seq, progress.line + 1, offsets)
    progress.advance(len(block), len(newlines))
    return frame


def _evtx_frame(lines: list[bytes], progress: FileProgress, first_seq: int) -> pa.Table:
    """One row per EVTX record; the offset column holds the record's index in the file."""
    indexes = np.arange(progress.position + 1, progress.position + 1 + len(lines), dtype=np.int64)
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    frame = lines_table(bytes_array(lines), lengths, str(progress.path), first_seq, progress.line + 1, indexes)
    progress.advance(len(lines), len(lines))
    return frame


class LandingReader:
    """Plans and reads one batch of landed lines, and commits how far it got."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        landing_dir: Path,
        offset_reset: str = "earliest",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
        owns: Callable[[str], bool] = lambda key: True,
    ) -> None:
        """``owns(file_key)``: whether this reader's shard reads the file (by default every file)."""
        self.con = con
        self.owns = owns
        self.landing_dir = landing_dir
        self.offset_reset = offset_reset
        self.chunk_bytes = chunk_bytes
        self.files: list[FileProgress] = []

    def plan(self, first_batch_ever: bool) -> list[FileProgress]:
        """Decide, per landed file, where this batch starts reading.

        On the very first batch, ``offset_reset='latest'`` starts every file at its end.
        """
        self.con.execute(STATE_DDL)
        known = {
            row[0]: row[1:]
            for row in self.con.execute(
                f"SELECT file_key, position, line_number, head_bytes, head_sha256 FROM {STATE_TABLE}"
            ).fetchall()
        }
        self.files = []
        for path in list_landed_files(self.landing_dir):
            try:
                key, size = file_key(path), path.stat().st_size
            except OSError as error:
                raise LandingError(f"cannot stat landed file {path}: {error}") from error
            if not self.owns(key):
                continue
            progress = FileProgress(key, path, 0, 0, size)
            if key in known:
                self._resume(progress, *known[key])
            if first_batch_ever and self.offset_reset == "latest":
                self._skip_to_end(progress)
            # An EVTX header changes whenever records are appended: such files are known by inode alone.
            progress.head_bytes = 0 if progress.kind == "evtx" else min(size, FINGERPRINT_BYTES)
            progress.head_sha256 = fingerprint(path, progress.head_bytes)
            self.files.append(progress)
        return self.files

    @staticmethod
    def _resume(progress: FileProgress, position: int, line: int, head_bytes: int, head_sha256: str) -> None:
        if progress.size < head_bytes or (progress.kind == "text" and progress.size < position):
            event = ("truncated", f"shrank from {max(position, head_bytes)} to {progress.size} bytes")
        elif head_bytes and fingerprint(progress.path, head_bytes) != head_sha256:
            event = ("replaced", f"its first {head_bytes} bytes changed")
        else:
            progress.position, progress.line = position, line
            return
        LOG.warning("%s was %s (%s): reading it anew from the start", progress.path, event[0], event[1])
        progress.notes.append(event)

    def _skip_to_end(self, progress: FileProgress) -> None:
        if progress.kind == "evtx":
            for lines in record_lines(progress.path, progress.position):
                progress.advance(len(lines), len(lines))
            return
        for block, newlines in _read_blocks(progress, self.chunk_bytes):
            progress.advance(len(block), len(newlines))

    def chunks(self, first_seq: int) -> Iterator[dict[str, pa.Table]]:
        """Source chunks for the ingest models: ``{'landed_lines': frame}``, bounded in size."""
        seq = first_seq
        for progress in self.files:
            frames: Iterator[pa.Table]
            if progress.kind == "evtx":
                records = record_lines(progress.path, progress.position)
                frames = (_evtx_frame(lines, progress, seq) for lines in records)
            else:
                blocks = _read_ahead(_read_blocks(progress, self.chunk_bytes))
                frames = (_text_frame(block, newlines, progress, seq) for block, newlines in blocks)
            for frame in frames:
                seq += frame.num_rows
                yield {SOURCE_NAME: frame}

    def commit_offsets(self, con: duckdb.DuckDBPyConnection) -> None:
        """Record how far each file was read, and (once) what was noticed; call inside the transaction
        that commits the rows read so far."""
        for progress in self.files:
            # A chunk moves one file on: the others' rows would be rewritten unchanged on every chunk's commit.
            if progress.recorded != progress.state:
                con.execute(f"DELETE FROM {STATE_TABLE} WHERE file_key = ?", [progress.key])
                con.execute(
                    f"INSERT INTO {STATE_TABLE} VALUES (?, ?, ?, ?, ?, ?, now())",
                    [progress.key, str(progress.path), *progress.state],
                )
            if not progress.notes_recorded:
                for event, detail in progress.notes:
                    con.execute(
                        f"INSERT INTO {EVENTS_TABLE} VALUES (now(), ?, ?, ?, ?)",
                        [str(progress.path), progress.key, event, detail],
                    )

    def offsets_committed(self) -> None:
        """The transaction :meth:`commit_offsets` wrote into has committed: later chunks need not repeat it."""
        for progress in self.files:
            progress.notes_recorded = True
            progress.recorded = progress.state

    @property
    def file_events(self) -> list[dict[str, str]]:
        """What this batch noticed about files (truncated, replaced), for run metadata."""
        return [{"path": str(p.path), "event": e, "detail": d} for p in self.files for e, d in p.notes]
