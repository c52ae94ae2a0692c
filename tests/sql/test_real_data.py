"""Real Sysmon data nobody here wrote: OTRF Security-Datasets (legacy Winlogbeat 6.7 and flat layouts) and EVTX files.

The expected joins are computed independently, in plain Python over the file, and compared
with what the pipeline writes to sysmon_join.
"""

from __future__ import annotations

import json
import tarfile
import zipfile
from datetime import datetime
from pathlib import Path
from typing import Any

import evtx
import pytest

from tests.conftest import Lake
from tests.recipe import RECIPE_EVENT_DATA_FIELDS, shared_path

OTRF_TARBALLS = {
    # file: e3 rows joined, as SOURCES.md counts them (exact ProcessGuid match, same file)
    "empire_invoke_runas.tar.gz": 15,
    "empire_enable_rdp.tar.gz": 6,
    "empire_scm_dll_hijack_ikeext.tar.gz": 6,
    "empire_wdigest_downgrade.tar.gz": 0,
}


DECLARED = {name.upper() for name, _ in RECIPE_EVENT_DATA_FIELDS}


def as_text(value: Any) -> str | None:
    """A JSON value as _extra_fields holds it: strings as they are, objects and arrays as compact JSON."""
    if value is None or isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def extra_fields(data: Any) -> dict[str, str | None]:
    """The event_data fields the recipe's STRUCT does not declare (ignoring case, as KSQL), without the pipeline."""
    return {k: as_text(v) for k, v in data.items() if k.upper() not in DECLARED} if isinstance(data, dict) else {}


def stream_extra_fields(holder: dict[str, Any], event_data: str, user_data: str) -> dict[str, str | None]:
    """_extra_fields of an event whose EventData is ``holder[event_data]``; an event without an EventData object
    keeps its UserData's fields, all of them (an EVTX record's one wrapper element named xml_name)."""
    if isinstance(holder.get(event_data), dict) or not isinstance(data := holder.get(user_data), dict):
        return extra_fields(holder.get(event_data))
    if user_data == "UserData" and len(data) == 1:
        ((wrapper, inner),) = data.items()
        fields = inner if isinstance(inner, dict) else {} if inner is None else data
        return {"xml_name": wrapper} | {k: as_text(v) for k, v in fields.items()}
    return {k: as_text(v) for k, v in data.items()}


def extract_ndjson(tarball: Path, into: Path) -> Path:
    """The one JSON member of an OTRF tarball, written as a landing file."""
    with tarfile.open(tarball) as archive:
        (member,) = [m for m in archive.getmembers() if m.isfile()]
        data = archive.extractfile(member).read()
    target = into / (tarball.name.removesuffix(".tar.gz") + ".ndjson")
    target.write_bytes(data)
    return target


def joined(creates: dict[str, dict[str, Any]], connects: list[tuple[str | None, dict[str, Any]]]) -> list[tuple]:
    """sysmon_join rows (guid, time, destination, command line) of connections whose process has a create."""
    return sorted(
        (
            guid,
            datetime.strptime(data["UtcTime"], "%Y-%m-%d %H:%M:%S.%f"),
            data.get("DestinationIp"),
            int(data["DestinationPort"]),
            creates[guid].get("CommandLine"),
        )
        for guid, data in connects
        if guid in creates
    )


def expected_joins(path: Path) -> list[tuple]:
    """sysmon_join rows (guid, time, destination, command line) computed without the pipeline."""
    seen, creates, connects = set(), {}, []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        event = json.loads(line)
        if event.get("source_name") != "Microsoft-Windows-Sysmon":
            continue
        delivery = (event.get("computer_name"), event.get("log_name"), event.get("record_number"))
        if delivery in seen:
            continue
        seen.add(delivery)
        data = event.get("event_data", {})
        guid = (data.get("ProcessGuid") or "").strip().upper() or None
        if int(event["event_id"]) == 1 and guid:
            creates[guid] = data  # latest by arrival wins
        elif int(event["event_id"]) == 3:
            connects.append((guid, data))
    return joined(creates, connects)


@pytest.mark.parametrize("tarball", sorted(OTRF_TARBALLS))
def test_otrf_joins_match_an_independent_computation(tarball: str, tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    landed = extract_ndjson(shared_path("data", "real", "otrf-security-datasets", tarball), lake.landing)
    lake.batch()
    actual = lake.rows(
        "SELECT process_guid, event_date_creation, dst_ip_addr, dst_port, process_command_line FROM sysmon_join"
    )
    expected = expected_joins(landed)
    assert sorted(actual) == expected
    assert len(expected) == OTRF_TARBALLS[tarball]
    assert lake.count("winlogbeat_rejects") == 0
    events = [json.loads(line) for line in landed.read_bytes().splitlines() if line.strip()]
    assert lake.count("winlogbeat_stream") == len(events)
    assert lake.rows("SELECT _extra_fields FROM winlogbeat_stream ORDER BY _seq") == [
        (stream_extra_fields(event, "event_data", "user_data"),) for event in events
    ]


OTRF_FLAT_ZIPS = {
    # file: e3 rows joined, as SOURCES.md counts them
    "empire_launcher_sct_regsvr32.zip": 11,
    "cmd_bitsadmin_download_psh_script.zip": 3,
    "cmd_sharpview_pcre_net.zip": 1,
}
# What the flat layout reads of a line (docs/inputs.md): the System fields it maps and the declared EventData fields,
# by their exact names; all names ignoring case on a line that spells one of them in another case (besides the
# System's ProcessID, which is not the EventData's ProcessId).
FLAT_NAMES = {name for name, _ in RECIPE_EVENT_DATA_FIELDS} | {
    "SourceName",
    "Channel",
    "Hostname",
    "EventID",
    "Task",
    "RecordNumber",
}
FLAT_SPELLINGS = FLAT_NAMES | {"ProcessID"}


def flat_extra_fields(event: dict[str, Any]) -> dict[str, str | None]:
    """A flat event's _extra_fields, without the pipeline: every top-level field the layout does not read."""
    upper_names = {name.upper() for name in FLAT_NAMES}
    other_case = any(key not in FLAT_SPELLINGS and key.upper() in upper_names for key in event)
    return {
        key: as_text(value)
        for key, value in event.items()
        if (key.upper() not in upper_names if other_case else key not in FLAT_NAMES)
    }


def extract_zip_member(archive_path: Path, into: Path) -> Path:
    """The one JSON member of an OTRF zip, written as a landing file."""
    with zipfile.ZipFile(archive_path) as archive:
        (name,) = archive.namelist()
        target = into / (archive_path.name.removesuffix(".zip") + ".ndjson")
        target.write_bytes(archive.read(name))
    return target


def expected_flat_joins(events: list[dict[str, Any]]) -> list[tuple]:
    """sysmon_join rows of flat events, without the pipeline: a redelivery (same host, channel, record number and
    UtcTime) counts once; events without a record number (OTRF's own exports) all count."""
    seen, creates, connects = set(), {}, []
    for event in events:
        if event.get("SourceName") != "Microsoft-Windows-Sysmon":
            continue
        if event.get("RecordNumber") is not None:
            delivery = (event.get("Hostname"), event.get("Channel"), event["RecordNumber"], event.get("UtcTime"))
            if delivery in seen:
                continue
            seen.add(delivery)
        guid = (event.get("ProcessGuid") or "").strip().upper() or None
        if int(event["EventID"]) == 1 and guid:
            creates[guid] = event
        elif int(event["EventID"]) == 3:
            connects.append((guid, event))
    return joined(creates, connects)


@pytest.mark.parametrize("name", sorted(OTRF_FLAT_ZIPS))
def test_otrf_flat_exports_match_an_independent_computation(name: str, tmp_path: Path) -> None:
    """OTRF's exports since 2020 are flat (NXLog's to_json() or their own): System and EventData fields side by
    side at the top level."""
    lake = Lake(tmp_path)
    landed = extract_zip_member(shared_path("data", "real", "otrf-security-datasets", name), lake.landing)
    lake.batch()
    events = [json.loads(line) for line in landed.read_bytes().splitlines() if line.strip()]
    assert lake.count("winlogbeat_rejects") == 0
    assert lake.rows("SELECT DISTINCT _layout FROM winlogbeat_stream") == [("flat",)]
    assert lake.rows("SELECT _extra_fields FROM winlogbeat_stream ORDER BY _seq") == [
        (flat_extra_fields(event),) for event in events
    ]
    actual = lake.rows(
        "SELECT process_guid, event_date_creation, dst_ip_addr, dst_port, process_command_line FROM sysmon_join"
    )
    expected = expected_flat_joins(events)
    assert sorted(actual) == expected
    assert len(expected) == OTRF_FLAT_ZIPS[name]


EVTX_FILES = {
    # file: e3 rows joined, as SOURCES.md counts them
    "evtx-attack-samples/panache_sysmon_vs_EDRTestingScript.evtx": 8,
    "evtx-attack-samples/privesc_rotten_potato_from_webshell_metasploit_sysmon_1_8_3.evtx": 7,
    "evtx-attack-samples/DE_sysmon-3-rdp-tun.evtx": 3,
    "evtx-attack-samples/exec_persist_rundll32_mshta_scheduledtask_sysmon_1_3_11.evtx": 3,
    "elastic-beats/sysmon-9.01.evtx": 0,
}


def expected_evtx(path: Path) -> tuple[int, list[tuple]]:
    """(record count, sysmon_join rows) straight from the EVTX records, without the pipeline."""
    records = [json.loads(r["data"])["Event"] for r in evtx.PyEvtxParser(str(path)).records_json()]
    creates, connects = {}, []
    for record in records:
        system, data = record["System"], record.get("EventData") or {}
        if system["Provider"]["#attributes"]["Name"] != "Microsoft-Windows-Sysmon":
            continue
        guid = "{" + str(data.get("ProcessGuid", "")).strip("{} ").upper() + "}"
        if system["EventID"] == 1:
            creates[guid] = data
        elif system["EventID"] == 3:
            connects.append((guid, data))
    return len(records), joined(creates, connects)


@pytest.mark.parametrize("name", sorted(EVTX_FILES))
def test_evtx_files_match_an_independent_computation(name: str, tmp_path: Path) -> None:
    source = shared_path("data", "real", *name.split("/"))
    lake = Lake(tmp_path)
    (lake.landing / source.name).write_bytes(source.read_bytes())
    lake.batch()
    records, joins = expected_evtx(source)
    assert lake.count("winlogbeat_stream") == records
    assert lake.rows("SELECT _extra_fields FROM winlogbeat_stream ORDER BY _seq") == [
        (stream_extra_fields(json.loads(r["data"])["Event"], "EventData", "UserData"),)
        for r in evtx.PyEvtxParser(str(source)).records_json()
    ]
    assert lake.count("winlogbeat_rejects") == 0
    actual = lake.rows(
        "SELECT process_guid, event_date_creation, dst_ip_addr, dst_port, process_command_line FROM sysmon_join"
    )
    assert sorted(actual) == joins
    assert len(joins) == EVTX_FILES[name]
    lake.batch()
    assert lake.count("winlogbeat_stream") == records  # an EVTX file is read once
