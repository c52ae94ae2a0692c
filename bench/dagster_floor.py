"""Dagster's own cost of a run: the project's asset graph with every asset and check doing nothing.

    BENCH_ASSET_GRAPH='{"a": {"deps": [], "checks": ["c"]}, ...}' \\
        dagster asset materialize -m bench.dagster_floor --select '*'

The benchmark passes the project's graph (asset keys, dependencies, check names) in
``BENCH_ASSET_GRAPH``, so this module imports nothing of the project: a run of it costs what
Dagster costs for that graph (start-up, instance, run and event storage, the in-process executor),
which no work on the project's own code can remove. An empty graph (``{}``) is one no-op asset.
"""

from __future__ import annotations

import json
import os

from dagster import (
    AssetCheckResult,
    AssetCheckSpec,
    AssetKey,
    AssetsDefinition,
    Definitions,
    MaterializeResult,
    asset,
    in_process_executor,
)

GRAPH_VARIABLE = "BENCH_ASSET_GRAPH"


def no_op_asset(name: str, deps: list[str], checks: list[str]) -> AssetsDefinition:
    """An asset named ``name`` after ``deps`` that materializes nothing and passes its ``checks``."""

    @asset(name=name, deps=[AssetKey(dep) for dep in deps], check_specs=[AssetCheckSpec(c, asset=name) for c in checks])
    def no_op() -> MaterializeResult:
        return MaterializeResult(check_results=[AssetCheckResult(check_name=c, passed=True) for c in checks])

    return no_op


def floor_definitions(graph: dict[str, dict[str, list[str]]]) -> Definitions:
    """No-op assets for ``graph`` (``{asset: {"deps": [...], "checks": [...]}}``), run in one process as the
    project's are."""
    graph = graph or {"no_op": {"deps": [], "checks": []}}
    assets = [no_op_asset(name, shape["deps"], shape["checks"]) for name, shape in graph.items()]
    return Definitions(assets=assets, executor=in_process_executor)


defs = floor_definitions(json.loads(os.environ.get(GRAPH_VARIABLE, "{}")))
