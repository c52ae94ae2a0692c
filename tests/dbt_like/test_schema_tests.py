"""dbt_like's schema tests count offending rows of one batch."""

from __future__ import annotations

from pathlib import Path

import duckdb

from dbt_like import Model, SchemaTest, run_schema_tests
from dbt_like.project import discover_models


def test_schema_yml_declares_tests_and_column_descriptions(tmp_path: Path) -> None:
    (tmp_path / "t.sql").write_text("SELECT 1 AS k")
    (tmp_path / "schema.yml").write_text(
        "models:\n  - name: t\n    columns:\n      - name: k\n        description: the key\n"
        "        tests: [not_null, unique, {accepted_values: {values: [1, 2]}}]\n"
    )
    model = discover_models(tmp_path)["t"]
    assert model.columns == {"k": "the key"}
    assert model.tests == (
        SchemaTest("not_null", "k"),
        SchemaTest("unique", "k"),
        SchemaTest("accepted_values", "k", (1, 2)),
    )


def test_each_kind_counts_failures_in_the_batch_only() -> None:
    con = duckdb.connect()
    con.execute(
        "CREATE TABLE t AS SELECT * FROM "
        "(VALUES (1, 'a', 1), (NULL, 'a', 2), (3, 'zz', 2), (1, 'b', 2)) v(k, s, _batch_id)"
    )
    model = Model(
        "t",
        Path("t.sql"),
        "",
        "",
        (),
        (),
        tests=(
            SchemaTest("not_null", "k"),
            SchemaTest("unique", "k"),
            SchemaTest("accepted_values", "s", ("a", "b")),
        ),
    )
    results = {r.test.kind: r.failures for r in run_schema_tests(con, model, batch_id=2)}
    assert results == {"not_null": 1, "unique": 1, "accepted_values": 1}
    assert all(r.passed for r in run_schema_tests(con, model, batch_id=1)[::2])


def test_a_column_whose_name_needs_quoting_is_tested() -> None:
    con = duckdb.connect()
    con.execute('CREATE TABLE t AS SELECT * FROM (VALUES (NULL, 1, 1), (2, 2, 1)) v("order", "event id", _batch_id)')
    tests = (
        SchemaTest("not_null", "order"),
        SchemaTest("unique", "event id"),
        SchemaTest("accepted_values", "order", (2,)),
    )
    model = Model("t", Path("t.sql"), "", "", (), (), tests=tests)
    assert [r.failures for r in run_schema_tests(con, model, batch_id=1)] == [1, 0, 0]
