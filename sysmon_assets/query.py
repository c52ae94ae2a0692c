"""Run an ad-hoc SQL file (or text) against the query database, read-only, and print the result.

``python -m sysmon_assets.query sql/queries/sysmon_join_sample.sql``
"""

from __future__ import annotations

import argparse
from pathlib import Path

import duckdb

from sysmon_assets.settings import Settings


def run_query(duckdb_path: Path, sql: str) -> duckdb.DuckDBPyRelation | None:
    """Open ``duckdb_path`` read-only and run ``sql``; the caller shows or fetches the result."""
    if not duckdb_path.exists():
        raise SystemExit(f"DuckDB file {duckdb_path} does not exist yet: run a micro-batch first")
    con = duckdb.connect(str(duckdb_path), read_only=True)
    return con.sql(sql)


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("query", help="a .sql file, or SQL text")
    parser.add_argument("--db", type=Path, default=None, help="DuckDB file (default: the query database)")
    parser.add_argument("--max-width", type=int, default=160)
    args = parser.parse_args(argv)
    path = Path(args.query)
    sql = path.read_text(encoding="utf-8") if path.suffix == ".sql" else args.query
    relation = run_query(args.db or Settings.from_env().query_db_path, sql)
    if relation is not None:
        relation.show(max_width=args.max_width)


if __name__ == "__main__":
    main()
