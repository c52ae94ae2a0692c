"""sysmon_join semantics: the default mode and strict KSQL parity (README, "Join semantics")."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

from tests.conftest import T0, Lake, network_connect, process_create, sysmon_event


def joined(lake: Lake) -> list[tuple]:
    return lake.rows("SELECT process_guid, dst_ip_addr, process_command_line FROM sysmon_join ORDER BY dst_ip_addr")


def test_guids_that_differ_in_case_join(lake: Lake) -> None:
    lake.land([process_create("{0A1B-CC}", "upper.exe"), network_connect("{0a1b-cc}", "10.0.0.1")])
    lake.batch()
    assert joined(lake) == [("{0A1B-CC}", "10.0.0.1", "upper.exe")]


def test_connection_before_its_create_in_one_batch_joins_in_default_mode(lake: Lake) -> None:
    lake.land([network_connect("{G}", "10.0.0.1"), process_create("{G}", "late.exe")])
    lake.batch()
    assert joined(lake) == [("{G}", "10.0.0.1", "late.exe")]


def test_late_create_within_grace_joins_in_a_later_batch(lake: Lake) -> None:
    lake.land([network_connect("{G}", "10.0.0.1")])
    first = lake.batch(T0)
    assert first["sysmon_join"][0].pending == 1
    assert joined(lake) == []
    lake.land([process_create("{G}", "late.exe")])
    second = lake.batch(T0 + timedelta(minutes=14))
    assert joined(lake) == [("{G}", "10.0.0.1", "late.exe")]
    assert second["sysmon_join"][0].pending == 0


def test_late_create_beyond_grace_does_not_join(lake: Lake) -> None:
    lake.land([network_connect("{G}", "10.0.0.1")])
    lake.batch(T0)
    lake.land([process_create("{G}", "late.exe")])
    result = lake.batch(T0 + timedelta(minutes=16))
    assert joined(lake) == []
    assert result["sysmon_join"][0].expired == 1
    assert lake.count("sysmon_network_connect") == 1


def test_grace_is_a_setting(tmp_path: Path) -> None:
    lake = Lake(tmp_path, join_grace_minutes=60)
    lake.land([network_connect("{G}", "10.0.0.1")])
    lake.batch(T0)
    lake.land([process_create("{G}", "late.exe")])
    lake.batch(T0 + timedelta(minutes=45))
    assert joined(lake) == [("{G}", "10.0.0.1", "late.exe")]


def test_an_updated_process_row_affects_only_later_joins(lake: Lake) -> None:
    lake.land([process_create("{G}", "v1.exe"), network_connect("{G}", "10.0.0.1")])
    lake.batch(T0)
    lake.land([process_create("{G}", "v2.exe"), network_connect("{G}", "10.0.0.2")])
    lake.batch(T0 + timedelta(minutes=1))
    assert joined(lake) == [("{G}", "10.0.0.1", "v1.exe"), ("{G}", "10.0.0.2", "v2.exe")]
    assert lake.rows("SELECT process_command_line FROM sysmon_process_create_table") == [("v2.exe",)]


def test_default_mode_joins_the_table_as_of_the_end_of_the_batch(lake: Lake) -> None:
    lake.land([process_create("{G}", "v1.exe"), network_connect("{G}", "10.0.0.1"), process_create("{G}", "v2.exe")])
    lake.batch()
    assert joined(lake) == [("{G}", "10.0.0.1", "v2.exe")]


def test_a_guid_created_again_after_a_connection_joins_it_by_where_batches_are_cut(tmp_path: Path) -> None:
    """docs/exactly-once.md: 1, 2 and 5 batches give identical tables when no process GUID is created twice."""
    events = [process_create("{G}", "v1.exe"), network_connect("{G}", "10.0.0.1"), process_create("{G}", "v2.exe")]
    whole, cut = Lake(tmp_path / "whole"), Lake(tmp_path / "cut")
    whole.land(events)
    whole.batch(T0)
    cut.land(events[:2])
    cut.batch(T0)
    cut.land(events[2:])
    cut.batch(T0 + timedelta(minutes=1))
    assert joined(whole) == [("{G}", "10.0.0.1", "v2.exe")]
    assert joined(cut) == [("{G}", "10.0.0.1", "v1.exe")]


def test_ksql_mode_joins_by_the_arrival_order_a_batch_limit_gives_across_files(tmp_path: Path) -> None:
    """docs/inputs.md: under SYSMON_LANDING_MAX_BYTES every file advances in every batch, so a rotated file's unread
    create arrives after the current file's connection, which KSQL's join then drops; one batch reads the older
    file whole first."""

    def rotated(lake: Lake) -> Lake:
        padding = [network_connect(f"{{PAD{index}}}", "10.9.0.1") for index in range(300)]
        older = lake.land([*padding, process_create("{G}", "g.exe")], name="winlogbeat.1")
        current = lake.land([network_connect("{G}", "192.0.2.1")], name="winlogbeat")
        os.utime(older, ns=(10**18, 10**18))
        os.utime(current, ns=(10**18 + 10**11, 10**18 + 10**11))
        return lake

    whole = rotated(Lake(tmp_path / "whole", join_mode="ksql"))
    whole.batch(T0)
    limited = rotated(Lake(tmp_path / "limited", join_mode="ksql", landing_max_bytes=100_000))
    for minute in range(3):
        limited.batch(T0 + timedelta(minutes=minute))
    assert limited.count("winlogbeat_stream") == whole.count("winlogbeat_stream") == 302
    assert [dst for _, dst, _ in joined(whole)] == ["192.0.2.1"]
    assert [dst for _, dst, _ in joined(limited)] == []


def test_null_guid_never_joins(lake: Lake) -> None:
    lake.land([process_create(None, "nullguid.exe"), network_connect(None, "10.0.0.1")])
    lake.batch()
    assert joined(lake) == []
    assert lake.count("sysmon_process_create") == 1
    assert lake.count("sysmon_process_create_table") == 0
    assert lake.count("sysmon_network_connect") == 1


def test_an_empty_guid_is_a_key_as_in_ksql(lake: Lake) -> None:
    """KSQL keys on '' as on any value: the create with ProcessGuid '' is a table row and a connection with ''
    (or '{}', the same GUID once braces are trimmed) joins it; its empty parent and logon GUIDs stay ''."""
    lake.land(
        [
            process_create("", "emptyguid.exe", event_data={"ParentProcessGuid": "", "LogonGuid": "{}"}),
            network_connect("", "10.0.0.1"),
            network_connect("{}", "10.0.0.2"),
            network_connect(None, "10.0.0.3"),
        ]
    )
    lake.batch()
    assert lake.rows(
        "SELECT process_guid, parent_process_guid, user_logon_guid, process_command_line "
        "FROM sysmon_process_create_table"
    ) == [("", "", "", "emptyguid.exe")]
    assert joined(lake) == [("", "10.0.0.1", "emptyguid.exe"), ("", "10.0.0.2", "emptyguid.exe")]


def test_an_empty_guid_joins_in_ksql_mode_too(tmp_path: Path) -> None:
    lake = Lake(tmp_path, join_mode="ksql")
    lake.land([network_connect("", "10.0.0.1"), process_create("", "emptyguid.exe"), network_connect("", "10.0.0.2")])
    lake.batch()
    assert joined(lake) == [("", "10.0.0.2", "emptyguid.exe")]


def test_non_sysmon_event_id_3_never_reaches_the_join(lake: Lake) -> None:
    foreign = sysmon_event(3, "{G}", provider="Microsoft-Windows-Kernel-General", DestinationIp="10.0.0.9")
    lake.land([process_create("{G}", "real.exe"), foreign])
    lake.batch()
    assert lake.count("sysmon_network_connect") == 0
    assert joined(lake) == []


def test_ksql_mode_drops_a_connection_that_precedes_its_create(tmp_path: Path) -> None:
    lake = Lake(tmp_path, join_mode="ksql")
    lake.land(
        [network_connect("{G}", "10.0.0.1"), process_create("{G}", "late.exe"), network_connect("{G}", "10.0.0.2")]
    )
    result = lake.batch()
    assert joined(lake) == [("{G}", "10.0.0.2", "late.exe")]
    assert result["sysmon_join"][0].pending is None
    lake.batch(T0 + timedelta(minutes=1))
    assert joined(lake) == [("{G}", "10.0.0.2", "late.exe")]


def test_ksql_mode_loses_no_connection_to_runs_that_left_the_process_create_step_out(tmp_path: Path) -> None:
    lake = Lake(tmp_path, join_mode="ksql")
    lake.land([process_create("{F}", "first.exe")])
    lake.batch(T0 - timedelta(minutes=1))
    for minute, guid in enumerate(("{G}", "{H}")):  # two runs of part of the steps, the join left out too
        lake.land([process_create(guid, "early.exe"), network_connect(guid, "10.0.0.1")], name=f"{minute}.ndjson")
        for model in ("winlogbeat_stream", "winlogbeat_stream_rekey", "sysmon_network_connect"):
            lake.pipeline.run_model(model, run_key=f"part {minute}", batch_time=T0 + timedelta(minutes=minute))
    # the join alone: its creates are not in sysmon_process_create yet, so its connections wait (and it ends)
    lake.pipeline.run_model("sysmon_join", run_key="the join alone", batch_time=T0 + timedelta(minutes=2))
    assert joined(lake) == []
    lake.batch(T0 + timedelta(minutes=3))
    assert sorted(joined(lake)) == [("{G}", "10.0.0.1", "early.exe"), ("{H}", "10.0.0.1", "early.exe")]


def test_ksql_mode_joins_the_create_that_arrived_before_each_connection(tmp_path: Path) -> None:
    lake = Lake(tmp_path, join_mode="ksql")
    lake.land(
        [
            process_create("{G}", "v1.exe"),
            network_connect("{G}", "10.0.0.1"),
            process_create("{G}", "v2.exe"),
            network_connect("{G}", "10.0.0.2"),
        ]
    )
    lake.batch()
    assert joined(lake) == [("{G}", "10.0.0.1", "v1.exe"), ("{G}", "10.0.0.2", "v2.exe")]


def test_ksql_mode_across_batches_and_case(tmp_path: Path) -> None:
    lake = Lake(tmp_path, join_mode="ksql")
    lake.land([process_create("{ABC}", "p.exe")])
    lake.batch(T0)
    lake.land([network_connect("{abc}", "10.0.0.1"), network_connect(None, "10.0.0.2")])
    lake.batch(T0 + timedelta(minutes=1))
    assert joined(lake) == [("{ABC}", "10.0.0.1", "p.exe")]


def test_switching_the_join_mode_keeps_the_waiting_connections_for_the_default_mode(tmp_path: Path) -> None:
    default = Lake(tmp_path)
    default.land([network_connect("{W}", "10.0.0.1")])
    assert default.batch(T0)["sysmon_join"][0].pending == 1
    # a ksql batch joins as KSQL would: the connection arrived before its create, so it does not join
    ksql = Lake(tmp_path, join_mode="ksql")
    ksql.land(
        [process_create("{W}", "late.exe"), network_connect("{W}", "10.0.0.2"), network_connect("{K}", "10.0.0.3")]
    )
    ksql.batch(T0 + timedelta(minutes=1))
    assert joined(ksql) == [("{W}", "10.0.0.2", "late.exe")]
    # back in the default mode, within the grace period, the connection still waiting joins; the one the ksql batch
    # dropped (no create before it) does not wait, so its create, landing now, joins nothing
    default.land([process_create("{K}", "later.exe")])
    Lake(tmp_path).batch(T0 + timedelta(minutes=2))
    assert joined(default) == [("{W}", "10.0.0.1", "late.exe"), ("{W}", "10.0.0.2", "late.exe")]
    Lake(tmp_path).batch(T0 + timedelta(minutes=3))
    assert default.count("sysmon_join") == 2
