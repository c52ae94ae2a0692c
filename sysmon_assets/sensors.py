"""Request a micro-batch when new bytes land in the landing folder, or when the Kafka consumer lags.

The sensor compares file sizes with its cursor (or asks Kafka for the consumer group's lag) and
never opens DuckDB, so it cannot contend for the database file's lock with a running batch.
"""

import json
from pathlib import Path

from dagster import DefaultSensorStatus, RunRequest, SensorEvaluationContext, SkipReason, sensor

from sysmon_assets.jobs import sysmon_batch_job
from sysmon_assets.kafka_source import KafkaSourceError, consumer_lag
from sysmon_assets.landing import LandingError, landing_snapshot
from sysmon_assets.settings import Settings


def grown_files(previous: dict[str, int], current: dict[str, int]) -> list[str]:
    """Keys of files that are new or larger than in ``previous``."""
    return [key for key, size in current.items() if size > previous.get(key, 0)]


def evaluate_landing(landing_dir: Path, cursor: str | None) -> tuple[RunRequest | SkipReason, str]:
    """The sensor's decision and its next cursor, for a folder and the last cursor."""
    try:
        current = landing_snapshot(landing_dir)
    except LandingError as error:
        return SkipReason(str(error)), cursor or "{}"
    previous = json.loads(cursor) if cursor else {}
    grown = grown_files(previous, current)
    next_cursor = json.dumps(current, sort_keys=True)
    if not grown:
        return SkipReason("no new bytes landed"), next_cursor
    return RunRequest(tags={"sysmon/trigger": "landing_sensor", "sysmon/files_grown": str(len(grown))}), next_cursor


def evaluate_kafka(settings: Settings) -> RunRequest | SkipReason:
    """A run request when the consumer group lags behind the topic's end on any partition.

    The run key names the partitions' end offsets, so a lag that persists while a requested batch
    is queued or running does not request another one.
    """
    try:
        lag = consumer_lag(settings)
    except KafkaSourceError as error:
        return SkipReason(str(error))
    behind = sum(partition.lag for partition in lag.values())
    if not behind:
        return SkipReason(f"no consumer lag on {settings.kafka_topic}")
    ends = ",".join(f"{partition}:{lag[partition].end}" for partition in sorted(lag))
    return RunRequest(
        run_key=f"kafka:{settings.kafka_topic}:{ends}",
        tags={"sysmon/trigger": "kafka_lag", "sysmon/lag": str(behind)},
    )


@sensor(
    job=sysmon_batch_job,
    minimum_interval_seconds=30,
    default_status=DefaultSensorStatus.STOPPED,
    description="Requests a micro-batch when files in SYSMON_LANDING_DIR grow or appear (SYSMON_SOURCE=kafka: "
    "when the consumer group lags).",
)
def landing_sensor(context: SensorEvaluationContext) -> RunRequest | SkipReason:
    """Dagster entry point: see :func:`evaluate_landing` and :func:`evaluate_kafka`."""
    settings = Settings.from_env()
    if settings.source == "kafka":
        return evaluate_kafka(settings)
    decision, cursor = evaluate_landing(settings.landing_dir, context.cursor)
    context.update_cursor(cursor)
    return decision
