"""Arrow columns from buffers: the same values pyarrow.array gives, NULLs included, without importing pandas."""

from __future__ import annotations

import subprocess
import sys

import duckdb
import numpy as np
import pyarrow as pa

from sysmon_assets.arrow_columns import bytes_array, dictionary_strings, int_array, repeated_string, strings_array


def test_columns_hold_their_values_and_nulls() -> None:
    columns = {
        "n": int_array(np.array([5, 0, 7]), valid=np.array([True, False, True])),
        "p": int_array(np.array([1, 2, 3]), pa.int32()),
        "b": bytes_array([b"a\nb", None, b""]),
        "s": strings_array(["é", None, "x"]),
        "d": dictionary_strings(np.array([1, 0, 1]), ["zero", "one"]),
        "r": repeated_string("/landing/w.ndjson", 3),
    }
    for column in columns.values():
        column.validate(full=True)
    con = duckdb.connect()
    con.register("chunk", pa.table(columns))
    assert con.execute("SELECT * FROM chunk").fetchall() == [
        (5, 1, b"a\nb", "é", "one", "/landing/w.ndjson"),
        (None, 2, None, None, "zero", "/landing/w.ndjson"),
        (7, 3, b"", "x", "one", "/landing/w.ndjson"),
    ]


def test_empty_columns() -> None:
    assert len(bytes_array([])) == len(strings_array([])) == len(int_array(np.array([], dtype=np.int64))) == 0


def test_a_batch_process_does_not_import_pandas(tmp_path) -> None:
    """pyarrow.array would import pandas: 0.3 s of every batch's fixed cost."""
    script = (
        "import sys; from pathlib import Path; from sysmon_assets.pipeline import SysmonPipeline; "
        "from sysmon_assets.settings import Settings; "
        f"Path('{tmp_path}/landing').mkdir(); Path('{tmp_path}/landing/w.ndjson').write_text('{{}}\\n'); "
        f"SysmonPipeline(Settings(landing_dir=Path('{tmp_path}/landing'), duckdb_path=Path('{tmp_path}/s.duckdb')))"
        ".run_batch(); print('pandas' in sys.modules)"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
