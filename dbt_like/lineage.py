"""Column-level lineage derived from each model's SQL with sqlglot, never from a hand-kept list.

For every output column of a model's outermost SELECT, the upstream model columns its
expression reads (``s.event_data.CommandLine`` reads ``event_data.CommandLine`` of the model
aliased ``s``). A CTE that only filters one table and keeps its columns' names (``SELECT * FROM x WHERE ...``,
``SELECT a, b FROM x WHERE ...``) stands for that table; columns read from a source or any other CTE have no
upstream model and are left out.
"""

from __future__ import annotations

import sqlglot
from sqlglot import exp

from dbt_like.compiler import render_plain
from dbt_like.runner import Project

Lineage = dict[str, list[tuple[str, str]]]


def _sources(select: exp.Select) -> dict[str, str]:
    """Alias -> table name for the FROM and JOIN items of ``select``."""
    items = [(select.args.get("from_") or select.args.get("from")).this]
    items += [join.this for join in select.args.get("joins") or []]
    sources = {}
    for item in items:
        table = item if isinstance(item, exp.Table) else item.find(exp.Table)
        if table is not None:
            sources[item.alias_or_name] = table.name
    return sources


def _keeps_names(select: exp.Select) -> bool:
    """Whether ``select`` outputs ``*`` or columns under their own names only."""
    return [str(e) for e in select.expressions] == ["*"] or all(isinstance(e, exp.Column) for e in select.expressions)


def _filtering_ctes(tree: exp.Expression) -> dict[str, str]:
    """CTE name -> table, for CTEs of the form ``SELECT * FROM table [WHERE ...]`` or ``SELECT a, b FROM table
    [WHERE ...]``."""
    filtering = {}
    for cte in tree.find_all(exp.CTE):
        body = cte.this
        if isinstance(body, exp.Select) and not body.args.get("joins") and _keeps_names(body):
            table = (body.args.get("from_") or body.args.get("from")).this
            if isinstance(table, exp.Table):
                filtering[cte.alias_or_name] = table.name
    return filtering


def model_lineage(project: Project, name: str) -> Lineage:
    """``{output column: [(upstream model, upstream column), ...]}`` for model ``name``."""
    if not project.models[name].refs:
        return {}  # reads only sources: nothing upstream to name, and its SQL need not be parsed
    sql, _ = render_plain(project.models[name], project.variables)
    tree = sqlglot.parse_one(sql, read="duckdb")
    select = tree if isinstance(tree, exp.Select) else tree.find(exp.Select)
    filtering = _filtering_ctes(tree)
    sources = {alias: filtering.get(table, table) for alias, table in _sources(select).items()}
    lineage: Lineage = {}
    for projection in select.expressions:
        deps: list[tuple[str, str]] = []
        for column in projection.find_all(exp.Column):
            parts = [part.name for part in column.parts]
            if len(parts) > 1 and parts[0] in sources:
                table, path = sources[parts[0]], parts[1:]
            elif len(sources) == 1:
                table, path = next(iter(sources.values())), parts
            else:
                continue
            if table in project.models and (table, ".".join(path)) not in deps:
                deps.append((table, ".".join(path)))
        if deps:
            lineage[projection.alias_or_name] = deps
    return lineage
