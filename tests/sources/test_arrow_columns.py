"""Arrow columns from buffers: the same values pyarrow.array gives, NULLs included, without importing pandas."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa

from sysmon_assets.sources.arrow_columns import (
    bytes_array,
    dictionary_strings,
    int_array,
    repeated_string,
    strings_array,
)
from tests.conftest import python_prints


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


def test_building_a_chunk_of_landed_lines_does_not_import_pandas() -> None:
    """pyarrow.array would import pandas: 0.3 s of every batch's fixed cost. (DuckDB 1.4.4 itself imports pandas
    as soon as a statement binds a parameter, so a whole batch process no longer avoids it.)"""
    script = (
        "import sys, numpy as np; from pathlib import Path; "
        "from sysmon_assets.sources.landing_folder import FileProgress, _text_frame; "
        "block = b'{}\\n{\"a\": 1}\\n'; newlines = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == 10); "
        "frame = _text_frame(block, newlines, FileProgress('k', Path('w.ndjson'), 0, 0, len(block)), 1); "
        "print(frame.num_rows, 'pandas' in sys.modules)"
    )
    assert python_prints(script) == ["2", "False"]
