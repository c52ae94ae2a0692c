"""Batch checks that need the recipe's meaning (the schema tests in sql/schema.yml are generic).

Each runs inside the batch, right after its asset's step, and is reported as an asset check.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from dbt_like.sql import scalar
from sysmon_assets import kafka_source
from sysmon_assets.landing import list_landed_files
from sysmon_assets.pipeline import SysmonPipeline

Outcome = tuple[bool, dict[str, float | int | str]]


@dataclass(frozen=True)
class BatchCheck:
    """A named check on one asset, evaluated against the pipeline after the asset's step."""

    name: str
    asset: str
    description: str
    evaluate: Callable[[SysmonPipeline, int], Outcome]


def join_coverage(pipeline: SysmonPipeline, batch_id: int) -> Outcome:
    """Share of all network-connect events that joined; warns below ``join_coverage_warn``."""
    with pipeline.connect() as con:
        connects = scalar(con, "SELECT count(*) FROM sysmon_network_connect")
        joined = scalar(con, "SELECT count(*) FROM sysmon_join")
        pending = scalar(con, "SELECT count(*) FROM dbt_like.pending WHERE model = 'sysmon_join'")
    coverage = joined / connects if connects else 1.0
    threshold = pipeline.settings.join_coverage_warn
    return coverage >= threshold, {
        "coverage": round(coverage, 4),
        "joined": joined,
        "network_events": connects,
        "pending": pending,
        "warn_below": threshold,
    }


def _kafka_freshness(pipeline: SysmonPipeline) -> Outcome:
    with pipeline.connect() as con:
        seconds = scalar(
            con, f"SELECT date_diff('second', max(updated_at), now()::TIMESTAMP) FROM {kafka_source.OFFSETS_TABLE}"
        )
    age_minutes = seconds / 60 if seconds is not None else float("inf")
    limit = pipeline.settings.freshness_minutes
    return age_minutes <= limit, {
        "minutes_since_last_message": round(min(age_minutes, 10**9), 1),
        "limit_minutes": limit,
        "topic": pipeline.settings.kafka_topic,
    }


def landing_freshness(pipeline: SysmonPipeline, batch_id: int) -> Outcome:
    """Whether anything landed (or, from Kafka, was read) within ``freshness_minutes``: a silent Winlogbeat
    is an incident."""
    if pipeline.settings.source == "kafka":
        return _kafka_freshness(pipeline)
    files = list_landed_files(pipeline.settings.landing_dir)
    newest = max((path.stat().st_mtime for path in files), default=0.0)
    age_minutes = (time.time() - newest) / 60 if newest else float("inf")
    limit = pipeline.settings.freshness_minutes
    return age_minutes <= limit, {
        "minutes_since_last_landing": round(min(age_minutes, 10**9), 1),
        "limit_minutes": limit,
        "files": len(files),
    }


BATCH_CHECKS = (
    BatchCheck("join_coverage", "sysmon_join", "share of network events enriched with their process", join_coverage),
    BatchCheck("landing_freshness", "winlogbeat_stream", "something landed recently", landing_freshness),
)
