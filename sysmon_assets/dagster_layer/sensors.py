"""Request a micro-batch when landed files appear or change, or when the Kafka consumer lags.

The sensor compares file sizes and modification times with its cursor and asks the Dagster instance whether the last
batch left lines unread (``SYSMON_LANDING_MAX_BYTES``, a last line without newline) or held back a last line for its
writer that is now due, or asks Kafka for the consumer group's lag; it never opens the lake, so a tick costs no
catalog work beside a running batch.
"""

import json
from collections import Counter
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from dagster import (
    AssetKey,
    AssetRecordsFilter,
    DagsterInstance,
    DefaultSensorStatus,
    EventLogRecord,
    RunRequest,
    SensorDefinition,
    SensorEvaluationContext,
    SensorResult,
    SkipReason,
    sensor,
)

if TYPE_CHECKING:
    from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from sysmon_assets.dagster_layer.resources import SysmonPipelineResource
from sysmon_assets.dagster_layer.run_report import PENDING_JOINS, ROWS_WRITTEN
from sysmon_assets.micro_batch.ingest import LEFT_FOR_NEXT_BATCH, UNFINISHED_LINE_DUE
from sysmon_assets.micro_batch.shards import file_shard, partition_key, partition_shard
from sysmon_assets.settings import Settings
from sysmon_assets.sources.kafka_source import KafkaSourceError, consumer_lag, read_topic_id
from sysmon_assets.sources.landed_files import landing_snapshot
from sysmon_assets.sources.landed_lines import LandingError

# The join whose waiting connections another shard's process creates may end, and the table those creates go to.
JOIN_ASSET, CREATES_ASSET = "sysmon_join", "sysmon_process_create_table"


def changed_files(previous: dict[str, str], current: dict[str, str]) -> list[str]:
    """Keys of files that are new, or of another size or modification time than in ``previous``: a file that
    grew, and one truncated or rewritten, which the batch reads again from its start."""
    return [key for key, seen in current.items() if seen != previous.get(key)]


def evaluate_landing(
    landing_dir: Path, cursor: str | None, shards: int = 1
) -> tuple[list[RunRequest] | SkipReason, str]:
    """The sensor's decision and its next cursor, for a folder and the last cursor: a run request for each
    shard whose files changed (one, unpartitioned, without shards)."""
    try:
        current = landing_snapshot(landing_dir)
    except LandingError as error:
        return SkipReason(str(error)), cursor or "{}"
    previous = json.loads(cursor) if cursor else {}
    changed = changed_files(previous, current)
    next_cursor = json.dumps(current, sort_keys=True)
    if not changed:
        return SkipReason("no landed file changed"), next_cursor
    by_shard = Counter(file_shard(key, shards) for key in changed)
    return [
        RunRequest(
            partition_key=partition_key(shard, shards),
            tags={"sysmon/trigger": "landing_sensor", "sysmon/files_changed": str(count)},
        )
        for shard, count in sorted(by_shard.items())
    ], next_cursor


def utc_clock() -> datetime:
    """The time now, in UTC."""
    return datetime.now(UTC)


def runs_that_left_lines(instance: DagsterInstance, ingest_asset: str, shards: int = 1) -> dict[int, str]:
    """Per shard whose latest ingest left lines to the next batch (``LEFT_FOR_NEXT_BATCH``), or held back a last line
    for its writer that is now due (``UNFINISHED_LINE_DUE``): the id of that ingest's run."""
    runs = {}
    for shard in range(shards):
        record = _latest_materialization(instance, ingest_asset, partition_key(shard, shards))
        metadata = record.asset_materialization.metadata if record else {}
        due = metadata.get(UNFINISHED_LINE_DUE)
        if LEFT_FOR_NEXT_BATCH in metadata or (due and datetime.fromisoformat(due.value) <= utc_clock()):
            runs[shard] = record.run_id
    return runs


def _materializations(
    instance: DagsterInstance, asset: str, partition: str | None, limit: int = 1, after: float | None = None
) -> Sequence[EventLogRecord]:
    """The newest ``limit`` materializations of ``asset`` (of ``partition``; logged after ``after``), newest first."""
    filter_ = AssetRecordsFilter(
        AssetKey(asset), asset_partitions=[partition] if partition else None, after_timestamp=after
    )
    return instance.fetch_materializations(filter_, limit=limit).records


def _latest_materialization(instance: DagsterInstance, asset: str, partition: str | None) -> EventLogRecord | None:
    return next(iter(_materializations(instance, asset, partition)), None)


def runs_that_joins_wait_for(instance: DagsterInstance, shards: int) -> dict[int, str]:
    """Per shard whose latest join left connections waiting for their process create: the id of the newest run
    in which another shard wrote process creates since that join read the table. That create may be the one
    awaited, and only the waiting shard's next batch joins it (within the grace), though none of its own files
    changed. A run that wrote no create requests nothing, or two shards that both wait would run each other."""
    if shards == 1:
        return {}
    runs = {}
    for shard in range(shards):
        join = _latest_materialization(instance, JOIN_ASSET, partition_key(shard, shards))
        pending = join.asset_materialization.metadata.get(PENDING_JOINS) if join else None
        if not (pending and pending.value):
            continue
        # the join read the table after its run's creates step: that step's event is earlier than what it read
        own = _latest_materialization(instance, CREATES_ASSET, partition_key(shard, shards))
        read_after = own.timestamp if own and own.run_id == join.run_id else join.timestamp
        written = [
            record
            for other in range(shards)
            if other != shard
            for record in _materializations(instance, CREATES_ASSET, partition_key(other, shards), 100, read_after)
            if _rows_written(record)
        ]
        if written:
            runs[shard] = max(written, key=lambda record: record.timestamp).run_id
    return runs


def _rows_written(record: EventLogRecord) -> int:
    value = record.asset_materialization.metadata.get(ROWS_WRITTEN)
    return value.value if value is not None else 0


def with_the_rest(
    decision: list[RunRequest] | SkipReason,
    left_by: dict[int, str],
    shards: int = 1,
    joins_waiting_after: dict[int, str] | None = None,
) -> list[RunRequest] | SkipReason:
    """``decision`` and a request for each shard whose last batch left lines unread, keyed by that batch's run, so
    that each such run is followed by one more batch (Dagster runs a sensor's run key once; a request for grown
    files stays a request of its own, or new bytes would go unrequested while the key is spent); and one for each
    shard whose joins wait, keyed by the other shard's run that committed creates since
    (:func:`runs_that_joins_wait_for`)."""
    rest = [
        RunRequest(
            run_key=f"landing:rest-of:{run_id}",
            partition_key=partition_key(shard, shards),
            tags={"sysmon/trigger": "landing_sensor", "sysmon/lines_left_by_run": run_id},
        )
        for shard, run_id in sorted(left_by.items())
    ]
    requested = {request.partition_key for request in [*rest, *([] if isinstance(decision, SkipReason) else decision)]}
    rest += [
        RunRequest(
            # a sensor's run key is run once whatever its partition: each waiting shard's is its own
            run_key=f"landing:joins-waiting-after:{run_id}:{partition_key(shard, shards)}",
            partition_key=partition_key(shard, shards),
            tags={"sysmon/trigger": "landing_sensor", "sysmon/creates_committed_by_run": run_id},
        )
        for shard, run_id in sorted((joins_waiting_after or {}).items())
        if partition_key(shard, shards) not in requested  # a batch of the shard is requested already
    ]
    if not rest:
        return decision
    return rest if isinstance(decision, SkipReason) else [*decision, *rest]


def evaluate_kafka(settings: Settings) -> list[RunRequest] | SkipReason:
    """A run request (per shard) when the consumer group lags behind the topic's end on a partition.

    The run key names the topic (with its id) and each partition's unread range (committed offset to end), so a lag
    that persists while a requested batch is queued or running requests no other, a batch that leaves part of the
    lag for the next one (``SYSMON_KAFKA_MAX_MESSAGES``) requests that next one, and so does a topic recreated with
    the same ranges.
    """
    try:
        lag = consumer_lag(settings)
        if not sum(partition.lag for partition in lag.values()):
            return SkipReason(f"no consumer lag on {settings.kafka_topic}")
        # a topic recreated since shows the same ranges again: its id tells its runs' keys from the old topic's;
        # without it this tick's keys would differ from the last tick's for the same lag, a second run for it
        recreated_as = read_topic_id(settings, settings.kafka_topic)
    except KafkaSourceError as error:
        return SkipReason(str(error))
    topic = settings.kafka_topic if recreated_as is None else f"{settings.kafka_topic}@{recreated_as}"
    requests = []
    for shard in range(settings.shards):
        owned = {p: lag[p] for p in sorted(lag) if partition_shard(p, settings.shards) == shard}
        behind = sum(partition.lag for partition in owned.values())
        if not behind:
            continue
        unread = ",".join(f"{p}:{owned[p].end - owned[p].lag}-{owned[p].end}" for p in owned)
        requests.append(
            RunRequest(
                run_key=f"kafka:{topic}:{unread}",
                partition_key=partition_key(shard, settings.shards),
                tags={"sysmon/trigger": "kafka_lag", "sysmon/lag": str(behind)},
            )
        )
    return requests


def landing_sensor(job: "UnresolvedAssetJobDefinition", ingest_asset: str) -> SensorDefinition:
    """The sensor that requests ``job`` runs when files land or ``ingest_asset``'s last batch left lines unread (or
    the Kafka consumer group lags)."""

    @sensor(
        name="landing_sensor",
        job=job,
        minimum_interval_seconds=30,
        default_status=DefaultSensorStatus.STOPPED,
        description="Requests a micro-batch when files in SYSMON_LANDING_DIR appear or change, or the last batch left "
        "lines for the next (SYSMON_LANDING_MAX_BYTES, a last line without newline); SYSMON_SOURCE=kafka: when the "
        "consumer group lags. With shards, one for each shard whose input changed, and one for each shard whose "
        "connections wait for a process create once another shard has committed creates.",
    )
    def landing(context: SensorEvaluationContext, sysmon: SysmonPipelineResource) -> SensorResult | SkipReason:
        """See :func:`evaluate_landing` and :func:`evaluate_kafka`; the settings are the pipeline resource's."""
        settings = sysmon.settings()
        waiting = runs_that_joins_wait_for(context.instance, settings.shards)
        if settings.source == "kafka":
            decision = with_the_rest(evaluate_kafka(settings), {}, settings.shards, waiting)
        else:
            decision, cursor = evaluate_landing(settings.landing_dir, context.cursor, settings.shards)
            context.update_cursor(cursor)
            left_by = runs_that_left_lines(context.instance, ingest_asset, settings.shards)
            decision = with_the_rest(decision, left_by, settings.shards, waiting)
        return decision if isinstance(decision, SkipReason) else SensorResult(run_requests=decision)

    return landing
