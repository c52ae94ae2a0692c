"""Bad input gets a clear record and loses nothing else."""

from __future__ import annotations

import gzip
import json
import random
import re
import subprocess
import sys
import tempfile
import uuid
import zlib
from datetime import timedelta
from pathlib import Path
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sysmon_assets import connect
from sysmon_assets.definitions import build_definitions
from sysmon_assets.settings import Settings
from sysmon_assets.sources import landing_folder
from sysmon_assets.sources.landed_lines import LandingError
from sysmon_assets.storage.lake import LakeError
from tests.conftest import T0, Lake, network_connect, process_create

ROOT = Path(__file__).resolve().parents[2]
BYTE_ORDER_MARK = "\ufeff".encode()


def test_an_over_long_line_is_rejected_and_the_rest_lands(tmp_path: Path) -> None:
    lake = Lake(tmp_path, max_line_bytes=4096)
    huge = json.dumps(network_connect("{A}", event_data={"CommandLine": "x" * 10_000}))
    lake.land([process_create("{A}"), huge, network_connect("{A}")])
    lake.batch()
    assert lake.count("winlogbeat_stream") == 2
    assert lake.rows("SELECT source_line, error, raw_bytes, length(raw_text) FROM winlogbeat_rejects") == [
        (2, f"line of {len(huge)} bytes is longer than max_line_bytes=4096", len(huge), 2048)
    ]
    assert lake.count("sysmon_join") == 1


DEEP_SCRIPT = """
import json, sys
from pathlib import Path
from sysmon_assets.settings import Settings
from sysmon_assets.micro_batch.steps import SysmonPipeline
from tests.conftest import process_create
root, layout = Path(sys.argv[1]), sys.argv[2]
deep = "[" * 200_000 + "]" * 200_000
event = process_create("{D}")
if layout == "flat":
    event = {"SourceName": "Microsoft-Windows-Sysmon", "EventID": 1, "Hostname": "h", "ProcessGuid": "{D}"}
text = json.dumps(event)
inner = '"Payload": ' + deep
if layout == "flat":
    line = text[:-1] + ", " + inner + "}"
else:
    line = text.replace('"event_data": {', '"event_data": {' + inner + ", ", 1)
(root / "landing").mkdir()
(root / "landing" / "w.ndjson").write_text(line + "\\n")
SysmonPipeline(Settings(landing_dir=root / "landing", data_dir=root / "data")).run_batch()
"""


@pytest.mark.parametrize("layout", ["winlogbeat6", "flat"])
def test_an_event_holding_a_value_nested_200000_deep_is_kept_with_its_other_fields(tmp_path: Path, layout: str) -> None:
    """DuckDB 1.4.4's json_merge_patch overflows its stack on such a value (a segmentation fault, in every batch)."""
    done = subprocess.run(
        [sys.executable, "-c", DEEP_SCRIPT, str(tmp_path), layout], cwd=ROOT, capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr[-2000:]
    settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data")
    with connect(settings) as con:
        rows = con.execute(
            "SELECT process_guid, length(_extra_fields['Payload']) FROM winlogbeat_stream_rekey"
        ).fetchall()
    assert rows == [("{D}", 400_000)]


def test_binary_garbage_is_rejected_with_its_bytes_shown(lake: Lake) -> None:
    (lake.landing / "w.ndjson").write_bytes(
        b"\x00\x01\xff\xfe garbage \x80\n" + json.dumps(process_create("{A}")).encode() + b"\n"
    )
    lake.batch()
    assert lake.count("winlogbeat_stream") == 1
    ((error, raw),) = lake.rows("SELECT error, raw_text FROM winlogbeat_rejects")
    assert error == "not valid UTF-8"
    assert "garbage" in raw and "\\xFF" in raw


def test_a_rejects_raw_text_shows_only_the_bytes_that_are_not_utf8_escaped_and_never_cuts_an_escape(
    lake: Lake,
) -> None:
    (lake.landing / "w.ndjson").write_bytes(b'{"a": "caf\xc3\xa9 \\ \xff" ,\n' + b"a" + b"\xff" * 1000 + b"\n")
    lake.batch()
    (first, second) = [raw for (raw,) in lake.rows("SELECT raw_text FROM winlogbeat_rejects ORDER BY source_line")]
    assert first == '{"a": "caf\u00e9 \\ \\xFF" ,'
    assert second.startswith("a\\xFF\\xFF") and second.endswith("\\xFF") and len(second) <= 2048
    assert second == "a" + "\\xFF" * 341  # 2,048 characters hold the letter and 341 marks of six, the last cut off


def test_a_line_of_a_byte_order_mark_and_blanks_is_skipped_as_blank(lake: Lake) -> None:
    """What ``"" | Out-File -Encoding utf8`` writes: the mark is dropped, as before an event, and the rest is blank."""
    create = json.dumps(process_create("{A}")).encode()
    (lake.landing / "w.ndjson").write_bytes(
        b"\xef\xbb\xbf\r\n\xef\xbb\xbf  \n" + create + b"\n \xef\xbb\xbf\n" + BYTE_ORDER_MARK + b"[1]\n"
    )
    lake.batch()
    assert lake.rows("SELECT source_line, error FROM winlogbeat_rejects ORDER BY 1") == [
        (4, "malformed JSON"),
        (5, "valid JSON but not an object: ARRAY"),
    ]
    assert lake.count("winlogbeat_stream") == 1


def test_a_utf16_file_is_rejected_line_by_line_saying_so(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    """Windows PowerShell writes UTF-16 by default (`Out-File`, `>`): each line says so, not "malformed JSON"."""
    monkeypatch.setattr(landing_folder, "UNFINISHED_LINE_SECONDS", 0)  # files written long ago
    text = "".join(json.dumps(event) + "\n" for event in (process_create("{A}"), network_connect("{A}")))
    (lake.landing / "export.json").write_bytes(text.encode("utf-16"))  # little-endian, with a byte order mark
    (lake.landing / "export-be.json").write_bytes(text.encode("utf-16-be"))
    (lake.landing / "crashed.ndjson").write_bytes(b"\x00" * 64 + b"\n" + text.encode())  # a writer's zero fill
    lake.batch()
    lake.batch()  # the files are finished: a last line without its newline is read
    utf16 = "UTF-16 text: only UTF-8 is read (save the file as UTF-8)"
    assert lake.rows("SELECT source_file, source_line, error FROM winlogbeat_rejects ORDER BY ALL") == [
        (str(lake.landing / "crashed.ndjson"), 1, "malformed JSON"),
        (str(lake.landing / "export-be.json"), 1, utf16),
        (str(lake.landing / "export-be.json"), 2, utf16),
        (str(lake.landing / "export.json"), 1, utf16),
        (str(lake.landing / "export.json"), 2, utf16),
        (str(lake.landing / "export.json"), 3, utf16),  # the NUL byte of the last little-endian newline
    ]
    assert lake.count("sysmon_join") == 1  # the zero-filled file's events


def test_a_file_replaced_in_place_is_reported_and_read_anew(lake: Lake) -> None:
    path = lake.land([network_connect("{A}", "10.0.0.1"), network_connect("{A}", "10.0.0.2")])
    lake.batch()
    with path.open("r+") as handle:  # same inode, new content at least as long as before
        handle.write(json.dumps(network_connect("{B}", "10.9.9.9")) + "\n" + " " * 4000 + "\n")
    lake.batch()
    assert lake.rows("SELECT event, path FROM ingest.file_events") == [("replaced", str(path))]
    assert lake.rows("SELECT _source_line, event_data.DestinationIp FROM winlogbeat_stream WHERE _batch_id = 2") == [
        (1, "10.9.9.9")
    ]


def test_an_unreadable_file_stops_the_run_naming_it(lake: Lake, monkeypatch: pytest.MonkeyPatch) -> None:
    path = lake.land([network_connect("{A}")])

    def denied(file: object, mode: str = "r", *args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(file))

    monkeypatch.setattr("sysmon_assets.sources.landed_files.open", denied, raising=False)
    with pytest.raises(LandingError, match=f"cannot read landed file {path}"):
        lake.batch()


def test_a_data_dir_under_a_file_names_the_path(tmp_path: Path) -> None:
    (tmp_path / "not_a_folder").write_text("")
    lake = Lake(tmp_path)
    lake.pipeline = type(lake.pipeline)(Settings(landing_dir=lake.landing, data_dir=tmp_path / "not_a_folder" / "x"))
    with pytest.raises(LakeError, match=r"cannot open the lake \(catalog sqlite:.*not_a_folder/x/lake\.sqlite"):
        lake.batch()


def test_a_byte_order_mark_before_the_first_event_does_not_reject_it(lake: Lake) -> None:
    events = [json.dumps(process_create("{A}")), json.dumps(network_connect("{A}"))]
    (lake.landing / "exported.ndjson").write_bytes(b"\xef\xbb\xbf" + "\n".join(events).encode() + b"\n")
    lake.batch()
    assert (lake.count("winlogbeat_stream"), lake.count("winlogbeat_rejects"), lake.count("sysmon_join")) == (2, 0, 1)


def test_fields_that_do_not_coerce_are_counted_by_a_warning_check(lake: Lake) -> None:
    lake.land([process_create("{A}", event_data={"ProcessId": "12abc"}), network_connect("{A}", utc_time="soon")])
    result = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch").execute_in_process()
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    coercion = checks["winlogbeat_stream__expression_is_true__coercion_errors"]
    assert (coercion.passed, coercion.metadata["failing_rows"].value, coercion.severity.value) == (False, 2, "WARN")
    parse = checks["winlogbeat_stream_rekey__expression_is_true_event_date_creation"]
    assert (parse.passed, parse.metadata["failing_rows"].value) == (False, 1)
    assert lake.rows("SELECT _coercion_errors FROM winlogbeat_stream ORDER BY _seq") == [
        ([{"field": "ProcessId", "value": "12abc"}],),
        ([{"field": "UtcTime", "value": "soon"}],),
    ]
    assert lake.rows("SELECT event_date_creation, process_id FROM sysmon_join") == [(None, 4242)]


def test_a_field_holding_a_nul_character_becomes_null_is_recorded_and_stops_no_batch(lake: Lake) -> None:
    """JSON's \\u0000: no Windows string holds one. DuckLake's file pruning cuts a filter constant at a NUL, so one
    such process GUID made every later batch fail."""
    lake.land(
        [
            process_create("{A\u0000}"),
            process_create("{B}", command_line="cmd /c\u0000x"),
            network_connect("{B}", computer="\u0000host"),
            # an early, a middle and the last of the text fields: each becomes NULL, and only it
            {
                **network_connect(
                    "{B}", "10.0.0.2", event_data={"UtcTime": "\u0000", "DestinationPortName": "h\u0000"}
                ),
                "type": "wineventlog\u0000",
            },
        ]
    )
    lake.batch()
    lake.land([process_create("{C}"), network_connect("{C}")])
    lake.batch(T0 + timedelta(minutes=1))
    assert lake.rows(
        "SELECT event_data.ProcessGuid, event_data.CommandLine, computer_name, _coercion_errors "
        "FROM winlogbeat_stream ORDER BY _seq LIMIT 3"
    ) == [
        (None, "cmd.exe /c whoami", "HOST1.corp", [{"field": "ProcessGuid", "value": "{A\\u0000}"}]),
        ("{B}", None, "HOST1.corp", [{"field": "CommandLine", "value": "cmd /c\\u0000x"}]),
        ("{B}", None, None, [{"field": "computer_name", "value": "\\u0000host"}]),
    ]
    assert lake.rows(
        "SELECT source_name, type, event_data.UtcTime, event_data.DestinationPortName, event_data.DestinationIp, "
        "_coercion_errors FROM winlogbeat_stream WHERE event_data.DestinationIp = '10.0.0.2'"
    ) == [
        (
            "Microsoft-Windows-Sysmon",
            None,
            None,
            None,
            "10.0.0.2",
            [
                {"field": "type", "value": "wineventlog\\u0000"},
                {"field": "UtcTime", "value": "\\u0000"},
                {"field": "DestinationPortName", "value": "h\\u0000"},
            ],
        )
    ]
    assert lake.rows("SELECT process_guid, process_command_line FROM sysmon_join ORDER BY _seq") == [
        ("{B}", None),
        ("{B}", None),
        ("{C}", "cmd.exe /c whoami"),
    ]


def test_a_field_holding_a_lone_surrogate_becomes_null_is_recorded_and_the_event_flows_on(lake: Lake) -> None:
    """JSON may escape a lone UTF-16 surrogate (Python's json writes one for a Windows string that holds it); DuckDB's
    parser rejected the whole line for it, so the connection lost its process."""
    create = process_create("{A}", command_line="cmd \ud83d x", event_data={"Description": "smile \U0001f600"})
    create["event_data"]["Extra\udc00Name"] = "v\ud800"
    other_case = process_create("{B}", computer="host\udfff")
    other_case["event_data"]["commandline"] = other_case["event_data"].pop("CommandLine")
    literal = process_create("{C}", command_line="echo \\ud83d")  # a backslash, then the text ud83d
    assert '"cmd \\ud83d x"' in lake.land([create, network_connect("{A}"), other_case, literal]).read_text()
    lake.batch()
    assert lake.count("winlogbeat_rejects") == 0
    assert lake.rows(
        "SELECT event_data.ProcessGuid, event_data.CommandLine, event_data.Description, computer_name,"
        " _coercion_errors, _extra_fields FROM winlogbeat_stream WHERE event_id = 1 ORDER BY _seq"
    ) == [
        (
            "{A}",
            None,
            "smile \U0001f600",
            "HOST1.corp",
            [{"field": "CommandLine", "value": "cmd \\ud83d x"}],
            {"Extra\\udc00Name": "v\\ud800"},
        ),
        (
            "{B}",
            "cmd.exe /c whoami",
            "Windows Command Processor",
            None,
            [{"field": "computer_name", "value": "host\\udfff"}],
            {},
        ),
        ("{C}", "echo \\ud83d", "Windows Command Processor", "HOST1.corp", [], {}),
    ]
    assert lake.rows("SELECT process_guid, process_command_line FROM sysmon_join") == [("{A}", None)]


def test_a_field_holding_a_byte_that_is_not_utf8_becomes_null_is_recorded_and_the_event_flows_on(lake: Lake) -> None:
    """A shipper writing another code page (Windows-1252's \\xe9 for é) made the whole line a reject, so the
    connection lost its process."""
    # the command line holds é in UTF-8 and the text \\xE9 (escaped in the JSON): both are good text
    create = json.dumps(process_create("{A}", command_line="caf\u00e9 \\xE9", computer="h\u00e9te"), ensure_ascii=False)
    create = create.encode().replace(b'"Windows Command', b'"\xe9 Windows Command').replace(b'"User"', b'"Us\xffer"')
    outside_strings = json.dumps(process_create("{B}")).encode().replace(b'{"', b'{\x80"', 1)
    lines = [create, outside_strings, json.dumps(network_connect("{A}")).encode()]
    (lake.landing / "w.ndjson").write_bytes(b"".join(line + b"\n" for line in lines))
    lake.batch()
    assert lake.rows(
        "SELECT event_data.ProcessGuid, event_data.CommandLine, event_data.Description, event_data.User,"
        " computer_name, _coercion_errors, _extra_fields FROM winlogbeat_stream WHERE event_id = 1"
    ) == [
        (
            "{A}",
            "caf\u00e9 \\xE9",
            None,
            None,
            "h\u00e9te",
            [{"field": "Description", "value": "\\xE9 Windows Command Processor"}],
            {"Us\\xFFer": "CORP\\alice"},
        )
    ]
    assert lake.rows("SELECT source_line, error FROM winlogbeat_rejects") == [(2, "not valid UTF-8")]
    assert lake.rows("SELECT process_guid, process_command_line FROM sysmon_join") == [("{A}", "caf\u00e9 \\xE9")]


def test_a_noncharacter_u_fdd0_in_a_line_with_a_bad_byte_is_kept_as_text(lake: Lake) -> None:
    """U+FDD0 marks each byte that is not UTF-8 (followed by its \\xNN): the same character sent as text, in the
    JSON's bytes or escaped, is text, not a mark, in a line that holds marks too."""
    # U+FDD0 as UTF-8; Tag2 is the one text that reads as a mark: U+FDD0, a backslash and what a marked byte reads as
    create = process_create("{A}", command_line="a\ufdd0b", event_data={"Tag": "x\ufdd0", "Tag2": "\ufdd0\\xE9"})
    line = json.dumps(create, ensure_ascii=False).encode()
    line = line.replace(b'"Windows Command', b'"\\ufdd0 \xe9 Windows Command')  # escaped, then a bad byte
    (lake.landing / "w.ndjson").write_bytes(line + b"\n" + json.dumps(network_connect("{A}")).encode() + b"\n")
    lake.batch()
    assert lake.rows(
        "SELECT event_data.CommandLine, event_data.Description, _coercion_errors, _extra_fields FROM winlogbeat_stream"
        " WHERE event_id = 1"
    ) == [
        (
            "a\ufdd0b",
            None,
            [{"field": "Description", "value": "\ufdd0 \\xE9 Windows Command Processor"}],
            {"Tag": "x\ufdd0", "Tag2": "\\xE9"},
        )
    ]
    assert lake.rows("SELECT process_command_line FROM sysmon_join") == [("a\ufdd0b",)]


def test_a_bad_byte_or_lone_surrogate_inside_an_object_or_list_value_is_marked_damaged_too(lake: Lake) -> None:
    """A value that is an object or list is kept as its JSON text, which escapes the backslash after a mark
    (U+FDD0, then \\\\xE9): that is still a mark, and is dropped as in a plain text value."""
    create = process_create(
        "{A}", command_line={"k": "BADBYTE"}, event_data={"Nested": {"k": "BADBYTE"}, "List": ["\ud83d"]}
    )
    line = json.dumps(create).encode().replace(b"BADBYTE", b"caf\xe9")
    (lake.landing / "w.ndjson").write_bytes(line + b"\n")
    lake.batch()
    assert lake.rows("SELECT event_data.CommandLine, _coercion_errors, _extra_fields FROM winlogbeat_stream") == [
        (
            None,
            [{"field": "CommandLine", "value": '{"k":"caf\\\\xE9"}'}],
            {"Nested": '{"k":"caf\\\\xE9"}', "List": '["\\\\ud83d"]'},
        )
    ]


def test_every_byte_that_is_not_utf8_is_shown_as_python_reads_it_and_the_rest_as_text(lake: Lake) -> None:
    """Random bytes in a command line: the valid UTF-8 sequences (RFC 3629) read as text, each other byte \\xNN."""
    rng = random.Random(3)
    pieces = [bytes([rng.choice([rng.randrange(0x80, 0x100), rng.randrange(0x20, 0x7F)])]) for _ in range(4000)]
    pieces += ["é", "€", "😀", "\uffff"] * 50
    values = []
    for _ in range(200):
        chosen = rng.choices(pieces, k=rng.randrange(1, 12))
        value = b"".join(piece.encode() if isinstance(piece, str) else piece for piece in chosen)
        values.append(value.replace(b'"', b"'").replace(b"\\", b"/"))
    # forms RFC 3629 forbids: overlong (C0 80, E0 80 80), an encoded surrogate (ED A0 80), beyond U+10FFFF (F4 90 ..)
    values += [b"a\xc0\x80", b"\xe0\x80\x80b", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf4\x8f\xbf\xbf"]
    template = json.dumps(process_create("{A}", command_line="VALUE")).encode()
    (lake.landing / "w.ndjson").write_bytes(b"".join(template.replace(b"VALUE", value) + b"\n" for value in values))
    lake.batch()
    rows = lake.rows("SELECT event_data.CommandLine, _coercion_errors FROM winlogbeat_stream ORDER BY _seq")
    expected = []
    for value in values:
        text = value.decode("utf-8", errors="surrogateescape")
        shown = re.sub("[\udc80-\udcff]", lambda byte: f"\\x{ord(byte[0]) - 0xDC00:02X}", text)
        expected.append((None, [{"field": "CommandLine", "value": shown}]) if shown != text else (text, []))
    assert rows == expected
    assert 50 < sum(command_line is None for command_line, _ in rows) < 200  # both kinds were drawn


def test_an_event_data_that_is_not_an_object_is_a_coercion_error_and_the_event_flows_on(lake: Lake) -> None:
    create, connect = process_create("{A}"), network_connect("{A}")
    connect["event_data"] = "DestinationPort=443"
    lake.land([create, connect])
    lake.batch()
    assert lake.rows("SELECT event_id, _coercion_errors FROM winlogbeat_stream ORDER BY _seq") == [
        (1, []),
        (3, [{"field": "event_data", "value": '"DestinationPort=443"'}]),
    ]
    # it is a NetworkConnect still, whose process is unknown (its GUID was in the event_data)
    assert lake.rows("SELECT event_id, process_guid FROM sysmon_network_connect") == [(3, None)]


# --- property: every landed line is in the stream, in the rejects, or blank; good lines are recoverable

GOOD_TEXT = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\n"), max_size=40)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**40), 2**40) | GOOD_TEXT,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(GOOD_TEXT, inner, max_size=3),
    max_leaves=8,
)


@st.composite
def winlogbeat_lines(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["event", "mutated", "object", "json", "binary", "blank"]))
    if kind in ("event", "mutated"):
        make = draw(st.sampled_from([process_create, network_connect]))
        event = make(draw(st.sampled_from(["{A}", "{a}", None])), record=draw(st.integers(1, 5)))
        event["event_data"]["DestinationPort"] = draw(GOOD_TEXT | st.integers(-5, 70000).map(str))
        line = json.dumps(event, ensure_ascii=draw(st.booleans())).encode()
        if kind == "mutated":
            cut = draw(st.integers(0, len(line)))
            line = line[:cut] + draw(st.binary(max_size=8)) + line[cut + draw(st.integers(0, 20)) :]
    elif kind == "object":
        line = json.dumps(draw(st.dictionaries(GOOD_TEXT, json_values, max_size=4))).encode()
    elif kind == "json":
        line = json.dumps(draw(json_values)).encode()
    elif kind == "binary":
        line = draw(st.binary(max_size=200))
    else:
        line = draw(st.sampled_from([b"", b" ", b"\t", b"\r", b"  \r", BYTE_ORDER_MARK, BYTE_ORDER_MARK * 2 + b" \r"]))
    return line.replace(b"\n", b"")


def ingest(lake: Lake) -> None:
    """A batch's ingest step alone (the stream and its rejects, which these properties are about): the other steps
    would triple each example's time."""
    lake.pipeline.run_model("winlogbeat_stream", run_key=f"ingest-{uuid.uuid4()}", batch_time=T0)


def is_blank(line: bytes) -> bool:
    """Spaces, tabs and carriage returns, after any UTF-8 byte order marks at its start (dropped as before an event)."""
    while line.startswith(BYTE_ORDER_MARK):
        line = line.removeprefix(BYTE_ORDER_MARK)
    return line.strip(b" \t\r") == b""


def is_json_object(line: bytes) -> bool:
    """Is ``line`` a JSON object once each byte that is not UTF-8 is read as a character (the stream marks it)?"""
    try:
        return isinstance(json.loads(line.decode("utf-8", errors="surrogateescape")), dict)
    except ValueError:
        return False


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(winlogbeat_lines(), min_size=1, max_size=25))
def test_every_line_is_in_the_stream_in_the_rejects_or_blank(lines: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as folder:
        lake = Lake(Path(folder))
        path = lake.landing / "fuzz.ndjson"
        path.write_bytes(b"".join(line + b"\n" for line in lines))
        ingest(lake)
        streamed = dict(lake.rows("SELECT _source_line, _source_offset FROM winlogbeat_stream"))
        rejected = {line for (line,) in lake.rows("SELECT source_line FROM winlogbeat_rejects")}
        data = path.read_bytes()
        for number, line in enumerate(lines, start=1):
            places = [number in streamed, number in rejected, is_blank(line)]
            assert places.count(True) == 1, (number, line, places)
            if is_json_object(line):
                assert number in streamed, line
            if number in streamed:
                offset = streamed[number]
                assert data[offset : data.index(b"\n", offset)] == line


def decompressible_prefix(data: bytes) -> bytes:
    """What Python's zlib gives of a (possibly damaged) single-member gzip file before its first error."""
    inflater = zlib.decompressobj(wbits=31)
    try:
        return inflater.decompress(data)
    except zlib.error:
        out = b""
        for size in range(1, len(data) + 1):  # the longest prefix that still decompresses
            try:
                out = zlib.decompressobj(wbits=31).decompress(data[:size])
            except zlib.error:
                break
        return out


def _damaged(data: bytes, cut: float, hits: list[tuple[float, int]]) -> bytes:
    data = bytearray(data[: max(1, int(len(data) * cut))])
    for where, value in hits:
        data[int(where * (len(data) - 1))] = value
    return bytes(data)


def _lines_landed(lake: Lake) -> tuple[dict[int, int], list[int]]:
    streamed = lake.rows("SELECT _source_line, count(*) FROM winlogbeat_stream GROUP BY ALL")
    rejected = [line for (line,) in lake.rows("SELECT source_line FROM winlogbeat_rejects WHERE source_line > 0")]
    return dict(streamed), rejected


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    compressed=st.booleans(),
    cut=st.floats(0.05, 1.0),
    hits=st.lists(st.tuples(st.floats(0, 1), st.integers(0, 255)), max_size=3),
)
def test_a_cut_or_damaged_file_loses_no_readable_line_and_repeats_none(
    compressed: bool, cut: float, hits: list[tuple[float, int]]
) -> None:
    events = [process_create(f"{{P{i}}}") if i % 2 else network_connect(f"{{P{i - 1}}}") for i in range(40)]
    text = b"".join(json.dumps(event).encode() + b"\n" for event in events)
    data = _damaged(gzip.compress(text) if compressed else text, cut, hits)
    readable = decompressible_prefix(data) if compressed else data
    with tempfile.TemporaryDirectory() as folder:
        lake = Lake(Path(folder))
        (lake.landing / ("cut.ndjson.gz" if compressed else "cut.ndjson")).write_bytes(data)
        ingest(lake)
        ingest(lake)
        # a finished file's unterminated last line: a JSON document is delivered by the second batch, anything else
        # once the file has gone unchanged for the wait (docs/inputs.md, "Finished files"), over by the third
        with mock.patch.object(landing_folder, "UNFINISHED_LINE_SECONDS", 0):
            ingest(lake)
        streamed, rejected = _lines_landed(lake)
        lines = readable.split(b"\n")
        complete, tail = lines[:-1], lines[-1]
        for number, line in enumerate(complete, start=1):
            places = [streamed.get(number, 0), rejected.count(number), int(is_blank(line))]
            assert sum(places) == 1, (number, line, places)
            if is_json_object(line):
                assert streamed.get(number) == 1, line
        assert max(streamed, default=0) <= len(complete) + 1  # nothing beyond what could be read
        if tail and not compressed:  # a finished file's last line, without its newline: delivered once
            last = len(complete) + 1
            assert streamed.get(last, 0) + rejected.count(last) == 1, tail
        lost = len(readable) < len(text) and compressed
        if lost or (tail and not is_json_object(tail)):
            assert lake.count("winlogbeat_rejects") > 0  # what could not be read is recorded, not dropped
