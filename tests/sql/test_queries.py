"""The recipe's "optionally query a sample" SELECTs, as DuckDB SQL in sql/queries/, run and return rows."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from sysmon_assets import connect
from sysmon_assets.storage.lake import last_complete_batch, open_lake
from tests.conftest import Lake, network_connect, process_create
from tests.recipe import recipe_sample_output

ROOT = Path(__file__).resolve().parents[2]
QUERIES = sorted((ROOT / "sql" / "queries").glob("*.sql"))


@pytest.fixture(scope="module")
def sample_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("queries"))
    for sample in (ROOT / "sample_data").glob("*.ndjson"):
        (lake.landing / sample.name).write_bytes(sample.read_bytes())
    lake.batch()
    return lake


def recipe_events() -> list[dict]:
    """Events in arrival order that give the rows the recipe prints under each sample query first (its
    MSEDGEWIN10 host), then a late host's joined connections: earlier event times, later arrival."""
    host = {"computer": "MSEDGEWIN10"}
    (first, second), (updater, patch) = (
        recipe_sample_output("winlogbeat_stream"),
        recipe_sample_output("sysmon_process_create"),
    )
    creates = [
        process_create(
            f"{{A{i}}}",
            event_data={
                "Image": image,
                "Description": description,
                "User": user,
                "ParentImage": parent,
                "Product": product,
            },
            **host,
        )
        for i, ((image, description, user), (_, _, parent, product)) in enumerate(((updater, first), (patch, second)))
    ]
    unjoined = [
        network_connect(f"{{U{i}}}", dst_ip, event_data={"Image": image, "SourceHostname": source_host}, **host)
        for i, (image, source_host, dst_ip) in enumerate(recipe_sample_output("sysmon_network_connect"))
    ]
    joined = []
    for i, row in enumerate(recipe_sample_output("sysmon_join")):
        time, source_host, dst_ip, command_line, *rest = row
        # values the recipe's terminal cut off: any will do
        parent_command_line, user = [*rest, *["C:\\Windows\\system32\\svchost.exe", "MSEDGEWIN10\\IEUser"][len(rest) :]]
        guid = f"{{J{i}}}"
        joined += [
            process_create(guid, command_line, event_data={"ParentCommandLine": parent_command_line}, **host),
            network_connect(
                guid, dst_ip, utc_time=f"{time}.000", event_data={"SourceHostname": source_host, "User": user}, **host
            ),
        ]
    late = [process_create("{LATE}", "late.exe", computer="LATEHOST")] + [
        network_connect("{LATE}", f"10.9.9.{i}", utc_time="2019-02-13 09:00:00.000", computer="LATEHOST")
        for i in range(10)
    ]
    return creates + unjoined + joined + late


@pytest.fixture(scope="module")
def recipe_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    lake = Lake(tmp_path_factory.mktemp("recipe"))
    lake.land(recipe_events())
    lake.batch()
    return lake


def rendered(rows: list[tuple]) -> list[str]:
    """Rows as the KSQL CLI prints them: values separated by ' | '."""
    return [" | ".join("" if value is None else str(value) for value in row) for row in rows]


@pytest.mark.parametrize(
    "table", ["winlogbeat_stream", "sysmon_process_create", "sysmon_network_connect", "sysmon_join"]
)
def test_each_sample_shows_the_rows_the_recipe_prints_in_arrival_order(recipe_lake: Lake, table: str) -> None:
    """The recipe's printed rows arrive first; the join sample must not put the late host's earlier events
    before them (ordering by time did) nor cut them off with a LIMIT."""
    printed = [" | ".join(row) for row in recipe_sample_output(table)]
    with connect(recipe_lake.settings) as con:
        rows = rendered(con.sql((ROOT / "sql" / "queries" / f"{table}_sample.sql").read_text()).fetchall())
    if table == "sysmon_join":
        assert len(rows) == recipe_lake.count("sysmon_join") == len(printed) + 10
        # the recipe's terminal cut long rows off: each printed row is the start of ours
        assert [row[: len(line)] for row, line in zip(rows, printed, strict=False)] == printed
    else:
        assert rows == printed


def query_command(lake: Lake, *args: str) -> str:
    """Standard output of ``python -m sysmon_assets.query ARGS`` with the lake's settings in the environment."""
    env = {**os.environ, "SYSMON_DATA_DIR": str(lake.data), "SYSMON_LANDING_DIR": str(lake.landing)}
    return subprocess.run(
        [sys.executable, "-m", "sysmon_assets.query", *args],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
        text=True,
    ).stdout


def test_there_is_one_query_per_sampled_recipe_step() -> None:
    assert [q.stem for q in QUERIES] == [
        "sysmon_join_sample",
        "sysmon_network_connect_sample",
        "sysmon_process_create_sample",
        "winlogbeat_stream_sample",
    ]


@pytest.mark.parametrize("query", QUERIES, ids=lambda q: q.stem)
def test_sample_queries_run_and_return_rows(sample_lake: Lake, query: Path) -> None:
    with connect(sample_lake.settings) as con:
        rows = con.sql(query.read_text()).fetchall()
    assert rows
    assert all(any(value is not None for value in row) for row in rows)


def test_the_join_sample_has_the_recipe_output_columns(sample_lake: Lake) -> None:
    with connect(sample_lake.settings) as con:
        relation = con.sql((ROOT / "sql/queries/sysmon_join_sample.sql").read_text())
        assert relation.columns == [
            "event_time",
            "src_host_name",
            "dst_ip_addr",
            "process_command_line",
            "parent_process_command_line",
            "user_account",
        ]


def test_the_query_command_prints_a_table(sample_lake: Lake) -> None:
    output = query_command(sample_lake, "sql/queries/sysmon_join_sample.sql")
    assert "process_command_line" in output and "rows" in output


def test_the_query_command_prints_a_table_to_an_output_that_is_not_utf8(sample_lake: Lake) -> None:
    """A probe's finding: with ``PYTHONIOENCODING=ascii`` (or a legacy locale) the table's frame was a traceback."""
    env = {**os.environ, "SYSMON_DATA_DIR": str(sample_lake.data), "PYTHONIOENCODING": "ascii"}
    command = [sys.executable, "-m", "sysmon_assets.query", "SELECT 'caf\u00e9' AS drink"]
    printed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, check=True).stdout.decode("ascii")
    assert "drink" in printed and "caf?" in printed


def test_the_query_command_shows_as_many_rows_as_asked(sample_lake: Lake) -> None:
    assert "(20 shown)" in query_command(sample_lake, "SELECT * FROM range(50)")
    shown = query_command(sample_lake, "--max-rows", "50", "SELECT range AS n FROM range(50)")
    assert "shown" not in shown and [line.strip("│ ") for line in shown.splitlines()][4:54] == list(map(str, range(50)))


def test_the_query_command_prints_json_rows(sample_lake: Lake) -> None:
    sql = "SELECT process_guid, count(*) AS n FROM sysmon_join GROUP BY ALL ORDER BY ALL"
    expected = sample_lake.rows(sql)
    assert expected
    assert json.loads(query_command(sample_lake, "--json", sql)) == [list(row) for row in expected]


def test_the_query_command_prints_the_rows_of_each_statement_in_turn(sample_lake: Lake) -> None:
    sql = (
        "SET threads = 1; SELECT 1 AS first_result; -- a PIVOT is two statements to DuckDB\n"
        "PIVOT (SELECT 'tcp' AS protocol) ON protocol USING count(*); SELECT current_setting('threads') AS second"
    )
    lines = query_command(sample_lake, "--json", sql).splitlines()
    assert [json.loads(line) for line in lines] == [[[1]], [[1]], [[1]]]
    table = query_command(sample_lake, sql)
    assert 0 < table.index("first_result") < table.index("second")


def test_the_query_command_runs_nothing_when_a_statement_does_not_parse(sample_lake: Lake) -> None:
    env = {**os.environ, "SYSMON_DATA_DIR": str(sample_lake.data)}
    command = [sys.executable, "-m", "sysmon_assets.query", "--json", "SELECT 1 AS a; SELECT 'unterminated"]
    failed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    assert (failed.returncode, failed.stdout) == (1, "")  # the first statement's rows are not printed: not run
    assert failed.stderr.startswith("query failed: Parser Error"), failed.stderr


def test_the_query_command_reads_a_sql_file_with_a_byte_order_mark_and_non_ascii_text(
    sample_lake: Lake, tmp_path: Path
) -> None:
    query = tmp_path / "für.sql"
    query.write_text("\ufeff-- Müller\nSELECT 'é' AS a;\nSELECT 'ü;' AS b;\n", encoding="utf-8")
    lines = query_command(sample_lake, "--json", str(query)).splitlines()
    assert [json.loads(line) for line in lines] == [[["é"]], [["ü;"]]]


def test_the_query_command_refuses_text_duckdb_would_read_only_in_part(sample_lake: Lake, tmp_path: Path) -> None:
    with_nul = tmp_path / "nul.sql"  # an argument cannot hold one
    with_nul.write_bytes(b"SELECT 1 AS a \x00; SELECT 2 AS b")  # DuckDB reads up to the NUL
    env = {**os.environ, "SYSMON_DATA_DIR": str(sample_lake.data)}
    for sql, reason in (
        (bytes(with_nul), "the SQL holds a NUL character"),
        (b"SELECT '\xff' AS a", "the SQL is not UTF-8 text"),
    ):
        command = [sys.executable.encode(), b"-m", b"sysmon_assets.query", b"--json", sql]
        failed = subprocess.run(command, cwd=ROOT, env=env, capture_output=True)
        assert (failed.returncode, failed.stdout) == (1, b""), failed.stderr
        assert failed.stderr.decode().startswith(f"query failed: {reason}"), failed.stderr


def test_a_sql_file_s_line_ends_are_read_as_they_are(sample_lake: Lake, tmp_path: Path) -> None:
    query = tmp_path / "line_ends.sql"
    query.write_bytes(b"SELECT 'a\rb\r\nc' AS text\r\n")
    assert json.loads(query_command(sample_lake, "--json", str(query))) == [["a\rb\r\nc"]]


def test_the_query_command_prints_strict_json_for_values_json_has_no_literal_for(sample_lake: Lake) -> None:
    sql = (
        "SELECT 'nan'::DOUBLE, '-inf'::DOUBLE, MAP([DATE '2026-11-30'], [1]), '\\x00AB'::BLOB, [1.5, 'inf'::DOUBLE], "
        "MAP([true, false], [1, 0]), MAP(['nan'::DOUBLE, 'inf'::DOUBLE, '-inf'::DOUBLE, 1.5], [1, 2, 3, 4])"
    )
    strict = json.loads(query_command(sample_lake, "--json", sql), parse_constant=lambda name: pytest.fail(name))
    # a MAP's NaN and infinite keys as DuckDB writes them (as null, three keys were one)
    doubles = {"nan": 1, "inf": 2, "-inf": 3, "1.5": 4}
    assert strict == [[None, None, {"2026-11-30": 1}, "\\x00AB", [1.5, None], {"true": 1, "false": 0}, doubles]]


def test_the_query_command_prints_a_blob_as_duckdb_does_one_text_per_blob(sample_lake: Lake) -> None:
    """The byte 0xFF and the four characters backslash, x, F, F are two BLOBs: their texts differ, as DuckDB's do."""
    sql = "SELECT '\\xFF'::BLOB, '\\x5CxFF'::BLOB, 'a''b\"c'::BLOB"
    printed = json.loads(query_command(sample_lake, "--json", sql))
    assert printed == [["\\xFF", "\\x5CxFF", "a\\x27b\\x22c"]]
    assert printed == [
        list(sample_lake.rows(f"SELECT {', '.join(f'CAST(#{i} AS VARCHAR)' for i in (1, 2, 3))} FROM ({sql})")[0])
    ]


def test_the_query_command_refuses_a_sql_file_it_cannot_read_and_a_negative_row_count(
    sample_lake: Lake, tmp_path: Path
) -> None:
    env = {**os.environ, "SYSMON_DATA_DIR": str(sample_lake.data), "SYSMON_LANDING_DIR": str(sample_lake.landing)}
    latin1 = tmp_path / "caf\u00e9.sql"
    latin1.write_bytes("SELECT 'caf\u00e9'".encode("latin-1"))
    for args, expected in (
        ([str(latin1)], f"query failed: cannot read the SQL file {latin1} (UTF-8 text expected): "),
        (["--max-rows", "-1", "SELECT 1"], "argument --max-rows: invalid row count value: '-1'"),
        (["--max-width", "-5", "SELECT 1"], "argument --max-width: invalid character count value: '-5'"),
    ):
        failed = subprocess.run(
            [sys.executable, "-m", "sysmon_assets.query", *args], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert failed.returncode in (1, 2) and "Traceback" not in failed.stderr, failed.stderr
        assert expected in failed.stderr


def test_the_query_command_prints_infinite_dates_and_timestamps_as_duckdb_writes_them(sample_lake: Lake) -> None:
    """DuckDB's ``infinity`` reaches Python as the latest date or time it holds: printed, it read as that time."""
    sql = (
        "SELECT 'infinity'::TIMESTAMP, '-infinity'::DATE, TIMESTAMP '2026-01-01 00:00:00', DATE '9999-12-31', "
        "'-infinity'::TIMESTAMPTZ IS NOT NULL, 'infinity'::TIMESTAMP_NS, ['infinity'::TIMESTAMP] FROM range(2)"
    )
    # inside a list it is still the latest time Python holds (docs/storage.md says so)
    row = [
        "infinity",
        "-infinity",
        "2026-01-01 00:00:00",
        "9999-12-31",
        True,
        "infinity",
        ["9999-12-31 23:59:59.999999"],
    ]
    assert json.loads(query_command(sample_lake, "--json", sql)) == [row, row]


def test_a_query_that_fails_as_its_rows_are_read_is_reported_without_a_traceback(sample_lake: Lake) -> None:
    env = {**os.environ, "SYSMON_DATA_DIR": str(sample_lake.data), "SYSMON_LANDING_DIR": str(sample_lake.landing)}
    for args in (["--json"], []):
        failed = subprocess.run(
            [
                sys.executable,
                "-m",
                "sysmon_assets.query",
                *args,
                "SELECT CAST(process_guid AS INTEGER) FROM sysmon_join",
            ],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
        )
        assert failed.returncode == 1
        assert failed.stderr.startswith("query failed: Conversion Error") and "Traceback" not in failed.stderr


def test_a_syntax_error_names_its_line_in_the_whole_sql_file(sample_lake: Lake, tmp_path: Path) -> None:
    """A probe's finding: each statement was parsed alone, so the line counted from the semicolon before it."""
    report = tmp_path / "report.sql"
    report.write_text("-- report\nselect 1;\nselect 2;\nselect src_host_name,, dst_ip_addr from sysmon_join;\n")
    env = {**os.environ, "SYSMON_DATA_DIR": str(sample_lake.data), "SYSMON_LANDING_DIR": str(sample_lake.landing)}
    failed = subprocess.run(
        [sys.executable, "-m", "sysmon_assets.query", str(report)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert failed.returncode == 1 and "LINE 4: select src_host_name,, dst_ip_addr" in failed.stderr, failed.stderr


def test_a_sql_file_named_in_upper_case_is_read_as_a_file(sample_lake: Lake, tmp_path: Path) -> None:
    (tmp_path / "Q.SQL").write_text("SELECT 42")
    assert json.loads(query_command(sample_lake, "--json", str(tmp_path / "Q.SQL"))) == [[42]]


def test_an_error_reading_files_names_the_lakes_data_only_when_it_read_the_lakes_files(
    sample_lake: Lake, tmp_path: Path
) -> None:
    """A probe's finding: the user's own missing file was reported as if in the lake's data."""
    copy = tmp_path / "copy"
    shutil.copytree(sample_lake.data, copy / "data")  # the default lake opens from where it is copied to
    env = {**os.environ, "SYSMON_DATA_DIR": str(copy / "data"), "SYSMON_LANDING_DIR": str(sample_lake.landing)}
    next((copy / "data").rglob("main/sysmon_join/*.parquet")).unlink()
    failures = [
        subprocess.run(
            [sys.executable, "-m", "sysmon_assets.query", sql], cwd=ROOT, env=env, capture_output=True, text=True
        )
        for sql in ("SELECT count(*) FROM sysmon_join", f"SELECT * FROM read_csv('{tmp_path / 'missing.csv'}')")
    ]
    assert [failed.returncode for failed in failures] == [1, 1]
    lake_data = f"(the lake's data: {copy / 'data' / 'lake_files'}/)"
    assert lake_data in failures[0].stderr, failures[0].stderr
    assert "the lake's data" not in failures[1].stderr and "missing.csv" in failures[1].stderr


def test_a_bad_setting_is_reported_without_a_traceback(sample_lake: Lake) -> None:
    env = {**os.environ, "SYSMON_DATA_DIR": str(sample_lake.data), "SYSMON_JOIN_GRACE_MINUTES": "nan"}
    failed = subprocess.run(
        [sys.executable, "-m", "sysmon_assets.query", "--json", "SELECT 1"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert failed.returncode == 1
    assert (
        failed.stderr.startswith("query failed: SYSMON_JOIN_GRACE_MINUTES='nan'") and "Traceback" not in failed.stderr
    )


def test_a_sql_file_that_does_not_exist_is_named_in_the_error(sample_lake: Lake) -> None:
    env = {**os.environ, "SYSMON_DATA_DIR": str(sample_lake.data), "SYSMON_LANDING_DIR": str(sample_lake.landing)}
    missing = "sql/queries/no_such_query.sql"
    failed = subprocess.run(
        [sys.executable, "-m", "sysmon_assets.query", missing], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert (failed.returncode, failed.stderr.strip()) == (1, f"query failed: no SQL file {missing}")


def test_the_query_command_refuses_sql_that_would_change_the_lake(lake: Lake) -> None:
    lines = (ROOT / "sample_data" / "winlogbeat-sample.ndjson").read_bytes().splitlines(keepends=True)
    for part in (lines[: len(lines) // 2], lines[len(lines) // 2 :]):  # two batches: files to merge
        (lake.landing / f"part-{len(list(lake.landing.iterdir()))}.ndjson").write_bytes(b"".join(part))
        lake.batch()
    with open_lake(lake.settings) as con:  # files scheduled for deletion, as maintenance leaves them before cleanup
        con.execute("CALL ducklake_merge_adjacent_files('lake')")
        snapshots = con.execute(
            "SELECT list(snapshot_id) FROM ducklake_snapshots('lake') WHERE snapshot_id < ?",
            [last_complete_batch(con)[1]],
        ).fetchone()[0]
        con.execute("CALL ducklake_expire_snapshots('lake', versions => ?)", [snapshots])
    on_disk = sorted(lake.data.rglob("*.parquet"))
    written = max(path.stat().st_mtime for path in on_disk)
    env = {**os.environ, "SYSMON_DATA_DIR": str(lake.data), "SYSMON_LANDING_DIR": str(lake.landing)}
    for sql, refused in (
        ("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)", "ducklake_cleanup_old_files is refused"),
        ("CALL ducklake_cleanup_old_files/**/('lake', cleanup_all => true)", "ducklake_cleanup_old_files is refused"),
        ("SELECT * FROM ducklake_merge_adjacent_files('lake')", "ducklake_merge_adjacent_files is refused"),
        ("SELECT * FROM query('CALL ducklake_cleanup_old_files(''lake'', cleanup_all => true)')", "query is refused"),
        ("CHECKPOINT lake", "CHECKPOINT is refused"),
        (f"ATTACH 'ducklake:sqlite:{lake.data / 'lake.sqlite'}' AS writable", "ATTACH is refused"),
        (f"COPY (SELECT 1 AS x) TO '{on_disk[0]}' (FORMAT parquet)", "COPY is refused"),
        (f"EXPLAIN ANALYZE COPY (SELECT 1 AS x) TO '{on_disk[0]}' (FORMAT parquet)", "COPY is refused"),
        (
            f"SET profiling_output = '{on_disk[0]}'; PRAGMA enable_profiling = 'json'; SELECT 1",
            "setting profiling_output",
        ),
    ):
        failed = subprocess.run(
            [sys.executable, "-m", "sysmon_assets.query", sql], cwd=ROOT, env=env, capture_output=True, text=True
        )
        assert (failed.returncode, failed.stderr.startswith(f"query failed: {refused}")) == (1, True), failed.stderr
    assert sorted(lake.data.rglob("*.parquet")) == on_disk and all(path.stat().st_mtime <= written for path in on_disk)
    # a function named in text or as a column, not called, is no refusal; nor is the type a PIVOT creates
    mentions = "SELECT 'ducklake_expire_snapshots' AS query -- not ducklake_set_option"
    assert json.loads(query_command(lake, "--json", mentions)) == [["ducklake_expire_snapshots"]]
    pivot = "PIVOT (SELECT network_protocol FROM sysmon_join) ON network_protocol USING count(*)"
    assert json.loads(query_command(lake, "--json", pivot)) == [[173]]
    assert json.loads(query_command(lake, "--json", "SELECT count(*) > 0 FROM ducklake_snapshots('lake')")) == [[True]]


def test_the_query_command_prints_intervals_as_duckdb_writes_them(sample_lake: Lake) -> None:
    sql = (
        "SELECT INTERVAL 1 MONTH + INTERVAL 90 MINUTE AS waited, 2 AS waited, "
        "[INTERVAL 3 DAY] AS spans, {'gap': INTERVAL 2 HOUR, 'ratio': 'nan'::DOUBLE} AS detail, "
        "CAST(NULL AS INTERVAL[]) AS none"
    )
    rows = json.loads(query_command(sample_lake, "--json", sql), parse_constant=lambda name: pytest.fail(name))
    assert rows == [["1 month 01:30:00", 2, ["3 days"], {"gap": "02:00:00", "ratio": None}, None]]


@pytest.mark.parametrize(("output", "start"), [(["--json"], b"["), (["--max-rows", "1000000"], b"\xe2")])
def test_output_into_a_pipe_closed_early_ends_without_a_traceback(
    sample_lake: Lake, output: list[str], start: bytes
) -> None:
    env = {**os.environ, "SYSMON_DATA_DIR": str(sample_lake.data), "SYSMON_LANDING_DIR": str(sample_lake.landing)}
    command = [sys.executable, "-m", "sysmon_assets.query", *output, "SELECT * FROM range(1000000)"]
    reader = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout is not None and reader.stderr is not None
    assert reader.stdout.read(1) == start  # as `| head -c 1` does: read the start, then close the pipe
    reader.stdout.close()
    stderr = reader.stderr.read().decode()
    assert reader.wait(timeout=60) == 1
    assert stderr == ""


def test_a_spill_that_finds_its_disk_full_names_the_temporary_folder(sample_lake: Lake, small_disk: Path) -> None:
    """A probe's finding: DuckDB reports it as "Out of Memory" and suggests more memory."""
    env = {
        **os.environ,
        "SYSMON_DATA_DIR": str(sample_lake.data),
        "SYSMON_LANDING_DIR": str(sample_lake.landing),
        "SYSMON_DUCKDB_MEMORY_LIMIT": "100MB",
        "TMPDIR": str(small_disk),
    }
    strings = "SELECT i::VARCHAR || repeat('x', 40) AS x FROM range(3000000) t(i)"
    sort = f"SELECT count(*), sum(hash(x)) FROM ({strings} ORDER BY x)"  # 150 MB and more to spill
    failed = subprocess.run(
        [sys.executable, "-m", "sysmon_assets.query", sort], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert failed.returncode == 1
    assert failed.stderr.startswith("query failed: Out of Memory Error")
    assert f"this reader spills under the temporary folder {small_disk}, TMPDIR: its disk may be full" in failed.stderr
