"""Dagster assets that rebuild Confluent's KSQL Sysmon recipe as micro-batches into a DuckLake.

``sysmon_assets.connect()`` is the analysts' way in: a read-only DuckDB connection over the lake.
"""

from sysmon_assets.storage.lake import connect

__all__ = ["connect"]
