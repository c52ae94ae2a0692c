"""The KSQL recipe's column lists, kept here as data (names are facts) so every user runs the tests that compare
our tables with them; tests/sql/test_recipe.py checks these lists against the recipe text itself when
``../shared/`` is there. The recipe text, its sample output and the third-party data sets are not in the
repository: tests that read them skip without ``../shared/`` (and fail in CI, which always has it)."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("SYSMON_SHARED_DIR", ROOT.parent / "shared"))
RECIPE = SHARED / "recipe" / "sysmon-ksql-recipe.txt"

# Recipe step 3 flattens event_data into these, in this order; steps 4 to 7 select from them.
_PROCESS = ("event_date_creation", "process_guid", "process_id", "process_path")
_PROCESS_CREATE = (
    *_PROCESS,
    *("file_version", "file_description", "file_company", "process_command_line", "process_current_directory"),
    *("user_account", "user_logon_guid", "user_logon_id", "user_session_id", "process_integrity_level", "hashes"),
    *("parent_process_guid", "parent_process_id", "parent_process_path", "parent_process_command_line"),
)
_NETWORK = (
    *("network_protocol", "network_connection_initiated"),
    *("src_is_ipv6", "src_ip_addr", "src_host_name", "src_port", "src_port_name"),
    *("dst_is_ipv6", "dst_ip_addr", "dst_host_name", "dst_port", "dst_port_name"),
)
_ORIGIN = ("event_id", "source_name", "log_name")
RECIPE_COLUMNS: dict[str, tuple[str, ...]] = {
    "winlogbeat_stream": ("source_name", "type", "task", "log_name", "computer_name", "event_data", "event_id"),
    "winlogbeat_stream_rekey": (*_PROCESS_CREATE, *_NETWORK, *_ORIGIN),
    "sysmon_process_create": (*_PROCESS_CREATE, *_ORIGIN),
    "sysmon_process_create_table": (*_PROCESS_CREATE, *_ORIGIN),
    "sysmon_network_connect": (*_PROCESS, "user_account", *_NETWORK, *_ORIGIN),
    # N.* without event_id, then the P columns the recipe selects
    "sysmon_join": (
        *(*_PROCESS, "user_account", *_NETWORK, "source_name", "log_name"),
        *("process_command_line", "hashes", "parent_process_path", "parent_process_command_line"),
        *("user_logon_guid", "user_logon_id", "user_session_id", "process_current_directory"),
        *("process_integrity_level", "parent_process_guid", "parent_process_id"),
    ),
}
# The recipe's models in its order; the models built on them for threat hunting (Dagster group `hunting`).
RECIPE_MODELS: tuple[str, ...] = tuple(RECIPE_COLUMNS)
HUNTING_MODELS = ("sysmon_process_ancestry", "sysmon_join_ancestry", "sigma_detections")
_INTEGER_FIELDS = {"ProcessId", "TerminalSessionId", "ParentProcessId", "SourcePort", "DestinationPort"}
# WINLOGBEAT_STREAM's event_data STRUCT, in the recipe's order: the INTEGERs above, the rest VARCHAR.
RECIPE_EVENT_DATA_FIELDS: tuple[tuple[str, str], ...] = tuple(
    (field, "INTEGER" if field in _INTEGER_FIELDS else "VARCHAR")
    for field in (
        *("UtcTime", "ProcessGuid", "ProcessId", "Image", "FileVersion", "Description", "Product", "Company"),
        *("CommandLine", "CurrentDirectory", "User", "LogonGuid", "LogonId", "TerminalSessionId", "IntegrityLevel"),
        *("Hashes", "ParentProcessGuid", "ParentProcessId", "ParentImage", "ParentCommandLine", "Protocol"),
        *("Initiated", "SourceIsIpv6", "SourceIp", "SourceHostname", "SourcePort", "SourcePortName"),
        *("DestinationIsIpv6", "DestinationIp", "DestinationHostname", "DestinationPort", "DestinationPortName"),
    )
)


def shared_path(*parts: str) -> Path:
    """A path under the read-only shared folder; outside CI, skips the test when it is not there."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        message = (
            f"{path} not found: the recipe text and third-party data are kept outside the repository "
            "(../shared/ beside the clone, or set SYSMON_SHARED_DIR)"
        )
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
    return list(RECIPE_COLUMNS[name])


def recipe_event_data_fields() -> list[tuple[str, str]]:
    """(field, KSQL type) pairs of WINLOGBEAT_STREAM's event_data STRUCT."""
    return list(RECIPE_EVENT_DATA_FIELDS)


def recipe_text() -> str:
    """The recipe itself (skips without ``../shared/``)."""
    return shared_path("recipe", "sysmon-ksql-recipe.txt").read_text(encoding="utf-8")


def columns_in_recipe_text(name: str) -> list[str]:
    """The lower-cased column names object ``name`` has in the recipe text, in its order."""
    text = recipe_text()
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


def event_data_fields_in_recipe_text() -> list[tuple[str, str]]:
    """(field, KSQL type) pairs of WINLOGBEAT_STREAM's event_data STRUCT in the recipe text."""
    statement = _statement(recipe_text(), "WINLOGBEAT_STREAM")
    struct = statement[statement.index("STRUCT<") + 7 : statement.index(">")]
    return [tuple(field.split()[:2]) for field in struct.replace("\n", " ").split(",")]


def recipe_sample_output(name: str) -> list[list[str]]:
    """The rows the recipe prints under its "optionally query a sample" SELECT ... FROM ``name``, each split into
    its ``|``-separated values; the recipe's terminal cut long rows off, so a row's last value may be a prefix
    and its later values missing."""
    text = recipe_text()
    query = re.search(rf"ksql> SELECT[^;]*?FROM {name.upper()}\b[^;]*;\n", text)
    assert query, f"no sample query of {name} in the recipe"
    rows = []
    for line in text[query.end() :].splitlines():
        if not line.strip():
            break
        rows.append([value.strip() for value in line.split(" | ")])
        rows[-1][-1] = rows[-1][-1].removesuffix("|").strip()
    return rows
