"""One Dagster asset per SQL model: the asset runs the model's incremental step.

The assets know nothing of Sysmon: names, lineage, descriptions and checks all come from
the SQL files and ``sql/schema.yml`` through :mod:`dbt_like`, and the recipe's own checks and
step notes from :mod:`sysmon_assets.dagster_layer.checks`.
"""

import time

from dagster import (
    AssetCheckResult,
    AssetCheckSeverity,
    AssetCheckSpec,
    AssetExecutionContext,
    AssetKey,
    AssetsDefinition,
    Failure,
    MaterializeResult,
    MetadataValue,
    StaticPartitionsDefinition,
    TableColumn,
    TableColumnDep,
    TableColumnLineage,
    TableSchema,
    asset,
)

from dbt_like import Project, StepResult
from dbt_like.lineage import model_lineage
from sysmon_assets.dagster_layer.checks import BATCH_CHECKS, STEP_NOTES
from sysmon_assets.dagster_layer.jobs import WRITER_POOL
from sysmon_assets.dagster_layer.resources import BatchClock, SysmonPipelineResource
from sysmon_assets.dagster_layer.run_report import PENDING_JOINS, ROWS_WRITTEN, asset_line
from sysmon_assets.dagster_layer.step_preview import describe
from sysmon_assets.micro_batch.shards import partition_keys, shard_index
from sysmon_assets.storage import lake

GROUP = "sysmon_recipe"
SERVING_GROUP = "serving"


def _check_specs(project: Project, name: str) -> list[AssetCheckSpec]:
    schema_tests = [
        AssetCheckSpec(
            f"{model}__{test.name}",
            asset=name,
            description=f"{test.kind} {test.expression} on {model}.{test.column} for the rows each batch writes",
            # a broken invariant must stop the downstream steps of this batch
            blocking=test.severity == "error",
        )
        for model in [name, *project.side_models(name)]
        for test in project.models[model].tests
    ]
    batch_checks = [
        AssetCheckSpec(c.name, asset=name, description=c.description) for c in BATCH_CHECKS if c.asset == name
    ]
    return schema_tests + batch_checks


def column_lineage(project: Project, name: str) -> TableColumnLineage:
    """Dagster column lineage for ``name``, derived from its SQL."""
    return TableColumnLineage(
        {
            column: [TableColumnDep(asset_key=AssetKey(table), column_name=source) for table, source in deps]
            for column, deps in model_lineage(project, name).items()
        }
    )


def column_schema(project: Project, name: str, columns: list[tuple[str, str]]) -> TableSchema:
    """The table's columns and types with their schema.yml descriptions."""
    described = project.models[name].columns
    return TableSchema([TableColumn(column, kind, description=described.get(column)) for column, kind in columns])


def step_metadata(results: list[StepResult], batch_id: int | None) -> dict[str, object]:
    """Run metadata of one step: rows in and written, offsets, pending joins, side tables."""
    main, *sides = results
    metadata: dict[str, object] = {
        "batch_id": batch_id,
        "rows_in": main.rows_in,
        ROWS_WRITTEN: main.rows_written,
        "offsets_before": MetadataValue.json(main.offsets_before),
        "offsets_after": MetadataValue.json(main.offsets_after),
    }
    if main.table_rows is not None:
        metadata["dagster/row_count"] = main.table_rows
    else:  # a view: it stores no rows, and counting its query's would run it every batch
        metadata["view"] = True
    if main.pending is not None:
        metadata[PENDING_JOINS] = main.pending
        metadata["expired_joins"] = main.expired
    if main.unmatched_read:  # e.g. the connections sysmon_join gave up on, which sigma_detections ran its rules on
        metadata["gave_up_rows_read"] = MetadataValue.json(main.unmatched_read)
    for side in sides:
        metadata[f"{side.model}_rows_written"] = side.rows_written
    for name, value in main.notes.items():
        metadata[name] = value if isinstance(value, int) else MetadataValue.json(value)
    return metadata


def check_results(name: str, results: list[StepResult]) -> list[AssetCheckResult]:
    """One asset check result per schema test the step (and its side models) ran."""
    return [
        AssetCheckResult(
            asset_key=AssetKey(name),
            check_name=f"{result.model}__{test.test.name}",
            passed=test.passed,
            severity=AssetCheckSeverity.WARN if test.test.severity == "warn" else AssetCheckSeverity.ERROR,
            metadata={"failing_rows": test.failures},
        )
        for result in results
        for test in result.tests
    ]


def unsharded_run_message(shards: int, named: str | None = None) -> str:
    """Why a run naming no shard (or ``named``, a range of them) is refused."""
    # Without this, the first step (which has no partitioned input) would run as shard 0 outside the run queue's
    # one-run-per-shard limit, and the next step would fail inside Dagster with no word of the partition.
    return (
        f"with SYSMON_SHARDS={shards} a batch is one shard's: name it with --partition shard-i "
        "(dagster asset materialize) or the tag dagster/partition=shard-i (dagster job execute); "
        f"this run names {f'the range {named}' if named else 'none'}"
    )


def model_asset(project: Project, name: str, partitions: StaticPartitionsDefinition | None = None) -> AssetsDefinition:
    """The asset that runs ``name``'s step (and its side models') for the current run's batch (of the shard
    the run's partition names, with ``partitions``; else in the writer's pool)."""
    model = project.models[name]
    lineage = column_lineage(project, name)

    @asset(
        name=name,
        deps=[AssetKey(ref) for ref in model.refs],
        description=model.description,
        # a model may name its group (dagster-dbt reads dbt's `group` config the same way)
        group_name=project.configs[name].get("group", GROUP),
        kinds={"ducklake", "sql"},
        check_specs=_check_specs(project, name),
        partitions_def=partitions,
        pool=None if partitions else WRITER_POOL,
        metadata={
            "sql_file": str(model.path.relative_to(project.models_dir.parent)),
            "materialized": project.configs[name]["materialized"],
            "config": MetadataValue.json({k: v for k, v in project.configs[name].items() if v is not None}),
        },
    )
    def run_model_step(
        context: AssetExecutionContext, sysmon: SysmonPipelineResource, batch_clock: BatchClock
    ) -> MaterializeResult:
        if partitions and not context.has_partition_key:
            named = context.partition_key_range if context.has_partition_key_range else None
            shards = len(partitions.get_partition_keys())
            raise Failure(unsharded_run_message(shards, named and f"{named.start}...{named.end}"))
        if partitions and context.partition_key not in (keys := partitions.get_partition_keys()):
            # a tag names it as written (shard-01), and Dagster checks it only once the step's rows are committed
            raise Failure(f"partition {context.partition_key} is none of {', '.join(keys)}: this run wrote nothing")
        pipeline = sysmon.pipeline(shard_index(context.partition_key if context.has_partition_key else None))
        started = time.perf_counter()
        results = pipeline.run_model(name, run_key=context.run.run_id, batch_time=batch_clock.clock())
        seconds = time.perf_counter() - started
        batch_id = pipeline.last_batch_id
        columns, preview, snapshot = describe(pipeline.connect, name, batch_id)
        metadata = step_metadata(results, batch_id)
        if name in STEP_NOTES:
            metadata.update(STEP_NOTES[name](pipeline, results[0]))
        metadata["lake_table"] = f"{lake.LAKE}.main.{name}"
        metadata["lake_snapshot"] = snapshot
        metadata["duration_seconds"] = round(seconds, 3)
        # the line `make run` prints for this asset (sysmon_assets.dagster_layer.run_report), in the run's log too
        context.log.info(asset_line(name, metadata))
        metadata["dagster/column_schema"] = column_schema(project, name, columns)
        metadata["dagster/column_lineage"] = lineage
        metadata["new_rows_preview"] = MetadataValue.md(preview)
        checks = check_results(name, results) + [
            AssetCheckResult(
                asset_key=AssetKey(name),
                check_name=check.name,
                passed=passed,
                severity=AssetCheckSeverity.WARN,
                metadata=details,
            )
            for check in BATCH_CHECKS
            if check.asset == name
            for passed, details in [check.evaluate(pipeline, batch_id, results[0])]
        ]
        return MaterializeResult(metadata=metadata, check_results=checks)

    return run_model_step


def sink_topic_asset(topic: str) -> AssetsDefinition:
    """The recipe's SYSMON_JOIN Kafka topic, fed with the joined rows each batch committed (in the writer's pool:
    the sink is not for shards)."""

    @asset(
        name="sysmon_join_topic",
        deps=[AssetKey("sysmon_join")],
        description=f"Kafka topic {topic}: each new sysmon_join row once, as KSQL's JSON, keyed by process GUID.",
        group_name=SERVING_GROUP,
        kinds={"kafka"},
        pool=WRITER_POOL,
        metadata={"topic": topic},
    )
    def publish_join_topic(sysmon: SysmonPipelineResource) -> MaterializeResult:
        published = sysmon.pipeline().publish_join()
        return MaterializeResult(
            metadata={
                "through_batch": published.through_batch,
                "messages_sent": published.messages,
                "messages_resent_after_crash": published.recovered,
            }
        )

    return publish_join_topic


def build_assets(project: Project, sink_topic: str | None = None, shards: int = 1) -> list[AssetsDefinition]:
    """One asset per model that is not a side table of another, in dependency order, and, with ``sink_topic``,
    the Kafka topic the joined rows are published to. With shards, the assets' partitions are the shards."""
    partitions = StaticPartitionsDefinition(partition_keys(shards)) if shards > 1 else None
    assets = [model_asset(project, name, partitions) for name in project.primary_models()]
    return [*assets, sink_topic_asset(sink_topic)] if sink_topic else assets
