"""Each DuckDB instance of the project spills into a folder of its own (sysmon_assets/storage/spill.py)."""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import duckdb
import pytest

from sysmon_assets.settings import Settings
from sysmon_assets.storage import spill
from sysmon_assets.storage.lake import open_lake
from sysmon_assets.storage.spill import spill_directory
from tests.conftest import Lake, network_connect, process_create

# Sorting 1.5M strings needs about 100 MB: in a 64 MB limit it must spill (checked below with spilling off).
SORT = (
    "SELECT sum(hash(x) * row) FROM (SELECT x, row_number() OVER (ORDER BY s) AS row "
    "FROM (SELECT range AS x, md5(CAST(range AS VARCHAR)) AS s FROM range(1500000)))"
)
SPILLING_PROCESS = f"""
import sys
import tempfile
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


def _start(tmp_path: Path, mode: str = "") -> subprocess.Popen:
    command = [sys.executable, "-c", SPILLING_PROCESS, str(tmp_path / "landing"), str(tmp_path / "data"), mode]
    return subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_pipelines_spilling_from_one_working_directory_into_one_lake_both_finish(tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    with open_lake(Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data")):
        pass  # the lake exists before the two open it, as it does for shards
    with duckdb.connect() as con:
        expected = str(con.execute(SORT).fetchone()[0])
    unspilled = _start(tmp_path, "spilling off")
    _, error = unspilled.communicate(timeout=120)
    assert unspilled.returncode == 1 and "Out of Memory" in error  # the sort does need to spill
    both = [_start(tmp_path), _start(tmp_path)]  # under DuckDB's default, both segfaulted
    outputs = [process.communicate(timeout=120) for process in both]
    assert [(process.returncode, output.strip()) for process, (output, _) in zip(both, outputs, strict=True)] == [
        (0, expected),
        (0, expected),
    ], [error for _, error in outputs]
    assert not (tmp_path / ".tmp").exists()  # DuckDB's default folder
    left = [folder.name.split("-")[1] for folder in (tmp_path / "data" / "spill").iterdir()]
    assert left == [str(os.getpid())]  # each of the two removed its folder; this one's goes when the tests end


def test_the_pipeline_spills_in_the_data_folder_and_a_reader_in_the_temporary_folder(tmp_path: Path) -> None:
    (tmp_path / "landing").mkdir()
    settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data")
    folders = []
    for read_only in (False, True):
        with open_lake(settings, read_only=read_only) as con:
            folders.append(Path(con.execute("SELECT current_setting('temp_directory')").fetchone()[0]))
    readers = Path(tempfile.gettempdir(), f"sysmon-assets-spill-{os.getuid()}")
    assert [folder.parent.parent for folder in folders] == [tmp_path / "data" / "spill", readers]
    assert [stat.S_IMODE(folder.parent.stat().st_mode) for folder in folders] == [0o700, 0o700]
    assert spill_directory() != spill_directory()  # a folder per instance


def test_a_crashed_process_leaves_its_folder_until_the_next_process_makes_its_own(tmp_path: Path) -> None:
    make_one = "import sys, pathlib; from sysmon_assets.storage.spill import spill_directory; "
    crash = make_one + "print(spill_directory(pathlib.Path(sys.argv[1]))); import os; os._exit(0)"
    left = Path(
        subprocess.run(
            [sys.executable, "-c", crash, str(tmp_path)], capture_output=True, text=True, check=True
        ).stdout.strip()
    )
    assert left.parent.is_dir()  # os._exit runs no exit handler, as a kill would not
    alive = Path(spill_directory(tmp_path))
    assert not left.parent.exists() and alive.parent.is_dir()


def test_a_reader_removes_no_folder_of_the_temporary_folder_but_its_own(tmp_path: Path) -> None:
    """A probe's finding: every reader removed any folder of TMPDIR named <host>-<digits>-... whose number was no
    running process, as if a crashed reader had left it."""
    temporary = tmp_path / "tmp"
    notes = temporary / f"{socket.gethostname().replace('-', '_')}-99999999-notes"
    notes.mkdir(parents=True)
    (notes / "file.txt").write_text("important")
    reader = (
        "import tempfile, sys; tempfile.tempdir = sys.argv[1]; "
        "from sysmon_assets.storage.spill import spill_directory; spill_directory()"
    )
    subprocess.run([sys.executable, "-c", reader, str(temporary)], check=True)
    assert (notes / "file.txt").read_text() == "important"


def test_a_reader_closes_its_spill_folder_when_it_was_open_to_others(lake: Lake, tmp_path: Path) -> None:
    lake.land([process_create("{A}"), network_connect("{A}")])
    lake.batch()
    temporary = tmp_path / "tmp"
    shared = temporary / f"sysmon-assets-spill-{os.getuid()}"
    shared.mkdir(parents=True)
    shared.chmod(0o777)
    environ = {**os.environ, "TMPDIR": str(temporary), "SYSMON_DATA_DIR": str(lake.data)}
    query = [sys.executable, "-m", "sysmon_assets.query", "--json", "SELECT count(*) FROM sysmon_join"]
    read = subprocess.run(query, env=environ, capture_output=True, text=True, check=True)
    assert json.loads(read.stdout) == [[1]]
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700


def test_a_reader_spills_in_a_folder_of_its_own_when_another_user_made_the_shared_one_first(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A probe's finding: another user who made the readers' folder first, open to all, read what an analyst's
    query spilled there."""
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    monkeypatch.setattr(spill, "_OWN_PARENTS", {})
    other = os.getuid() + 1  # the folder below is this process's; seen as user `other`, it is another user's
    monkeypatch.setattr(os, "getuid", lambda: other)
    squatted = tmp_path / f"sysmon-assets-spill-{other}"
    squatted.mkdir()
    squatted.chmod(0o777)
    directory = Path(spill.spill_directory())
    readers = directory.parent.parent
    assert squatted not in directory.parents and list(squatted.iterdir()) == []
    assert readers.parent == tmp_path and readers.name.startswith(f"sysmon-assets-spill-{other}-")
    assert stat.S_IMODE(readers.stat().st_mode) == stat.S_IMODE(directory.parent.stat().st_mode) == 0o700
    assert Path(spill.spill_directory()).parent.parent == readers  # one per process
