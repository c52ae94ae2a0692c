"""Declared schema tests (dbt's not_null, unique, accepted_values, expression_is_true) on one batch's rows.

Tests look at the rows a batch committed, so their cost follows the batch, not the history;
``unique`` still compares those rows' keys against the whole table.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from dbt_like.project import Model, SchemaTest
from dbt_like.sql import first_row, literal, quote_identifier, quote_string


@dataclass(frozen=True)
class TestResult:
    """Outcome of one schema test: how many offending rows (or keys) it found."""

    __test__ = False  # not a pytest test class

    model: str
    test: SchemaTest
    failures: int

    @property
    def passed(self) -> bool:
        """True when no row offends the test."""
        return self.failures == 0


def _accepted(value: object) -> str:
    """An accepted value as dbt quotes it: numbers as they are, anything else (``yes``, a date) as its text."""
    is_number = isinstance(value, int | float) and not isinstance(value, bool)
    return literal(value) if is_number else quote_string(str(value))


def failing_rows_sql(model: str, test: SchemaTest, batch_id: int) -> str:
    """A query that counts the rows (or keys) of ``batch_id`` that break ``test``."""
    batch_rows = f"SELECT * FROM {model} WHERE _batch_id = {batch_id}"
    column = quote_identifier(test.column)
    if test.kind == "not_null":
        return f"SELECT count(*) FROM ({batch_rows}) WHERE {column} IS NULL"
    if test.kind == "unique":
        return (
            f"SELECT count(*) FROM (SELECT {column} FROM {model} "
            f"WHERE {column} IN (SELECT {column} FROM ({batch_rows})) GROUP BY {column} HAVING count(*) > 1)"
        )
    if test.kind == "expression_is_true":
        return f"SELECT count(*) FROM ({batch_rows}) WHERE NOT coalesce(({test.expression}), false)"
    if test.kind == "accepted_values":
        values = ", ".join(_accepted(value) for value in test.values)
        return f"SELECT count(*) FROM ({batch_rows}) WHERE {column} IS NOT NULL AND {column} NOT IN ({values})"
    raise ValueError(f"unknown schema test {test.kind!r} on {model}.{column}")


def run_schema_tests(con: duckdb.DuckDBPyConnection, model: Model, batch_id: int) -> list[TestResult]:
    """Run every test ``model`` declares against the rows ``batch_id`` committed, in one query (each statement
    on a lake pays a round of catalog lookups: one per test would add up on every batch)."""
    if not model.tests:
        return []
    counts = ", ".join(f"({failing_rows_sql(model.name, test, batch_id)})" for test in model.tests)
    failures = first_row(con, f"SELECT {counts}")
    return [TestResult(model.name, test, count) for test, count in zip(model.tests, failures, strict=True)]
