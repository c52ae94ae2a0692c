"""Every input layout lands in the same winlogbeat_stream schema: the same events give the same joins."""

from __future__ import annotations

import copy
import json
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Lake, network_connect, process_create, snapshot, sysmon_event

RECIPE_JOIN = ["sysmon_join"]


def events() -> list[dict[str, Any]]:
    """Legacy (6.x) events: two processes, three connections, one foreign event id 3."""
    created = process_create("{AB12-CD34}", "powershell -enc AAAA", record=10)
    del created["event_data"]["Product"]  # the ECS module keeps only pe.* it knows; keep the test fair
    items = [
        created,
        network_connect("{ab12-cd34}", "10.1.1.1", record=11),
        network_connect("{AB12-CD34}", "10.1.1.2", record=12, utc_time="2026-11-01 10:00:05.900"),
        process_create("{EE00-FF11}", "cmd /c dir", record=13),
        network_connect("{EE00-FF11}", "10.1.1.3", record=14),
        network_connect("{9999-0000}", "10.1.1.4", record=15),
        sysmon_event(3, "{AB12-CD34}", provider="Microsoft-Windows-Kernel-General", record=16),
    ]
    for event in items:
        event["event_data"].pop("SourcePortName", None)  # ECS has no field for it
    return items


def to_winlogbeat8(event: dict[str, Any]) -> dict[str, Any]:
    """Winlogbeat 7.x/8.x without the Sysmon module: winlog.*, event_id a string, a forwarder's host.name."""
    return {
        "@timestamp": event["@timestamp"],
        "host": {"name": "wef-forwarder-01"},
        "event": {"code": str(event["event_id"]), "provider": event["source_name"], "kind": "event"},
        "winlog": {
            "provider_name": event["source_name"],
            "channel": event["log_name"],
            "computer_name": event["computer_name"],
            "event_id": str(event["event_id"]),
            "task": event["task"],
            "record_id": int(event["record_number"]),
            "api": "wineventlog",
            "event_data": copy.deepcopy(event["event_data"]),
        },
    }


ECS_PROCESS = {
    "ProcessGuid": ("process", "entity_id"),
    "ProcessId": ("process", "pid"),
    "Image": ("process", "executable"),
    "CommandLine": ("process", "command_line"),
    "CurrentDirectory": ("process", "working_directory"),
    "FileVersion": ("process", "pe", "file_version"),
    "Description": ("process", "pe", "description"),
    "Company": ("process", "pe", "company"),
    "ParentProcessGuid": ("process", "parent", "entity_id"),
    "ParentProcessId": ("process", "parent", "pid"),
    "ParentImage": ("process", "parent", "executable"),
    "ParentCommandLine": ("process", "parent", "command_line"),
    "SourceIp": ("source", "ip"),
    "SourcePort": ("source", "port"),
    "SourceHostname": ("source", "domain"),
    "DestinationIp": ("destination", "ip"),
    "DestinationPort": ("destination", "port"),
    "DestinationHostname": ("destination", "domain"),
    "Protocol": ("network", "transport"),
    "DestinationPortName": ("network", "protocol"),
}
# The source process of a CreateRemoteThread (8) or a ProcessAccess (10): the module moves it to process.*
SOURCE_PROCESS = {
    "SourceProcessGuid": "ProcessGuid",
    "SourceProcessGUID": "ProcessGuid",
    "SourceProcessId": "ProcessId",
    "SourceImage": "Image",
}
INTEGER_FIELDS = {"ProcessId", "ParentProcessId", "SourcePort", "DestinationPort", "TerminalSessionId"}


def put(document: dict[str, Any], path: tuple[str, ...], value: Any) -> None:
    """Set ``document``'s field at ``path``, making the objects above it."""
    for part in path[:-1]:
        document = document.setdefault(part, {})
    document[path[-1]] = value


def to_ecs(event: dict[str, Any]) -> dict[str, Any]:
    """Winlogbeat 7.x/8.x with the Sysmon module: fields moved to Elastic Common Schema as its pipeline does."""
    base = to_winlogbeat8(event)
    if event["source_name"] != "Microsoft-Windows-Sysmon":
        return base
    data = base["winlog"]["event_data"]
    base["event"]["module"] = "sysmon"
    base["@timestamp"] = data.pop("UtcTime").replace(" ", "T") + "Z"
    rule = data.pop("RuleName", None)
    if rule and rule != "-":  # the module drops an empty or "-" rule name
        base["rule"] = {"name": rule}
    if "OriginalFileName" in data:
        base.setdefault("process", {}).setdefault("pe", {})["original_file_name"] = data.pop("OriginalFileName")
    for source, name in SOURCE_PROCESS.items():  # whatever the event, as the module does
        if source in data:
            data[name] = data.pop(source)
    for name, path in ECS_PROCESS.items():
        if name in data:
            value = data.pop(name)
            put(base, path, int(value) if name in INTEGER_FIELDS else value)
    if "Hashes" in data:
        base.setdefault("process", {})["hash"] = {
            kind.lower(): digest.lower() for kind, digest in (h.split("=") for h in data.pop("Hashes").split(","))
        }
    if "User" in data:
        domain, name = data.pop("User").split("\\")
        base["user"] = {"domain": domain, "name": name}
    direction = {"true": "egress", "false": "ingress"}
    if "Initiated" in data:
        base.setdefault("network", {})["direction"] = direction[data.pop("Initiated")]
    for ipv6 in ("SourceIsIpv6", "DestinationIsIpv6"):
        if ipv6 in data:
            base.setdefault("network", {})["type"] = "ipv6" if data.pop(ipv6) == "true" else "ipv4"
    return base


def to_evtx(event: dict[str, Any]) -> dict[str, Any]:
    """An EVTX record as the reader lands it: System and EventData, GUIDs without braces, integers as numbers."""
    data = {
        name: (int(value) if name in INTEGER_FIELDS else value.strip("{}") if name.endswith("Guid") else value)
        for name, value in event["event_data"].items()
    }
    return {
        "evtx": {
            "System": {
                "Provider": {"#attributes": {"Name": event["source_name"]}},
                "EventID": event["event_id"],
                "Task": 3,
                "EventRecordID": int(event["record_number"]),
                "Channel": event["log_name"],
                "Computer": event["computer_name"],
            },
            "EventData": data,
        }
    }


def to_flat(event: dict[str, Any]) -> dict[str, Any]:
    """A flat Windows event, as NXLog's to_json() writes one (OTRF's Security-Datasets since 2020 too): the System
    fields under their own names and the EventData fields beside them, event id and record number numbers."""
    return {
        "EventTime": event["@timestamp"],
        "Hostname": event["computer_name"],
        "EventID": event["event_id"],
        "SourceName": event["source_name"],
        "Task": 3,
        "RecordNumber": int(event["record_number"]),
        "Channel": event["log_name"],
        **copy.deepcopy(event["event_data"]),
    }


CONVERTERS = {"winlogbeat7+": to_winlogbeat8, "ecs": to_ecs, "evtx": to_evtx, "flat": to_flat}


@pytest.fixture(scope="module")
def legacy_join(tmp_path_factory: pytest.TempPathFactory) -> dict:
    lake = Lake(tmp_path_factory.mktemp("legacy"))
    lake.land(events())
    lake.batch()
    assert lake.count("sysmon_join") == 3
    return snapshot(lake.settings, RECIPE_JOIN)


@pytest.mark.parametrize("layout", sorted(CONVERTERS))
def test_the_same_events_in_another_layout_give_identical_joins(layout: str, legacy_join: dict, tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.land(CONVERTERS[layout](event) for event in events())
    lake.batch()
    assert lake.rows("SELECT DISTINCT _layout FROM winlogbeat_stream WHERE source_name LIKE '%Sysmon'") == [(layout,)]
    assert snapshot(lake.settings, RECIPE_JOIN) == legacy_join


def test_layouts_mix_freely_in_one_file(legacy_join: dict, tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    converters = [lambda e: e, *CONVERTERS.values()]
    lake.land(converters[i % len(converters)](event) for i, event in enumerate(events()))
    lake.batch()
    assert snapshot(lake.settings, RECIPE_JOIN) == legacy_join


def test_computer_name_is_the_source_host_never_the_forwarder(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.land([to_winlogbeat8(events()[0]), to_ecs(events()[1])])
    lake.batch()
    assert lake.rows("SELECT DISTINCT computer_name FROM winlogbeat_stream") == [("HOST1.corp",)]


def test_an_object_no_layout_describes_is_kept_as_unknown_and_not_rekeyed(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.land([{"a": 1}])
    results = lake.batch()
    assert lake.rows("SELECT _layout, source_name, event_id FROM winlogbeat_stream") == [("unknown", None, None)]
    assert lake.count("winlogbeat_stream_rekey") == 0
    assert results["winlogbeat_stream_rekey"][0].rows_in == 1


def to_elastic_agent(event: dict[str, Any]) -> dict[str, Any]:
    """Elastic Agent's Windows integration as Elasticsearch stores a Sysmon event: the fields its ingest pipeline
    moves to ECS as the Sysmon module's, under the data set windows.sysmon_operational and no event.module."""
    document = to_ecs(event)
    if document["event"].pop("module", None) == "sysmon":
        document["event"]["dataset"] = "windows.sysmon_operational"
        document["data_stream"] = {"dataset": "windows.sysmon_operational", "namespace": "default", "type": "logs"}
    return document


def test_elastic_agent_documents_are_read_as_ecs(legacy_join: dict, tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.land(to_elastic_agent(event) for event in events())
    lake.batch()
    assert lake.rows("SELECT DISTINCT _layout FROM winlogbeat_stream WHERE source_name LIKE '%Sysmon'") == [("ecs",)]
    assert snapshot(lake.settings, RECIPE_JOIN) == legacy_join


def test_winlogbeat8_string_event_id_and_record_id_are_typed(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    lake.land([to_winlogbeat8(events()[1])])
    lake.batch()
    assert lake.rows("SELECT event_id, _record_number, event_data.DestinationPort FROM winlogbeat_stream") == [
        (3, 11, 443)
    ]


@pytest.mark.parametrize(
    ("timestamp", "parsed"),
    [
        ("2026-11-01T10:00:00.123Z", datetime(2026, 11, 1, 10, 0, 0, 123000)),
        ("2026-11-01T10:00:00Z", datetime(2026, 11, 1, 10, 0, 0)),
        ("2026-11-01T10:00:00.123456789Z", datetime(2026, 11, 1, 10, 0, 0, 123000)),  # nanoseconds
        ("2026-11-01T11:00:00.123+01:00", datetime(2026, 11, 1, 10, 0, 0, 123000)),
        ("2026-11-01T05:00:00.123-0500", datetime(2026, 11, 1, 10, 0, 0, 123000)),
        ("2026-11-01T10:00:00.123", None),  # no zone: not guessed
        ("2026-11-01", None),  # a day: no time, no zone (its "-01" is not an offset)
        ("soon", None),
    ],
)
def test_an_ecs_timestamp_in_any_iso_8601_form_with_a_zone_is_utc_time(
    tmp_path: Path, timestamp: str, parsed: datetime | None
) -> None:
    lake = Lake(tmp_path)
    event = to_ecs(events()[1])
    event["@timestamp"] = timestamp
    lake.land([event])
    lake.batch()
    assert lake.rows("SELECT event_date_creation FROM winlogbeat_stream_rekey") == [(parsed,)]
    errors = [] if parsed else [{"field": "UtcTime", "value": timestamp}]
    assert lake.rows("SELECT _coercion_errors FROM winlogbeat_stream") == [(errors,)]


def test_ecs_values_that_map_to_no_sysmon_value_are_null_and_recorded(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    create, connect = to_ecs(events()[0]), to_ecs(events()[1])
    del create["user"]  # no user object: no User, not an empty one
    connect["network"].update({"direction": "unknown", "type": "ipv9"})
    lake.land([create, connect])
    lake.batch()
    assert lake.rows("SELECT event_data.User, _coercion_errors FROM winlogbeat_stream ORDER BY _seq") == [
        (None, []),
        (
            events()[1]["event_data"]["User"],
            [
                {"field": "Initiated", "value": "unknown"},
                {"field": "SourceIsIpv6", "value": "ipv9"},
                {"field": "DestinationIsIpv6", "value": "ipv9"},
            ],
        ),
    ]
    assert lake.rows("SELECT network_connection_initiated, src_is_ipv6 FROM sysmon_join") == [(None, None)]


def test_ecs_documents_of_the_2019_module_give_back_command_lines_and_hashes(tmp_path: Path) -> None:
    """Winlogbeat 7.3 and 7.4's Sysmon module kept a create's command lines only split (process.args,
    process.parent.args) and its hashes at the top level (hash.*): the command lines come back quoted as Windows
    reads the same arguments back, the hashes as Sysmon writes them."""
    command_line = r'"C:\Program Files\App\app.exe" --name "a b" C:\x\ "C:\dir with space\\" "say \"hi\""'
    args = ["C:\\Program Files\\App\\app.exe", "--name", "a b", "C:\\x\\", "C:\\dir with space\\", 'say "hi"']
    create = to_ecs(process_create("{OLD-1}", command_line, record=90))
    process = create["process"]
    process["args"], process["parent"]["args"] = args, ["C:\\Windows\\explorer.exe"]
    del process["command_line"], process["parent"]["command_line"]
    create["hash"] = process.pop("hash")
    lake = Lake(tmp_path)
    lake.land([create, to_ecs(network_connect("{OLD-1}", record=91))])
    lake.batch()
    assert lake.rows(
        "SELECT process_command_line, parent_process_command_line, hashes FROM sysmon_process_create_table"
    ) == [(command_line, r"C:\Windows\explorer.exe", "SHA1=00")]
    assert lake.rows("SELECT process_guid, process_command_line FROM sysmon_join") == [("{OLD-1}", command_line)]


def test_ecs_file_hashes_and_error_codes_are_mapped_back(tmp_path: Path) -> None:
    """The module puts the Hashes of events 6, 7, 26 and 29 and the Hash of 15 in file.hash (an import hash in
    file.pe.imphash), and event 255's ID in error.code."""
    documents = []
    for event_id in (6, 7, 15, 26, 29, 255):
        document = to_ecs(sysmon_event(event_id, "{F-1}", record=100 + event_id))
        document["file"] = {"hash": {"sha1": "ab" * 20, "md5": "cd" * 16}, "pe": {"imphash": "ef" * 16}}
        if event_id == 255:
            del document["file"]
            document["error"] = {"code": "ProcessGuid"}
        documents.append(document)
    lake = Lake(tmp_path)
    lake.land(documents)
    lake.batch()
    rows = lake.rows("SELECT event_id, event_data.Hashes, _extra_fields FROM winlogbeat_stream ORDER BY event_id")
    rebuilt = f"SHA1={'AB' * 20},MD5={'CD' * 16},IMPHASH={'EF' * 16}"
    assert rows == [
        (6, rebuilt, {}),
        (7, rebuilt, {}),
        (15, None, {"Hash": rebuilt}),
        (26, rebuilt, {}),
        (29, rebuilt, {}),
        (255, None, {"ID": "ProcessGuid"}),
    ]


def test_evtx_event_id_with_qualifiers(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    record = to_evtx(sysmon_event(7036, None, provider="Service Control Manager"))
    record["evtx"]["System"]["EventID"] = {"#attributes": {"Qualifiers": 16384}, "#text": 7036}
    lake.land([json.dumps(record)])
    lake.batch()
    assert lake.rows("SELECT event_id, source_name, _coercion_errors FROM winlogbeat_stream") == [
        (7036, "Service Control Manager", [])
    ]


def test_an_evtx_event_id_object_without_its_text_is_null_and_listed(tmp_path: Path) -> None:
    """As an event_id that is an object is in the other layouts (a probe's finding: NULL with no error)."""
    lake = Lake(tmp_path)
    record = to_evtx(sysmon_event(7036, None, provider="Service Control Manager"))
    record["evtx"]["System"]["EventID"] = {"#attributes": {"Qualifiers": 16384}}
    lake.land([json.dumps(record)])
    lake.batch()
    assert lake.rows("SELECT event_id, _layout, _coercion_errors FROM winlogbeat_stream") == [
        (None, "evtx", [{"field": "event_id", "value": '{"#attributes":{"Qualifiers":16384}}'}])
    ]


def recased(node: Any, recase: Callable[[str], str]) -> Any:
    """``node`` with every object key, at every depth, rewritten by ``recase``; values as they are."""
    if isinstance(node, dict):
        return {recase(key): recased(value, recase) for key, value in node.items()}
    if isinstance(node, list):
        return [recased(item, recase) for item in node]
    return node


def alternating(key: str) -> str:
    """pROCESSgUID-style: every other letter's case flipped."""
    return "".join(c.swapcase() if i % 2 else c for i, c in enumerate(key))


LAYOUTS = {"winlogbeat6": lambda event: event, **CONVERTERS}
RECASINGS = {"lower": str.lower, "upper": str.upper, "alternating": alternating}


@pytest.mark.parametrize("recasing", sorted(RECASINGS))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_field_names_match_whatever_their_case_as_in_ksql(
    layout: str, recasing: str, legacy_join: dict, tmp_path: Path
) -> None:
    """KSQL 5.1.1's JSON deserializer matches field names ignoring case: with every key of every event spelled
    in another case (values untouched) the joins are those of the exact spelling."""
    lake = Lake(tmp_path)
    lake.land(recased(LAYOUTS[layout](event), RECASINGS[recasing]) for event in events())
    lake.batch()
    assert lake.rows("SELECT DISTINCT _layout FROM winlogbeat_stream WHERE source_name LIKE '%Sysmon'") == [(layout,)]
    assert snapshot(lake.settings, RECIPE_JOIN) == legacy_join


# Where each layout keeps the create's ProcessGuid and CommandLine, and the names written in another case there.
GUID_AND_COMMAND_LINE = {
    "winlogbeat6": (
        ("event_data", "ProcessGuid"),
        ("event_data", "CommandLine"),
        "Event_Data",
        "processguid",
        "COMMANDLINE",
    ),
    "winlogbeat7+": (
        ("winlog", "event_data", "ProcessGuid"),
        ("winlog", "event_data", "CommandLine"),
        "EVENT_DATA",
        "PROCESSGUID",
        "commandLine",
    ),
    "ecs": (("process", "entity_id"), ("process", "command_line"), "Process", "Entity_ID", "Command_Line"),
    "evtx": (
        ("evtx", "EventData", "ProcessGuid"),
        ("evtx", "EventData", "CommandLine"),
        "eventdata",
        "processGUID",
        "commandline",
    ),
}


def renamed(event: dict[str, Any], path: tuple[str, ...], parent: str, name: str) -> dict[str, Any]:
    """``event`` with the key at ``path`` renamed ``name`` and its parent object's key renamed ``parent``."""
    event = copy.deepcopy(event)
    holder = event
    for key in path[:-2]:
        holder = holder[key]
    inner = holder.pop(path[-2])
    inner[name] = inner.pop(path[-1])
    holder[parent] = inner
    return event


@pytest.mark.parametrize("layout", sorted(GUID_AND_COMMAND_LINE))
def test_a_differently_cased_event_data_field_lands_in_its_column_and_joins(layout: str, tmp_path: Path) -> None:
    guid_path, command_path, parent, guid_name, command_name = GUID_AND_COMMAND_LINE[layout]
    create = LAYOUTS[layout](process_create("{CA5E-0001}", "cased.exe /x", record=40))
    create = renamed(renamed(create, command_path, command_path[-2], command_name), guid_path, parent, guid_name)
    lake = Lake(tmp_path)
    lake.land([create, LAYOUTS[layout](network_connect("{ca5e-0001}", "10.4.4.4", record=41))])
    lake.batch()
    assert (
        lake.rows("SELECT event_data.ProcessGuid, event_data.CommandLine FROM winlogbeat_stream WHERE event_id = 1")[0][
            1
        ]
        == "cased.exe /x"
    )
    assert lake.rows("SELECT process_guid, process_command_line FROM sysmon_process_create_table") == [
        ("{CA5E-0001}", "cased.exe /x")
    ]
    assert lake.rows("SELECT process_guid, dst_ip_addr, process_command_line FROM sysmon_join") == [
        ("{CA5E-0001}", "10.4.4.4", "cased.exe /x")
    ]


@pytest.mark.parametrize("layout", sorted(GUID_AND_COMMAND_LINE))
def test_a_key_holding_an_escape_is_read_on_a_line_parsed_ignoring_case(layout: str, tmp_path: Path) -> None:
    """A key that JSON spells with an escape (Process\\u0047uid is ProcessGuid) on a line another key sends to the
    upper-cased parse: it was neither read nor kept in _extra_fields, so the create never joined."""
    guid_path, command_path, _, _, command_name = GUID_AND_COMMAND_LINE[layout]
    create = LAYOUTS[layout](process_create("{E5C-0001}", "escaped.exe", record=42))
    line = json.dumps(renamed(create, command_path, command_path[-2], command_name))
    guid_key = json.dumps(guid_path[-1])
    escaped = f'"\\u{ord(guid_key[1]):04x}{guid_key[2:]}'
    assert line.count(f"{guid_key}:") >= 1
    lake = Lake(tmp_path)
    lake.land([line.replace(f"{guid_key}:", f"{escaped}:"), LAYOUTS[layout](network_connect("{E5C-0001}", record=43))])
    lake.batch()
    assert lake.rows("SELECT process_guid, process_command_line FROM sysmon_join") == [("{E5C-0001}", "escaped.exe")]


@pytest.mark.parametrize(("first", "second"), [("ProcessGuid", "processguid"), ("processguid", "ProcessGuid")])
def test_of_two_keys_that_differ_only_in_case_the_first_in_the_line_wins(
    first: str, second: str, tmp_path: Path
) -> None:
    create = process_create(None, "dup.exe", record=50)
    create["event_data"] |= {first: "{FIRST}", second: "{SECOND}"}
    lake = Lake(tmp_path)
    lake.land([create])
    lake.batch()
    assert lake.rows("SELECT process_guid FROM sysmon_process_create_table") == [("{FIRST}",)]
    assert lake.rows("SELECT _extra_fields FROM winlogbeat_stream") == [({},)]  # both are the STRUCT's field


def test_a_value_spelled_like_a_field_name_is_left_as_it_is(tmp_path: Path) -> None:
    """Only keys are matched ignoring case: values (a command line quoting a key, an escaped quote) stay as sent."""
    command_line = 'x.exe "processguid": "{NOT-IT}" \\" {"COMMANDLINE": 1}'
    create = process_create("{REAL}", command_line, record=60)
    create["event_data"]["IMAGE"] = create["event_data"].pop("Image")
    lake = Lake(tmp_path)
    lake.land([create])
    lake.batch()
    assert lake.rows("SELECT process_guid, process_command_line, process_path FROM sysmon_process_create_table") == [
        ("{REAL}", command_line, r"C:\Windows\System32\cmd.exe")
    ]


def test_a_value_that_is_an_object_keeps_its_keys_as_written_on_a_line_parsed_ignoring_case(tmp_path: Path) -> None:
    """Only the layouts' keys are upper-cased for the parse that ignores case: an object value's own keys stay."""
    exact, odd = (process_create(guid, record=record) for guid, record in (("{OBJ1}", 61), ("{OBJ2}", 62)))
    for create in (exact, odd):
        create["event_data"]["CommandLine"] = {"Arg": "x", "nested": {"Key": [1, "v"]}}
    odd["event_data"]["IMAGE"] = odd["event_data"].pop("Image")
    lake = Lake(tmp_path)
    lake.land([exact, odd])
    lake.batch()
    (written,), (odd_written,) = lake.rows(
        "SELECT process_command_line FROM sysmon_process_create_table ORDER BY process_guid"
    )
    assert json.loads(written) == {"Arg": "x", "nested": {"Key": [1, "v"]}} and odd_written == written


def test_a_key_spelled_as_another_places_field_is_not_matched_when_it_is_the_only_odd_key(tmp_path: Path) -> None:
    """The documented limit of the one-scan check: an event_data key "user" is spelled as ECS's "user" object,
    so a line whose only odd key it is keeps the exact-case parse (docs/inputs.md)."""
    create = process_create("{U1}", record=70)
    create["event_data"]["user"] = create["event_data"].pop("User")
    lake = Lake(tmp_path)
    lake.land([create])
    lake.batch()
    assert lake.rows("SELECT process_guid, user_account FROM sysmon_process_create_table") == [("{U1}", None)]
    # what the STRUCT did not read is kept beside it
    assert lake.rows("SELECT _extra_fields FROM winlogbeat_stream_rekey") == [
        ({"user": r"CORP\alice", "Product": "Windows"},)
    ]


def test_a_key_spelled_like_a_flat_system_field_leaves_other_layouts_as_they_were(tmp_path: Path) -> None:
    """PowerShell's event data holds "HostName": on another layout's line it does not count as the flat layout's
    "Hostname" in another case, which would read the line with its keys upper-cased (and so its "user" as User)."""
    create = process_create("{H1}", record=80)
    create["event_data"]["user"] = create["event_data"].pop("User")
    create["event_data"]["HostName"] = "ConsoleHost"
    lake = Lake(tmp_path)
    lake.land([create])
    lake.batch()
    assert lake.rows("SELECT _layout, event_data.User, _extra_fields FROM winlogbeat_stream") == [
        ("winlogbeat6", None, {"user": r"CORP\alice", "HostName": "ConsoleHost"})
    ]


@pytest.mark.parametrize("key", ["SourceName", "Hostname", "EventID", "RecordNumber"])
def test_a_flat_system_field_in_another_case_is_read_when_it_is_the_only_odd_key(key: str, tmp_path: Path) -> None:
    event = to_flat(process_create("{F1}", record=90))
    event = {(name.lower() if name == key else name): value for name, value in event.items()}
    lake = Lake(tmp_path)
    lake.land([event])
    lake.batch()
    assert lake.rows(
        "SELECT _layout, source_name, computer_name, event_id, _record_number, _extra_fields FROM winlogbeat_stream"
    ) == [("flat", "Microsoft-Windows-Sysmon", "HOST1.corp", 1, 90, {"EventTime": "2026-11-01T10:00:01.000Z"})]


@pytest.mark.parametrize("key", ["ProcessGu\u0131d", "Proce\u017f\u017fGuid", "\u017fourceIp"])
def test_a_field_name_with_a_dotless_i_or_a_long_s_is_read_as_upper_casing_reads_it_alone_in_its_line(
    key: str, tmp_path: Path
) -> None:
    """KSQL compares upper-cased names (Java's toUpperCase, which makes I of \u0131 and S of \u017f, as DuckDB's
    upper does): a probe found such a key read only when another key of the line sent it to the upper-cased parse."""
    connect = network_connect("{D0751}", "10.5.5.5", record=95)
    name = key.upper()
    spelled = {"PROCESSGUID": "ProcessGuid", "SOURCEIP": "SourceIp"}[name]
    connect["event_data"] = {
        (key if field == spelled else field): value for field, value in connect["event_data"].items()
    }
    lake = Lake(tmp_path)
    lake.land([process_create("{D0751}", record=94), json.dumps(connect, ensure_ascii=False)])  # as written, no escape
    lake.batch()
    assert lake.rows("SELECT process_guid, src_ip_addr FROM sysmon_network_connect") == [("{D0751}", "10.0.0.9")]
    assert lake.count("sysmon_join") == 1


@pytest.mark.parametrize("domain", [{}, {"Domain": "NT AUTHORITY", "AccountName": "SYSTEM"}])
def test_nxlog_s_system_process_id_beside_sysmon_s_is_kept_apart(domain: dict[str, str], tmp_path: Path) -> None:
    """NXLog writes the System's ProcessID (Sysmon's own service) before the EventData's ProcessId: the exact
    spelling is read, the other kept in the map, whatever another key spelled like another layout's ("Domain", as
    ECS's "domain") says of the line."""
    create = to_flat(process_create("{N1}", record=201))
    system = {"EventTime": create.pop("EventTime"), "ProcessID": 2828, "ThreadID": 1684, **domain}
    lake = Lake(tmp_path)
    lake.land([system | create])
    lake.batch()
    extras = {"EventTime": "2026-11-01T10:00:01.000Z", "ProcessID": "2828", "ThreadID": "1684", **domain}
    assert lake.rows("SELECT _layout, event_data.ProcessId, _extra_fields FROM winlogbeat_stream") == [
        ("flat", 4242, extras)
    ]
    assert lake.rows("SELECT process_id FROM sysmon_process_create_table") == [(4242,)]


def test_a_flat_event_s_top_level_type_is_read_as_in_winlogbeat6(tmp_path: Path) -> None:
    """Logstash adds "type" to what it ships; the flat layout has no field of that name, so it is kept in the map."""
    lake = Lake(tmp_path)
    lake.land([to_flat(process_create("{T1}", record=95)) | {"type": "wineventlog"}, to_flat(events()[1])])
    lake.batch()
    assert lake.rows("SELECT _layout, type, _extra_fields['type'] FROM winlogbeat_stream ORDER BY _seq") == [
        ("flat", "wineventlog", "wineventlog"),
        ("flat", None, None),
    ]


def test_a_flat_event_s_own_fields_win_over_an_object_another_layout_would_read(tmp_path: Path) -> None:
    """A flat event holding an "event_data" object (a probe's line): its top-level Image is its own, the object is
    kept in the map (it was read as Winlogbeat 6's event_data, and the flat event's own Image was in no column)."""
    flat = to_flat(process_create("{FL1}", record=96)) | {"Image": "top.exe", "event_data": {"Image": "nested.exe"}}
    lake = Lake(tmp_path)
    lake.land([flat])
    lake.batch()
    assert lake.rows("SELECT _layout, event_data.Image, _extra_fields['event_data'] FROM winlogbeat_stream") == [
        ("flat", "top.exe", '{"Image":"nested.exe"}')
    ]


# Event data fields the recipe's STRUCT does not declare, as Sysmon 13+ writes them: a ProcessCreate's, and a
# ProcessAccess's (event 10) with a number, as EVTX records and other shippers carry numbers. With the Sysmon
# module, RuleName and OriginalFileName move to ECS (rule.name, process.pe.original_file_name) and come back.
CREATE_EXTRAS = {"RuleName": "technique_id=T1059", "OriginalFileName": "Cmd.Exe", "ParentUser": r"CORP\svc"}
ACCESS_EXTRAS = {
    "RuleName": "technique_id=T1003",
    "SourceProcessGUID": "{5A00-0001}",
    "SourceProcessId": "4242",
    "SourceThreadId": 4711,
    "SourceImage": r"C:\Windows\System32\cmd.exe",
    "TargetImage": r"C:\Windows\system32\lsass.exe",
    "GrantedAccess": "0x1410",
}
MAPPED_FROM_ECS = {"RuleName", "OriginalFileName", "SourceProcessGUID", "SourceProcessId", "SourceImage"}
EXTRA_CASES = [(layout, recasing) for layout in sorted(LAYOUTS) for recasing in ("exact", *sorted(RECASINGS))]


def extra_events(record: int) -> list[dict[str, Any]]:
    """A ProcessCreate and a ProcessAccess with the fields above (record numbers ``record`` and ``record + 1``)."""
    create = process_create("{EC00-0001}", "cmd /c whoami", record=record, event_data=dict(CREATE_EXTRAS))
    access = sysmon_event(10, None, record=record + 1, **ACCESS_EXTRAS)
    del access["event_data"]["ProcessId"], access["event_data"]["Image"]  # a ProcessAccess names its Source* instead
    return [create, access]


def expected_extras(extras: dict[str, Any], layout: str, recasing: str) -> dict[str, str]:
    """``_extra_fields`` for ``extras``: names as written (the ECS fields mapped back under their Sysmon names),
    values as text; a flat event's System fields that no recipe column takes are there too."""
    recase = RECASINGS.get(recasing, str)
    unmapped_system_fields = {recase("EventTime"): "2026-11-01T10:00:01.000Z"} if layout == "flat" else {}
    return unmapped_system_fields | {
        name if layout == "ecs" and name in MAPPED_FROM_ECS else recase(name): str(value)
        for name, value in extras.items()
    }


@pytest.fixture(scope="module")
def extras_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """One batch: the two events in every layout, spelled exactly and in every other case."""
    lake = Lake(tmp_path_factory.mktemp("extras"))
    lines = []
    for i, (layout, recasing) in enumerate(EXTRA_CASES):
        recase = RECASINGS.get(recasing, str)
        lines += [recased(LAYOUTS[layout](event), recase) for event in extra_events(1000 + 10 * i)]
    lake.land(lines)
    lake.batch()
    return lake


@pytest.mark.parametrize(("layout", "recasing"), EXTRA_CASES)
def test_every_event_data_field_the_struct_does_not_declare_is_kept(
    layout: str, recasing: str, extras_lake: Lake
) -> None:
    record = 1000 + 10 * EXTRA_CASES.index((layout, recasing))
    create, access = expected_extras(CREATE_EXTRAS, layout, recasing), expected_extras(ACCESS_EXTRAS, layout, recasing)
    stream = "SELECT _layout, event_id, event_data.CommandLine, _extra_fields FROM winlogbeat_stream"
    assert extras_lake.rows(f"{stream} WHERE _record_number IN (?, ?) ORDER BY _seq", [record, record + 1]) == [
        (layout, 1, "cmd /c whoami", create),
        (layout, 10, None, access),
    ]
    # rekey carries every field but Product in its columns: its map adds Product to the stream's
    rekey = "SELECT event_id, process_command_line, _extra_fields FROM winlogbeat_stream_rekey"
    assert extras_lake.rows(f"{rekey} WHERE _record_number IN (?, ?) ORDER BY _seq", [record, record + 1]) == [
        (1, "cmd /c whoami", create | {"Product": "Windows"}),
        (10, None, access),
    ]


def test_extra_fields_of_odd_event_data(tmp_path: Path) -> None:
    """A repeated key (the first wins, as in the STRUCT), nested and null values, several event_data objects in one
    line (all are read, the first of a name wins), an event_data that is not an object, none at all."""
    lake = Lake(tmp_path)
    lake.land(
        [
            '{"source_name": "S", "event_data": {"RuleName": "first", "Image": "a.exe", "RuleName": "second"}}',
            '{"source_name": "S", "event_data": {"Nested": {"a": [1, "b"]}, "Null": null, "Flag": true, "Real": 1.50}}',
            '{"source_name": "S", "event_data": {"RuleName": "6.x", "Image": "a.exe"},'
            ' "winlog": {"event_data": {"RuleName": "7.x", "ParentUser": "u"}}}',
            '{"source_name": "S", "event_data": "not an object"}',
            '{"source_name": "S"}',
        ]
    )
    lake.batch()
    assert lake.rows("SELECT _extra_fields FROM winlogbeat_stream ORDER BY _seq") == [
        ({"RuleName": "first"},),
        ({"Nested": '{"a":[1,"b"]}', "Null": None, "Flag": "true", "Real": "1.5"},),
        ({"RuleName": "6.x", "ParentUser": "u"},),
        ({},),
        ({},),
    ]


def test_repeated_names_keep_their_first_entry_in_the_order_written_however_many_fields(tmp_path: Path) -> None:
    """The first of a name wins wherever the entries are taken one by one: a repeated key, a line spelling a field
    in another letter case, UserData, several event_data objects; a line of 50,000 fields is read like any other
    (finding each name's first by scanning the names for every field took minutes)."""
    many = ", ".join(f'"F{i}": "{i}"' for i in range(50_000))
    lake = Lake(tmp_path)
    lake.land(
        [
            '{"source_name": "S", "event_data": {"b": "1", "a": "2", "b": "3", "c": "4", "a": "5", "d": "6"}}',
            '{"Source_Name": "S", "Event_Data": {"b": "1", "IMAGE": "x", "a": "2", "b": "3", "Image": "y"}}',
            '{"source_name": "S", "user_data": {"b": "1", "a": "2", "b": "3"}}',
            '{"source_name": "S", "event_data": {"b": "1", "a": "2"}, "winlog": {"event_data": {"a": "3", "c": "4"}}}',
            '{"source_name": "S", "event_data": {' + many + ', "F7": "again"}}',
        ]
    )
    lake.batch()
    rows = lake.rows("SELECT map_keys(_extra_fields), map_values(_extra_fields) FROM winlogbeat_stream ORDER BY _seq")
    assert rows[:4] == [
        (["b", "a", "c", "d"], ["1", "2", "4", "6"]),
        (["b", "a"], ["1", "2"]),
        (["b", "a"], ["1", "2"]),
        (["b", "a", "c"], ["1", "2", "4"]),
    ]
    keys, values = rows[4]
    assert keys == [f"F{i}" for i in range(50_000)] and values == [str(i) for i in range(50_000)]


def test_the_fields_of_user_data_are_kept_as_those_of_event_data(tmp_path: Path) -> None:
    """Providers other than Sysmon may write UserData instead of EventData (WMI-Activity's 5857): Winlogbeat gives it
    as user_data (6.x) or winlog.user_data (7.x/8.x) with its wrapper element's name as xml_name; an EVTX record
    keeps the wrapper, which is left out the same way."""
    wrapper = "Operation_StartedOperational"
    wmi = {"ProviderName": "WmiPerfClass", "Code": "0x0", "ProcessID": 1064}
    lake = Lake(tmp_path)
    lake.land(
        [
            {"source_name": "Microsoft-Windows-WMI-Activity", "user_data": {"xml_name": wrapper, **wmi}},
            {"winlog": {"channel": "Microsoft-Windows-WMI-Activity/Operational",
                        "user_data": {"xml_name": wrapper, **wmi}}},
            {"evtx": {"System": {"EventID": "5857", "Channel": "Microsoft-Windows-WMI-Activity/Operational"},
                      "UserData": {wrapper: {"#attributes": {"xmlns": "http://manifests"}, **wmi}}}},
            {"source_name": "S", "event_data": {"RuleName": "r"}, "user_data": {"Other": "not read"}},
            {"source_name": "S", "event_data": None, "user_data": {"Code": "0x0"}},  # an empty <EventData/>
            {"Source_Name": "S", "User_Data": {"Code": "0x0"}},  # keys in another letter case
            {"source_name": "S", "User_Data": {"Operation": "x"}},  # its only key in another case
            {"evtx": {"System": {"EventID": "1"}, "userData": {wrapper: {"Operation": "x"}}}},
            {"evtx": {"System": {"EventID": "1"}, "UserData": {wrapper: None}}},
            {"evtx": {"System": {"EventID": "1"}, "UserData": {wrapper: "text"}}},
        ]
    )  # fmt: skip
    lake.batch()
    kept = {
        "xml_name": "Operation_StartedOperational",
        "ProviderName": "WmiPerfClass",
        "Code": "0x0",
        "ProcessID": "1064",
    }
    assert lake.rows("SELECT _layout, _extra_fields FROM winlogbeat_stream ORDER BY _seq") == [
        ("winlogbeat6", kept),
        ("winlogbeat7+", kept),
        ("evtx", {"#attributes": '{"xmlns":"http://manifests"}'} | kept),
        ("winlogbeat6", {"RuleName": "r"}),  # Windows writes one or the other
        ("winlogbeat6", {"Code": "0x0"}),
        ("winlogbeat6", {"Code": "0x0"}),
        ("winlogbeat6", {"Operation": "x"}),
        ("evtx", {"xml_name": wrapper, "Operation": "x"}),
        ("evtx", {"xml_name": wrapper}),
        ("evtx", {"xml_name": wrapper, wrapper: "text"}),
    ]


# A damaged command line as its JSON text (bytes) and as `_coercion_errors` shows it.
DAMAGE = {
    "nul": (b'"cmd /c\\u0000x"', "cmd /c\\u0000x"),
    "lone surrogate": (b'"cmd \\ud83d x"', "cmd \\ud83d x"),
    "byte that is not UTF-8": (b'"caf\xe9 x"', "caf\\xE9 x"),
}


@pytest.mark.parametrize("damage", sorted(DAMAGE))
@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_a_damaged_field_becomes_null_and_the_event_flows_on_in_every_layout(
    layout: str, damage: str, tmp_path: Path
) -> None:
    """The damage checks read each layout's own place of a field: the field is NULL with its reason recorded, and
    the event is read, rekeyed and joined like any other."""
    text, shown = DAMAGE[damage]
    create = json.dumps(LAYOUTS[layout](process_create("{DA-0001}", "DAMAGED", record=60))).encode()
    assert create.count(b'"DAMAGED"') == 1
    connect = json.dumps(LAYOUTS[layout](network_connect("{DA-0001}", "10.6.6.6", record=61))).encode()
    lake = Lake(tmp_path)
    (lake.landing / "w.ndjson").write_bytes(create.replace(b'"DAMAGED"', text) + b"\n" + connect + b"\n")
    lake.batch()
    assert lake.count("winlogbeat_rejects") == 0
    assert lake.rows(
        "SELECT _layout, event_data.CommandLine, _coercion_errors FROM winlogbeat_stream WHERE event_id = 1"
    ) == [(layout, None, [{"field": "CommandLine", "value": shown}])]
    assert lake.rows("SELECT process_guid, dst_ip_addr, process_command_line FROM sysmon_join") == [
        ("{DA-0001}", "10.6.6.6", None)
    ]


def module_document(event_id: int, moved: dict[str, Any], left: dict[str, str] | None = None) -> dict[str, Any]:
    """An event as the Sysmon module's ingest pipeline leaves it (Elastic's x-pack/winlogbeat/module/sysmon): the
    ECS fields it moved event_data's fields to (``moved``, dotted names) and what it left in winlog.event_data."""
    document = to_winlogbeat8(sysmon_event(event_id, None, record=70 + event_id))
    document["event"]["module"] = "sysmon"
    document["winlog"]["event_data"] = dict(left or {})
    for dotted, value in moved.items():
        put(document, tuple(dotted.split(".")), value)
    return document


# event id, the ECS fields the module moved event_data's fields to, the STRUCT's fields the event has (of
# ProcessGuid, ProcessId, Image, DestinationPortName and Hashes), and the _extra_fields the moved fields come back as
MODULE_MOVES = {
    "process create": (
        1,
        {"process.entity_id": "{5A-0001}", "process.pid": 42, "process.executable": r"C:\x\new.exe"},
        {"ProcessGuid": "{5A-0001}", "ProcessId": 42, "Image": r"C:\x\new.exe"},
        {},
    ),
    "file created": (
        11,
        {"file.path": r"C:\t\a.txt", "process.executable": r"C:\x\w.exe"},
        {"Image": r"C:\x\w.exe"},
        {"TargetFilename": r"C:\t\a.txt"},
    ),
    "file delete": (
        23,
        {"file.path": r"C:\t\g.dat", "file.name": "g.dat", "process.hash.sha1": "ab12", "process.hash.md5": "cd"},
        {"Hashes": "SHA1=AB12,MD5=CD"},
        {"TargetFilename": r"C:\t\g.dat"},
    ),
    # as the module wrote it in 2020 (beats' golden file of sysmon-11-filedelete.evtx then): top-level hash.*, and
    # the whole path in file.name
    "file delete, older module": (
        23,
        {"file.name": r"C:\t\h.dat", "hash.sha1": "ef34", "hash.md5": "ab"},
        {"Hashes": "SHA1=EF34,MD5=AB"},
        {"TargetFilename": r"C:\t\h.dat"},
    ),
    # the file.name fallback is that module's event 23's only (today's module and Elastic Agent name a file's base
    # name file.name); its top-level hash.* any event's (the module of 2019 put every event's hashes there)
    "file stream created, no file.path": (15, {"file.name": "i.txt", "hash.sha256": "aa"}, {}, {"Hash": "SHA256=AA"}),
    "file delete detected": (26, {"file.path": r"C:\t\b.dat"}, {}, {"TargetFilename": r"C:\t\b.dat"}),
    "file block executable": (27, {"file.path": r"C:\t\c.exe"}, {}, {"TargetFilename": r"C:\t\c.exe"}),
    "file block shredding": (28, {"file.path": r"C:\t\d.bin"}, {}, {"TargetFilename": r"C:\t\d.bin"}),
    "file executable detected": (29, {"file.path": r"C:\t\e.exe"}, {}, {"TargetFilename": r"C:\t\e.exe"}),
    "driver loaded": (6, {"file.path": r"C:\d\f.sys"}, {}, {"ImageLoaded": r"C:\d\f.sys"}),
    "raw access read": (9, {"file.path": r"\Device\HarddiskVolume2"}, {}, {"Device": r"\Device\HarddiskVolume2"}),
    "pipe created": (17, {"file.name": r"\PSHost.1"}, {}, {"PipeName": r"\PSHost.1"}),
    "registry value set": (13, {"registry.path": r"HKLM\Run\x"}, {}, {"TargetObject": r"HKLM\Run\x"}),
    # Sysmon's DNSEvent has no port names: the pipeline sets network.protocol to "dns" for every one
    "dns query": (
        22,
        {"dns.question.name": "example.org", "network.protocol": "dns"},
        {},
        {"QueryName": "example.org"},
    ),
    # a WMI consumer's Destination (a command line or script) is renamed to process.executable: not an Image
    "wmi consumer": (20, {"process.executable": "powershell -enc AAAA"}, {}, {"Destination": "powershell -enc AAAA"}),
    "network connection": (3, {"network.protocol": "https"}, {"DestinationPortName": "https"}, {}),
    # the source process of a CreateRemoteThread or a ProcessAccess: Sysmon names it Source*, not the event's process
    "create remote thread": (
        8,
        {"process.entity_id": "{5A-0008}", "process.pid": 812, "process.executable": r"C:\x\inject.exe"},
        {},
        {"SourceProcessGuid": "{5A-0008}", "SourceProcessId": "812", "SourceImage": r"C:\x\inject.exe"},
    ),
    "process access": (
        10,
        {"process.entity_id": "{5A-0010}", "process.pid": 910, "process.executable": r"C:\x\dump.exe"},
        {},
        {"SourceProcessGUID": "{5A-0010}", "SourceProcessId": "910", "SourceImage": r"C:\x\dump.exe"},
    ),
}
STRUCT_FIELDS = ("ProcessGuid", "ProcessId", "Image", "DestinationPortName", "Hashes")


def module_fields(lake: Lake) -> list[tuple]:
    """Each stream row's event id, STRUCT_FIELDS and _extra_fields, in arrival order."""
    fields = ", ".join(f"event_data.{name}" for name in STRUCT_FIELDS)
    return lake.rows(f"SELECT event_id, {fields}, _extra_fields FROM winlogbeat_stream ORDER BY _seq")


@pytest.mark.parametrize("case", sorted(MODULE_MOVES))
def test_fields_the_sysmon_module_moves_come_back_under_their_sysmon_names(case: str, tmp_path: Path) -> None:
    event_id, moved, struct, extras = MODULE_MOVES[case]
    lake = Lake(tmp_path)
    lake.land([module_document(event_id, moved, {"Left": "as is"})])
    lake.batch()
    assert module_fields(lake) == [
        (event_id, *(struct.get(name) for name in STRUCT_FIELDS), {"Left": "as is", **extras})
    ]


@pytest.mark.parametrize("case", ["wmi consumer", "network connection", "process access"])
def test_the_module_s_moves_are_read_by_the_event_id_the_stream_reads(case: str, tmp_path: Path) -> None:
    """winlog.event_id before event.code, as the stream's event_id: a document without event.code, or with one that
    differs, is read by its winlog.event_id."""
    event_id, moved, struct, extras = MODULE_MOVES[case]
    without_code, other_code = module_document(event_id, moved), module_document(event_id, moved)
    del without_code["event"]["code"]
    other_code["event"]["code"] = "1"
    lake = Lake(tmp_path)
    lake.land([without_code, other_code])
    lake.batch()
    expected = (event_id, *(struct.get(name) for name in STRUCT_FIELDS), extras)
    assert module_fields(lake) == [expected, expected]
