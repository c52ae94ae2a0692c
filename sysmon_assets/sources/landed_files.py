"""Which files have landed, and who each one is: the landing folder's listing (regular files with a landed name,
oldest first, each once), a file's name-independent identity (device and inode), and fingerprints read from the
file a key names, never through a link or from another file that took its name since the listing.
"""

from __future__ import annotations

import fnmatch
import hashlib
import os
import re
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, NamedTuple

from sysmon_assets.sources.landed_lines import LandingError, no_follow, path_text

# NDJSON files (optionally gzipped), EVTX files, and the names Winlogbeat's file output itself
# writes and rotates to (``winlogbeat``, ``winlogbeat.1``, ...: digits only, so neither a rotated file compressed
# anew, ``winlogbeat.2.gz``, whose lines were read under its earlier name, nor a writer's ``winlogbeat.1.tmp``).
PATTERNS = ("*.json", "*.ndjson", "*.json.gz", "*.ndjson.gz", "*.evtx", "winlogbeat")
ROTATED_NAME = r"winlogbeat\.[0-9]+\Z"

FINGERPRINT_BYTES = 1024

# A file's stat is recorded only once its change time is this old: a write within the file system's timestamp
# granularity of the listing could otherwise leave size and times as they were (git's "racy clean" problem).
SETTLED_SECONDS = 2.0

_FILE_TYPES = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFDIR: "a folder",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
}


class LandedFile(NamedTuple):
    """A landed regular file as the folder's listing saw it: its path, :func:`file_key`, size and modification time."""

    path: Path
    key: str
    size: int
    stat: str | None  # size, modification and change times, if the file is settled (SETTLED_SECONDS)
    modified_ns: int


def _settled_stat(info: os.stat_result, now_ns: int) -> str | None:
    if info.st_ctime_ns > now_ns - SETTLED_SECONDS * 1e9:
        return None
    return f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}"


@dataclass(frozen=True)
class Skipped:
    """An entry of the landing folder with a landed name that is not a regular file, and is not read."""

    path: Path
    key: str
    detail: str


_LANDED_NAME = re.compile("|".join([*map(fnmatch.translate, PATTERNS), ROTATED_NAME]))


def _landed_name(name: str) -> bool:
    # as glob did: hidden names are not landed files
    return not name.startswith(".") and _LANDED_NAME.match(name) is not None


def scan_landing(landing_dir: Path) -> tuple[list[LandedFile], list[Skipped]]:
    """Landed regular files, oldest first (rotated files before the one being written), and the entries
    with landed names that are not regular files; a missing or unreadable folder is an error naming it."""
    if not landing_dir.is_dir():
        raise LandingError(
            f"landing folder {path_text(landing_dir)} does not exist or is not a folder (set SYSMON_LANDING_DIR)"
        )
    try:
        with os.scandir(landing_dir) as entries:
            named = [entry for entry in entries if _landed_name(entry.name)]
    except OSError as error:
        raise LandingError(f"cannot list the landing folder {path_text(landing_dir)}: {error}") from error
    files: list[tuple[int, str, LandedFile]] = []
    now_ns = time.time_ns()
    skipped: list[Skipped] = []
    for entry in named:
        path = Path(entry.path)
        try:
            info = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            continue  # gone since the listing (rotated away: it is read under its new name)
        except OSError as error:
            raise LandingError(f"cannot stat landed file {path_text(path)}: {error}") from error
        if stat.S_ISREG(info.st_mode):
            landed = LandedFile(path, key_of(info), info.st_size, _settled_stat(info, now_ns), info.st_mtime_ns)
            files.append((info.st_mtime_ns, entry.name, landed))
        else:
            skipped.append(Skipped(path, key_of(info), _skip_detail(path, info.st_mode)))
    return _once_per_file([landed for *_, landed in sorted(files)]), skipped


def _once_per_file(files: list[LandedFile]) -> list[LandedFile]:
    """The files, each file once under its first name: a file under two landed names (a rotation by hard link,
    caught between the link and the unlink) would be read twice."""
    seen: set[str] = set()
    unique = []
    for landed in files:
        if landed.key not in seen:
            seen.add(landed.key)
            unique.append(landed)
    return unique


def _skip_detail(path: Path, mode: int) -> str:
    what = _FILE_TYPES.get(stat.S_IFMT(mode), "not a regular file")
    if stat.S_ISLNK(mode):
        with suppress(OSError):  # the link's target is only a hint for the operator
            what += f" to {path_text(os.readlink(path))}"
    return f"{what}: not read (only regular files in the landing folder are read; links are not followed)"


def list_landed_files(landing_dir: Path) -> list[Path]:
    """Landed regular files, oldest first; see :func:`scan_landing`."""
    return [landed.path for landed in scan_landing(landing_dir)[0]]


def file_key(path: Path) -> str:
    """A name-independent identity for a file: ``device:inode`` (of the entry itself, never a link's target)."""
    return key_of(path.lstat())


def key_of(info: os.stat_result) -> str:
    return f"{info.st_dev}:{info.st_ino}"


def landing_snapshot(landing_dir: Path) -> dict[str, str]:
    """``{file_key: "size:modification time"}`` of every landed file: cheap to compare between sensor ticks."""
    return {landed.key: f"{landed.size}:{landed.modified_ns}" for landed in scan_landing(landing_dir)[0]}


class FileMoved(Exception):
    """A landed name no longer names the file the listing saw (rotated away or removed since): the file is left
    to a later batch, whose listing finds it under its new name."""


@contextmanager
def open_landed(path: Path, key: str) -> Iterator[BinaryIO]:
    """``path`` open for reading, never through a link, if it still is the file ``key`` (device:inode) names:
    whatever a batch reads or fingerprints under a key is that file's, however the folder rotates meanwhile."""
    try:
        with open(path, "rb", opener=no_follow) as handle:
            info = os.fstat(handle.fileno())
            if key_of(info) != key or not stat.S_ISREG(info.st_mode):  # a FIFO may take a deleted file's inode
                raise FileMoved(path)
            yield handle
    except FileNotFoundError as error:
        raise FileMoved(path) from error
    except OSError as error:
        raise LandingError(f"cannot read landed file {path_text(path)}: {error}") from error


def read_at(handle: BinaryIO, start: int, length: int) -> bytes:
    handle.seek(start)
    return handle.read(length)


def bytes_before(handle: BinaryIO, end: int) -> bytes:
    """The (up to) :data:`FINGERPRINT_BYTES` bytes before ``end``: what a tail fingerprint covers."""
    start = max(0, end - FINGERPRINT_BYTES)
    return read_at(handle, start, end - start)


def fingerprint(path: Path, key: str, length: int, start: int = 0) -> str:
    """SHA-256 of ``length`` bytes from ``start`` of the file ``key`` at ``path``."""
    with open_landed(path, key) as handle:
        return hashlib.sha256(read_at(handle, start, length)).hexdigest()


def head_and_tail_fingerprints(path: Path, key: str, head_start: int, head_bytes: int, end: int) -> tuple[str, str]:
    """:func:`fingerprint` of ``head_bytes`` from ``head_start``, and of the bytes before ``end``, from one open (a
    batch checks every known file: over thousands of small files, opens dominate)."""
    with open_landed(path, key) as handle:
        head = read_at(handle, head_start, head_bytes)
        return hashlib.sha256(head).hexdigest(), hashlib.sha256(bytes_before(handle, end)).hexdigest()
