"""The pipeline's connections to the lake: one DuckDB instance with the lake attached, held for a batch."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, ExitStack, closing, contextmanager

import duckdb

from sysmon_assets.settings import Settings
from sysmon_assets.storage import lake

Connect = Callable[[], AbstractContextManager[duckdb.DuckDBPyConnection]]


class LakeConnections:
    """The pipeline's connections: one DuckDB instance with the lake attached, opened on first use and held
    until :meth:`close`; each ``connect()`` is a cursor of it. Loading and verifying the extensions costs about
    0.25 s per instance, so a batch pays it once, not once per step.

    ``opener`` (e.g. dagster-duckdb's ``DuckDBResource.get_connection``) opens the in-memory DuckDB the lake is
    attached to; by default a plain ``duckdb.connect``.
    """

    def __init__(self, settings: Settings, opener: Connect | None = None) -> None:
        self.settings = settings
        self.opener = opener or (lambda: closing(duckdb.connect(config=lake.connection_config(settings))))
        self._held = ExitStack()
        self._instance: duckdb.DuckDBPyConnection | None = None

    @contextmanager
    def __call__(self) -> Iterator[duckdb.DuckDBPyConnection]:
        if self._instance is None:
            instance = self._held.enter_context(self.opener())
            lake.attach(instance, self.settings)
            self._instance = instance
        with self._instance.cursor() as con:
            yield lake.use_lake(con)

    def close(self) -> None:
        """Close the held instance (the next ``connect()`` opens a new one)."""
        self._instance = None
        self._held.close()
