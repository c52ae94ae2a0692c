"""Dagster assets that rebuild Confluent's KSQL Sysmon recipe as micro-batches into DuckDB."""
