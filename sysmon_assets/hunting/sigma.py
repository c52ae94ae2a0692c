"""Sigma rules over the Sysmon events: a folder of rules, each converted once to a DuckDB condition.

Rules are read recursively from a folder (``SYSMON_SIGMA_RULES``) and converted with pySigma and its DuckDB
backend, turned to this project's columns (sysmon_assets/hunting/sigma_backend.py). Each rule's ``logsource``
decides which events it sees: ``process_creation`` runs over Sysmon's ProcessCreate events (id 1),
``network_connection`` over its NetworkConnect events (id 3). The conditions name Sysmon's own fields (``Image``,
``CommandLine``, ``DestinationIp``, ...); the ``sigma_detections`` model gives each event one text column per field,
read from the columns of ours that :data:`EVENT_FIELDS` names. A rule that does not parse, has another logsource,
needs a field the event does not carry, or does not convert (or whose SQL DuckDB rejects) is listed in
:attr:`RuleSet.failures` with the reason; none is left out silently.

Converting SigmaHQ's 1,234 rules takes tens of seconds, so a rule set is converted once: the result is kept on disk
under the data folder, named by a hash of the rules' content and of the converter, and in memory for the process.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from importlib.metadata import version
from pathlib import Path
from typing import Any

import duckdb
import yaml
from sigma.collection import SigmaCollection
from sigma.conditions import ConditionFieldEqualsValueExpression
from sigma.conversion.state import ConversionState
from sigma.exceptions import SigmaError
from sigma.filters import SigmaFilter
from sigma.rule import SigmaDetection, SigmaRule
from sigma.types import SigmaFieldReference

from dbt_like.sql import quote_string
from sysmon_assets.hunting.sigma_backend import (
    ABSENT_PREFIX,
    CATEGORY_EVENTS,
    EVENT_FIELDS,
    EVENT_NAMES,
    LOWER_SUFFIX,
    UTC_TIME,
    SysmonDuckDBBackend,
    can_match,
    kept_field,
    sysmon_pipeline,
)

LOG = logging.getLogger(__name__)

RULE_SUFFIXES = (".yml", ".yaml")

# The logsources a rule over Sysmon's events may name besides its category.
PRODUCTS = (None, "windows")
SERVICES = (None, "sysmon")
# The kind of failure of a rule written for another log source: expected when the folder holds every rule of a
# product, so it does not fail the sigma_rules_converted check (the rule is still listed).
LOGSOURCE = "logsource"
FILTER = "filter"


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
    reads, one without an id, or one repeating another's id), ``logsource`` (not over Sysmon's process creation or
    network connection), ``field`` (needs a field the event does not carry), ``unsupported`` (a feature the
    conversion lacks, such as keywords or correlations), ``sql`` (DuckDB rejects the converted condition), ``filter``
    (a Sigma filter naming none of the folder's rules)."""

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
    return sorted(path for path in folder.rglob("*") if path.suffix.lower() in RULE_SUFFIXES and path.is_file())


def _converter_identity() -> bytes:
    """What else decides a conversion's result: this module's code and the backend's, and the two libraries'
    versions."""
    code = b"".join(Path(__file__).with_name(name).read_bytes() for name in ("sigma.py", "sigma_backend.py"))
    return code + f"|pysigma {version('pysigma')}|{version('pysigma-backend-duckdb')}".encode()


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


def _rules_of(folder: Path, path: Path) -> Iterator[SigmaRule | SigmaFilter | RuleFailure]:
    """The rules and filters of one file, or a failure for the file (or for a rule of it) that pySigma cannot read.
    Its filters are not applied here: they name rules of other files too (:func:`_filtered`)."""
    relative = path.relative_to(folder).as_posix()
    try:
        text = path.read_text(encoding="utf-8")
        collection = SigmaCollection.from_yaml(
            text, collect_errors=True, collect_filters=True, resolve_references=False
        )
    except (SigmaError, yaml.YAMLError, UnicodeDecodeError) as error:
        yield RuleFailure(relative, "unreadable", f"not a readable Sigma file: {_first_line(error)}")
        return
    # a file YAML or pySigma fail on in another way (`id: 1`, `date: 2026-13-45`) is listed; the others load
    except Exception as error:
        reason = f"pySigma cannot read it ({type(error).__name__}: {_first_line(error)}): check its fields' values"
        yield RuleFailure(relative, "unreadable", reason)
        return
    for item in [*collection.rules, *collection.filters]:
        rule_id = str(item.id) if getattr(item, "id", None) else None
        title = getattr(item, "title", None)
        if item.errors:
            what = "filter" if isinstance(item, SigmaFilter) else "rule"
            reason = f"not a valid Sigma {what}: {_first_line(item.errors[0])}"
            yield RuleFailure(relative, "unreadable", reason, rule_id, title)
        elif not isinstance(item, (SigmaRule, SigmaFilter)):
            yield RuleFailure(
                relative,
                "unsupported",
                f"{type(item).__name__} is not evaluated (only detection rules are)",
                rule_id,
                title,
            )
        else:
            yield item


def convert_rules(folder: Path, files: list[Path], digest: str) -> RuleSet:
    """Convert every rule of ``files``; a rule that cannot run over our events is listed with the reason."""
    read: list[tuple[str, SigmaRule]] = []
    filters: list[tuple[str, SigmaFilter]] = []
    failures: list[RuleFailure] = []
    for path in files:
        relative = path.relative_to(folder).as_posix()
        for item in _rules_of(folder, path):
            if isinstance(item, RuleFailure):
                failures.append(item)
            elif isinstance(item, SigmaFilter):
                filters.append((relative, item))
            else:
                read.append((relative, item))
    failures += _filtered([rule for _, rule in read], filters)
    rules: list[SigmaRuleSql] = []
    with _validation_connection() as con:
        backend = SysmonDuckDBBackend(
            sysmon_pipeline(), lambda text: con.execute(f"SELECT lower({quote_string(text)})").fetchone()[0]
        )
        for relative, rule in read:
            converted = _convert(backend, con, rule, relative)
            (rules if isinstance(converted, SigmaRuleSql) else failures).append(converted)
    return RuleSet(str(folder), digest, *_first_of_each_id(rules, failures))


def _filtered(rules: list[SigmaRule], filters: list[tuple[str, SigmaFilter]]) -> list[RuleFailure]:
    """Apply each filter to the rules it names (by id or name, for its log source), as pySigma applies a folder's
    filters; a filter that names none of them is a failure: it filters nothing."""
    failures = []
    for file, sigma_filter in filters:
        applied = False
        for rule in rules:
            before = len(rule.detection.detections)
            sigma_filter.apply_on_rule(rule)  # adds its detections to the rule's, and its condition to each
            applied |= len(rule.detection.detections) > before
        if not applied:
            reason = "a filter whose rules are none of the folder's rules (for its log source): it filters nothing"
            failures.append(RuleFailure(file, FILTER, reason, str(sigma_filter.id or "") or None, sigma_filter.title))
    return failures


def _first_of_each_id(
    rules: list[SigmaRuleSql], failures: list[RuleFailure]
) -> tuple[list[SigmaRuleSql], list[RuleFailure]]:
    """The rules, but a rule whose id an earlier file's rule has (a detection names its rule by id, so both would
    give one rule's hits twice) moved to the failures."""
    first: dict[str, SigmaRuleSql] = {}
    for rule in rules:
        if rule.rule_id in first:
            reason = f"repeats the id of {first[rule.rule_id].file} (a detection names its rule by id)"
            failures.append(RuleFailure(rule.file, "unreadable", reason, rule.rule_id, rule.title))
        else:
            first[rule.rule_id] = rule
    return list(first.values()), failures


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
        return RuleFailure(file, "unsupported", f"does not convert: {_first_line(error)}", rule_id, title)
    condition = " OR ".join(f"({query})" for query in queries) if len(queries) > 1 else queries[0]
    try:
        con.execute(f"SELECT count(*) FROM sigma_events_{event_id} WHERE {condition}").fetchall()
    except duckdb.Error as error:
        return RuleFailure(file, "sql", f"DuckDB rejects its SQL: {_first_line(error)}", rule_id, title)
    read = _rule_fields(rule.detection.detections.values())
    absent = sorted(name.removeprefix(ABSENT_PREFIX) for name in read if name.startswith(ABSENT_PREFIX))
    if absent and not can_match(rule, lambda leaf: _constant(backend, con, leaf)):
        fields = " and ".join(repr(name) for name in absent)
        reason = f"needs field {fields}, which {EVENT_NAMES[event_id]} does not carry (no event could match)"
        return RuleFailure(file, "field", f"does not convert: {reason}", rule_id, title)
    return SigmaRuleSql(
        rule_id=rule_id,
        title=title,
        level=str(rule.level) if rule.level else None,
        tags=[str(tag) for tag in rule.tags],
        event_id=event_id,
        condition=condition,
        fields=sorted(name for name in read if not name.startswith(ABSENT_PREFIX)),
        file=file,
        status=str(rule.status) if rule.status else None,
        author=rule.author,
        references=list(rule.references),
    )


def _constant(
    backend: SysmonDuckDBBackend, con: duckdb.DuckDBPyConnection, leaf: ConditionFieldEqualsValueExpression
) -> bool | None:
    """A condition's value where it reads no column (only fields the event does not carry, which are NULL), as the
    rule's SQL reads it (NULL is false); None where it reads a column."""
    sql = backend.convert_condition(leaf, ConversionState())
    try:
        return bool(con.execute(f"SELECT coalesce(({sql}), false)").fetchone()[0])
    except duckdb.BinderException:
        return None


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
    """Write the cache file whole or not at all: another process may be reading it. A folder the user may not
    write costs a conversion per process, not the rules."""
    temporary = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=".rules-", suffix=".json")
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(asdict(rule_set), out)
        os.replace(temporary, path)
    except OSError as error:  # a folder the user may not write, a full disk
        LOG.warning("cannot cache the converted Sigma rules in %s (%s): each process converts them", path.parent, error)
        if temporary is not None:
            Path(temporary).unlink(missing_ok=True)


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


def _shown(name: str, source: str) -> str:
    """Where a field is read from, as the docs' mapping table says it."""
    if source == UTC_TIME:
        return "`event_date_creation` as text, as Sysmon writes `UtcTime`"
    if source == kept_field(name):
        return f"`_extra_fields['{name}']`, the name in any letter case"
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
        cells = [
            _shown(name, EVENT_FIELDS[event_id][name]) if name in EVENT_FIELDS[event_id] else "-" for event_id in (1, 3)
        ]
        rows.append(f"| `{name}` | {cells[0]} | {cells[1]} |")
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> int:
    """``python -m sysmon_assets.hunting.sigma FOLDER``: convert a folder of rules as the pipeline would and say which
    run, which do not and why; ``--sql`` prints each rule's condition. Exits 1 when a rule for our events does not
    run."""
    parser = argparse.ArgumentParser(
        prog="python -m sysmon_assets.hunting.sigma", description=main.__doc__.splitlines()[0]
    )
    parser.add_argument("folder", type=Path, help="a folder of Sigma rules (*.yml and *.yaml, read recursively)")
    parser.add_argument("--sql", action="store_true", help="print each converted rule's DuckDB condition")
    args = parser.parse_args(argv)
    if not args.folder.is_dir():
        parser.error(f"{args.folder} is not a folder")
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
