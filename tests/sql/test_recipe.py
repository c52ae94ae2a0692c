"""The recipe's column lists kept in tests/recipe.py are the recipe's own (needs the recipe text in ../shared/)."""

from __future__ import annotations

import pytest

from tests.recipe import (
    RECIPE_COLUMNS,
    RECIPE_EVENT_DATA_FIELDS,
    columns_in_recipe_text,
    event_data_fields_in_recipe_text,
    recipe_text,
)


@pytest.mark.parametrize("table", RECIPE_COLUMNS)
def test_the_kept_column_lists_are_the_recipe_texts(table: str) -> None:
    assert columns_in_recipe_text(table) == list(RECIPE_COLUMNS[table])


def test_the_kept_event_data_fields_are_the_recipe_texts() -> None:
    assert event_data_fields_in_recipe_text() == list(RECIPE_EVENT_DATA_FIELDS)


def test_the_recipe_reads_the_sinks_n_prefixed_name() -> None:
    """tests/sinks/test_kafka_sink.py derives SYSMON_JOIN's KSQL names; the recipe's own sample query reads one."""
    assert "N_USER_ACCOUNT" in recipe_text()
