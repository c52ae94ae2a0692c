"""Where a DuckDB instance spills what does not fit in its memory limit: a folder of its own.

DuckDB's default for an in-memory database is ``.tmp`` in the working directory, which every process started
there shares (shards, the maintenance job, an analyst's query run from the same folder). Two DuckDB processes
spilling into one folder write the same file names: both crashed (segmentation fault) each time it was tried.
So each instance gets a folder of its own, inside a folder private to this process (mode 700 under the system's
temporary folder, ``TMPDIR``): spilled rows are event data. DuckDB makes the instance's folder on its first spill
and removes it when the instance closes; the process's folder is removed when the process exits.
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
import uuid
from pathlib import Path

_PROCESS_FOLDERS: dict[int, Path] = {}


def spill_directory() -> str:
    """A folder for one DuckDB instance to spill into (its ``temp_directory``), not made yet."""
    return str(_process_folder() / uuid.uuid4().hex)


def _process_folder() -> Path:
    """This process's private folder (a forked child makes its own)."""
    pid = os.getpid()
    if pid not in _PROCESS_FOLDERS:
        _PROCESS_FOLDERS[pid] = Path(tempfile.mkdtemp(prefix="sysmon-duckdb-spill-"))
        atexit.register(_remove, pid, _PROCESS_FOLDERS[pid])
    return _PROCESS_FOLDERS[pid]


def _remove(pid: int, folder: Path) -> None:
    if os.getpid() == pid:  # a forked child inherits its parent's exit handlers
        shutil.rmtree(folder, ignore_errors=True)
