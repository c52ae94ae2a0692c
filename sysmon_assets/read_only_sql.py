"""What ``python -m sysmon_assets.query`` refuses to run: SQL that would change the lake or write a file by mistake.

A guard against mistakes, not a sandbox: DuckDB's SQL reaches the file system in more ways than it knows.
"""

from __future__ import annotations

import itertools
import re
from typing import NamedTuple

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
    + ["checkpoint", "force_checkpoint", "query", "query_table", "enable_logging"]
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
IDENTIFIER = re.compile(r'"((?:[^"]|"")*)"|[^\W\d]\w*')
# Tokens that are a keyword or a name (a name DuckDB also has as a keyword, such as checkpoint, is a keyword token).
NAMED = (duckdb.token_type.identifier, duckdb.token_type.keyword)
SETTING_SCOPES = ("GLOBAL", "SESSION", "LOCAL")


class Word(NamedTuple):
    """A token of a statement: where it starts, its text (a quoted name unquoted) and whether it was quoted."""

    position: int
    text: str
    quoted: bool = False

    def is_(self, *keywords: str) -> bool:
        """Whether this is one of ``keywords`` (upper case), as a keyword, not a quoted name."""
        return not self.quoted and self.text.upper() in keywords


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
    gives the statements DuckDB expands a PIVOT into without their text (which ``con.sql`` then cannot run). Each
    piece is preceded by as many newlines as there are lines before it, so an error names its line in ``sql``."""
    cuts = [position for position, kind in tokens(sql) if kind == duckdb.token_type.operator and sql[position] == ";"]
    starts = [0] + [cut + 1 for cut in cuts]
    pieces = [
        "\n" * sql.count("\n", 0, start) + sql[start:end] for start, end in zip(starts, [*cuts, len(sql)], strict=True)
    ]
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
    for word, following in itertools.pairwise([*words(sql), Word(len(sql), "")]):
        name = word.text.lower()
        if name in REFUSED_FUNCTIONS and following.text == "(":  # called, not a column so named
            return f"{name} is refused: it changes the lake or runs SQL this command cannot check"
    return None


def words(sql: str) -> list[Word]:
    """``sql``'s tokens as words (comments are none): a keyword or a name as written, a quoted name unquoted; any
    other token its first character (a string its quote)."""
    found = []
    for position, kind in tokens(sql):
        name = IDENTIFIER.match(sql, position) if kind in NAMED else None
        if name and name.group(1) is not None:
            found.append(Word(position, name.group(1).replace('""', '"'), quoted=True))
        else:
            found.append(Word(position, name.group(0) if name else sql[position]))
    return found


def _explained(text: str) -> list[str]:
    """What an EXPLAIN statement may explain: what follows EXPLAIN and ANALYZE, and if that opens with a
    parenthesis, also what follows the parenthesised block (options, or a parenthesised query such as
    ``(SELECT 1) UNION (SELECT 2)``: the words alone do not tell which)."""
    listed, at = words(text), 1
    if at < len(listed) and listed[at].is_("ANALYZE", "ANALYSE"):
        at += 1
    if at >= len(listed):
        return [""]
    candidates = [text[listed[at].position :]]
    if listed[at].text == "(" and not listed[at].quoted:
        depth = 1
        while depth and (at := at + 1) < len(listed):
            depth += 0 if listed[at].quoted else {"(": 1, ")": -1}.get(listed[at].text, 0)
        at += 1
        candidates.append(text[listed[at].position :] if at < len(listed) else "")
    return candidates


def _setting_name(text: str) -> Word | None:
    """The setting a SET, RESET or PRAGMA statement names (None for another statement DuckDB types as SET: USE)."""
    listed = words(text)
    if not listed or not listed[0].is_("SET", "RESET", "PRAGMA"):
        return None
    listed = listed[1:]
    if listed and listed[0].is_(*SETTING_SCOPES):
        listed = listed[1:]
    return listed[0] if listed else None


def _is_checkpoint(first: list[Word]) -> bool:
    """Whether a statement's first words are CHECKPOINT or FORCE CHECKPOINT."""
    return bool(first) and (
        first[0].is_("CHECKPOINT") or (len(first) == 2 and first[0].is_("FORCE") and first[1].is_("CHECKPOINT"))
    )


def _explain_refusal(text: str) -> str | None:
    """Why an EXPLAIN statement is refused: EXPLAIN ANALYZE runs what it explains, so every reading of it that
    parses is checked, and one that none does is not run."""
    readable = []
    for candidate in _explained(text):
        try:
            readable.extend(duckdb.extract_statements(candidate))
        except duckdb.Error:
            continue  # the other reading of the parenthesis, or none
    if not readable:
        return "EXPLAIN is refused: the statement it explains could not be read apart from it"
    return next((refused for refused in map(_statement_refusal, readable) if refused), None)


def _statement_refusal(statement: duckdb.Statement) -> str | None:
    """Why one statement is refused: it does not read, explains (and so may run) one that does not, or sets a
    setting that names a file; or None."""
    text = statement.query
    if statement.type == duckdb.StatementType.CREATE and not text:
        return None  # the ENUM type DuckDB creates for a PIVOT without IN, which has no text of its own
    if statement.type not in READING_STATEMENTS:
        instead = " (--json prints the rows)" if statement.type == duckdb.StatementType.COPY else ""
        return f"{statement.type.name.replace('_', ' ')} is refused: this command only reads{instead}"
    if statement.type == duckdb.StatementType.EXPLAIN:
        return _explain_refusal(text)
    if statement.type == duckdb.StatementType.CALL and _is_checkpoint(words(text)[:2]):
        return "CHECKPOINT is refused: it changes the lake"
    setting = _setting_name(text) if statement.type == duckdb.StatementType.SET else None
    if setting and setting.text.lower() in FILE_SETTINGS:
        return f"setting {setting.text} is refused: it names a file DuckDB would write"
    return None
