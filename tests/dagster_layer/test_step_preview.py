"""What an asset's page shows of its step: the lake snapshot it names."""

from __future__ import annotations

from pathlib import Path

from sysmon_assets.dagster_layer.step_preview import describe
from sysmon_assets.micro_batch.steps import SysmonPipeline
from tests.conftest import T0, Lake, land_in_shard, network_connect, process_create


def test_a_step_names_its_own_batchs_snapshot_though_another_shard_committed_since(tmp_path: Path) -> None:
    """A probe's finding: with shards at once, `lake_snapshot` was the lake's newest snapshot as the metadata was
    read, another shard's commit now and then (then `AT (VERSION => n)` did not read what the step left)."""
    lake = Lake(tmp_path, shards=2)
    land_in_shard(lake, 0, process_create("{A}"))
    land_in_shard(lake, 1, network_connect("{B}"))
    first, second = SysmonPipeline(lake.settings, shard=0), SysmonPipeline(lake.settings, shard=1)
    first.run_model("winlogbeat_stream", run_key="shard-0-run", batch_time=T0)
    second.run_model("winlogbeat_stream", run_key="shard-1-run", batch_time=T0)
    notes = dict(
        lake.rows(
            "SELECT snapshot_id, CAST(commit_extra_info::JSON->>'batch_id' AS BIGINT) FROM ducklake_snapshots('lake') "
            "WHERE commit_extra_info::JSON->>'step' = 'winlogbeat_stream'"
        )
    )
    _, _, named = describe(first.connect, "winlogbeat_stream", first.last_batch_id)
    assert notes[named] == first.last_batch_id != second.last_batch_id
    assert max(notes) > named  # the other shard's commit came after it
