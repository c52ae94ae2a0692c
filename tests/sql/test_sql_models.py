"""Each recipe SQL model on tiny hand-written inputs: columns, types and row-level behaviour."""

from __future__ import annotations

import json
from datetime import datetime

import pytest

from tests.conftest import Lake, PlanRecorder, network_connect, plan_nodes, process_create, sysmon_event
from tests.dbt_like.test_runner import ScanCounter
from tests.recipe import RECIPE_MODELS, recipe_columns, recipe_event_data_fields

DUCKDB_TYPE = {"VARCHAR": "VARCHAR", "INTEGER": "INTEGER"}
RECIPE_TYPES = {
    "event_date_creation": "TIMESTAMP",
    "process_id": "INTEGER",
    "user_session_id": "INTEGER",
    "parent_process_id": "INTEGER",
    "src_port": "INTEGER",
    "dst_port": "INTEGER",
    "event_id": "INTEGER",
}


def columns(lake: Lake, table: str) -> list[tuple[str, str]]:
    return lake.rows(
        "SELECT column_name, data_type FROM duckdb_columns() WHERE table_name = ? AND schema_name = 'main' "
        "ORDER BY column_index",
        [table],
    )


@pytest.fixture
def loaded(lake: Lake) -> Lake:
    lake.land([process_create("{AAAA-1}"), network_connect("{aaaa-1}")])
    lake.batch()
    return lake


@pytest.mark.parametrize("table", RECIPE_MODELS)
def test_tables_have_the_recipe_columns_in_order_then_metadata(loaded: Lake, table: str) -> None:
    names = [name for name, _ in columns(loaded, table)]
    recipe = recipe_columns(table)
    assert names[: len(recipe)] == recipe
    assert all(name.startswith("_") for name in names[len(recipe) :]), names


@pytest.mark.parametrize("table", RECIPE_MODELS[1:])
def test_flattened_tables_use_the_recipe_types(loaded: Lake, table: str) -> None:
    for name, data_type in columns(loaded, table):
        if not name.startswith("_"):
            assert data_type == RECIPE_TYPES.get(name, "VARCHAR"), name


def test_winlogbeat_stream_event_data_is_the_recipe_struct(loaded: Lake) -> None:
    types = dict(columns(loaded, "winlogbeat_stream"))
    expected = ", ".join(
        f'"{field}" {DUCKDB_TYPE[kind]}' if field == "User" else f"{field} {DUCKDB_TYPE[kind]}"
        for field, kind in recipe_event_data_fields()
    )
    assert types["event_data"] == f"STRUCT({expected})"
    assert types["event_id"] == "INTEGER"
    assert loaded.rows("SELECT event_data.ParentImage FROM winlogbeat_stream WHERE event_id = 1") == [
        (r"C:\Windows\explorer.exe",)
    ]


def test_integer_fields_coerce_from_strings_and_numbers(lake: Lake) -> None:
    as_number = network_connect("{G}")
    as_number["event_id"], as_number["event_data"]["DestinationPort"] = 3, 8443
    as_string = network_connect("{G}")
    as_string["event_id"] = "3"
    lake.land([as_number, as_string])
    lake.batch()
    assert lake.rows("SELECT event_id, event_data.DestinationPort FROM winlogbeat_stream ORDER BY _seq") == [
        (3, 8443),
        (3, 443),
    ]


def test_a_json_number_that_is_not_an_integer_is_recorded_as_duckdb_renders_it(lake: Lake) -> None:
    connect = network_connect("{G}")
    connect["event_data"]["DestinationPort"] = 1e3  # written 1000.0; DuckDB renders 1E3 the same
    lake.land([process_create("{G}"), json.dumps(connect).replace("1000.0", "1E3")])
    lake.batch()
    assert lake.rows(
        "SELECT event_data.DestinationPort, _coercion_errors FROM winlogbeat_stream WHERE event_id = 3"
    ) == [(None, [{"field": "DestinationPort", "value": "1000.0"}])]


def test_a_field_that_does_not_coerce_becomes_null_keeps_the_row_and_records_the_value(lake: Lake) -> None:
    lake.land([process_create("{G}"), network_connect("{G}", event_data={"DestinationPort": "http-alt"})])
    lake.batch()
    assert lake.rows(
        "SELECT event_data.DestinationPort, _coercion_errors FROM winlogbeat_stream WHERE event_id = 3"
    ) == [(None, [{"field": "DestinationPort", "value": "http-alt"}])]
    assert lake.rows("SELECT dst_port FROM sysmon_join") == [(None,)]


@pytest.mark.parametrize(
    ("text", "parsed"),
    [("+443", 443), ("-1", -1), ("0443", 443), ("2147483647", 2147483647)]
    + [(text, None) for text in ("443.6", "0x1F", "1_000", " 443", "443 ", "4e2", "2147483648", "1,000", " ", "\t")],
)
def test_integer_fields_parse_as_ksqls_integer_parseint_does(lake: Lake, text: str, parsed: int | None) -> None:
    """KSQL 5.1.1 converts INTEGER fields with Java's Integer.parseInt: an optional sign and decimal digits in
    the INTEGER range; anything else is NULL, recorded in _coercion_errors, and the row flows on."""
    lake.land([process_create("{G}"), network_connect("{G}", event_data={"DestinationPort": text})])
    lake.batch()
    errors = [] if parsed is not None else [{"field": "DestinationPort", "value": text}]
    assert lake.rows(
        "SELECT event_data.DestinationPort, _coercion_errors FROM winlogbeat_stream WHERE event_id = 3"
    ) == [(parsed, errors)]
    assert lake.rows("SELECT dst_port FROM sysmon_join") == [(parsed,)]


def test_an_event_id_that_is_not_an_integer_is_not_a_network_connect(lake: Lake) -> None:
    as_decimal = network_connect("{G}")
    as_decimal["event_id"] = "2.5"  # TRY_CAST would round it to 3
    lake.land([process_create("{G}"), as_decimal])
    lake.batch()
    assert lake.rows("SELECT event_id, _coercion_errors FROM winlogbeat_stream ORDER BY _seq")[1] == (
        None,
        [{"field": "event_id", "value": "2.5"}],
    )
    assert lake.count("sysmon_network_connect") == lake.count("sysmon_join") == 0


def test_a_record_number_that_is_not_an_integer_names_no_other_events_delivery(lake: Lake) -> None:
    """TRY_CAST read "12.5" as 13: the next event of the host's channel then looked like its redelivery."""
    lake.land(
        [
            process_create("{G}"),
            network_connect("{G}", "10.0.0.1", record="12.5"),
            network_connect("{G}", "10.0.0.2", record=13),
            network_connect("{G}", "10.0.0.3", record="n/a"),
        ]
    )
    lake.batch()
    assert lake.rows(
        "SELECT _record_number, _coercion_errors FROM winlogbeat_stream WHERE event_id = 3 ORDER BY _seq"
    ) == [
        (None, [{"field": "record_number", "value": "12.5"}]),
        (13, []),
        (None, [{"field": "record_number", "value": "n/a"}]),
    ]
    assert lake.rows("SELECT dst_ip_addr FROM sysmon_join ORDER BY _seq") == [
        ("10.0.0.1",),
        ("10.0.0.2",),
        ("10.0.0.3",),
    ]


def test_rekey_parses_utctime_as_utc_and_canonicalizes_the_guid(loaded: Lake) -> None:
    assert loaded.rows("SELECT event_date_creation, process_guid FROM winlogbeat_stream_rekey ORDER BY _seq") == [
        (datetime(2026, 11, 1, 10, 0, 0, 123000), "{AAAA-1}"),
        (datetime(2026, 11, 1, 10, 0, 0, 123000), "{AAAA-1}"),
    ]


def test_a_guid_padded_with_white_space_joins_its_create(lake: Lake) -> None:
    padded = ["\t{G1}", "{G2}\r\n", "\u00a0{G3} ", " \n{g4}\t"]
    lake.land([process_create(f"{{G{n}}}") for n in range(1, 5)] + [network_connect(guid) for guid in padded])
    lake.batch()
    assert lake.rows("SELECT process_guid FROM sysmon_join ORDER BY 1") == [("{G1}",), ("{G2}",), ("{G3}",), ("{G4}",)]


def test_unparseable_utctime_is_null_and_the_connection_still_joins(lake: Lake) -> None:
    lake.land([process_create("{G}"), network_connect("{G}", utc_time="yesterday-ish")])
    lake.batch()
    assert lake.rows("SELECT event_date_creation, process_guid FROM sysmon_network_connect") == [(None, "{G}")]
    assert lake.rows("SELECT event_date_creation, process_guid FROM sysmon_join") == [(None, "{G}")]


@pytest.mark.parametrize(
    "text",
    [
        "26-11-01 08:00:01.000",
        "2026-1-1 8:0:0.004",
        "2026-11-01 08:00:01.4",
        " 2026-11-01 08:00:01.000",
        "  ",
        "0000-01-01 00:00:00.000",  # no year of an era: Java refuses it, DuckDB's strptime read it as 1 BC
        "2026-02-30 10:00:00.123",  # Java's SMART resolver reads February 28 (docs/inputs.md)
    ],
)
def test_a_utc_time_not_in_the_recipes_format_is_null_and_recorded(lake: Lake, text: str) -> None:
    """STRINGTOTIMESTAMP(UtcTime, 'yyyy-MM-dd HH:mm:ss.SSS') takes each of those digits in full, as Java's
    DateTimeFormatter does: DuckDB's strptime alone read '26-11-01' as the year 26 and '.4' as 400 ms."""
    lake.land([process_create("{G}"), network_connect("{G}", utc_time=text)])
    lake.batch()
    assert lake.rows("SELECT _coercion_errors FROM winlogbeat_stream WHERE event_id = 3") == [
        ([{"field": "UtcTime", "value": text}],)
    ]
    assert lake.rows("SELECT event_date_creation, process_guid FROM sysmon_join") == [(None, "{G}")]


def test_rekey_keeps_only_sysmon(lake: Lake) -> None:
    lake.land([process_create("{G}"), sysmon_event(7036, None, provider="Service Control Manager")])
    lake.batch()
    assert lake.count("winlogbeat_stream") == 2
    assert lake.rows("SELECT source_name FROM winlogbeat_stream_rekey") == [("Microsoft-Windows-Sysmon",)]


def test_event_streams_split_by_event_id(lake: Lake) -> None:
    lake.land([process_create("{A}"), network_connect("{A}"), sysmon_event(11, "{A}"), network_connect("{B}")])
    lake.batch()
    assert lake.rows("SELECT process_guid FROM sysmon_process_create") == [("{A}",)]
    assert lake.rows("SELECT process_guid FROM sysmon_network_connect ORDER BY _seq") == [("{A}",), ("{B}",)]


def test_process_create_table_keeps_the_latest_row_by_arrival(lake: Lake) -> None:
    lake.land([process_create("{A}", "first"), process_create("{a}", "second"), process_create("{B}", "other")])
    lake.batch()
    assert lake.rows("SELECT process_guid, process_command_line FROM sysmon_process_create_table ORDER BY 1") == [
        ("{A}", "second"),
        ("{B}", "other"),
    ]


def test_redelivered_events_are_kept_once_after_the_raw_stream(lake: Lake) -> None:
    create, connect = process_create("{A}", record=7), network_connect("{A}", record=8)
    lake.land([create, connect, connect])
    lake.batch()
    lake.land([create, connect], name="replayed.ndjson")
    lake.batch()
    assert lake.count("winlogbeat_stream") == 5
    assert lake.count("winlogbeat_stream_rekey") == 2
    assert lake.count("sysmon_join") == 1


def test_a_cleared_log_numbering_its_records_anew_loses_none_of_its_events(lake: Lake) -> None:
    # `wevtutil cl` (or a re-imaged host) starts record numbers again at 1: same numbers, other events
    before = [process_create("{A}", record=1), network_connect("{A}", "10.0.0.1", record=2)]
    after = "2026-11-02 08:00:00.000"
    lake.land(before)
    lake.batch()
    lake.land(
        [process_create("{B}", record=1, utc_time=after), network_connect("{B}", "10.0.0.2", record=2, utc_time=after)]
    )
    lake.land([network_connect("{A}", "10.0.0.1", record=2)], name="replayed.ndjson")  # a true redelivery
    lake.batch()
    assert lake.count("winlogbeat_stream_rekey") == 4
    assert lake.rows("SELECT process_guid, dst_ip_addr FROM sysmon_join ORDER BY 1") == [
        ("{A}", "10.0.0.1"),
        ("{B}", "10.0.0.2"),
    ]


def test_an_event_whose_utc_time_does_not_parse_is_never_taken_for_a_redelivery(lake: Lake) -> None:
    # its time cannot tell it from another event under the same record number: both are kept, as without a number
    lake.land([network_connect("{A}", record=5, utc_time="yesterday")] * 2)
    lake.batch()
    assert lake.rows("SELECT count(*), count(event_date_creation) FROM winlogbeat_stream_rekey") == [(2, 0)]


@pytest.mark.parametrize("missing", ["computer_name", "log_name", "record_number"])
def test_an_event_without_a_field_of_the_delivery_key_is_never_taken_for_a_redelivery(lake: Lake, missing: str) -> None:
    # docs/exactly-once.md: without its computer, channel or record number, two copies may be two hosts' events
    event = network_connect("{A}", record=5)
    del event[missing]
    lake.land([event] * 2)
    lake.batch()
    assert lake.count("winlogbeat_stream_rekey") == 2


def test_same_record_number_on_another_host_is_not_a_duplicate(lake: Lake) -> None:
    lake.land([network_connect("{A}", record=1, computer="H1"), network_connect("{B}", record=1, computer="H2")])
    lake.batch()
    assert lake.count("sysmon_network_connect") == 2


def test_rejects_record_lines_that_are_not_json_objects_and_skip_blank_lines(lake: Lake) -> None:
    good = json.dumps(network_connect("{A}"))
    path = lake.landing / "mixed.ndjson"
    path.write_bytes(
        b"\n".join([good.encode(), b"{not json", b"", b"   ", b"[1, 2]", b'{"event_id": 1\xff}', good.encode()]) + b"\n"
    )
    lake.batch()
    assert lake.count("winlogbeat_stream") == 2
    rejects = lake.rows("SELECT source_line, source_offset, error, raw_text FROM winlogbeat_rejects ORDER BY 1")
    offset_of_line_2 = len(good) + 1
    assert rejects[0] == (2, offset_of_line_2, "malformed JSON", "{not json")
    assert [(line, error) for line, _, error, _ in rejects] == [
        (2, "malformed JSON"),
        (5, "valid JSON but not an object: ARRAY"),
        (6, "not valid UTF-8"),
    ]
    assert lake.rows("SELECT _source_line FROM winlogbeat_stream ORDER BY 1") == [(1,), (7,)]


def test_the_rejects_check_reads_only_its_chunks_rows_of_the_stream(tmp_path) -> None:
    lake = Lake(tmp_path)
    lake.pipeline.chunk_bytes = 30_000  # 10,000 lines per chunk, 30 chunks, a data file each
    (lake.landing / "w.ndjson").write_bytes(b"{}\n" * 300_000)
    counters = lake.wrap_connections(ScanCounter)
    lake.pipeline.run_model("winlogbeat_stream", "one-batch")
    scans = [
        scan
        for counter in counters
        for scan in counter.scanned
        if scan.sql.startswith("INSERT INTO winlogbeat_rejects")
    ]
    assert len(scans) == 31  # the first batch's empty chunk, then 30
    assert lake.count("winlogbeat_stream") == 300_000
    # each chunk's check reads its chunk's data file only; re-reading the batch so far was 1 + 2 + ... + 30 = 465 files
    assert sum(scan.files for scan in scans) <= 31
    # and the scans pass on each stream row once; re-reading the batch so far for every chunk was 4,650,000
    assert sum(scan.rows for scan in scans) <= 400_000


def test_the_stream_parses_each_line_against_the_recipe_layout_once(lake: Lake) -> None:
    # DuckDB 1.4 would push the step's filter on the parsed line into the CTE that parses it, as a second parse
    lake.land([process_create("{AAAA-1}"), network_connect("{aaaa-1}")])
    recorders = lake.wrap_connections(lambda con: PlanRecorder(con, "INSERT INTO winlogbeat_stream "))
    lake.batch()
    plans = [plan for recorder in recorders for plan in recorder.plans]
    assert plans
    filters = [node["extra_info"]["Expression"] for plan in plans for node in plan_nodes(plan, "FILTER")]
    assert filters  # the plan's filters are found: its line filter at least
    assert not [expression for expression in filters if "from_json" in expression]
