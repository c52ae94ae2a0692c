"""What an asset's materialization shows of its table: the columns, a preview of the rows the batch wrote, and the
lake snapshot after the step."""

from __future__ import annotations

from dbt_like import table_columns
from dbt_like.sql import literal
from sysmon_assets.storage import lake
from sysmon_assets.storage.lake_connections import Connect


def _cell(value: object, width: int = 60) -> str:
    """A markdown table cell: pipes escaped, long values cut."""
    text = str(value).replace("|", "\\|").replace("\n", " ")
    return text if len(text) <= width else text[: width - 1] + "…"


def describe(
    connect: Connect, name: str, batch_id: int, preview_rows: int = 5
) -> tuple[list[tuple[str, str]], str, int]:
    """The table's (column, type) pairs, a markdown preview of the rows ``batch_id`` wrote, and the lake's
    snapshot id after the step: its batch's newest, not another shard's that committed since."""
    with connect() as con:
        columns = table_columns(con, name)
        snapshot = lake.newest_snapshot_of_batch(con, batch_id) or lake.current_snapshot(con)
        shown = [c for c, _ in columns if not c.startswith("_")][:8]
        rows = con.execute(
            f"SELECT {', '.join(shown)} FROM {name} WHERE _batch_id = {literal(batch_id)} LIMIT {int(preview_rows)}"
        ).fetchall()
    lines = ["| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
    lines += ["| " + " | ".join(_cell(value) for value in row) + " |" for row in rows]
    return columns, "\n".join(lines), snapshot
