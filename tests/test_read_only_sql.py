"""What the query command refuses (sysmon_assets/read_only_sql.py): the command's own test runs some of these
against a lake and checks that no file changed (tests/sql/test_queries.py)."""

from __future__ import annotations

import pytest

from sysmon_assets.read_only_sql import refusal, statement_texts


@pytest.mark.parametrize(
    ("sql", "refused"),
    [
        ("CALL ducklake_cleanup_old_files('lake', cleanup_all => true)", "ducklake_cleanup_old_files is refused"),
        ("CALL ducklake_cleanup_old_files/**/('lake')", "ducklake_cleanup_old_files is refused"),
        ("SELECT * FROM \"DuckLake_Expire_Snapshots\"('lake')", "ducklake_expire_snapshots is refused"),
        ("SELECT * FROM lake.ducklake_merge_adjacent_files('lake')", "ducklake_merge_adjacent_files is refused"),
        ("SELECT * FROM query('SELECT 1')", "query is refused"),
        ("CHECKPOINT lake", "CHECKPOINT is refused"),
        ("FORCE CHECKPOINT", "CHECKPOINT is refused"),
        ("ATTACH 'lake.sqlite' AS writable", "ATTACH is refused"),
        ("COPY (SELECT 1) TO 'out.parquet'", "COPY is refused"),
        ("EXPLAIN ANALYZE COPY (SELECT 1) TO 'out.parquet'", "COPY is refused"),
        ("SELECT 1; COPY (SELECT 1) TO 'out.csv'", "COPY is refused"),
        ("SELECT 1; PIVOT sysmon_join ON network_protocol USING count(*); COPY (SELECT 1) TO 'x'", "COPY is refused"),
        # DuckDB's tokenizer counts UTF-8 bytes: a name after a non-ASCII character is still found
        ("SELECT 'é' AS a, * FROM ducklake_cleanup_old_files('lake') -- xx", "ducklake_cleanup_old_files is refused"),
        ("SELECT 'Müller;' AS a; COPY (SELECT 1) TO 'x'", "COPY is refused"),
        ("CALL checkpoint()", "checkpoint is refused"),  # a keyword to the tokenizer, a function here
        ("SELECT * FROM force_checkpoint()", "force_checkpoint is refused"),
        ("SET \"temp_directory\" = '/tmp/x'", "setting temp_directory is refused"),
        ("SET SESSION \"Profiling_Output\" = 'x.json'", "setting Profiling_Output is refused"),
        ("EXPLAIN (ANALYZE) COPY (SELECT 1) TO 'x.csv'", "COPY is refused"),
        ("EXPLAIN (ANALYZE, FORMAT json) COPY (SELECT 1) TO 'x.csv'", "COPY is refused"),
        # comments anywhere DuckDB allows them
        ("-- flush\nCHECKPOINT", "CHECKPOINT is refused"),
        ("SELECT 1; /* then */ FORCE CHECKPOINT lake", "CHECKPOINT is refused"),
        ("-- x\nEXPLAIN ANALYZE COPY (SELECT 42) TO 'x.csv'", "COPY is refused"),
        ("EXPLAIN /* x */ (ANALYZE) COPY (SELECT 1) TO 'x.csv'", "COPY is refused"),
        ("EXPLAIN (ANALYZE, FORMAT /*) SELECT 1 -- */ json) COPY (SELECT 42) TO 'x.csv'", "COPY is refused"),
        ("EXPLAIN (SELECT 1) UNION (SELECT 2); EXPLAIN (ANALYZE) COPY (SELECT 1) TO 'x.csv'", "COPY is refused"),
        ("-- scratch\nSET temp_directory = '/tmp/x'", "setting temp_directory is refused"),
        ("SET /* x */ temp_directory = '/tmp/x'", "setting temp_directory is refused"),
        ("SET--x\nGLOBAL/**/profiling_output = 'x.json'", "setting profiling_output is refused"),
        ("PRAGMA /**/ profiling_output = 'x.json'", "setting profiling_output is refused"),
        ("CALL enable_logging(storage = 'file', storage_path = '/tmp/x')", "enable_logging is refused"),
        # a refused statement before one DuckDB cannot parse
        ("COPY (SELECT 42) TO 'x.csv'; SELECT 'unterminated", "COPY is refused"),
        ("CREATE TEMP TABLE t AS SELECT 1", "CREATE is refused"),
        ("SET profiling_output = 'x.json'", "setting profiling_output is refused"),
        ("PRAGMA log_query_path = 'x.log'", "setting log_query_path is refused"),
        ("SET GLOBAL temp_directory = '/tmp/x'", "setting temp_directory is refused"),
    ],
)
def test_sql_that_would_change_the_lake_or_write_a_file_is_refused(sql: str, refused: str) -> None:
    assert (refusal(sql) or "").startswith(refused)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM sysmon_join",
        "WITH j AS (SELECT * FROM sysmon_join) SELECT count(*) FROM j",
        "FROM sysmon_join SELECT process_guid",
        "SUMMARIZE sysmon_join",
        "DESCRIBE sysmon_join",
        "SHOW TABLES",
        "EXPLAIN ANALYZE SELECT 1",
        "PIVOT sysmon_join ON network_protocol USING count(*)",
        "SELECT 1; PIVOT sysmon_join ON network_protocol USING count(*); SELECT ';' -- ;",
        "SELECT * FROM ducklake_snapshots('lake')",
        "CALL ducklake_snapshots('lake')",
        "SET TimeZone = 'UTC'; SELECT 1",
        "USE memory",
        "SELECT 'ducklake_cleanup_old_files' AS query -- checkpoint",
        "SELECT query FROM (SELECT 1 AS query)",
        "selec 1",  # not SQL: running it reports why
        "EXPLAIN (ANALYZE) SELECT 1",
        "EXPLAIN (ANALYZE) (SELECT 1)",
        "-- why\nEXPLAIN ANALYZE SELECT 1",
        'SET GLOBAL "a""b" = 1',
        "USE temp_directory",  # a database so named: USE is a SET statement to DuckDB
        "EXPLAIN (FORMAT json) SELECT ')'",
        "EXPLAIN (SELECT 1) UNION (SELECT 2)",  # a parenthesised query, not options
        "EXPLAIN ANALYZE (FROM sysmon_join) EXCEPT (FROM sysmon_join)",
        "",
        "-- only a comment",
    ],
)
def test_reading_sql_is_not_refused(sql: str) -> None:
    assert refusal(sql) is None


@pytest.mark.parametrize(
    ("sql", "statements"),
    [
        ("SELECT 1", ["SELECT 1"]),
        (";; SELECT 1 ;; -- the end", [" SELECT 1 "]),
        ("SELECT ';'; SELECT $$;$$ /* ; */", ["SELECT ';'", " SELECT $$;$$ /* ; */"]),
        ('SELECT 1 AS ";"; PIVOT t ON a USING count(*)', ['SELECT 1 AS ";"', " PIVOT t ON a USING count(*)"]),
        ("-- only a comment; still a comment", []),
        ("SELECT 'é;' AS a; SELECT 'Müller' -- für", ["SELECT 'é;' AS a", " SELECT 'Müller' -- für"]),
        ("\ufeffSELECT 1;\n", ["\ufeffSELECT 1"]),
        # each statement keeps its line: newlines before it stand for the lines above, so errors name the line
        ("-- a\nSELECT 1; SELECT 2;\n\nSELECT 3", ["-- a\nSELECT 1", "\n SELECT 2", "\n\n\nSELECT 3"]),
    ],
)
def test_sql_is_cut_into_statements_at_semicolons_outside_strings_and_comments(sql: str, statements: list[str]) -> None:
    assert statement_texts(sql) == statements


def test_a_refused_statement_is_named_and_only_copy_is_pointed_to_json() -> None:
    assert refusal("DELETE FROM sysmon_join") == "DELETE is refused: this command only reads"
    assert refusal("COPY sysmon_join TO 'x.csv'") == "COPY is refused: this command only reads (--json prints the rows)"
