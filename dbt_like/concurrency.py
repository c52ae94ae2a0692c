"""Writers that race: several shards (or maintenance) commit to one lake at once, and a transaction that loses a
race to another writer's commit runs again."""

from __future__ import annotations

import contextlib
import random
import time

import duckdb

from dbt_like.sql import Connection

# A conflict with another shard (or with maintenance) is retried this many times, with a growing random pause.
MAX_ATTEMPTS = 10
# Shards take turns on creating relations: a step that creates a table or view replaces this guard row too. A
# DuckLake 1.4 commit that came second and is retried by DuckLake itself can commit a table another writer has
# just created a second time, or give its own new table an id another writer's new table took; the rows written
# to it are then lost without an error. Two transactions that both change the catalog now conflict on this row,
# and the loser runs again from the start, when it sees the other's table.
CATALOG_GUARD = "catalog"
RACE_SIGNS = ("database is locked", "duplicate key value violates unique constraint")


class ConcurrentWriterError(RuntimeError):
    """A step could not commit because another writer committed to the same tables meanwhile."""


def lost_race(error: duckdb.Error) -> bool:
    """Whether ``error`` lost a race with another writer, so that running the transaction again may succeed:
    a transaction conflict, a SQLite catalog another writer holds locked, or two sessions creating a
    PostgreSQL catalog's tables at once."""
    return isinstance(error, duckdb.TransactionException) or any(sign in str(error) for sign in RACE_SIGNS)


def pause_before_retry(attempt: int, longest: float | None = None) -> None:
    """A random pause that grows with the attempt (up to ``longest`` seconds, if given), so racing writers spread
    out."""
    bound = 0.05 * 2**attempt
    time.sleep(random.uniform(0, bound if longest is None else min(bound, longest)))


def rollback(con: Connection) -> None:
    """Roll back the open transaction; a commit that failed has already rolled it back."""
    with contextlib.suppress(duckdb.TransactionException):
        con.rollback()
