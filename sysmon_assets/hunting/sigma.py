"""Sigma rules over the Sysmon events: a folder of rules, each converted once to a DuckDB condition.

Rules are read recursively from a folder (``SYSMON_SIGMA_RULES``) and converted with pySigma and its DuckDB
backend. Each rule's ``logsource`` decides which events it sees: ``process_creation`` runs over Sysmon's
ProcessCreate events (id 1), ``network_connection`` over its NetworkConnect events (id 3). The conditions name
Sysmon's own fields (``Image``, ``CommandLine``, ``DestinationIp``, ...); the ``sigma_detections`` model gives each
event one text column per field, read from the columns of ours that :data:`EVENT_FIELDS` names. A rule that does
not parse, has another logsource, needs a field the event does not carry, or does not convert (or whose SQL DuckDB
rejects) is listed in :attr:`RuleSet.failures` with the reason; none is left out silently.

Converting SigmaHQ's 1,234 rules takes tens of seconds, so a rule set is converted once: the result is kept on disk
under the data folder, named by a hash of the rules' content and of the converter, and in memory for the process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any, ClassVar

import duckdb
import yaml
from sigma.collection import SigmaCollection
from sigma.conditions import (
    ConditionAND,
    ConditionFieldEqualsValueExpression,
    ConditionItem,
    ConditionNOT,
    ConditionOR,
)
from sigma.conversion.state import ConversionState
from sigma.exceptions import SigmaError, SigmaTransformationError, SigmaValueError
from sigma.processing.conditions import ExcludeFieldCondition, LogsourceCondition
from sigma.processing.pipeline import ProcessingItem, ProcessingPipeline
from sigma.processing.transformations import DetectionItemFailureTransformation
from sigma.rule import SigmaDetection, SigmaDetectionItem, SigmaRule
from sigma.types import (
    SigmaBool,
    SigmaCompareExpression,
    SigmaFieldReference,
    SigmaRegularExpression,
    SigmaString,
    SpecialChars,
)
from sigma_backend_duckdb import DuckDBBackend

from dbt_like.sql import quote_string

LOG = logging.getLogger(__name__)

RULE_SUFFIXES = (".yml", ".yaml")

# The Sysmon event each Sigma logsource category runs over.
CATEGORY_EVENTS = {"process_creation": 1, "network_connection": 3}
EVENT_NAMES = {1: "process creation (Sysmon event 1)", 3: "network connection (Sysmon event 3)"}
PRODUCTS = (None, "windows")
SERVICES = (None, "sysmon")
# The kind of failure of a rule written for another log source: expected when the folder holds every rule of a
# product, so it does not fail the sigma_rules_converted check (the rule is still listed).
LOGSOURCE = "logsource"
# Each field's lower-cased twin column is named with this suffix (a character no Sysmon field name has).
LOWER_SUFFIX = ":lower"
# Fields whose values are long: their predicates are evaluated after the others of an AND.
LONG_FIELDS = ("CommandLine", "ParentCommandLine")


def _kept(name: str) -> str:
    """A Sysmon field the recipe's columns do not carry: winlogbeat_stream_rekey keeps it in ``_extra_fields``."""
    return f"e._extra_fields[{quote_string(name)}]"


# Where each Sysmon field of an event is read from: ``e`` is the event's winlogbeat_stream_rekey row, ``p`` (for a
# connection) its process's row of sysmon_process_create_table as the step sees it. Sysmon's event 3 does not carry
# the process's command line, parents or image details; a connection reads them from its process create, so a
# network_connection rule on CommandLine or ParentImage (SigmaHQ has such rules) sees the process that connected.
_PROCESS_CONTEXT = {
    "CommandLine": "p.process_command_line",
    "ParentImage": "p.parent_process_path",
    "ParentCommandLine": "p.parent_process_command_line",
    "ParentProcessGuid": "p.parent_process_guid",
    "ParentProcessId": "p.parent_process_id",
    "CurrentDirectory": "p.process_current_directory",
    "IntegrityLevel": "p.process_integrity_level",
    "Hashes": "p.hashes",
    "LogonGuid": "p.user_logon_guid",
    "LogonId": "p.user_logon_id",
    "TerminalSessionId": "p.user_session_id",
    "FileVersion": "p.file_version",
    "Description": "p.file_description",
    "Company": "p.file_company",
}
_UTC_TIME = "strftime(e.event_date_creation, '%Y-%m-%d %H:%M:%S.%g')"
EVENT_FIELDS: dict[int, dict[str, str]] = {
    1: {
        "RuleName": _kept("RuleName"),
        "UtcTime": _UTC_TIME,
        "ProcessGuid": "e.process_guid",
        "ProcessId": "e.process_id",
        "Image": "e.process_path",
        "FileVersion": "e.file_version",
        "Description": "e.file_description",
        "Product": _kept("Product"),
        "Company": "e.file_company",
        "OriginalFileName": _kept("OriginalFileName"),
        "CommandLine": "e.process_command_line",
        "CurrentDirectory": "e.process_current_directory",
        "User": "e.user_account",
        "LogonGuid": "e.user_logon_guid",
        "LogonId": "e.user_logon_id",
        "TerminalSessionId": "e.user_session_id",
        "IntegrityLevel": "e.process_integrity_level",
        "Hashes": "e.hashes",
        "ParentProcessGuid": "e.parent_process_guid",
        "ParentProcessId": "e.parent_process_id",
        "ParentImage": "e.parent_process_path",
        "ParentCommandLine": "e.parent_process_command_line",
        "ParentUser": _kept("ParentUser"),
    },
    3: {
        "RuleName": _kept("RuleName"),
        "UtcTime": _UTC_TIME,
        "ProcessGuid": "e.process_guid",
        "ProcessId": "e.process_id",
        "Image": "e.process_path",
        "User": "e.user_account",
        "Protocol": "e.network_protocol",
        "Initiated": "e.network_connection_initiated",
        "SourceIsIpv6": "e.src_is_ipv6",
        "SourceIp": "e.src_ip_addr",
        "SourceHostname": "e.src_host_name",
        "SourcePort": "e.src_port",
        "SourcePortName": "e.src_port_name",
        "DestinationIsIpv6": "e.dst_is_ipv6",
        "DestinationIp": "e.dst_ip_addr",
        "DestinationHostname": "e.dst_host_name",
        "DestinationPort": "e.dst_port",
        "DestinationPortName": "e.dst_port_name",
        **_PROCESS_CONTEXT,
    },
}


class FieldNotCarriedError(SigmaTransformationError):
    """A rule needs a field its events do not carry."""


class FieldNotCarried(DetectionItemFailureTransformation):
    """Fails a rule that needs a field its events do not carry, naming the field (pySigma's own failure
    transformation has one fixed message)."""

    def apply_detection_item(self, detection_item: SigmaDetectionItem) -> None:
        if detection_item.field is None:
            return  # a keyword (no field): the backend says it does not support those
        raise FieldNotCarriedError(
            f"needs field {detection_item.field!r}, which {self.message} does not carry", source=detection_item.source
        )


def sysmon_pipeline() -> ProcessingPipeline:
    """The processing pipeline: per logsource, every field outside that event's :data:`EVENT_FIELDS` fails the
    rule with its name. The fields keep Sysmon's names: the model gives each event a column of each name."""
    return ProcessingPipeline(
        name="Sysmon events of sysmon-assets",
        priority=20,
        items=[
            ProcessingItem(
                identifier=f"sysmon_event_{event_id}_fields",
                transformation=FieldNotCarried(EVENT_NAMES[event_id]),
                rule_conditions=[LogsourceCondition(category=category, product="windows")],
                field_name_conditions=[ExcludeFieldCondition(fields=list(EVENT_FIELDS[event_id]))],
            )
            for category, event_id in CATEGORY_EVENTS.items()
        ],
    )


class SysmonDuckDBBackend(DuckDBBackend):
    """pySigma's DuckDB backend, with the methods at fault overridden (each a fix upstream could take) and its
    string matching rewritten for speed.

    Fixes:
    - a regular expression holding ``'`` broke the SQL string it is written into (SigmaHQ's
      proc_creation_win_hktl_wsass): the regex's quotes are doubled;
    - ``%`` and ``_`` in a value were LIKE wildcards, and a value without wildcards was compared case-sensitively
      (Sigma matches strings ignoring case);
    - a predicate on a field the event lacks was NULL, so ``not filter`` dropped the event where Sigma keeps it:
      a ``not`` is ``NOT coalesce(..., false)``;
    - numbers and booleans were compared to text columns with casts that fail on a value such as ``-``: a number
      compares ``TRY_CAST(field AS DOUBLE)``, a boolean the text ``true``/``false`` ignoring case;
    - ``|fieldref`` compared the two fields case-sensitively, and with ``|startswith``, ``|endswith`` or
      ``|contains`` read ``%`` and ``_`` in the other field's value as LIKE wildcards: it now matches that value
      literally and ignoring case, as a value;
    - field names are always quoted (``User`` is a keyword), and the condition is returned bare, without the
      backend's ``SELECT * FROM logs WHERE``.

    Speed (SigmaHQ's 1,234 rules over 10,000 events took over a minute with ``ILIKE``): each field has a lower-cased
    twin column (``"Image:lower"``) that exact, prefix, suffix and substring matches read with ``=``,
    ``starts_with``, ``ends_with`` and ``contains`` against the lower-cased value; a value with inner wildcards,
    and a list of :attr:`alternation_min` or more values of one field, is one RE2 regular expression (SigmaHQ's
    emoji rules list about 1,000 values each).
    """

    field_quote_pattern: ClassVar[re.Pattern | None] = None  # None: always quote
    field_escape: ClassVar[str | None] = '"'  # a quote inside a name is doubled
    # |fieldref: the other field's value matched literally and ignoring case, as a value is
    field_equals_field_expression: ClassVar[str] = "coalesce(lower({field1}) = lower({field2}), false)"
    field_equals_field_startswith_expression: ClassVar[str] = (
        "coalesce(starts_with(lower({field1}), lower({field2})), false)"
    )
    field_equals_field_endswith_expression: ClassVar[str] = (
        "coalesce(ends_with(lower({field1}), lower({field2})), false)"
    )
    field_equals_field_contains_expression: ClassVar[str] = (
        "coalesce(contains(lower({field1}), lower({field2})), false)"
    )

    # a list of this many values of one field (or more) is one regular expression
    alternation_min: ClassVar[int] = 8

    def __init__(self, processing_pipeline: ProcessingPipeline, lowercase: Callable[[str], str]) -> None:
        """``lowercase`` lower-cases a value as DuckDB's ``lower()`` lowers the twin columns."""
        super().__init__(processing_pipeline=processing_pipeline)
        self.lowercase = lowercase

    def lowered(self, field_name: str) -> str:
        """The quoted name of a field's lower-cased twin column."""
        return self.escape_and_quote_field(field_name + LOWER_SUFFIX)

    @staticmethod
    def value_regex(value: SigmaString) -> str:
        """A Sigma string as an RE2 expression matching where the string matches the whole value: wildcards
        become ``.*`` and ``.``; a leading or trailing ``*`` leaves that end unanchored."""
        leading = value.startswith(SpecialChars.WILDCARD_MULTI)
        trailing = value.endswith(SpecialChars.WILDCARD_MULTI) and len(value) > 1
        core = value[1 if leading else 0 : len(value) - 1 if trailing else len(value)]
        return ("" if leading else "^") + str(core.to_regex().regexp) + ("" if trailing else "$")

    def convert_condition_field_eq_val_str(
        self, cond: ConditionFieldEqualsValueExpression, state: ConversionState
    ) -> str:
        return self._string_match(cond.field, cond.value, cased=False)

    def convert_condition_field_eq_val_str_case_sensitive(
        self, cond: ConditionFieldEqualsValueExpression, state: ConversionState
    ) -> str:
        return self._string_match(cond.field, cond.value, cased=True)

    def _string_match(self, field_name: str, value: SigmaString, cased: bool) -> str:
        inner = value[1:-1] if len(value) > 1 else value
        if (
            value.startswith(SpecialChars.WILDCARD_MULTI)
            and value.endswith(SpecialChars.WILDCARD_MULTI)
            and len(value) > 1
            and not inner.contains_special()
        ):
            function, literal = "contains", inner
        elif value.startswith(SpecialChars.WILDCARD_MULTI) and not value[1:].contains_special():
            function, literal = "ends_with", value[1:]
        elif value.endswith(SpecialChars.WILDCARD_MULTI) and not value[:-1].contains_special():
            function, literal = "starts_with", value[:-1]
        elif not value.contains_special():
            function, literal = "=", value
        else:
            regex = ("(?s)" if cased else "(?is)") + self.value_regex(value)
            return f"regexp_matches({self.escape_and_quote_field(field_name)}, {quote_string(regex)})"
        text = literal.convert(escape_char=None, wildcard_multi=None, wildcard_single=None)
        column = self.escape_and_quote_field(field_name) if cased else self.lowered(field_name)
        text = quote_string(text if cased else self.lowercase(text))
        return f"{column} = {text}" if function == "=" else f"{function}({column}, {text})"

    def convert_condition_or(self, cond: ConditionOR, state: ConversionState) -> str:
        """Values of one field in an OR (nested ORs included: ``|windash`` nests one per value) become one regular
        expression when there are :attr:`alternation_min` or more; the other terms convert as usual."""
        terms = list(_or_terms(cond))
        by_field: dict[str, list[ConditionFieldEqualsValueExpression]] = {}
        for term in terms:
            if isinstance(term, ConditionFieldEqualsValueExpression) and type(term.value) is SigmaString:
                by_field.setdefault(term.field, []).append(term)
        grouped = {id(term) for values in by_field.values() if len(values) >= self.alternation_min for term in values}
        if not grouped:
            return super().convert_condition_or(cond, state)
        converted = [
            self._alternation(field_name, [term.value for term in values])
            for field_name, values in by_field.items()
            if len(values) >= self.alternation_min
        ]
        rest = [term for term in terms if id(term) not in grouped]
        if rest:
            converted.append(self.convert_condition_group(ConditionOR(rest, cond.source), state))
        return " OR ".join(converted)

    def _alternation(self, field_name: str, values: list[SigmaString]) -> str:
        alternatives = "|".join(self.value_regex(value) for value in values)
        return f"regexp_matches({self.lowered(field_name)}, {quote_string('(?is)(?:' + alternatives + ')')})"

    def convert_condition_and(self, cond: ConditionAND, state: ConversionState) -> str:
        """An AND with its terms cheapest first: DuckDB evaluates a term only on the events the terms before it
        kept, so the costly ones (long command lines, ``not`` filters) see few events."""
        return super().convert_condition_and(ConditionAND(sorted(cond.args, key=_cost), cond.source), state)

    def convert_condition_not(self, cond: ConditionNOT, state: ConversionState) -> str | None:
        """``NOT coalesce(..., false)``: a predicate on a field the event lacks is NULL (false where it is
        required), and Sigma's ``not`` of it is true."""
        arg = cond.args[0]
        return None if arg is None else f"NOT coalesce(({self.convert_condition(arg, state)}), false)"

    def convert_value_re(self, r: SigmaRegularExpression, state: ConversionState) -> str:
        return super().convert_value_re(r, state).replace("'", "''")

    def convert_condition_field_eq_val_num(
        self, cond: ConditionFieldEqualsValueExpression, state: ConversionState
    ) -> str:
        return _number(self.escape_and_quote_field(cond.field), "=", cond.value.number)

    def convert_condition_field_compare_op_val(
        self, cond: ConditionFieldEqualsValueExpression, state: ConversionState
    ) -> str:
        value: SigmaCompareExpression = cond.value
        return _number(self.escape_and_quote_field(cond.field), self.compare_operators[value.op], value.number.number)

    def convert_condition_field_eq_val_bool(
        self, cond: ConditionFieldEqualsValueExpression, state: ConversionState
    ) -> str:
        value: SigmaBool = cond.value
        return f"{self.lowered(cond.field)} = {quote_string(str(value.boolean).lower())}"

    def finalize_query_default(self, rule: SigmaRule, query: str, index: int, state: ConversionState) -> str:
        return query


def _or_terms(cond: ConditionItem) -> Iterator[ConditionItem]:
    """The terms of an OR, with nested ORs flattened."""
    for arg in cond.args:
        if isinstance(arg, ConditionOR):
            yield from _or_terms(arg)
        else:
            yield arg


def _rule_fields(detections: Iterable[SigmaDetection]) -> set[str]:
    """The fields a rule's detections read (a field reference's field included)."""
    fields: set[str] = set()
    for detection in detections:
        for item in detection.detection_items:
            if isinstance(item, SigmaDetection):
                fields |= _rule_fields([item])
                continue
            if item.field is not None:
                fields.add(item.field)
            fields |= {value.field for value in item.value if isinstance(value, SigmaFieldReference)}
    return fields


def _cost(term: ConditionItem | ConditionFieldEqualsValueExpression) -> float:
    """A rough cost of evaluating ``term`` on one event, to evaluate an AND's cheap, selective terms first: a
    command line is long, a regular expression slow, and a ``not`` rarely rules an event out."""
    if isinstance(term, ConditionFieldEqualsValueExpression):
        cost = 4.0 if term.field in LONG_FIELDS else 1.0
        return cost * 3 if isinstance(term.value, SigmaRegularExpression) else cost
    if isinstance(term, ConditionNOT):
        return 1000 + _cost(term.args[0])
    if isinstance(term, ConditionOR):
        return sum(_cost(arg) for arg in term.args)
    if isinstance(term, ConditionAND):
        cheapest, *others = sorted(_cost(arg) for arg in term.args)
        return cheapest + 0.1 * sum(others)
    return 1.0


def _number(field_sql: str, operator: str, number: float) -> str:
    if not isinstance(number, int | float) or isinstance(number, bool):
        raise SigmaValueError(f"not a number: {number!r}")
    return f"TRY_CAST({field_sql} AS DOUBLE) {operator} {number!r}"


@dataclass(frozen=True)
class SigmaRuleSql:
    """One converted rule: what a detection carries of it, and its condition over one event's fields."""

    rule_id: str
    title: str
    level: str | None
    tags: list[str]
    event_id: int
    condition: str
    fields: list[str]
    file: str
    status: str | None = None
    author: str | None = None
    references: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class RuleFailure:
    """A rule (or a whole file) that is not evaluated, and why. ``kind``: ``unreadable`` (not a Sigma rule pySigma
    reads, or one without an id), ``logsource`` (not over Sysmon's process creation or network connection),
    ``field`` (needs a field the event does not carry), ``unsupported`` (a feature the conversion lacks, such as
    keywords or correlations), ``sql`` (DuckDB rejects the converted condition)."""

    file: str
    kind: str
    reason: str
    rule_id: str | None = None
    title: str | None = None


@dataclass(frozen=True)
class RuleSet:
    """The converted rules of one folder, the rules that could not be, and the content hash they are cached by."""

    folder: str
    digest: str
    rules: list[SigmaRuleSql]
    failures: list[RuleFailure]

    @property
    def loaded(self) -> int:
        """Rules (and unreadable files) found in the folder."""
        return len(self.rules) + len(self.failures)

    def variables(self) -> dict[str, Any]:
        """What the ``sigma_detections`` model is rendered with (``var('sigma')``): per event id, the fields its
        rules read (each one's column name, its lower-cased twin's, and where it is read from); and the rules,
        numbered."""
        return {
            "columns": {
                event_id: [
                    (name, name + LOWER_SUFFIX, source)
                    for name, source in fields.items()
                    if any(name in rule.fields for rule in self.rules if rule.event_id == event_id)
                ]
                for event_id, fields in EVENT_FIELDS.items()
            },
            "rules": [
                {
                    "index": index,
                    "rule_id": rule.rule_id,
                    "title": rule.title,
                    "level": rule.level,
                    "tags": rule.tags,
                    "event_id": rule.event_id,
                    "condition": rule.condition,
                    "reads_process": any(EVENT_FIELDS[rule.event_id][name].startswith("p.") for name in rule.fields),
                }
                for index, rule in enumerate(self.rules)
            ],
        }


def rule_files(folder: Path) -> list[Path]:
    """The rule files under ``folder``, at any depth, in a stable order."""
    return sorted(path for path in folder.rglob("*") if path.suffix in RULE_SUFFIXES and path.is_file())


def _converter_identity() -> bytes:
    """What else decides a conversion's result: this module's code and the two libraries' versions."""
    return Path(__file__).read_bytes() + f"|pysigma {version('pysigma')}|{version('pysigma-backend-duckdb')}".encode()


def content_digest(folder: Path, files: list[Path]) -> str:
    """A hash of every rule file's path (relative to ``folder``) and bytes, and of the converter."""
    digest = hashlib.sha256(_converter_identity())
    for path in files:
        digest.update(b"\0" + path.relative_to(folder).as_posix().encode() + b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _logsource_event(rule: SigmaRule) -> int | None:
    source = rule.logsource
    if source.product in PRODUCTS and source.service in SERVICES:
        return CATEGORY_EVENTS.get(source.category)
    return None


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def _validation_connection() -> duckdb.DuckDBPyConnection:
    """Empty relations shaped as the model's (every field a text column), to bind each condition against."""
    con = duckdb.connect()
    for event_id, fields in EVENT_FIELDS.items():
        columns = ", ".join(f'"{name}" VARCHAR, "{name}{LOWER_SUFFIX}" VARCHAR' for name in fields)
        con.execute(f"CREATE TABLE sigma_events_{event_id} ({columns})")
    return con


def _rules_of(folder: Path, path: Path) -> Iterator[SigmaRule | RuleFailure]:
    """The rules of one file, or a failure for the file (or for a rule of it) that pySigma cannot read."""
    relative = path.relative_to(folder).as_posix()
    try:
        collection = SigmaCollection.from_yaml(path.read_text(encoding="utf-8"), collect_errors=True)
    except (SigmaError, yaml.YAMLError, UnicodeDecodeError) as error:
        yield RuleFailure(relative, "unreadable", f"not a readable Sigma file: {_first_line(error)}")
        return
    for item in collection.rules:
        rule_id = str(item.id) if getattr(item, "id", None) else None
        title = getattr(item, "title", None)
        if not isinstance(item, SigmaRule):
            yield RuleFailure(
                relative,
                "unsupported",
                f"{type(item).__name__} is not evaluated (only detection rules are)",
                rule_id,
                title,
            )
        elif item.errors:
            yield RuleFailure(
                relative, "unreadable", f"not a valid Sigma rule: {_first_line(item.errors[0])}", rule_id, title
            )
        else:
            yield item


def convert_rules(folder: Path, files: list[Path], digest: str) -> RuleSet:
    """Convert every rule of ``files``; a rule that cannot run over our events is listed with the reason."""
    rules: list[SigmaRuleSql] = []
    failures: list[RuleFailure] = []
    with _validation_connection() as con:
        backend = SysmonDuckDBBackend(
            sysmon_pipeline(), lambda text: con.execute(f"SELECT lower({quote_string(text)})").fetchone()[0]
        )
        for path in files:
            for rule in _rules_of(folder, path):
                if isinstance(rule, RuleFailure):
                    failures.append(rule)
                    continue
                converted = _convert(backend, con, rule, path.relative_to(folder).as_posix())
                (rules if isinstance(converted, SigmaRuleSql) else failures).append(converted)
    return RuleSet(str(folder), digest, rules, failures)


def _convert(
    backend: SysmonDuckDBBackend, con: duckdb.DuckDBPyConnection, rule: SigmaRule, file: str
) -> SigmaRuleSql | RuleFailure:
    rule_id, title = (str(rule.id) if rule.id else None), rule.title
    event_id = _logsource_event(rule)
    if event_id is None:
        source = rule.logsource
        return RuleFailure(
            file,
            LOGSOURCE,
            f"logsource (category={source.category}, product={source.product}, service={source.service}) is neither "
            "process_creation nor network_connection on Windows",
            rule_id,
            title,
        )
    if rule_id is None:
        return RuleFailure(file, "unreadable", "has no id (a detection names its rule by id)", rule_id, title)
    try:
        queries = backend.convert_rule(rule)
    except Exception as error:  # a rule the converter fails on, in whatever way, is listed; the others convert
        kind = "field" if isinstance(error, FieldNotCarriedError) else "unsupported"
        return RuleFailure(file, kind, f"does not convert: {_first_line(error)}", rule_id, title)
    condition = " OR ".join(f"({query})" for query in queries) if len(queries) > 1 else queries[0]
    try:
        con.execute(f"SELECT count(*) FROM sigma_events_{event_id} WHERE {condition}").fetchall()
    except duckdb.Error as error:
        return RuleFailure(file, "sql", f"DuckDB rejects its SQL: {_first_line(error)}", rule_id, title)
    return SigmaRuleSql(
        rule_id=rule_id,
        title=title,
        level=str(rule.level) if rule.level else None,
        tags=[str(tag) for tag in rule.tags],
        event_id=event_id,
        condition=condition,
        fields=sorted(_rule_fields(rule.detection.detections.values())),
        file=file,
        status=str(rule.status) if rule.status else None,
        author=rule.author,
        references=list(rule.references),
    )


def _cache_path(cache_dir: Path, digest: str) -> Path:
    return cache_dir / f"rules-{digest}.json"


def _read_cache(path: Path) -> RuleSet | None:
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        LOG.warning("the Sigma conversion cache %s is unreadable (%s): converting again", path, error)
        return None
    return RuleSet(
        document["folder"],
        document["digest"],
        [SigmaRuleSql(**rule) for rule in document["rules"]],
        [RuleFailure(**failure) for failure in document["failures"]],
    )


def _write_cache(path: Path, rule_set: RuleSet) -> None:
    """Write the cache file whole or not at all: another process may be reading it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".rules-", suffix=".json")
    with os.fdopen(handle, "w", encoding="utf-8") as out:
        json.dump(asdict(rule_set), out)
    os.replace(temporary, path)


# Rule sets loaded by this process, by content digest; and per folder, the files' sizes and modification times
# when their digest was last computed, so that an unchanged folder is not read again to find its digest.
_MEMO: dict[str, RuleSet] = {}
_DIGESTS: dict[Path, tuple[tuple, str]] = {}


def _file_stamps(files: list[Path]) -> tuple[tuple[str, int, int, int], ...]:
    """Each file's path, size, modification time (ns) and inode: what changes when a file is edited or replaced."""
    stamps = []
    for path in files:
        stat = path.stat()
        stamps.append((str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino))
    return tuple(stamps)


def load_rule_set(folder: Path, cache_dir: Path | None) -> RuleSet:
    """The converted rules of ``folder``: from memory or ``cache_dir`` when the rules' content is unchanged, else
    converted (and cached)."""
    folder = folder.resolve()
    files = rule_files(folder)
    stamps = _file_stamps(files)
    known = _DIGESTS.get(folder)
    digest = known[1] if known and known[0] == stamps else content_digest(folder, files)
    _DIGESTS[folder] = (stamps, digest)
    if digest in _MEMO:
        return _MEMO[digest]
    cached = _read_cache(_cache_path(cache_dir, digest)) if cache_dir else None
    rule_set = cached or convert_rules(folder, files, digest)
    if cache_dir and cached is None:
        _write_cache(_cache_path(cache_dir, digest), rule_set)
    _MEMO[digest] = rule_set
    return rule_set


def _shown(source: str) -> str:
    """Where a field is read from, as the docs' mapping table says it."""
    if source == _UTC_TIME:
        return "`event_date_creation` as text, as Sysmon writes `UtcTime`"
    if source.startswith("e."):
        return f"`{source.removeprefix('e.')}`"
    if source.startswith("p."):
        return f"its process create's `{source.removeprefix('p.')}`"
    return f"`{source}`"


def mapping_table() -> str:
    """docs/hunting.md's field mapping table: each Sysmon field and the column each event reads it from."""
    names = list(dict.fromkeys(name for fields in EVENT_FIELDS.values() for name in fields))
    rows = ["| Sigma / Sysmon field | process_creation (event 1) | network_connection (event 3) |", "|---|---|---|"]
    for name in names:
        cells = [_shown(EVENT_FIELDS[event_id][name]) if name in EVENT_FIELDS[event_id] else "-" for event_id in (1, 3)]
        rows.append(f"| `{name}` | {cells[0]} | {cells[1]} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m sysmon_assets.hunting.sigma FOLDER``: convert a folder of rules as the pipeline would and say which
    run, which do not and why; ``--sql`` prints each rule's condition. Exits 1 when a rule for our events does not
    run."""
    parser = argparse.ArgumentParser(
        prog="python -m sysmon_assets.hunting.sigma", description=main.__doc__.splitlines()[0]
    )
    parser.add_argument("folder", type=Path, help="a folder of Sigma rules (*.yml, read recursively)")
    parser.add_argument("--sql", action="store_true", help="print each converted rule's DuckDB condition")
    args = parser.parse_args(argv)
    rule_set = load_rule_set(args.folder, None)
    for rule in rule_set.rules:
        print(f"runs      {rule.file}: {rule.title} ({rule.level}, event {rule.event_id})")
        if args.sql:
            print(f"          {rule.condition}")
    for failure in rule_set.failures:
        print(f"{failure.kind:<9} {failure.file}: {failure.title or ''} - {failure.reason}")
    print(f"{len(rule_set.rules)} of {rule_set.loaded} rules run")
    return int(any(failure.kind != LOGSOURCE for failure in rule_set.failures))


if __name__ == "__main__":
    raise SystemExit(main())
