"""Discover SQL models, their configuration, references and declared schema tests.

A project is a folder of ``<model>.sql`` files plus an optional ``schema.yml`` (dbt's layout).
Each SQL file is a Jinja template: ``{{ config(...) }}`` sets the materialization,
``{{ ref('other') }}`` names an upstream model, ``{{ source('name') }}`` names an input that
the caller supplies. The comment lines at the top of a file are the model's description.
The ``{% macro %}``s of the ``macros/*.sql`` files beside the models (dbt's ``macro-paths``) can be called
from every model, and so can the values their files ``{% set %}`` at the top level.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from graphlib import TopologicalSorter
from pathlib import Path
from typing import Any

import jinja2
import jinja2.nodes
import yaml

MATERIALIZATIONS = ("stream", "table", "view")
# libyaml's loader when PyYAML was built with it: the pure-Python one takes ~0.2 s over a schema.yml of 250 lines
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class ProjectError(ValueError):
    """A model file or ``schema.yml`` is invalid; the message names the file."""


TEST_KINDS = ("not_null", "unique", "accepted_values", "expression_is_true")


@dataclass(frozen=True)
class SchemaTest:
    """One declared test on one column: ``not_null``, ``unique``, ``accepted_values`` or ``expression_is_true``.

    ``severity`` is ``error`` (the default) or ``warn``, as in dbt.
    """

    kind: str
    column: str
    values: tuple[Any, ...] = ()
    expression: str = ""
    severity: str = "error"

    @property
    def name(self) -> str:
        """A stable, readable identifier, e.g. ``unique_process_guid``."""
        return f"{self.kind}_{self.column}"


@dataclass(frozen=True)
class Model:
    """One SQL model: its template, where it reads from and how it is materialized."""

    name: str
    path: Path
    template: str
    description: str
    refs: tuple[str, ...]
    sources: tuple[str, ...]
    unmatched: tuple[str, ...] = ()  # the retried models whose unmatched rows it reads
    columns: dict[str, str] = field(default_factory=dict)
    tests: tuple[SchemaTest, ...] = ()
    macros: str = ""  # the project's macro files, one template: what every model can call


def header_comment(sql: str) -> str:
    """The leading ``--`` comment lines of a SQL file, joined as prose."""
    lines = []
    for line in sql.splitlines():
        stripped = line.strip()
        if not stripped.startswith("--"):
            break
        lines.append(stripped.removeprefix("--").strip())
    return "\n".join(lines).strip()


def _parsed(template: str, path: Path) -> jinja2.nodes.Template:
    try:
        return jinja2.Environment().parse(template)
    except jinja2.TemplateSyntaxError as error:
        raise ProjectError(f"{path}:{error.lineno}: {error.message}") from error


def _static_calls(template: str | jinja2.nodes.Template, function: str, path: Path) -> tuple[str, ...]:
    """Names passed to ``function('name')`` anywhere in the template, in every branch."""
    tree = _parsed(template, path) if isinstance(template, str) else template
    names: list[str] = []
    for call in tree.find_all(jinja2.nodes.Call):
        if isinstance(call.node, jinja2.nodes.Name) and call.node.name == function:
            if not call.args or not isinstance(call.args[0], jinja2.nodes.Const):
                raise ProjectError(f"{path}:{call.lineno}: {function}() needs a literal name")
            if call.args[0].value not in names:
                names.append(call.args[0].value)
    return tuple(names)


def _parse_tests(model: str, spec: dict, path: Path) -> tuple[dict[str, str], tuple[SchemaTest, ...]]:
    columns: dict[str, str] = {}
    tests: list[SchemaTest] = []
    for column in spec.get("columns", []):
        name = column["name"]
        columns[name] = column.get("description", "")
        for test in column.get("tests", []):
            kind, options = (test, {}) if isinstance(test, str) else next(iter(test.items()))
            if kind not in TEST_KINDS or (kind == "expression_is_true" and "expression" not in options):
                raise ProjectError(f"{path}: model {model}, column {name}: unknown or incomplete test {test!r}")
            tests.append(
                SchemaTest(
                    kind,
                    name,
                    tuple(options.get("values", ())),
                    options.get("expression", ""),
                    options.get("severity", "error"),
                )
            )
    return columns, tuple(tests)


def load_schema(models_dir: Path) -> dict[str, dict]:
    """The ``models:`` entries of ``schema.yml`` keyed by model name (empty if there is none)."""
    path = models_dir / "schema.yml"
    if not path.exists():
        return {}
    try:
        document = yaml.load(path.read_text(encoding="utf-8"), Loader=_YAML_LOADER) or {}
    except yaml.YAMLError as error:
        raise ProjectError(f"{path}: {error}") from error
    return {entry["name"]: entry for entry in document.get("models", [])}


MACRO_DIR = "macros"


def load_macros(models_dir: Path) -> str:
    """The ``macros/*.sql`` files under ``models_dir`` as one template (empty if there are none), in name order.

    A macro reads what it is given: ``ref()`` and ``source()`` belong in the models (a call in a macro would be
    hidden from the models' dependencies), so a model passes ``ref('x')`` to the macro as an argument.
    """
    texts = []
    for path in sorted((models_dir / MACRO_DIR).glob("*.sql")):
        text = path.read_text(encoding="utf-8")
        tree = _parsed(text, path)
        for function in ("ref", "source", "unmatched"):
            if _static_calls(tree, function, path):
                raise ProjectError(f"{path}: a macro cannot call {function}(); pass the relation as an argument")
        texts.append(text)
    return "\n".join(texts)


def discover_models(models_dir: Path) -> dict[str, Model]:
    """Every ``*.sql`` model directly under ``models_dir``, in dependency order."""
    schema = load_schema(models_dir)
    macros = load_macros(models_dir)
    models: dict[str, Model] = {}
    for path in sorted(models_dir.glob("*.sql")):
        template = path.read_text(encoding="utf-8")
        columns, tests = _parse_tests(path.stem, schema.get(path.stem, {}), models_dir / "schema.yml")
        models[path.stem] = Model(
            name=path.stem,
            path=path,
            template=template,
            description=schema.get(path.stem, {}).get("description") or header_comment(template),
            refs=_static_calls(template, "ref", path),
            sources=_static_calls(template, "source", path),
            unmatched=_static_calls(template, "unmatched", path),
            columns=columns,
            tests=tests,
            macros=macros,
        )
    for model in models.values():
        unknown = [ref for ref in model.refs if ref not in models]
        if unknown:
            raise ProjectError(f"{model.path}: ref() to unknown model(s) {', '.join(unknown)}")
    order = TopologicalSorter({name: set(model.refs) for name, model in models.items()}).static_order()
    return {name: models[name] for name in order}
