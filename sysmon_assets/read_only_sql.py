"""What ``python -m sysmon_assets.query`` refuses to run: SQL that would change the lake or write a file by mistake.

A guard against mistakes, not a sandbox: DuckDB's SQL reaches the file system in more ways than it knows.
"""

from __future__ import annotations

import itertools
import re

import duckdb

# Functions that change the lake (its files or its catalog): DuckLake's maintenance, which the lake_maintenance job
# runs (on a lake attached read-only, DuckLake 0.3's ducklake_cleanup_old_files still deletes the files scheduled for
# deletion, then fails), and a checkpoint (DuckLake's writes files before it fails); and those that run SQL held in
# a string, which the command could not check. Refused where called, not where a column is so named.
DUCKLAKE_MAINTENANCE = (
    "add_data_files cleanup_old_files delete_orphaned_files expire_snapshots flush_inlined_data merge_adjacent_files "
    "rewrite_data_files set_commit_message set_option"
)
REFUSED_FUNCTIONS = frozenset(
    [f"ducklake_{name}" for name in DUCKLAKE_MAINTENANCE.split()]
    + ["checkpoint", "force_checkpoint", "query", "query_table"]
)
# The statements the command runs: those that read (SET and CALL included: USE, ducklake_snapshots()); COPY ... TO
# could write over the lake's own files, and ATTACH attach the lake again for writing.
READING_STATEMENTS = frozenset(
    {
        duckdb.StatementType.SELECT,
        duckdb.StatementType.EXPLAIN,
        duckdb.StatementType.PRAGMA,
        duckdb.StatementType.SET,
        duckdb.StatementType.CALL,
    }
)
# Settings that name files DuckDB writes (or open the file system to it): SET or PRAGMA of one is refused.
FILE_SETTINGS = frozenset(
    {
        "allowed_directories",
        "allowed_paths",
        "enable_external_access",
        "extension_directory",
        "home_directory",
        "log_query_path",
        "profile_output",
        "profiling_output",
        "secret_directory",
        "temp_directory",
    }
)
SETTING = re.compile(
    r'\s*(?:SET|RESET|PRAGMA)\s+(?:(?:GLOBAL|SESSION|LOCAL)\s+)?(?:"((?:[^"]|"")*)"|([A-Za-z_]\w*))', re.IGNORECASE
)
CHECKPOINT = re.compile(r"\s*(?:FORCE\s+)?CHECKPOINT\b", re.IGNORECASE)
# EXPLAIN, ANALYZE and options in parentheses (FORMAT json, ANALYZE), before the statement explained
EXPLAINED = re.compile(
    r"""\s*EXPLAIN\b\s*(?:ANALY[SZ]E\b\s*)?(?:\((?:[^()'"]|'[^']*'|"[^"]*")*\)\s*)?""", re.IGNORECASE
)
IDENTIFIER = re.compile(r'"((?:[^"]|"")*)"|[^\W\d]\w*')


def tokens(sql: str) -> list[tuple[int, duckdb.token_type]]:
    """DuckDB's tokens of ``sql`` (comments are none), each at its character position: DuckDB counts UTF-8 bytes."""
    found = duckdb.tokenize(sql)
    if sql.isascii():
        return found
    encoded, at_byte, at_character, placed = sql.encode(), 0, 0, []
    for position, kind in found:  # in order: each stretch between two tokens is decoded once
        at_character += len(encoded[at_byte:position].decode())
        at_byte = position
        placed.append((at_character, kind))
    return placed


def statement_texts(sql: str) -> list[str]:
    """``sql``'s statements, cut at the semicolons DuckDB's tokenizer finds outside strings and comments; a piece
    with no token (only a comment, or nothing) is no statement. As text, not ``duckdb.extract_statements``: that
    gives the statements DuckDB expands a PIVOT into without their text (which ``con.sql`` then cannot run)."""
    cuts = [position for position, kind in tokens(sql) if kind == duckdb.token_type.operator and sql[position] == ";"]
    pieces = [sql[start:end] for start, end in zip([0] + [cut + 1 for cut in cuts], [*cuts, len(sql)], strict=True)]
    return [piece for piece in pieces if duckdb.tokenize(piece)]


def refusal(sql: str) -> str | None:
    """Why the query command does not run ``sql``, which would change the lake or write a file, or None. Each
    statement is checked that DuckDB can parse (the command runs none when one does not parse)."""
    try:
        texts = statement_texts(sql)
    except duckdb.Error:
        return None  # not SQL DuckDB reads: the command reports why, and runs nothing
    for text in texts:
        try:  # statement by statement: of a PIVOT after another statement, DuckDB 1.4's Statement.query fails
            statements = duckdb.extract_statements(text)
        except duckdb.Error:
            continue  # not SQL DuckDB reads: the command reports why, and runs nothing
        if refused := next(filter(None, map(_statement_refusal, statements)), None):
            return refused
    for (position, kind), (following, _) in itertools.pairwise([*tokens(sql), (len(sql), None)]):
        # a name DuckDB also has as a keyword (checkpoint) is a keyword token
        named = kind in (duckdb.token_type.identifier, duckdb.token_type.keyword)
        found = IDENTIFIER.match(sql, position) if named else None
        name = found and (found.group(1) or found.group(0)).replace('""', '"').lower()
        if name in REFUSED_FUNCTIONS and sql.startswith("(", following):  # called, not a column so named
            return f"{name} is refused: it changes the lake or runs SQL this command cannot check"
    return None


def _statement_refusal(statement: duckdb.Statement) -> str | None:
    """Why one statement is refused: it does not read, explains (and so may run) one that does not, or sets a
    setting that names a file; or None."""
    text = statement.query
    if statement.type == duckdb.StatementType.CREATE and not text:
        return None  # the ENUM type DuckDB creates for a PIVOT without IN, which has no text of its own
    if statement.type not in READING_STATEMENTS:
        return f"{statement.type.name.replace('_', ' ')} is refused: this command only reads (--json prints the rows)"
    if statement.type == duckdb.StatementType.EXPLAIN and (explained := EXPLAINED.match(text)):
        try:
            inner = duckdb.extract_statements(text[explained.end() :])
        except duckdb.Error:  # EXPLAIN ANALYZE runs what it explains: what cannot be read is not run
            return "EXPLAIN is refused: the statement it explains could not be read apart from it"
        return next((refused for refused in map(_statement_refusal, inner) if refused), None)
    if statement.type == duckdb.StatementType.CALL and CHECKPOINT.match(text):
        return "CHECKPOINT is refused: it changes the lake"
    setting = SETTING.match(text) if statement.type == duckdb.StatementType.SET else None
    name = setting and (setting.group(2) or setting.group(1).replace('""', '"'))
    if name and name.lower() in FILE_SETTINGS:
        return f"setting {name} is refused: it names a file DuckDB would write"
    return None
