"""Column lists read straight from the KSQL recipe text, so tests compare our tables with the recipe itself."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SYSMON_SHARED_DIR", ROOT.parent / "shared"))
RECIPE = SHARED / "recipe" / "sysmon-ksql-recipe.txt"


def shared_path(*parts: str) -> Path:
    """A path under the read-only shared folder; outside CI, skips the test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = f"shared data not found at {path} (set SYSMON_SHARED_DIR)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI always has shared/ beside the clone: missing data is a failure there
        pytest.skip(message)
    return path


def _statement(text: str, name: str) -> str:
    start = re.search(rf"CREATE (STREAM|TABLE) {name}\b", text)
    assert start, f"{name} not in recipe"
    end = text.index(";", start.end())
    return text[start.start() : end].replace("\\\n", "\n")


def _split_top_level(text: str) -> list[str]:
    items, depth, token = [], 0, ""
    for char in text:
        depth += {"(": 1, ")": -1}.get(char, 0)
        if char == "," and depth == 0:
            items.append(token)
            token = ""
        else:
            token += char
    return [*items, token]


def recipe_columns(name: str) -> list[str]:
    """The lower-cased column names the recipe gives object ``name``, in the recipe's order."""
    text = shared_path("recipe", "sysmon-ksql-recipe.txt").read_text(encoding="utf-8")
    statement = _statement(text, name.upper())
    if " AS SELECT" in statement or "AS \n" in statement or re.search(r"\bAS\s+SELECT", statement):
        select = re.split(r"\bSELECT\b", statement, maxsplit=1)[1]
        select = re.split(r"\bFROM\b", select)[0]
        columns = []
        for item in _split_top_level(select):
            item = item.strip()
            alias = re.search(r"\bAS\s+(\w+)\s*$", item)
            columns.append((alias.group(1) if alias else item.split(".")[-1]).strip().lower())
        return columns
    body = statement[statement.index("(") + 1 :]
    depth, columns, token = 0, [], ""
    for char in body:
        if char == "<":
            depth += 1
        elif char == ">":
            depth -= 1
        if char == "," and depth == 0:
            columns.append(token.split()[0].lower())
            token = ""
        elif char == ")" and depth == 0:
            columns.append(token.split()[0].lower())
            break
        else:
            token += char
    return columns


def recipe_event_data_fields() -> list[tuple[str, str]]:
    """(field, KSQL type) pairs of WINLOGBEAT_STREAM's event_data STRUCT."""
    text = shared_path("recipe", "sysmon-ksql-recipe.txt").read_text(encoding="utf-8")
    statement = _statement(text, "WINLOGBEAT_STREAM")
    struct = statement[statement.index("STRUCT<") + 7 : statement.index(">")]
    return [tuple(field.split()[:2]) for field in struct.replace("\n", " ").split(",")]


def recipe_sample_output(name: str) -> list[list[str]]:
    """The rows the recipe prints under its "optionally query a sample" SELECT ... FROM ``name``, each split into
    its ``|``-separated values; the recipe's terminal cut long rows off, so a row's last value may be a prefix
    and its later values missing."""
    text = shared_path("recipe", "sysmon-ksql-recipe.txt").read_text(encoding="utf-8")
    query = re.search(rf"ksql> SELECT[^;]*?FROM {name.upper()}\b[^;]*;\n", text)
    assert query, f"no sample query of {name} in the recipe"
    rows = []
    for line in text[query.end() :].splitlines():
        if not line.strip():
            break
        rows.append([value.strip() for value in line.split(" | ")])
        rows[-1][-1] = rows[-1][-1].removesuffix("|").strip()
    return rows
