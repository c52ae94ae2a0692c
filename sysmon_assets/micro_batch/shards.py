"""How K shards divide the input: each landed file and each Kafka partition belongs to exactly one shard.

A file is assigned by a stable hash of its identity (``device:inode``, which a rotation's rename keeps), a
Kafka partition p to shard p mod K, as KSQL servers share a topic's partitions. The shard count is recorded
in the lake by the first batch and cannot change afterwards (see :class:`dbt_like.Shard`).
"""

from __future__ import annotations

import zlib

PREFIX = "shard-"


def file_shard(file_key: str, shards: int) -> int:
    """The shard that reads the landed file ``file_key``: CRC-32 of the key, mod ``shards``."""
    return zlib.crc32(file_key.encode()) % shards


def partition_shard(partition: int, shards: int) -> int:
    """The shard that reads Kafka partition ``partition``."""
    return partition % shards


def partition_keys(shards: int) -> list[str]:
    """Dagster partition keys, ``shard-0`` ... ``shard-{K-1}``."""
    return [f"{PREFIX}{index}" for index in range(shards)]


def partition_key(shard: int, shards: int) -> str | None:
    """Shard ``shard``'s Dagster partition key; None for one pipeline (its assets have no partitions)."""
    return f"{PREFIX}{shard}" if shards > 1 else None


def shard_index(partition_key: str | None) -> int:
    """``shard-2`` -> 2; no partition (one pipeline) -> 0."""
    return int(partition_key.removeprefix(PREFIX)) if partition_key else 0
