"""Where a DuckDB instance spills what does not fit in its memory limit: a folder of its own.

DuckDB's default for an in-memory database is ``.tmp`` in the working directory, which every process started
there shares (shards, the maintenance job, an analyst's query run from the same folder). Two DuckDB processes
spilling into one folder write the same file names: both crashed (segmentation fault) each time it was tried.
So each instance gets a folder of its own, inside a folder private to its process (mode 700: spilled rows are
event data). The pipeline's instances spill under ``SYSMON_DATA_DIR/spill`` (on the data's disk, with everything
else the pipeline writes), read-only ones (analysts') under ``sysmon-assets-spill-<user id>`` in the system's temporary
folder (``TMPDIR``). DuckDB makes an instance's folder on its first spill and removes it when the instance closes;
the process's folder goes when the process exits, or, after a crash, when the next process on the machine makes its
own there. Only those parents are searched for crashed processes' folders: nothing else in ``TMPDIR`` is touched.
"""

from __future__ import annotations

import atexit
import getpass
import logging
import os
import shutil
import socket
import stat
import tempfile
import uuid
from pathlib import Path

LOG = logging.getLogger(__name__)
_PROCESS_FOLDERS: dict[tuple[int, Path], Path] = {}
# by process id: the readers' folder of a process whose user's shared one is not private
_OWN_PARENTS: dict[int, Path] = {}


def spill_directory(parent: Path | None = None) -> str:
    """A folder for one DuckDB instance to spill into (its ``temp_directory``), not made yet, in this process's
    private folder under ``parent`` (by default the user's readers' folder in the system's temporary folder)."""
    return str(_process_folder(parent or _readers_folder()) / uuid.uuid4().hex)


def _readers_folder() -> Path:
    """The project's own folder in TMPDIR for this user's readers (private: their spills are event data)."""
    # the user id: getpass.getuser() fails for a container's user with no name (no passwd entry)
    user = os.getuid() if hasattr(os, "getuid") else getpass.getuser()
    folder = Path(tempfile.gettempdir(), f"sysmon-assets-spill-{user}")
    folder.mkdir(mode=0o700, exist_ok=True)
    if not hasattr(os, "getuid") or _made_private(folder):
        return folder
    return _folder_of_this_process(folder)


def _made_private(folder: Path) -> bool:
    """Whether ``folder`` is this user's and closed to others, closing it if it is the user's."""
    found = folder.lstat()
    if not stat.S_ISDIR(found.st_mode) or found.st_uid != os.getuid():
        return False
    if found.st_mode & 0o077:
        folder.chmod(0o700)
        found = folder.lstat()  # a file system with no Unix modes keeps its own
    return not found.st_mode & 0o077


def _folder_of_this_process(shared: Path) -> Path:
    """A private folder of a random name for this process's readers, when another user may have made ``shared``
    first (TMPDIR is shared) and could read what is spilled there. It goes when the process exits."""
    pid = os.getpid()
    if pid not in _OWN_PARENTS:
        found = shared.lstat()
        LOG.warning(
            "%s is not a folder private to user %s (owner %s, mode %s): readers spill in a folder of this process",
            shared,
            os.getuid(),
            found.st_uid,
            stat.filemode(found.st_mode),
        )
        _OWN_PARENTS[pid] = Path(tempfile.mkdtemp(prefix=f"{shared.name}-"))
        atexit.register(_remove, pid, _OWN_PARENTS[pid])
    return _OWN_PARENTS[pid]


def _process_folder(parent: Path) -> Path:
    """This process's private folder under ``parent`` (a forked child makes its own)."""
    pid = os.getpid()
    if (pid, parent) not in _PROCESS_FOLDERS:
        parent.mkdir(parents=True, exist_ok=True)
        _remove_crashed(parent)
        folder = Path(tempfile.mkdtemp(prefix=f"{_machine()}-{pid}-", dir=parent))
        _PROCESS_FOLDERS[pid, parent] = folder
        atexit.register(_remove, pid, folder)
    return _PROCESS_FOLDERS[pid, parent]


def _machine() -> str:
    return socket.gethostname().replace("-", "_")


def _remove_crashed(parent: Path) -> None:
    """Remove the folders left under ``parent`` by processes of this machine that no longer run."""
    for folder in parent.glob(f"{_machine()}-*-*"):
        pid = folder.name.split("-")[1]
        if pid.isdigit() and not _running(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _remove(pid: int, folder: Path) -> None:
    if os.getpid() == pid:  # a forked child inherits its parent's exit handlers
        shutil.rmtree(folder, ignore_errors=True)
