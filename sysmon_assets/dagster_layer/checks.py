"""Batch checks and step notes that need the recipe's meaning (the schema tests in sql/schema.yml are generic).

Each runs inside the batch, right after its asset's step: a check is reported as an asset check, a note as
materialization metadata.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from dbt_like import StepResult
from dbt_like.sql import first_row, literal, one_of, scalar
from sysmon_assets.hunting.sigma import LOGSOURCE
from sysmon_assets.micro_batch.shards import file_shard
from sysmon_assets.micro_batch.steps import SysmonPipeline
from sysmon_assets.sources import kafka_source, landing_folder
from sysmon_assets.sources.landed_files import scan_landing

# A check's verdict and its metadata (numbers, text, or JSON: lists and dicts).
Outcome = tuple[bool, dict[str, Any]]
# The clock landing_freshness measures the time since something landed or was read with (seconds since the epoch).
wall_clock = time.time


@dataclass(frozen=True)
class BatchCheck:
    """A named check on one asset, evaluated against the pipeline after the asset's step (its batch and result)."""

    name: str
    asset: str
    description: str
    evaluate: Callable[[SysmonPipeline, int, StepResult], Outcome]


def join_coverage(pipeline: SysmonPipeline, batch_id: int, result: StepResult) -> Outcome:
    """Share of the network-connect events the join step read anew that joined; warns below ``join_coverage_warn``.
    Those still waiting for their process create (the default mode's retry) are counted apart: they may join in a
    later batch; so are those of earlier batches that joined in this one. Read anew: the connect step's rows of the
    batches between the join step's offsets (more than this batch's, when an earlier batch stopped before its join
    step)."""
    lower, upper = result.offsets_before["sysmon_network_connect"], result.offsets_after["sysmon_network_connect"]
    read = (
        f"SELECT _seq FROM sysmon_network_connect WHERE _batch_id BETWEEN {literal(lower + 1)} AND {literal(upper)} "
        f"AND {pipeline.shard.owns()}"
    )
    of_batch = f"SELECT _seq FROM sysmon_join WHERE _batch_id = {literal(batch_id)}"
    with pipeline.connect() as con:
        connects, joined, joined_late, waiting = first_row(
            con,
            f"""SELECT (SELECT count(*) FROM ({read})),
                (SELECT count(*) FROM ({of_batch}) WHERE _seq IN ({read})),
                (SELECT count(*) FROM ({of_batch}) WHERE _seq NOT IN ({read})),
                (SELECT count(*) FROM dbt_like.pending WHERE {one_of("model", "sysmon_join")} AND seq IN ({read}))""",
        )
    coverage = joined / connects if connects else 1.0
    threshold = pipeline.settings.join_coverage_warn
    return coverage >= threshold, {
        "coverage": round(coverage, 4),
        "joined": joined,
        "joined_from_earlier_batches": joined_late,
        "network_events": connects,
        "waiting": waiting,
        "warn_below": threshold,
    }


def _minutes_since(newest: datetime | None) -> float:
    """Minutes from ``newest`` (a naive UTC time) to :data:`wall_clock`; infinite for None."""
    return (wall_clock() - newest.replace(tzinfo=UTC).timestamp()) / 60 if newest else float("inf")


def _owns_file(pipeline: SysmonPipeline, file_key: str) -> bool:
    return file_shard(file_key, pipeline.shard.count) == pipeline.shard.index


def _newest_landing(pipeline: SysmonPipeline) -> datetime | None:
    """When a batch last found one of the shard's files new or of another size, not empty; None: never."""
    with pipeline.connect() as con:
        rows = con.execute(
            f"SELECT file_key, updated_at FROM {landing_folder.STATE_TABLE} WHERE file_size > 0"
        ).fetchall()
    return max((at for key, at in rows if at and _owns_file(pipeline, key)), default=None)


def _newest_message(pipeline: SysmonPipeline) -> datetime | None:
    """When a batch last read a message of the topic's partitions the shard reads; None: never."""
    of_topic, shard = one_of("topic", pipeline.settings.kafka_topic), pipeline.shard
    with pipeline.connect() as con:
        return scalar(
            con,
            f"SELECT max(updated_at) FROM {kafka_source.OFFSETS_TABLE} "
            f'WHERE {of_topic} AND "partition" % {shard.count} = {shard.index}',
        )


def landing_freshness(pipeline: SysmonPipeline, batch_id: int, result: StepResult) -> Outcome:
    """Whether anything landed (or, from Kafka, was read) within ``freshness_minutes``, in the shard's own files or
    partitions: a silent Winlogbeat is an incident. Landed: a batch found a new file or a file's size changed
    (``ingest.files.updated_at``), not a file's own times, which a file moved in keeps from where it was written and
    a rotation's rename changes; an empty file is no landing (nothing landed in it: a file created before its writer
    writes, or touched)."""
    limit = pipeline.settings.freshness_minutes
    if pipeline.settings.source == "kafka":
        age_minutes = _minutes_since(_newest_message(pipeline))
        return age_minutes <= limit, {
            "minutes_since_last_message": round(min(age_minutes, 10**9), 1),
            "limit_minutes": limit,
            "topic": pipeline.settings.kafka_topic,
        }
    age_minutes = _minutes_since(_newest_landing(pipeline))
    files = scan_landing(pipeline.settings.landing_dir)[0]
    return age_minutes <= limit, {
        "minutes_since_last_landing": round(min(age_minutes, 10**9), 1),
        "limit_minutes": limit,
        "files": sum(_owns_file(pipeline, landed.key) for landed in files),
    }


SEVERE_LEVELS = ("high", "critical")
# The severe hits a check lists in its metadata (the count covers all of them).
HITS_SHOWN = 50


def sigma_severe_hits(pipeline: SysmonPipeline, batch_id: int, result: StepResult) -> Outcome:
    """Warns when the batch produced detections of a high or critical rule: how many, and the first
    :data:`HITS_SHOWN` (a large batch can have a hundred thousand; only those shown are fetched)."""
    severe = (
        f"FROM sigma_detections WHERE _batch_id = {literal(batch_id)} "
        f"AND list_contains({literal(list(SEVERE_LEVELS))}, level)"
    )
    with pipeline.connect() as con:
        count = scalar(con, f"SELECT count(*) {severe}")
        relation = con.execute(
            "SELECT rule_title, level, rule_id, computer_name, strftime(event_date_creation, '%Y-%m-%d %H:%M:%S') "
            "AS event_time, event_id, process_path, process_command_line, parent_process_path, dst_ip_addr, dst_port "
            f"{severe} ORDER BY _seq, rule_id LIMIT {HITS_SHOWN}"
        )
        columns = [column[0] for column in relation.description]
        hits = [dict(zip(columns, row, strict=True)) for row in relation.fetchall()]
    return count == 0, {"severe_hits": count, "levels": ", ".join(SEVERE_LEVELS), "hits": hits}


def sigma_rules_converted(pipeline: SysmonPipeline, batch_id: int, result: StepResult) -> Outcome:
    """Warns when a rule of the folder cannot run (unreadable, a feature the conversion lacks, a field our events do
    not carry, or SQL DuckDB rejects), and lists every rule not evaluated with its reason. Rules written for another
    log source are listed but do not warn: a checkout of SigmaHQ's rules holds thousands."""
    rule_set = pipeline.sigma_rules()
    kinds = Counter(failure.kind for failure in rule_set.failures)
    return set(kinds) <= {LOGSOURCE}, {
        "rules_folder": rule_set.folder,
        "rules_loaded": rule_set.loaded,
        "rules_converted": len(rule_set.rules),
        "rules_not_evaluated": dict(sorted(kinds.items())),
        "failures": [failure.__dict__ for failure in rule_set.failures],
    }


BATCH_CHECKS = (
    BatchCheck(
        "join_coverage", "sysmon_join", "share of the batch's network events enriched with their process", join_coverage
    ),
    BatchCheck("landing_freshness", "winlogbeat_stream", "something landed recently", landing_freshness),
    BatchCheck(
        "severe_detections",
        "sigma_detections",
        "the batch has no detection of a high or critical Sigma rule (the metadata lists them)",
        sigma_severe_hits,
    ),
    BatchCheck(
        "sigma_rules_converted",
        "sigma_detections",
        "every Sigma rule of the folder for our events runs (the metadata lists every rule that does not, and why)",
        sigma_rules_converted,
    ),
)


def rekey_drops(pipeline: SysmonPipeline, result: StepResult) -> dict[str, int]:
    """Why the rekey step wrote fewer rows than it read. Its SQL drops a row for two reasons only: the event is
    not Sysmon's (counted here), or it is a redelivery of a (computer, channel, record number, UtcTime) already kept,
    in this batch or an earlier one (the rest)."""
    lower, upper = result.offsets_before["winlogbeat_stream"], result.offsets_after["winlogbeat_stream"]
    with pipeline.connect() as con:
        not_sysmon = scalar(
            con,
            f"SELECT count(*) FROM winlogbeat_stream WHERE _batch_id BETWEEN {literal(lower + 1)} AND {literal(upper)} "
            f"AND {pipeline.shard.owns()} AND source_name IS DISTINCT FROM 'Microsoft-Windows-Sysmon'",
        )
    return {"not_sysmon_dropped": not_sysmon, "redeliveries_dropped": result.rows_in - result.rows_written - not_sysmon}


def sigma_notes(pipeline: SysmonPipeline, result: StepResult) -> dict[str, Any]:
    """The rule set the step ran (how many rules loaded, converted, failed and why) and its hits per level."""
    rule_set = pipeline.sigma_rules()
    with pipeline.connect() as con:
        levels = con.execute(
            "SELECT coalesce(level, 'none'), count(*) FROM sigma_detections "
            f"WHERE _batch_id = {literal(pipeline.last_batch_id)} GROUP BY ALL ORDER BY ALL"
        ).fetchall()
    return {
        "rules_folder": rule_set.folder,
        "rules_digest": rule_set.digest,
        "rules_loaded": rule_set.loaded,
        "rules_converted": len(rule_set.rules),
        "rules_failed": len(rule_set.failures),
        "rule_failures": [failure.__dict__ for failure in rule_set.failures],
        "hits_by_level": dict(levels),
    }


# Extra metadata for an asset's materialization, from its step's result.
STEP_NOTES: dict[str, Callable[[SysmonPipeline, StepResult], dict[str, Any]]] = {
    "winlogbeat_stream_rekey": rekey_drops,
    "sigma_detections": sigma_notes,
}
