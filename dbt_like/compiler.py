"""Render a model's Jinja SQL into the DuckDB SQL of one incremental step.

``ref()`` follows KSQL's reading of streams and tables: a reference to a *stream* model
yields only the rows that model gained since this model last consumed it (its delta), a
reference to a *table* model yields the table as it stands now. ``ref(name, full=True)``
yields every row of a stream, for models that must look back (an as-of join). A model written in the same step
as another (``part_of``) reads the rows that model wrote in the same transaction through ``ref()`` (those with a
``_seq`` above its highest of the batch before: a model with side models numbers a batch's rows upwards, or its
step fails), and has no stream input of its own. A *view* model is
stored as a query, not as rows, so every ``ref()`` in it yields the whole relation, as does a ``ref()`` to it.
``unmatched(name)``, beside ``ref(name)`` of a stream declared ``retry_unmatched``, yields the rows of its retried
input that it stopped waiting for (their grace ended without a match) in the batches of ``name`` this step reads.
``execute`` is False (as in dbt) when the SQL is rendered for its shape only (its columns, lineage and config),
never to be run for rows: a model may leave out there what costs time to plan and does not change its columns.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any

import jinja2
import sqlglot
from sqlglot import exp

from dbt_like.project import MATERIALIZATIONS, Model, ProjectError
from dbt_like.sql import is_setting_name, one_of, quote_identifier, quote_string

STATE_SCHEMA = "dbt_like"
PENDING_TABLE = f"{STATE_SCHEMA}.pending"
# A retried model's rows that stopped waiting unmatched, for the models that read them through unmatched().
UNMATCHED_TABLE = f"{STATE_SCHEMA}.unmatched"

_ENV = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=True)
# Values a template writes into SQL go through these: {{ title | sql_string }}, {{ name | sql_identifier }}.
_ENV.filters["sql_string"] = quote_string
_ENV.filters["sql_identifier"] = quote_identifier


@lru_cache(maxsize=256)
def _compiled(template: str) -> jinja2.Template:
    """The template compiled once: a batch renders each model at least twice (config, then its step)."""
    return _ENV.from_string(template)


# Outputs of cached() macro calls, by the project's macros, the macro's name and its arguments.
_CACHED_CALLS: dict[tuple[str, str, str], str] = {}


def _cached_calls(macros: str) -> Any:
    def cached(macro: Any, *args: Any) -> str:
        """``{{ cached(a_macro, arg, ...) }}``: the macro's output, rendered once per process for the same
        arguments. Only for a macro that is slow to render and reads nothing but its arguments."""
        key = (macros, macro.name, repr(args))
        if key not in _CACHED_CALLS:
            _CACHED_CALLS[key] = str(macro(*args))
        return _CACHED_CALLS[key]

    return cached


def _render(model: Model, context: dict[str, Any]) -> str:
    """The model's template rendered with ``context``: the project's macros (and the values their files set)
    are called within the same context, so they too may use ``var()``, ``batch_time`` and the others."""
    if model.macros:
        context = {**context, "cached": _cached_calls(model.macros)}
        module = _compiled(model.macros).make_module(vars=context)
        exported = {name: value for name, value in vars(module).items() if not name.startswith("_")}
        context = {**exported, **context}
    return _compiled(model.template).render(context)


@dataclass(frozen=True)
class Shard:
    """Which of ``count`` writers of one lake a project is: shard ``index`` owns the batch ids (and arrival
    numbers) ``index + 1``, ``index + 1 + count``, ..."""

    index: int = 0
    count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.count:
            raise ProjectError(f"shard {self.index} of {self.count}: expected 0 <= index < count")

    def owns(self, column: str = "_batch_id") -> str:
        """A SQL condition: ``column`` (a batch id or arrival number) is this shard's."""
        return "true" if self.count == 1 else f"({column} - 1) % {self.count} = {self.index}"

    def rows_of(self, *models: str) -> str:
        """A SQL condition on a bookkeeping table (offsets, waiting or given-up rows): the rows of ``models`` that
        this shard keeps."""
        return f"{one_of('model', *models)} AND {one_of('shard', self.index)}"

    def first_above(self, number: int) -> int:
        """The shard's lowest number (batch id or arrival number) above ``number``."""
        return number + 1 + (self.index - number) % self.count

    def next_number(self, column: str) -> str:
        """A SQL aggregate: the shard's next number after the highest of its own in ``column``."""
        return (
            f"coalesce(max({column}) FILTER (WHERE {self.owns(column)}), {self.index + 1 - self.count}) + {self.count}"
        )


@dataclass
class StepContext:
    """What one incremental step of one model knows when its SQL is rendered."""

    batch_id: int
    batch_time: str
    offsets: dict[str, int] = field(default_factory=dict)
    upper_bounds: dict[str, int] = field(default_factory=dict)
    sources: dict[str, str] = field(default_factory=dict)
    is_incremental: bool = True
    pending_floor: int | None = None  # lowest _seq this model still waits to match (None: nothing pending)
    part_of_floor: int | None = None  # a side model: the highest _seq its step wrote in this batch before now
    shard: Shard = field(default_factory=Shard)
    execute: bool = True  # False: rendered for its columns only


def _var_lookup(variables: Mapping[str, Any], path: Any):
    def var(name: str, default: Any = None) -> Any:
        if name in variables:
            return variables[name]
        if default is not None:
            return default
        raise ProjectError(f"{path}: var('{name}') is not set and has no default")

    return var


def render_plain(model: Model, variables: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """The model's SQL with every ``ref()`` as the plain table name (a full, non-incremental
    read), and the ``config(...)`` it declares: for static analysis such as column lineage."""
    captured: dict[str, Any] = {}

    def config(**kwargs: Any) -> str:
        captured.update(kwargs)
        return ""

    sql = _render(
        model,
        {
            "config": config,
            "ref": lambda name, full=False: name,
            "unmatched": lambda name: name,
            "source": lambda name: name,
            "var": _var_lookup(variables, model.path),
            "this": model.name,
            "is_incremental": lambda: False,
            "batch_id": 0,
            "batch_time": "1970-01-01 00:00:00",
            "execute": False,
        },
    )
    return sql, captured


def model_config(model: Model, variables: Mapping[str, Any]) -> dict[str, Any]:
    """The ``config(...)`` a model declares under ``variables``, with defaults filled in."""
    _, captured = render_plain(model, variables)
    captured.setdefault("materialized", "stream")
    captured.setdefault("order_by", "_seq")
    if captured["materialized"] not in MATERIALIZATIONS:
        raise ProjectError(
            f"{model.path}: materialized={captured['materialized']!r}; expected one of {MATERIALIZATIONS}"
        )
    if captured["materialized"] == "table" and not captured.get("unique_key"):
        raise ProjectError(f"{model.path}: a 'table' model needs unique_key")
    settings = captured.get("duckdb_settings", {})
    if not isinstance(settings, Mapping) or not all(is_setting_name(name) for name in settings):
        raise ProjectError(f"{model.path}: duckdb_settings={settings!r}; expected a mapping of setting names to values")
    return captured


def as_of_joins(sql: str, changelogs: Mapping[str, str]) -> str:
    """``sql`` with each join of a table model named in ``changelogs`` (table -> the stream it is built from, by
    key and arrival) made KSQL's stream-table join: an as-of join to that stream, so that each row joins the
    version of the table row that had arrived before it (``_seq`` is the arrival order)."""
    tree = sqlglot.parse_one(sql, read="duckdb")
    for join in list(tree.find_all(exp.Join)):
        table = join.this
        if not isinstance(table, exp.Table) or table.name not in changelogs:
            continue
        select = join.parent
        left = (select.args.get("from_") or select.args.get("from")).this.alias_or_name
        right = table.alias_or_name
        if join.args.get("method") or join.args.get("on") is None:
            raise ProjectError(f"as_of: the join of {table.name} must be a plain join with an ON condition")
        table.set("this", exp.to_identifier(changelogs[table.name]))
        table.set("alias", exp.TableAlias(this=exp.to_identifier(right)))
        join.set("method", "ASOF")
        join.set("on", exp.and_(join.args["on"], exp.column("_seq", left) > exp.column("_seq", right)))
    return tree.sql(dialect="duckdb", pretty=True)


def delta_relation(
    name: str, lower: int, upper: int, shard: Shard, retried_by: str | None = None, floor: int | None = None
) -> str:
    """SQL for the rows of stream ``name`` committed in the shard's batches ``(lower, upper]``.

    With ``retried_by``, the rows that model is still waiting to match (``_seq >= floor``) are
    added back; the constant floor lets DuckDB skip the row groups below it.
    """
    delta = f"SELECT * FROM {name} WHERE _batch_id > {lower} AND _batch_id <= {upper} AND {shard.owns()}"
    if retried_by and floor is not None:
        delta += (
            f" UNION ALL SELECT * FROM {name} WHERE _seq >= {floor} AND _seq IN "
            f"(SELECT seq FROM {PENDING_TABLE} WHERE {shard.rows_of(retried_by)})"
        )
    return f"({delta})"


def unmatched_relation(name: str, retried: str, lower: int, upper: int, shard: Shard) -> str:
    """SQL for the rows of ``retried`` that model ``name`` stopped waiting for in the shard's batches
    ``(lower, upper]``."""
    # the range wrapped in IS TRUE, which DuckLake does not prune by (see dbt_like.sql.one_of)
    given_up = (
        f"SELECT seq FROM {UNMATCHED_TABLE} WHERE {shard.rows_of(name)} "
        f"AND (batch_id > {lower} AND batch_id <= {upper}) IS TRUE"
    )
    return f"(SELECT * FROM {retried} WHERE _seq IN ({given_up}))"


def render_step(
    model: Model, configs: Mapping[str, dict[str, Any]], variables: Mapping[str, Any], step: StepContext
) -> str:
    """The DuckDB SELECT that produces this step's new rows for ``model``."""
    own = configs[model.name]

    def ref(name: str, full: bool = False) -> str:
        if own.get("part_of") == name and not full:
            above = "" if step.part_of_floor is None else f" AND _seq > {step.part_of_floor}"
            return f"(SELECT * FROM {name} WHERE _batch_id = {step.batch_id}{above})"
        if full or own["materialized"] == "view" or configs[name]["materialized"] in ("table", "view"):
            return name
        retried_by = model.name if own.get("retry_unmatched") == name else None
        lower, upper = step.offsets.get(name, 0), step.upper_bounds[name]
        return delta_relation(name, lower, upper, step.shard, retried_by, step.pending_floor)

    def unmatched(name: str) -> str:
        retried = configs[name].get("retry_unmatched") if name in configs else None
        if not retried or name not in model.refs or own["materialized"] == "view":
            raise ProjectError(f"{model.path}: unmatched('{name}') needs a ref() to a stream declaring retry_unmatched")
        lower, upper = step.offsets.get(name, 0), step.upper_bounds[name]
        return unmatched_relation(name, retried, lower, upper, step.shard)

    def source(name: str) -> str:
        if name not in step.sources:
            raise ProjectError(f"{model.path}: source('{name}') was not supplied to this step")
        return step.sources[name]

    sql = _render(
        model,
        {
            "config": lambda **_: "",
            "ref": ref,
            "unmatched": unmatched,
            "source": source,
            "var": _var_lookup(variables, model.path),
            "this": model.name,
            "is_incremental": lambda: step.is_incremental,
            "batch_id": step.batch_id,
            "batch_time": step.batch_time,
            "execute": step.execute,
        },
    )
    return as_of_joins(sql, own["as_of"]) if own.get("as_of") else sql
