"""Run models incrementally into DuckDB or a DuckLake: one model step = one transaction.

Every model table carries ``_batch_id``, the batch that committed the row. A downstream
model remembers, per input, the last batch it consumed (its offset, in ``dbt_like.offsets``)
and commits its new rows together with its new offsets, so a crash at any point followed by
a rerun gives the tables one clean run would have given (but for a wait that depends on time: the rerun's batch
time measures the grace of the steps the crash left undone). A step behind by several batches of its inputs (its
runs failed, or were left out) catches up one upstream batch per transaction.

How each materialization (``stream``, ``table``, ``view``) writes a step's rows: dbt_like/materializations.py.
A stream may retry its input's unmatched rows (``retry_unmatched``): the runner keeps them waiting
(``dbt_like.pending``) and, once their grace ends, for the models that read them (``dbt_like.unmatched``).

Any model may declare ``duckdb_settings={'<name>': <value>}``: DuckDB settings SET for its step and set back after
(SQLMesh's ``session_properties``), for a query DuckDB plans badly with its defaults.

Shards: K projects (``Shard(i, K)``) may write one lake at once. Shard i owns the batch ids i+1, i+1+K, ...;
its steps consume only its own batches' rows and keep their own offsets and pending rows, so each shard is
a pipeline of its own over its part of the input. Steps that read what is already in their table to decide
what to write (a ``dedupe_key`` stream, a ``table``) take turns: they replace a guard row of their model,
and of two shards' concurrent steps on it, the second to commit conflicts and runs again.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import duckdb

from dbt_like.compiler import (
    PENDING_TABLE,
    STATE_SCHEMA,
    UNMATCHED_TABLE,
    Shard,
    StepContext,
    delta_relation,
    model_config,
    render_step,
)
from dbt_like.concurrency import (
    CATALOG_GUARD,
    MAX_ATTEMPTS,
    ConcurrentWriterError,
    lost_race,
    pause_before_retry,
    rollback,
)
from dbt_like.lake_at_open import LakeAtOpen, TableFigures, read_lake_at_open
from dbt_like.materializations import append, new_columns, upsert, view_outdated
from dbt_like.project import Model, ProjectError, discover_models
from dbt_like.schema_tests import TestResult, run_schema_tests
from dbt_like.sql import (
    UTC_NOW,
    Connection,
    first_row,
    literal,
    literals,
    one_of,
    quote_identifier,
    scalar,
    settings_applied,
)
from dbt_like.state import (
    GUARDS_TABLE,
    SINGLE,
    STATE_DDL,
    Batch,
    UnseededState,
    ensure_state,
    find_or_add_batch,
    table_columns,
    table_exists,
    unread_rows,
    view_sql,
)

T = TypeVar("T")
LOG = logging.getLogger(__name__)
# A step's note: the models whose unread rows held it back (see Project._hold_back_for_tables)
WAITING_FOR = "waiting_for"


@dataclass
class StepResult:
    """What one model step read and wrote, for run metadata."""

    model: str
    rows_in: int = 0
    rows_written: int = 0
    offsets_before: dict[str, int] = field(default_factory=dict)
    offsets_after: dict[str, int] = field(default_factory=dict)
    pending: int | None = None
    pending_floor: int | None = None
    expired: int | None = None
    unmatched_read: dict[str, int] = field(default_factory=dict)  # per model: the rows that stopped waiting, read
    unmatched_let_go: list[str] = field(default_factory=list)  # the models whose read rows the step lets go of
    # a retried step's table inputs: the newest batch that wrote each, at its last step and now (one writer only)
    tables_before: dict[str, int] = field(default_factory=dict)
    tables_after: dict[str, int] = field(default_factory=dict)
    table_rows: int | None = 0  # None for a view: counting its rows would run its whole query every batch
    tests: list[TestResult] = field(default_factory=list)
    notes: dict[str, Any] = field(default_factory=dict)
    # per stream input the step lags behind: the newest batch it holds, past this transaction's window
    behind: dict[str, int] = field(default_factory=dict)


class _NothingNew(Exception):
    """A step whose inputs brought nothing since its last commit: it commits nothing (no empty snapshot)."""


def _unmatched_window_end(newest: int, last_ended: int, before: int) -> int:
    """The last batch a model reads of an input whose unmatched rows it reads: the input's ``newest`` batch, or the
    ``last_ended`` batch that ended waits, if later (a batch may end waits and write no row); never ``before``
    where the window starts (the rows read may have been let go of)."""
    return max(newest, last_ended, before)


def _carry_over(result: StepResult, earlier: StepResult) -> None:
    """What the step's ``earlier`` transactions read, kept in ``result``, the figures of its latest transaction (which
    counts rows on from the earlier ones): where the step started, and what the earlier ones ended and let go of."""
    result.offsets_before, result.tables_before = earlier.offsets_before, earlier.tables_before
    if earlier.expired is not None:
        result.expired = earlier.expired + (result.expired or 0)
    for upstream, ended in earlier.unmatched_read.items():
        result.unmatched_read[upstream] = ended + result.unmatched_read.get(upstream, 0)
    result.unmatched_let_go = list(dict.fromkeys(earlier.unmatched_let_go + result.unmatched_let_go))


def _idle(result: StepResult) -> bool:
    """Whether a prepared step has nothing to do: no stream input gained a batch, no waiting row left the retry
    (its deletion must commit), and nothing waits or what waits can match nothing new (no table it reads was
    written since its last step). A model without stream inputs (it reads whole tables) is never idle."""
    moved = any(result.offsets_after[name] != result.offsets_before[name] for name in result.offsets_after)
    unchanged_tables = bool(result.tables_after) and result.tables_after == result.tables_before
    retry_idle = not result.expired and (result.pending_floor is None or unchanged_tables)
    return bool(result.offsets_after) and not moved and retry_idle


CommitNote = Callable[[Connection, str, Batch], None]


class Project:
    """A discovered set of models with the variables they are rendered under."""

    # Rows that stopped waiting are let go of once this many are kept (and only those every reader has read): a
    # DELETE costs a lake statement (about 0.02 s), and the rows few batches keep are cheap to keep.
    let_go_of_unmatched_at = 10_000

    def __init__(
        self,
        models_dir: Path,
        variables: Mapping[str, Any] | None = None,
        commit_note: CommitNote | None = None,
        shard: Shard = SINGLE,
        state_ddl: str = "",
    ) -> None:
        """``commit_note(con, model, batch)`` runs inside every step's transaction just before it commits (a
        DuckLake labels the snapshot with it). ``shard``: which of the lake's writers this project is.
        ``state_ddl``: the caller's own bookkeeping tables (``CREATE ... IF NOT EXISTS``), created with the
        project's, where shards that start together retry the race to create them."""
        self.models_dir = models_dir
        self.state_ddl = state_ddl
        self.commit_note = commit_note
        self.shard = shard
        self.variables = dict(variables or {})
        self.models: dict[str, Model] = discover_models(models_dir)
        self.configs = {name: model_config(model, self.variables) for name, model in self.models.items()}
        for name in self.configs:
            if self.configs[name].get("part_of") and self.stream_inputs(name):
                raise ProjectError(
                    f"{self.models[name].path}: a side model (part_of) reads only the rows of its step; its own "
                    f"stream input(s) {', '.join(self.stream_inputs(name))} would be read again in each transaction "
                    "of the step: make it a model of its own"
                )
        # per step transaction: the highest _seq the step's model had of the batch before it wrote (side models
        # read above it)
        self._part_of_floor: dict[str, int | None] = {}
        self._columns_checked: set[str] = set()
        self._existing: set[str] = set()
        self._batches: dict[str, Batch] = {}
        # batches this project opened as the lake's one writer: the lake when each opened, the models written since
        self._at_open: dict[int, LakeAtOpen] = {}
        self._wrote: dict[int, set[str]] = {}
        self._state_ready = False
        self._created_relation = False  # or altered, by the transaction running now
        # each model's last rendering and what it was rendered from: a step renders once, not once per chunk
        self._rendered: dict[str, tuple[StepContext, str]] = {}

    def stream_inputs(self, name: str) -> list[str]:
        """Upstream stream models whose delta ``name`` consumes (a view reads them whole: none; a side model
        reads the rows its step wrote into the model it is part of: no offset either)."""
        if self.configs[name]["materialized"] == "view":
            return []
        part_of = self.configs[name].get("part_of")
        return [
            ref for ref in self.models[name].refs if self.configs[ref]["materialized"] == "stream" and ref != part_of
        ]

    def retry_marked_tables(self, name: str) -> list[str]:
        """The tables a retried model reads whole, when they tell whether its waiting rows could match anything new:
        with one writer a table's newest ``_batch_id`` grows with every write, so an unchanged one means an
        unchanged table. Empty (always retry) with shards, whose batch ids interleave, or when the model reads
        anything else whole (a view)."""
        config = self.configs[name]
        if not config.get("retry_unmatched") or self.shard.count > 1:
            return []
        streams = set(self.stream_inputs(name))
        whole = [ref for ref in self.models[name].refs if ref not in streams and ref != config.get("part_of")]
        tables = [ref for ref in whole if self.configs[ref]["materialized"] == "table"]
        return tables if tables == whole else []

    def side_models(self, name: str) -> list[str]:
        """Models declared ``part_of=name``: written in the same transaction as ``name``."""
        return [other for other, config in self.configs.items() if config.get("part_of") == name]

    def serialized_models(self) -> list[str]:
        """Models whose steps read their own table to decide what to write: shards take turns on them."""
        return [
            name
            for name, config in self.configs.items()
            if config["materialized"] == "table" or config.get("dedupe_key")
        ]

    def primary_models(self) -> list[str]:
        """Models that stand on their own (not ``part_of`` another), in dependency order."""
        return [name for name, config in self.configs.items() if not config.get("part_of")]

    def run_step(
        self,
        con: Connection,
        name: str,
        batch: Batch,
        source_chunks: Iterable[Mapping[str, Any]] | None = None,
        before_commit: Callable[[Connection], None] | None = None,
        after_commit: Callable[[], None] | None = None,
    ) -> list[StepResult]:
        """Run one incremental step of ``name`` (and its side models) transactionally.

        A step that reads its inputs' deltas is one transaction: its rows and its new offsets.
        A step fed by ``source_chunks`` (each chunk maps source names to objects DuckDB can scan,
        such as DataFrames) commits once per chunk: the chunk's rows together with the source's
        positions, written by ``before_commit``, so memory stays bounded by a chunk and a crash
        still neither loses nor repeats a row (the next run goes on from the last commit); ``after_commit``
        runs once each commit has succeeded (a transaction that conflicts runs again, ``before_commit`` too).
        The model's ``duckdb_settings`` hold while the step runs.
        """
        with settings_applied(con, self.configs[name].get("duckdb_settings", {})):
            return self._run_step(con, name, batch, source_chunks, before_commit, after_commit)

    def _run_step(
        self,
        con: Connection,
        name: str,
        batch: Batch,
        source_chunks: Iterable[Mapping[str, Any]] | None,
        before_commit: Callable[[Connection], None] | None,
        after_commit: Callable[[], None] | None,
    ) -> list[StepResult]:
        self._ensure_state(con)
        names = [name, *self.side_models(name)]
        results = [StepResult(model=model) for model in names]
        checked = False
        if source_chunks is None:
            quiet = self._quiet_results(names, batch, con)
            if quiet is not None:
                if after_commit:
                    after_commit()
                return quiet
            checked = self._transaction(con, names, batch, {}, results, before_commit)
            while any(result.behind for result in results):  # one upstream batch per transaction (see _prepare)
                so_far = copy.deepcopy(results)
                self._transaction(con, names, batch, {}, results, before_commit)
                for result, earlier in zip(results, so_far, strict=True):
                    _carry_over(result, earlier)
            if after_commit:
                after_commit()
        else:
            for chunk in source_chunks:
                relations = self._register(con, chunk)
                self._transaction(con, names, batch, relations, results, before_commit)
                if after_commit:
                    after_commit()
                for relation in relations.values():
                    con.unregister(relation)
        if not checked and not self._checked_at_open(batch, results, con):
            con.begin()  # one read transaction: a lake reads its catalog once for all of them, not once per query
            try:
                self._check(con, names, batch, results)
            finally:
                con.rollback()
        return results

    def _checked_at_open(self, batch: Batch, results: list[StepResult], con: Connection | None) -> bool:
        """Whether a step that wrote no rows took its tests and row counts from the lake as its batch opened (the
        batch has no rows to test; the tables hold what they held then; the counts are read once per batch, on
        first need, with ``con``). A view has rows of the batch only when a table it reads got rows in the batch
        (its ``_batch_id`` is theirs)."""
        at_open = self._at_open.get(batch.batch_id)
        if at_open is None or any(r.rows_written for r in results):
            return False
        wrote = self._wrote[batch.batch_id]
        for result in results:
            model = result.model
            if not self._is_view(model):
                if model not in at_open.tables:
                    return False
            elif (reads := self._tables_read(model)) & wrote or not reads <= self.models.keys():
                return False  # a table it reads wrote rows in the batch, or it reads a source
        figures = at_open.figures(con)
        if figures is None:
            return False
        for result in results:
            result.table_rows = None if self._is_view(result.model) else figures.rows[result.model]
            result.tests = [TestResult(result.model, test, 0) for test in self.models[result.model].tests]
        return True

    def _tables_read(self, name: str) -> set[str]:
        """The tables (and sources) a model reads, through the views it reads."""
        model = self.models[name]
        tables = set(model.sources)
        for ref in model.refs:
            tables |= self._tables_read(ref) if self._is_view(ref) else {ref}
        return tables

    def _check(self, con: Connection, names: list[str], batch: Batch, results: list[StepResult]) -> None:
        """The models' schema tests and row counts, as the open transaction sees them."""
        for model, result in zip(names, results, strict=True):
            result.tests = run_schema_tests(con, self.models[model], batch.batch_id)
            result.table_rows = None if self._is_view(model) else scalar(con, f"SELECT count(*) FROM {model}")

    def open_batch(self, con: Connection, run_key: str, started_at: datetime) -> Batch:
        """:func:`open_batch`, remembered (every step of a run asks for its batch), in a guarded transaction:
        two runs of one shard that open batches at once cannot both get the same id."""
        if run_key not in self._batches:

            def claim_next_batch() -> tuple[tuple[Batch, LakeAtOpen | None, list[str]], int]:
                if not self._state_ready:  # an existing lake's state is checked in this transaction, not its own
                    ensure_state(con, self.shard, self._state_guards(), self.state_ddl, seed=False)
                batch, added = find_or_add_batch(con, run_key, started_at, self.shard)
                tables = [name for name in self.models if not self._is_view(name)]
                at_open = read_lake_at_open(con, tables, self.shard.index) if added and self.shard.count == 1 else None
                unchanged = self._unchanged_columns(con, batch, at_open) if at_open else []
                return (batch, at_open, unchanged), batch.batch_id

            what = f"opening the batch of run {run_key}"
            try:
                batch, at_open, unchanged = self._guarded(con, what, None, [], claim_next_batch)
            except (duckdb.CatalogException, UnseededState):
                if self._state_ready:
                    raise
                self._ensure_state(con)  # a new lake: its bookkeeping tables are made and seeded first, on their own
                batch, at_open, unchanged = self._guarded(con, what, None, [], claim_next_batch)
            self._state_ready = True
            if at_open:  # one writer has one batch open at a time: earlier batches' readings are done with
                self._at_open, self._wrote = {batch.batch_id: at_open}, {batch.batch_id: set()}
                self._existing.update(at_open.tables)
                self._columns_checked.update(unchanged)
            self._batches[run_key] = batch
        return self._batches[run_key]

    def opened_batch(self, run_key: str) -> Batch | None:
        """The batch this project opened for ``run_key`` (see :meth:`open_batch`), if it did."""
        return self._batches.get(run_key)

    def quiet_step(self, name: str, batch: Batch) -> list[StepResult] | None:
        """The results of the step of ``name`` in ``batch``, when the lake as the batch opened shows it has
        nothing to do; None when the step must run (see :meth:`run_step`). Needs no connection: a caller may skip
        opening one."""
        if self.models[name].sources:
            return None
        return self._quiet_results([name, *self.side_models(name)], batch)

    def _quiet_results(self, names: list[str], batch: Batch, con: Connection | None = None) -> list[StepResult] | None:
        """The results of a step that, by the lake as its batch opened, has nothing to do, or None when that
        cannot be told without running the step: with shards, in a batch another process opened or whose clock has
        a time zone, for an input an earlier step of the batch wrote rows to, a view, the batch's last step, or a
        model whose columns were not checked as the batch opened, or without ``con`` when the tables' figures are not
        read yet. The step's tests pass: the batch has no rows in its tables."""
        at_open = self._at_open.get(batch.batch_id)
        if at_open is None or batch.started_at.tzinfo is not None:
            return None
        if names[0] == self.primary_models()[-1] or any(map(self._is_view, names)):
            return None
        if not self._columns_checked.issuperset(names):
            return None
        wrote = self._wrote.get(batch.batch_id, set())
        if any(ref in wrote for model in names for ref in self.models[model].refs):
            return None
        figures = at_open.figures(con)
        if figures is None:
            return None
        results = [self._result_at_open(at_open, figures, model, batch) for model in names]
        if not all(result is not None and _idle(result) for result in results):
            return None
        self._checked_at_open(batch, results, con)
        return results

    def _result_at_open(
        self, at_open: LakeAtOpen, figures: TableFigures, model: str, batch: Batch
    ) -> StepResult | None:
        """What the step of ``model`` would read, by ``at_open`` (None: its table or a table it reads is missing, or
        waiting rows expire now, which the step must delete)."""
        part_of = self.configs[model].get("part_of")
        reads = [ref for ref in self.models[model].refs if ref != part_of and not self._is_view(ref)]
        if any(table not in at_open.tables for table in [model, *reads]):
            return None
        result = StepResult(model=model)
        config = self.configs[model]
        tables = self.retry_marked_tables(model) if config.get("retry_unmatched") else []
        inputs = [(upstream, result.offsets_before, result.offsets_after) for upstream in self.stream_inputs(model)]
        inputs += [(table, result.tables_before, result.tables_after) for table in tables]
        for upstream, before, after in inputs:
            if upstream not in figures.newest:
                return None
            before[upstream] = at_open.offsets.get((model, upstream), 0)
            after[upstream] = figures.newest[upstream]
            if after is result.offsets_after:  # a stream input: as _prepare reads it, never below the step's offset
                after[upstream] = max(after[upstream], before[upstream])
            if upstream in self.models[model].unmatched:
                last_ended = at_open.unmatched.get(upstream, 0)
                after[upstream] = _unmatched_window_end(after[upstream], last_ended, before[upstream])
        if config.get("retry_unmatched"):
            waiting = at_open.waiting.get(model)
            grace = timedelta(minutes=int(config.get("retry_grace_minutes", 0)))
            if waiting and waiting.first_seen < batch.started_at - grace:
                return None
            result.expired, result.pending_floor = 0, waiting.floor if waiting else None
        return result

    def _state_guards(self) -> list[str]:
        """The guard rows beyond the shards': with shards, one per serialized model and the catalog's."""
        if self.shard.count == 1:
            return []
        return [f"model:{name}" for name in self.serialized_models()] + [CATALOG_GUARD]

    def _ensure_state(self, con: Connection) -> None:
        """Create a new lake's bookkeeping tables in one transaction, then seed them (:func:`ensure_state`) in the
        next. Rows that the transaction creating a DuckLake 0.3 table inserts go to a second inlined-data table of
        another schema version, and every later read of the table then loads the catalog as of that version too
        (each load a round of catalog queries): seeded apart, all bookkeeping tables keep the one version."""
        if self._state_ready:
            return

        def create_tables() -> tuple[None, None]:
            con.execute(STATE_DDL + self.state_ddl)
            return None, None

        def seed() -> tuple[None, None]:
            ensure_state(con, self.shard, self._state_guards(), self.state_ddl)
            return None, None

        # Shards that start together race to create the same tables, then to seed them (see _record_shard_count):
        # the losers' transactions conflict and retry.
        self._guarded(con, "creating the bookkeeping tables", None, [], create_tables, claim=False)
        self._guarded(con, "seeding the bookkeeping tables", None, [], seed, claim=False)
        self._state_ready = True

    def _guard_rows(self, con: Connection) -> list[tuple]:
        return con.execute(
            f"SELECT batch_id, model, committed_at FROM {GUARDS_TABLE} "
            f"WHERE {one_of('guard', f'shard-{self.shard.index}')} ORDER BY ALL"
        ).fetchall()

    def _guarded(
        self,
        con: Connection,
        what: str,
        batch_id: int | None,
        models: list[str],
        work: Callable[[], tuple[T, int | None]],
        claim: bool = True,
    ) -> T:
        """Run ``work`` in a transaction that replaces the shard's guard row (and ``models``' guard rows when
        shards take turns on them), retrying on conflict.

        ``work`` returns its value and the batch id it wrote for. A conflict is retried unless the shard's own
        guard row changed meanwhile: then another run of the same shard is writing, which would break the
        order of batch ids the offsets rely on. A batch older than the shard's last writer fails the same way.
        Without ``claim`` (creating the guards table itself) every conflict is retried.
        """
        serialized = set(self.serialized_models()) if self.shard.count > 1 else set()
        for attempt in range(1, MAX_ATTEMPTS + 1):
            seen: list[tuple] | None = None
            self._created_relation = False
            con.begin()
            try:
                seen = self._guard_rows(con) if claim else []
                latest = max((row[0] for row in seen), default=0)
                if batch_id is not None and latest > batch_id:
                    raise ConcurrentWriterError(
                        f"{what} was refused: batch {latest} of shard {self.shard.index} has already written "
                        "(another run of the same shard is writing to this lake; one run per shard at a time)"
                    )
                value, written_for = work()
                if claim:
                    guards = [f"model:{m}" for m in models if m in serialized]
                    if self._created_relation and self.shard.count > 1:
                        guards.append(CATALOG_GUARD)
                    self._claim(con, written_for, guards, models)
                con.commit()
                return value
            except duckdb.Error as error:
                rollback(con)
                if not lost_race(error):
                    raise
                if seen is None or attempt == MAX_ATTEMPTS or (claim and self._guard_rows(con) != seen):
                    raise ConcurrentWriterError(
                        f"{what} was rolled back: another writer committed to the same tables meanwhile "
                        f"(one run per shard at a time): {error}"
                    ) from error
                LOG.info("%s lost a race with another writer (attempt %d), running it again: %s", what, attempt, error)
                pause_before_retry(attempt)
            except BaseException:
                rollback(con)
                raise
        raise AssertionError("unreachable: the last attempt returns or raises")

    def _claim(self, con: Connection, batch_id: int | None, guards: list[str], models: list[str]) -> None:
        label = models[0] if models else "open_batch"
        for guard in [f"shard-{self.shard.index}", *guards]:
            con.execute(f"DELETE FROM {GUARDS_TABLE} WHERE {one_of('guard', guard)}")
            con.execute(f"INSERT INTO {GUARDS_TABLE} VALUES ({literals(guard, batch_id, label)}, {UTC_NOW})")

    def _is_view(self, name: str) -> bool:
        return self.configs[name]["materialized"] == "view"

    def exists(self, con: Connection, name: str) -> bool:
        """Whether the model's table (or view) exists, remembered once true (models are never dropped while a
        project runs). Only the name asked for is remembered: a listing read inside a transaction would also
        show the tables that transaction created, which a rollback takes back."""
        if name not in self._existing:
            if not (view_sql(con, name) is not None if self._is_view(name) else table_exists(con, name)):
                return False
            self._existing.add(name)
        return True

    def _transaction(
        self,
        con: Connection,
        names: list[str],
        batch: Batch,
        relations: dict[str, str],
        results: list[StepResult],
        before_commit: Callable[[Connection], None] | None,
    ) -> bool:
        """Run the step's transaction; True when the step had nothing to do, and its tests and row counts were
        then read in that transaction (an idle batch's steps open one transaction each, not two)."""
        self._add_columns_once(con, names, batch, relations)
        started = copy.deepcopy(results)
        # The last step always commits: its snapshot is the one that marks the batch whole for readers.
        may_idle = not relations and names[0] != self.primary_models()[-1]

        def write_models() -> tuple[None, int]:
            results[:] = copy.deepcopy(started)  # a retried transaction counts from where this one started
            for model, result in zip(names, results, strict=True):
                self._prepare(con, model, batch, result)
            if may_idle and all(self._idle(con, r, batch, relations) for r in results):
                self._check(con, names, batch, results)
                raise _NothingNew
            if len(names) > 1:
                self._part_of_floor = {names[0]: self._last_seq_of_batch(con, names[0], batch)}
            for model, result in zip(names, results, strict=True):
                written_before = result.rows_written
                self._write(con, model, batch, relations, result)
                if model == names[0] and len(names) > 1:
                    self._check_side_models_see(con, model, batch, result.rows_written - written_before)
                self._finish(con, model, batch, result)
            if before_commit:
                before_commit(con)
            if self.commit_note:
                self.commit_note(con, names[0], batch)
            return None, batch.batch_id

        try:
            self._guarded(con, f"step {names[0]} of batch {batch.batch_id}", batch.batch_id, names, write_models)
        except _NothingNew:
            return True
        if batch.batch_id in self._wrote:
            self._wrote[batch.batch_id].update(r.model for r in results if r.rows_written or r.expired)
        return False

    def _idle(self, con: Connection, result: StepResult, batch: Batch, relations: dict[str, str]) -> bool:
        """Whether the prepared step of ``result.model`` has nothing to write: a view whose stored query is the
        one it would store now, a table or stream that exists and whose inputs brought nothing."""
        if self._is_view(result.model):
            query = self._compile(result.model, batch, relations, result)
            return not view_outdated(con, result.model, query)
        return _idle(result) and self.exists(con, result.model)

    def _unchanged_columns(self, con: Connection, batch: Batch, at_open: LakeAtOpen) -> list[str]:
        """The models whose queries, bound in the batch-opening transaction, bring no column their tables lack (so
        their steps need no probe, nor a connection when quiet): every table model reading tables only, unless one
        of them gained a column, which may change what the models downstream of it select."""
        probed = [
            name
            for name in self.models
            if name not in self._columns_checked
            and not self._is_view(name)
            and not self.models[name].sources
            and all(table in at_open.columns for table in [name, *self.models[name].refs])
        ]
        for name in probed:
            try:
                gained = new_columns(con, self._schema_probe(name, batch, {}), at_open.columns[name])
            except duckdb.BinderException:  # it selects a column a model upstream adds to its table in its step
                return []
            if gained:
                return []
        return probed

    def _add_columns_once(self, con: Connection, names: list[str], batch: Batch, relations: dict[str, str]) -> None:
        """Add the columns the models gained to their tables, on their first step in this process."""
        for model in names:
            if model not in self._columns_checked and not self._is_view(model) and self.exists(con, model):
                self._add_new_columns(con, model, self._schema_probe(model, batch, relations), batch.batch_id)
            self._columns_checked.add(model)

    def _schema_probe(self, name: str, batch: Batch, relations: dict[str, str]) -> str:
        """The model's query over empty deltas: only its columns and types matter."""
        step = StepContext(
            batch_id=batch.batch_id,
            batch_time=batch.started_at.isoformat(sep=" "),
            upper_bounds=dict.fromkeys(self.models[name].refs, 0),
            sources=relations,
            execute=False,
        )
        return f"({render_step(self.models[name], self.configs, self.variables, step).strip().rstrip(';')})"

    def _add_new_columns(self, con: Connection, name: str, query: str, batch_id: int) -> None:
        """dbt's ``on_schema_change='append_new_columns'``: columns the model gained (a newer version of
        its SQL) are added to the table, NULL in the rows written before (a change of the catalog: shards take
        turns on it)."""
        listed = self._at_open[batch_id].columns.get(name) if batch_id in self._at_open else None
        existing = listed if listed is not None else {column for column, _ in table_columns(con, name)}
        added = new_columns(con, query, existing)
        if not added:
            return

        def alter() -> tuple[None, int]:
            present = {column.lower() for column, _ in table_columns(con, name)}  # another shard may have added them
            for column, kind in added:
                if column.lower() not in present:
                    con.execute(f"ALTER TABLE {name} ADD COLUMN {quote_identifier(column)} {kind}")
                    self._created_relation = True
            return None, batch_id

        self._guarded(con, f"adding the new columns of {name}", batch_id, [], alter)

    @staticmethod
    def _register(con: Connection, chunk: Mapping[str, Any]) -> dict[str, str]:
        relations = {}
        for source, frame in chunk.items():
            relation = f"__source_{source}"
            con.register(relation, frame)
            relations[source] = relation
        return relations

    def _prepare(self, con: Connection, name: str, batch: Batch, result: StepResult) -> None:
        for upstream in self.models[name].refs:
            if upstream != self.configs[name].get("part_of") and not self.exists(con, upstream):
                raise ProjectError(f"model {name} reads {upstream}, which has not been materialized yet")
        inputs, marked, figures = self.stream_inputs(name), self.retry_marked_tables(name), []
        # a model without stream inputs (one fed by source chunks: every chunk is a transaction) keeps no offsets
        stored = self._stored_offsets(con, name) if inputs or marked else {}
        for upstream in inputs:
            # an input added to a model that has run is read from the batches the model has not read yet
            before = result.offsets_before[upstream] = stored.get(upstream, max(stored.values(), default=0))
            # only the batches above `before`: the catalog's statistics let the scan skip every file of older ones
            figures.append(
                f"(SELECT [coalesce(min(_batch_id), 0), coalesce(max(_batch_id), {before})] "
                f"FROM {upstream} WHERE _batch_id > {before} AND {self.shard.owns()})"
            )
            if upstream in self.models[name].unmatched:
                figures.append(
                    f"(SELECT {{'ended': coalesce(list(batch_id) FILTER (batch_id > {before}), []), 'kept': count(*)}} "
                    f"FROM {UNMATCHED_TABLE} WHERE {self.shard.rows_of(upstream)})"
                )
        values = iter(first_row(con, "SELECT " + ", ".join(figures)) if figures else ())  # one statement for all
        gained_first, newest, ended_in, kept = {}, {}, {}, {}
        for upstream in inputs:
            gained_first[upstream], newest[upstream] = next(values)
            if upstream in self.models[name].unmatched:
                waits = next(values)
                ended_in[upstream], kept[upstream] = waits["ended"], waits["kept"]
        # A step that lags behind (its last step failed, or it was not run) catches up one upstream batch per
        # transaction (the batches its inputs gained rows in, or ended waits in).
        firsts = [first for first in gained_first.values() if first] + [min(e) for e in ended_in.values() if e]
        window_end = min(firsts, default=0)
        # this transaction's own (a lagging step's earlier transactions are counted by _carry_over); a step that lets
        # go of what its readers have read does so after each of its transactions
        letting_go = result.unmatched_let_go
        result.behind, result.unmatched_read, result.unmatched_let_go = {}, {}, []
        for upstream in inputs:
            before, ended = result.offsets_before[upstream], ended_in.get(upstream, [])
            last = max([newest[upstream], *ended])  # a batch may end waits and write no row
            if gained_first[upstream] or ended:
                after = max(before, min(last, window_end))
            elif upstream in ended_in:  # no wait ended in the window: no batch of them to end it at
                after = _unmatched_window_end(newest[upstream], 0, before)
            else:
                after = newest[upstream]
            result.offsets_after[upstream] = after
            if read := sum(batch_id <= after for batch_id in ended):
                result.unmatched_read[upstream] = read
            if kept.get(upstream, 0) >= self.let_go_of_unmatched_at or upstream in letting_go:
                result.unmatched_let_go.append(upstream)
            if last > after:
                result.behind[upstream] = last
        config = self.configs[name]
        self._hold_back_for_changelogs(con, name, result)
        self._hold_back_for_tables(con, name, result)
        if config.get("retry_unmatched"):
            result.expired = self._expire(con, name, batch)
            result.pending_floor = scalar(con, f"SELECT min(seq) FROM {PENDING_TABLE} WHERE {self.shard.rows_of(name)}")
            for table in marked:
                result.tables_before[table] = stored.get(table, 0)
                result.tables_after[table] = scalar(con, f"SELECT coalesce(max(_batch_id), 0) FROM {table}")

    def _hold_back_for_changelogs(self, con: Connection, name: str, result: StepResult) -> None:
        """An as-of join reads its changelog streams whole and retries nothing: its other inputs are read only as far
        as every changelog has read its own inputs (a run that left a changelog's step out would otherwise join
        rows against a stream lacking what arrived before them, for good); the rest waits for a later step."""
        for changelog in (self.configs[name].get("as_of") or {}).values():
            if not (inputs := self.stream_inputs(changelog)):
                continue  # fed by a source: it keeps no offsets, and its rows are the ingest's, step by step
            stored = self._stored_offsets(con, changelog)
            read_through = min(stored.get(upstream, 0) for upstream in inputs)
            for upstream, after in result.offsets_after.items():
                if upstream != changelog and after > read_through:
                    result.offsets_after[upstream] = max(result.offsets_before[upstream], read_through)
                    # no later transaction of this step reads further: it must not try to catch up
                    result.behind.pop(upstream, None)

    def _streams_from(self, name: str) -> set[str]:
        """``name`` and every stream its rows come from."""
        found, below = {name}, [name]
        while below:
            below = [upstream for model in below for upstream in self.stream_inputs(model) if upstream not in found]
            found.update(below)
        return found

    def links_to_tables_read_whole(self, name: str) -> list[tuple[str, str]]:
        """The (model, stream input) links that carry rows to the tables ``name`` reads whole (an as-of join reads
        none: it reads its changelog): for each of its stream inputs, from each table down to a stream that input's
        rows come from too."""
        config = self.configs[name]
        tables = [
            ref
            for ref in self.models[name].refs
            if self.configs[ref]["materialized"] == "table"
            and ref not in (config.get("as_of") or {})
            and ref != config.get("part_of")
        ]
        links = []
        for stream in self.stream_inputs(name):
            origins, below = self._streams_from(stream), tables
            while below:
                step = [(model, upstream) for model in below for upstream in self.stream_inputs(model)]
                links += step
                below = [upstream for _, upstream in step if upstream not in origins]
        return list(dict.fromkeys(links))

    def _hold_back_for_tables(self, con: Connection, name: str, result: StepResult) -> None:
        """A step reads no new rows of its stream inputs while a table it reads whole lags behind them (a run that
        left out the table's step, or a step feeding it): the rows would meet the table without what arrived with
        them, and a later step would not read them again. Which of them the table holds cannot be told from the
        offsets, so the step reads none; the next run that completes the table reads them all."""
        links = self.links_to_tables_read_whole(name)
        if not links or all(result.offsets_after[u] == result.offsets_before[u] for u in result.offsets_after):
            return
        unread = []
        for model, upstream in links:
            stored = self._stored_offsets(con, model)
            read = stored.get(upstream, max(stored.values(), default=0))
            unread.append(f"EXISTS (SELECT 1 FROM {upstream} WHERE _batch_id > {read} AND {self.shard.owns()})")
        found = first_row(con, f"SELECT {', '.join(unread)}")
        lagging = {model for (model, _), lags in zip(links, found, strict=True) if lags}
        if lagging:
            result.offsets_after.update(result.offsets_before)
            result.behind, result.unmatched_read = {}, {}
            result.notes[WAITING_FOR] = sorted(lagging)

    def unread_rows(self, con: Connection, stream: str) -> str:
        """SQL condition on the rows of model ``stream`` a step of this project has still to read, in every shard
        (see :func:`dbt_like.state.unread_rows`): what a retention must keep."""
        readers = [name for name in self.models if stream in self.stream_inputs(name)]
        # a given-up row's _seq is kept in every stream that has one: a reader of unmatched() may read the
        # row's other forms by it (sigma_detections reads the rekey's rows of the connections the join gave up on)
        retrying = [name for name, config in self.configs.items() if config.get("retry_unmatched")]
        return unread_rows(con, stream, readers, {name: self.unmatched_readers(name) for name in retrying})

    def unmatched_readers(self, name: str) -> list[str]:
        """The models that read ``unmatched(name)``."""
        return [other for other, model in self.models.items() if name in model.unmatched]

    def _expire(self, con: Connection, name: str, batch: Batch) -> int:
        """End the waits of ``name``'s rows first seen longer ago than its grace, keeping them for the models that
        read ``unmatched(name)``. The number of rows whose wait ended."""
        grace = int(self.configs[name].get("retry_grace_minutes", 0))
        # compared as numbers, not as `first_seen < ...`, which DuckLake would prune by (see dbt_like.sql.one_of)
        # (first_seen holds wall time: a cutoff with a time zone is cast to the session's, as `<` would cast it)
        cutoff = f"epoch_us(CAST({literal(batch.started_at)} - INTERVAL ({grace}) MINUTE AS TIMESTAMP))"
        expired = f"{self.shard.rows_of(name)} AND epoch_us(first_seen) < {cutoff}"
        if not self.unmatched_readers(name):
            return scalar(con, f"DELETE FROM {PENDING_TABLE} WHERE {expired}")
        count = scalar(
            con,
            f"INSERT INTO {UNMATCHED_TABLE} SELECT model, seq, {batch.batch_id}, shard FROM {PENDING_TABLE} "
            f"WHERE {expired}",
        )
        if count:
            con.execute(f"DELETE FROM {PENDING_TABLE} WHERE {expired}")
        return count

    def _let_go_of_unmatched(self, con: Connection, name: str) -> None:
        """Delete the rows that stopped waiting in ``name`` that every model reading ``unmatched(name)`` has read
        (run by a reader, after its offsets are written)."""
        readers = self.unmatched_readers(name)
        read_by_all = (
            f"SELECT CASE WHEN count(*) = {len(readers)} THEN min(batch_id) ELSE 0 END FROM {STATE_SCHEMA}.offsets "
            f"WHERE {one_of('input', name)} AND {self.shard.rows_of(*readers)}"
        )
        con.execute(f"DELETE FROM {UNMATCHED_TABLE} WHERE {self.shard.rows_of(name)} AND batch_id <= ({read_by_all})")

    def _stored_offsets(self, con: Connection, name: str) -> dict[str, int]:
        """The last batch of each input that model ``name`` consumed (empty: it has not run)."""
        rows = con.execute(f"SELECT input, batch_id FROM {STATE_SCHEMA}.offsets WHERE {self.shard.rows_of(name)}")
        return dict(rows.fetchall())

    def _compile(
        self,
        name: str,
        batch: Batch,
        relations: dict[str, str],
        result: StepResult,
        is_incremental: bool = True,
        execute: bool = True,
    ) -> str:
        step = StepContext(
            is_incremental=is_incremental,
            execute=execute,
            batch_id=batch.batch_id,
            batch_time=batch.started_at.isoformat(sep=" "),
            offsets=dict(result.offsets_before),
            upper_bounds=dict(result.offsets_after),
            sources=relations,
            pending_floor=result.pending_floor,
            part_of_floor=self._part_of_floor.get(self.configs[name].get("part_of", "")),
            shard=self.shard,
        )
        last = self._rendered.get(name)
        if last is not None and last[0] == step:
            return last[1]
        sql = render_step(self.models[name], self.configs, self.variables, step).strip().rstrip(";")
        compiled = f"(\n{sql}\n)"
        self._rendered[name] = (step, compiled)
        return compiled

    def _last_seq_of_batch(self, con: Connection, name: str, batch: Batch) -> int | None:
        """The highest ``_seq`` of ``name``'s rows of ``batch`` so far: a step's earlier transactions (its chunks,
        or a run that stopped after some of them) wrote them. None if it has none, or no ``_seq`` column (its side
        models then read all its rows of the batch)."""
        if not self.exists(con, name) or "_seq" not in {column for column, _ in table_columns(con, name)}:
            return None
        return scalar(con, f"SELECT max(_seq) FROM {name} WHERE _batch_id = {batch.batch_id}")

    def _check_side_models_see(self, con: Connection, name: str, batch: Batch, written: int) -> None:
        """Side models read the rows above the floor: rows written at or below it would be missed, so a step whose
        model numbers a batch's rows downwards fails instead."""
        floor = self._part_of_floor.get(name)
        if floor is None:
            return
        above = scalar(con, f"SELECT count(*) FROM {name} WHERE _batch_id = {batch.batch_id} AND _seq > {floor}")
        if above != written:
            raise ProjectError(
                f"model {name} wrote {written} row(s) in this transaction, {written - above} of them with a _seq at "
                f"or below {floor}, the highest it wrote earlier in batch {batch.batch_id}: its side models read the "
                "rows above it, so a model with side models numbers a batch's rows upwards"
            )

    def _write(self, con: Connection, name: str, batch: Batch, relations: dict[str, str], result: StepResult) -> None:
        config = self.configs[name]
        if self._is_view(name):
            query = self._compile(name, batch, relations, result)
            if view_outdated(con, name, query):
                con.execute(f"CREATE OR REPLACE VIEW {name} AS {query}")
                self._created_relation = True
            return
        if not self.exists(con, name):
            first = self._compile(name, batch, relations, result, is_incremental=False, execute=False)
            con.execute(f"CREATE TABLE {name} AS SELECT *, CAST(NULL AS BIGINT) AS _batch_id FROM {first} WHERE false")
            self._created_relation = True
        query = self._compile(name, batch, relations, result)
        if config["materialized"] == "table":
            result.rows_written += upsert(con, name, query, config, batch, self.shard.count)
        else:
            result.rows_written += append(con, name, query, config, batch)
        read = [
            delta_relation(upstream, result.offsets_before[upstream], result.offsets_after[upstream], self.shard)
            for upstream in self.stream_inputs(name)
        ] + list(relations.values())
        if read:  # one statement for all: every lake statement costs a round of catalog work
            result.rows_in += scalar(con, "SELECT " + " + ".join(f"(SELECT count(*) FROM {r})" for r in read))

    def _finish(self, con: Connection, name: str, batch: Batch, result: StepResult) -> None:
        shard = self.shard.index
        offsets = {**result.offsets_after, **result.tables_after}
        if offsets:  # one statement each for all inputs: every lake statement costs a round of catalog work
            inputs = one_of("input", *offsets)
            con.execute(f"DELETE FROM {STATE_SCHEMA}.offsets WHERE {self.shard.rows_of(name)} AND {inputs}")
            rows = ", ".join(f"({literals(name, upstream, upper, shard)})" for upstream, upper in offsets.items())
            con.execute(f"INSERT INTO {STATE_SCHEMA}.offsets VALUES {rows}")
        for upstream in result.unmatched_let_go:
            self._let_go_of_unmatched(con, upstream)
        retried = self.configs[name].get("retry_unmatched")
        if not retried:
            return
        matched = f"SELECT _seq FROM {name} WHERE _batch_id = {batch.batch_id}"
        con.execute(f"DELETE FROM {PENDING_TABLE} WHERE {self.shard.rows_of(name)} AND seq IN ({matched})")
        lower, upper = result.offsets_before[retried], result.offsets_after[retried]
        delta = delta_relation(retried, lower, upper, self.shard)
        con.execute(
            f"INSERT INTO {PENDING_TABLE} SELECT {literal(name)}, _seq, {literal(batch.started_at)}, {shard} "
            f"FROM {delta} WHERE _seq NOT IN ({matched})"
        )
        result.pending = scalar(con, f"SELECT count(*) FROM {PENDING_TABLE} WHERE {self.shard.rows_of(name)}")
