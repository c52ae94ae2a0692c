"""A small, generic, dbt-style model layer over DuckDB (a DuckLake attached as the default catalog included).

Models are SQL files (Jinja templates with ``ref``/``source``/``config``), materialized
incrementally (one transaction per step, or per chunk for source-fed steps), with declared schema tests.
"""

from dbt_like.compiler import Shard
from dbt_like.concurrency import ConcurrentWriterError
from dbt_like.project import Model, ProjectError, SchemaTest, discover_models
from dbt_like.runner import Project, StepResult
from dbt_like.schema_tests import TestResult, run_schema_tests
from dbt_like.state import Batch, ensure_state, open_batch, table_columns, table_exists, unread_rows

__all__ = [
    "Batch",
    "ConcurrentWriterError",
    "Model",
    "Project",
    "ProjectError",
    "SchemaTest",
    "Shard",
    "StepResult",
    "TestResult",
    "discover_models",
    "ensure_state",
    "open_batch",
    "run_schema_tests",
    "table_columns",
    "table_exists",
    "unread_rows",
]
