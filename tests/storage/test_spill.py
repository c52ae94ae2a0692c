"""Each DuckDB instance of the project spills into a folder of its own (sysmon_assets/storage/spill.py)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import duckdb

from sysmon_assets.settings import Settings
from sysmon_assets.storage.lake import open_lake
from sysmon_assets.storage.spill import spill_directory

# Sorting 1.5M strings needs about 100 MB: in a 64 MB limit it must spill (checked below with spilling off).
SORT = (
    "SELECT sum(hash(x) * row) FROM (SELECT x, row_number() OVER (ORDER BY s) AS row "
    "FROM (SELECT range AS x, md5(CAST(range AS VARCHAR)) AS s FROM range(1500000)))"
)
SPILLING_PROCESS = f"""
import sys
from pathlib import Path
from sysmon_assets.settings import Settings
from sysmon_assets.storage.lake import open_lake
settings = Settings(landing_dir=Path(sys.argv[1]), data_dir=Path(sys.argv[2]), memory_limit="64MB")
with open_lake(settings) as con:
    con.execute("SET threads = 1")
    if sys.argv[3] == "spilling off":
        con.execute("SET temp_directory = ''")
    print(con.execute({SORT!r}).fetchone()[0])
"""


def _start(tmp_path: Path, name: str, mode: str = "") -> subprocess.Popen:
    landing, data = tmp_path / "landing", tmp_path / name
    landing.mkdir(exist_ok=True)
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    command = [sys.executable, "-c", SPILLING_PROCESS, str(landing), str(data), mode]
    return subprocess.Popen(command, cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_processes_spilling_from_one_working_directory_both_finish(tmp_path: Path) -> None:
    (tmp_path / "tmp").mkdir()
    with duckdb.connect() as con:
        expected = str(con.execute(SORT).fetchone()[0])
    unspilled = _start(tmp_path, "data-0", "spilling off")
    _, error = unspilled.communicate(timeout=120)
    assert unspilled.returncode == 1 and "Out of Memory" in error  # the sort does need to spill
    both = [_start(tmp_path, f"data-{index}") for index in (1, 2)]  # under DuckDB's default, both segfaulted
    outputs = [process.communicate(timeout=120) for process in both]
    assert [(process.returncode, output.strip()) for process, (output, _) in zip(both, outputs, strict=True)] == [
        (0, expected),
        (0, expected),
    ], [error for _, error in outputs]
    assert not (tmp_path / ".tmp").exists()  # DuckDB's default folder
    assert list((tmp_path / "tmp").iterdir()) == []  # each process removed its folder


def test_an_instance_spills_into_a_folder_private_to_its_process(tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    with open_lake(Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data")) as con:
        folder = Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0])
    assert stat.S_IMODE(folder.parent.stat().st_mode) == 0o700
    assert folder.parent.name.startswith("sysmon-duckdb-spill-")
    assert spill_directory() != spill_directory()  # a folder per instance
