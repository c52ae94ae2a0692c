"""Writers that race: several shards (or maintenance) commit to one lake at once, and a transaction that loses a
race to another writer's commit runs again."""

from __future__ import annotations

import contextlib
import logging
import random
import time
from collections.abc import Callable
from typing import TypeVar

import duckdb

from dbt_like.sql import Connection

LOG = logging.getLogger(__name__)
T = TypeVar("T")

# A conflict with another shard (or with maintenance) is retried this many times, with a growing random pause.
MAX_ATTEMPTS = 10
# Shards take turns on creating relations: a step that creates a table or view replaces this guard row too. A
# DuckLake 1.4 commit that came second and is retried by DuckLake itself can commit a table another writer has
# just created a second time, or give its own new table an id another writer's new table took; the rows written
# to it are then lost without an error. Two transactions that both change the catalog now conflict on this row,
# and the loser runs again from the start, when it sees the other's table.
CATALOG_GUARD = "catalog"
RACE_SIGNS = ("database is locked", "duplicate key value violates unique constraint")
# A commit the catalog's disk refused fails the same way every time: it is no race, and DuckDB 1.4.4 crashes
# (SIGSEGV) when a connection whose lake ATTACH failed so tries the ATTACH again.
FULL_DISK_SIGNS = ("database or disk is full", "disk I/O error", "No space left on device")


class ConcurrentWriterError(RuntimeError):
    """A step could not commit because another writer committed to the same tables meanwhile."""


def lost_race(error: duckdb.Error) -> bool:
    """Whether ``error`` lost a race with another writer, so that running the transaction again may succeed:
    a transaction conflict, a SQLite catalog another writer holds locked, or two sessions creating a
    PostgreSQL catalog's tables at once; never a full disk."""
    if out_of_room(error):
        return False
    return isinstance(error, duckdb.TransactionException) or any(sign in str(error) for sign in RACE_SIGNS)


def out_of_room(error: duckdb.Error) -> bool:
    """Whether a disk refused ``error``'s write: running it again fails the same way until someone makes room."""
    return any(sign in str(error) for sign in FULL_DISK_SIGNS)


def pause_before_retry(attempt: int, longest: float | None = None) -> None:
    """A random pause that grows with the attempt (up to ``longest`` seconds, if given), so racing writers spread
    out."""
    bound = 0.05 * 2**attempt
    time.sleep(random.uniform(0, bound if longest is None else min(bound, longest)))


def rollback(con: Connection) -> None:
    """Roll back the open transaction; a commit that failed has already rolled it back."""
    with contextlib.suppress(duckdb.TransactionException):
        con.rollback()


def run_again_after_lost_races(con: Connection, action: Callable[[], T], what: str) -> T:
    """Run ``action`` (one transaction of ``con``, or one statement committed on its own); when it loses a race
    with another writer (see :func:`lost_race`), roll back and run it again, up to ``MAX_ATTEMPTS`` times."""
    for attempt in range(1, MAX_ATTEMPTS + 1):
        try:
            return action()
        except duckdb.Error as error:
            rollback(con)
            if not lost_race(error) or attempt == MAX_ATTEMPTS:
                raise
            LOG.info("%s lost a race with another writer (attempt %d), running it again: %s", what, attempt, error)
            pause_before_retry(attempt)
    raise AssertionError("unreachable: the last attempt returns or raises")
