"""What a micro-batch run did, one line per asset: rows in, rows written, and the counts that say where the rest went.

``python -m sysmon_assets.dagster_layer.run_report`` reads the latest run of ``sysmon_micro_batch`` (or of the assets'
implicit job, which ``dagster asset materialize`` runs) from the Dagster instance in ``DAGSTER_HOME`` (``make run``
prints it after its batch); ``--run-id`` picks another run. The figures are
the materializations' metadata, the ones the UI shows, so any asset's counts appear without this module naming them.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Mapping, Sequence

from dagster import DagsterEventType, DagsterInstance, DagsterRun, MetadataValue, RunsFilter
from dagster._core.definitions.assets.job.asset_job import IMPLICIT_ASSET_JOB_NAME
from dagster._core.errors import DagsterHomeNotSetError

JOB = "sysmon_micro_batch"
# The jobs whose runs a report reads by default: the micro-batch job, and the assets' implicit job that
# `dagster asset materialize` and the UI's "Materialize" run.
JOBS = (JOB, IMPLICIT_ASSET_JOB_NAME)
# Integer metadata that is not a count of this batch's rows: identities and the table's total.
# step metadata keys that the report and the sensors read back (sensors.py): rows written, joins waiting
ROWS_WRITTEN = "rows_written"
PENDING_JOINS = "pending_joins"
NOT_BATCH_COUNTS = frozenset({"batch_id", "rows_in", ROWS_WRITTEN, "dagster/row_count", "lake_snapshot"})


def _plain(value: object) -> object:
    """A stored materialization holds MetadataValues, an asset building its metadata holds plain values too."""
    return value.value if isinstance(value, MetadataValue) else value


def asset_line(name: str, metadata: Mapping[str, object], name_width: int = 0) -> str:
    """``name  <rows in> in <rows written> written  key=count ...``: the step's rows, then every other count its
    metadata holds (rows dropped and why, side tables, pending joins), under the metadata's own labels; with
    ``name_width``, padded to line up in a report."""
    values = {key: _plain(value) for key, value in metadata.items()}
    # bool is an int to Python, and a flag is no count
    counts = {
        key: value
        for key, value in values.items()
        if isinstance(value, int) and not isinstance(value, bool) and key not in NOT_BATCH_COUNTS
    }
    # a report aligns its lines in columns (name_width), a log line stands alone
    number = 7 if name_width else 0
    parts = [name.ljust(name_width)]
    if values.get("view") is True:
        parts.append("a view: stores no rows")
    elif "rows_in" in values:
        parts.append(f"{values['rows_in']:>{number}} in {values['rows_written']:>{number}} written")
    parts.extend(f"{key}={value}" for key, value in counts.items())
    return "  ".join(parts).rstrip()


def latest_run(instance: DagsterInstance, job_names: Sequence[str] = JOBS) -> DagsterRun | None:
    """The most recent run of any of ``job_names`` in ``instance``, None before the first."""
    records = [record for name in job_names for record in instance.get_run_records(RunsFilter(job_name=name), limit=1)]
    return max(records, key=lambda record: record.create_timestamp).dagster_run if records else None


def run_report(instance: DagsterInstance, run: DagsterRun) -> list[str]:
    """A header naming the run, its status and batch, then one line per asset it materialized, in the order they
    ran, each followed by the asset checks that failed on it."""
    events = instance.all_logs(
        run.run_id, of_type={DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_CHECK_EVALUATION}
    )
    materializations = [e.asset_materialization for e in events if e.asset_materialization is not None]
    failed: dict[str, list[str]] = {}
    for event in events:
        evaluation = event.dagster_event.event_specific_data if event.dagster_event else None
        if event.dagster_event_type == DagsterEventType.ASSET_CHECK_EVALUATION and not evaluation.passed:
            failed.setdefault(evaluation.asset_key.to_user_string(), []).append(
                f"{evaluation.check_name} ({evaluation.severity.value})"
            )
    batches = sorted({_plain(m.metadata["batch_id"]) for m in materializations if "batch_id" in m.metadata} - {None})
    header = f"{run.job_name} run {run.run_id[:8]}: {run.status.value}"
    if "dagster/partition" in run.tags:
        header += f", partition {run.tags['dagster/partition']}"
    if batches:
        header += f", batch {', '.join(str(b) for b in batches)}"
    names = [m.asset_key.to_user_string() for m in materializations]
    width = max(map(len, names), default=0)
    lines = [header]
    for name, materialization in zip(names, materializations, strict=True):
        line = asset_line(name, materialization.metadata, width)
        if name in failed:
            line += f"  failed checks: {', '.join(failed[name])}"
        lines.append("  " + line)
    return lines


def main(argv: Sequence[str] | None = None) -> None:
    """Command-line entry point."""
    parser = argparse.ArgumentParser(
        prog="python -m sysmon_assets.dagster_layer.run_report", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--run-id", help=f"a run's id (default: the latest run of {' or '.join(JOBS)})")
    args = parser.parse_args(argv)
    try:
        instance = DagsterInstance.get()
    except DagsterHomeNotSetError:
        sys.exit("DAGSTER_HOME is not set: it names the Dagster instance whose runs to report (make run uses .dagster)")
    with instance:
        run = instance.get_run_by_id(args.run_id) if args.run_id else latest_run(instance)
        if run is None:
            wanted = args.run_id or f"of {' or '.join(JOBS)}"
            sys.exit(f"no run {wanted} in the Dagster instance at {instance.root_directory}")
        print("\n".join(run_report(instance, run)))


if __name__ == "__main__":
    main()
