"""Query the lake from the command line, read-only, at the last complete batch (``sysmon_assets.connect``).

``python -m sysmon_assets.query sql/queries/sysmon_join_sample.sql`` prints a table;
``python -m sysmon_assets.query --json "select count(*) from sysmon_join"`` prints the rows as a JSON array of arrays.
Both read the same ``SYSMON_*`` settings as the pipeline.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import duckdb

from sysmon_assets.storage import lake


def rows_as_json(relation: duckdb.DuckDBPyRelation) -> str:
    """The relation's rows as a JSON array of arrays (timestamps and other non-JSON values as text)."""
    return json.dumps([list(row) for row in relation.fetchall()], default=str)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("query", help="a .sql file, or SQL text")
    parser.add_argument("--json", action="store_true", help="print the rows as a JSON array of arrays")
    parser.add_argument("--batch", type=int, default=None, help="read the lake as this batch left it")
    parser.add_argument("--max-width", type=int, default=160)
    args = parser.parse_args(argv)
    path = Path(args.query)
    sql = path.read_text(encoding="utf-8") if path.suffix == ".sql" and path.is_file() else args.query
    try:
        con = lake.connect(batch_id=args.batch)
        relation = con.sql(sql)
    except (lake.LakeError, duckdb.Error) as error:
        sys.exit(f"query failed: {error}")
    if relation is None:
        return
    if args.json:
        print(rows_as_json(relation))
    else:
        relation.show(max_width=args.max_width)


if __name__ == "__main__":
    main()
