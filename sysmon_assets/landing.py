"""Read what Winlogbeat's file output landed since the last committed batch.

Files are tracked by device and inode (as Filebeat's registry does), so a file that is
renamed by rotation is not read again; a file that grows is read from the byte where the
last batch stopped; an incomplete last line (no newline yet) waits for the next batch.
The offsets are written by :meth:`LandingReader.commit_offsets`, inside the same DuckDB
transaction as the rows, so a crash never loses or repeats a line.
"""

from __future__ import annotations

import gzip
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import duckdb
import numpy as np
import pandas as pd

LOG = logging.getLogger(__name__)

STATE_TABLE = "ingest.files"
SOURCE_NAME = "landed_lines"
PATTERNS = ("*.json", "*.ndjson", "*.json.gz", "*.ndjson.gz")
DEFAULT_CHUNK_BYTES = 64 * 1024 * 1024

_STATE_DDL = f"""
CREATE SCHEMA IF NOT EXISTS ingest;
CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
    file_key VARCHAR PRIMARY KEY, path VARCHAR, byte_offset BIGINT, line_number BIGINT, updated_at TIMESTAMP);
"""


class LandingError(RuntimeError):
    """The landing folder or a file in it cannot be read; the message names the path."""


@dataclass
class FileProgress:
    """Where reading one landed file starts and (after reading) where it stopped."""

    key: str
    path: Path
    offset: int
    line: int
    size: int

    @property
    def compressed(self) -> bool:
        """Whether the file is gzip-compressed (offsets then count decompressed bytes)."""
        return self.path.suffix == ".gz"


def list_landed_files(landing_dir: Path) -> list[Path]:
    """Landed NDJSON files in name order; a missing folder is an error that names it."""
    if not landing_dir.is_dir():
        raise LandingError(f"landing folder {landing_dir} does not exist or is not a folder (set SYSMON_LANDING_DIR)")
    files = {path for pattern in PATTERNS for path in landing_dir.glob(pattern) if path.is_file()}
    return sorted(files)


def file_key(path: Path) -> str:
    """A name-independent identity for a file: ``device:inode``."""
    stat = path.stat()
    return f"{stat.st_dev}:{stat.st_ino}"


def landing_snapshot(landing_dir: Path) -> dict[str, int]:
    """``{file_key: size}`` of every landed file: cheap to compare between sensor ticks."""
    return {file_key(path): path.stat().st_size for path in list_landed_files(landing_dir)}


@contextmanager
def _open(progress: FileProgress) -> Iterator[BinaryIO]:
    try:
        opener = gzip.open if progress.compressed else open
        with opener(progress.path, "rb") as handle:
            handle.seek(progress.offset)
            yield handle
    except OSError as error:
        raise LandingError(f"cannot read landed file {progress.path}: {error}") from error


def _read_blocks(progress: FileProgress, chunk_bytes: int) -> Iterator[bytes]:
    """Blocks of complete lines from the file's current offset; a partial last line is held back."""
    with _open(progress) as handle:
        pending = b""
        remaining = None if progress.compressed else progress.size - progress.offset
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
            data = pending + block
            cut = data.rfind(b"\n") + 1
            pending = data[cut:]
            if cut:
                yield data[:cut]


def _frame(block: bytes, progress: FileProgress, first_seq: int) -> pd.DataFrame:
    """One row per line of ``block``: sequence number, file, line number, byte offset, raw bytes."""
    lines = block.split(b"\n")
    lines.pop()  # the block ends with a newline, so the last element is empty
    lengths = np.fromiter(map(len, lines), dtype=np.int64, count=len(lines))
    offsets = progress.offset + np.concatenate(([0], np.cumsum(lengths + 1)[:-1])) if lines else lengths
    frame = pd.DataFrame(
        {
            "_seq": np.arange(first_seq, first_seq + len(lines), dtype=np.int64),
            "source_file": pd.Series([str(progress.path)] * len(lines), dtype="string"),
            "source_line": np.arange(progress.line + 1, progress.line + 1 + len(lines), dtype=np.int64),
            "source_offset": offsets.astype(np.int64),
            "line": pd.Series(lines, dtype=object),
        }
    )
    progress.offset += len(block)
    progress.line += len(lines)
    return frame


class LandingReader:
    """Plans and reads one batch of landed lines, and commits how far it got."""

    def __init__(
        self,
        con: duckdb.DuckDBPyConnection,
        landing_dir: Path,
        offset_reset: str = "earliest",
        chunk_bytes: int = DEFAULT_CHUNK_BYTES,
    ) -> None:
        self.con = con
        self.landing_dir = landing_dir
        self.offset_reset = offset_reset
        self.chunk_bytes = chunk_bytes
        self.files: list[FileProgress] = []

    def plan(self, first_batch_ever: bool) -> list[FileProgress]:
        """Decide, per landed file, where this batch starts reading.

        On the very first batch, ``offset_reset='latest'`` starts every file at its end.
        """
        self.con.execute(_STATE_DDL)
        known = {
            key: (offset, line)
            for key, offset, line in self.con.execute(
                f"SELECT file_key, byte_offset, line_number FROM {STATE_TABLE}"
            ).fetchall()
        }
        self.files = []
        for path in list_landed_files(self.landing_dir):
            try:
                key, size = file_key(path), path.stat().st_size
            except OSError as error:
                raise LandingError(f"cannot stat landed file {path}: {error}") from error
            offset, line = known.get(key, (0, 0))
            if path.suffix != ".gz" and size < offset:
                LOG.warning(
                    "%s shrank from %d to %d bytes: it was truncated or replaced; reading it anew", path, offset, size
                )
                offset, line = 0, 0
            progress = FileProgress(key, path, offset, line, size)
            if first_batch_ever and self.offset_reset == "latest":
                self._skip_to_end(progress)
            self.files.append(progress)
        return self.files

    def _skip_to_end(self, progress: FileProgress) -> None:
        for block in _read_blocks(progress, self.chunk_bytes):
            progress.offset += len(block)
            progress.line += block.count(b"\n")

    def chunks(self, first_seq: int) -> Iterator[dict[str, pd.DataFrame]]:
        """Source chunks for the ingest models: ``{'landed_lines': frame}``, at most about chunk_bytes each."""
        seq = first_seq
        for progress in self.files:
            for block in _read_blocks(progress, self.chunk_bytes):
                frame = _frame(block, progress, seq)
                seq += len(frame)
                yield {SOURCE_NAME: frame}

    def commit_offsets(self, con: duckdb.DuckDBPyConnection) -> None:
        """Record how far each file was read (call inside the batch's transaction)."""
        for progress in self.files:
            con.execute(
                f"INSERT OR REPLACE INTO {STATE_TABLE} VALUES (?, ?, ?, ?, now())",
                [progress.key, str(progress.path), progress.offset, progress.line],
            )

    @property
    def bytes_pending(self) -> int:
        """Bytes landed but not read yet (plain files only; gzip sizes are compressed)."""
        return sum(max(0, p.size - p.offset) for p in self.files if not p.compressed)


def empty_chunk() -> dict[str, pd.DataFrame]:
    """A chunk with no lines but the right column types: creates the tables on a first, empty batch."""
    return {
        SOURCE_NAME: pd.DataFrame(
            {
                "_seq": np.array([], dtype=np.int64),
                "source_file": pd.Series([], dtype="string"),
                "source_line": np.array([], dtype=np.int64),
                "source_offset": np.array([], dtype=np.int64),
                "line": pd.Series([], dtype=object),
            }
        )
    }
