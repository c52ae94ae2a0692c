"""Sigma detections on hand-written events: one rule per modifier we support, rules that cannot run (listed with
the reason), a connection's process context, incremental batches, and the conversion cache."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

import sysmon_assets
from dbt_like import StepResult
from sysmon_assets.hunting import sigma
from sysmon_assets.settings import DEFAULT_SIGMA_RULES, Settings
from sysmon_assets.storage.lake import open_lake
from sysmon_assets.storage.maintenance import maintain
from tests.conftest import T0, Lake, PlanRecorder, network_connect, plan_nodes, process_create, sysmon_event


def rule_document(title: str, category: str, detection: dict[str, Any], level: str = "medium") -> dict[str, Any]:
    """A Sigma rule with a stable id derived from its title."""
    return {
        "title": title,
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, f"sysmon-assets-test/{title}")),
        "status": "test",
        "author": "sysmon-assets tests",
        "logsource": {"category": category, "product": "windows"},
        "detection": detection,
        "level": level,
        "tags": ["attack.test"],
    }


def write_rules(folder: Path, rules: dict[str, dict[str, Any] | str]) -> Path:
    """Rule files (documents or raw text) under ``folder``, by relative path."""
    for name, rule in rules.items():
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(rule if isinstance(rule, str) else yaml.safe_dump(rule, allow_unicode=True), encoding="utf-8")
    return folder


@dataclass
class Case:
    """One modifier: its detection (each case's rule also requires the case's marker, so it sees only the
    events written for it), events it must match and events it must not."""

    name: str
    event_id: int
    selections: dict[str, Any]
    condition: str
    matches: list[dict[str, Any]]
    misses: list[dict[str, Any]]
    records: dict[str, list[int]] = field(default_factory=dict)

    @property
    def marker(self) -> tuple[str, str]:
        """A field and value only this case's events carry."""
        if self.event_id == 1:
            return "CurrentDirectory", f"C:\\cases\\{self.name}"
        return "SourceHostname", f"{self.name}.cases.test"

    def rule(self) -> dict[str, Any]:
        marker_field, marker_value = self.marker
        detection = {"case_marker": {marker_field: marker_value}, **self.selections}
        detection["condition"] = f"case_marker and ({self.condition})"
        return rule_document(self.name, "process_creation" if self.event_id == 1 else "network_connection", detection)


PROCESS_CASES = [
    Case(
        "contains",
        1,
        {"sel": {"CommandLine|contains": "MiMiKatz"}},
        "sel",
        [{"CommandLine": "run mimikatz.exe now"}],
        [{"CommandLine": "mimi katz"}],
    ),
    Case(
        "startswith",
        1,
        {"sel": {"Image|startswith": "C:\\Tools\\"}},
        "sel",
        [{"Image": "c:\\tools\\x.exe"}],
        [{"Image": "D:\\C:\\Tools\\x.exe"}],
    ),
    Case(
        "endswith",
        1,
        {"sel": {"Image|endswith": "\\evil.exe"}},
        "sel",
        [{"Image": "C:\\a\\EVIL.EXE"}],
        [{"Image": "C:\\a\\evil.exe.bak"}],
    ),
    Case(
        "equals_ignoring_case",
        1,
        {"sel": {"User": "CORP\\Alice"}},
        "sel",
        [{"User": "corp\\ALICE"}],
        [{"User": "corp\\alice2"}],
    ),
    Case(
        "inner_wildcard",
        1,
        {"sel": {"CommandLine": "net*user"}},
        "sel",
        [{"CommandLine": "NET localgroup USER"}],
        [{"CommandLine": "net user x"}],
    ),
    Case(
        "single_wildcard",
        1,
        {"sel": {"Image|endswith": "\\ps?xec.exe"}},
        "sel",
        [{"Image": "C:\\t\\PsExec.exe"}],
        [{"Image": "C:\\t\\pssexec.exe"}],
    ),
    Case(
        "percent_and_underscore_are_literal",
        1,
        {"sel": {"CommandLine|contains": "100%_done"}},
        "sel",
        [{"CommandLine": "at 100%_DONE"}],
        [{"CommandLine": "at 100abc_done"}, {"CommandLine": "at 100%Xdone"}],
    ),
    Case(
        "all",
        1,
        {"sel": {"CommandLine|contains|all": ["-nop", "hidden"]}},
        "sel",
        [{"CommandLine": "powershell -NoP -w Hidden"}],
        [{"CommandLine": "powershell -nop only"}],
    ),
    Case(
        "re",
        1,
        {"sel": {"CommandLine|re": "\\d{4}-\\d{2}"}},
        "sel",
        [{"CommandLine": "on 2026-11"}],
        [{"CommandLine": "on 26-11"}],
    ),
    Case(
        "re_with_a_quote",
        1,
        {"sel": {"CommandLine|re": "it's \\w+"}},
        "sel",
        [{"CommandLine": "it's here"}],
        [{"CommandLine": "its here"}],
    ),
    Case(
        "re_ignoring_case",
        1,
        {"sel": {"CommandLine|re|i": "invoke-\\w+"}},
        "sel",
        [{"CommandLine": "INVOKE-Thing"}],
        [{"CommandLine": "invoke -x"}],
    ),
    Case(
        "re_multi_line",
        1,
        {"sel": {"CommandLine|re|m": "^start \\w+$"}},
        "sel",
        [{"CommandLine": "cmd\nstart here\nend"}],
        [{"CommandLine": "cmd start here"}],
    ),
    Case(
        "re_dot_all",
        1,
        {"sel": {"CommandLine|re|s": "begin.end"}},
        "sel",
        [{"CommandLine": "begin\nend"}, {"CommandLine": "begin end"}],
        [{"CommandLine": "beginend"}],
    ),
    Case(
        "base64",
        1,
        {"sel": {"CommandLine|base64|contains": "http://evil."}},
        "sel",
        [{"CommandLine": "powershell -e aHR0cDovL2V2aWwuZXhhbXBsZQ=="}],
        [{"CommandLine": "powershell -e eGh0dHA6Ly9ldmlsLmV4YW1wbGU="}, {"CommandLine": "http://evil."}],
    ),
    Case(
        "cased",
        1,
        {"sel": {"CommandLine|contains|cased": "AbC"}},
        "sel",
        [{"CommandLine": "xAbCx"}],
        [{"CommandLine": "xabcx"}],
    ),
    Case(
        "windash",
        1,
        {"sel": {"CommandLine|windash|contains": " -enc "}},
        "sel",
        [{"CommandLine": "ps /enc x"}, {"CommandLine": "ps \u2013enc x"}],
        [{"CommandLine": "ps enc x"}],
    ),
    Case(
        "base64offset",
        1,
        {"sel": {"CommandLine|base64offset|contains": "http://evil.example/"}},
        "sel",
        [
            {"CommandLine": f"powershell -e {text}"}
            for text in (
                "aHR0cDovL2V2aWwuZXhhbXBsZS8=",
                "eGh0dHA6Ly9ldmlsLmV4YW1wbGUv",
                "eHhodHRwOi8vZXZpbC5leGFtcGxlLw==",
            )
        ],
        [{"CommandLine": "powershell -e aGVsbG8="}],
    ),
    Case("exists", 1, {"sel": {"Hashes|exists": True}}, "sel", [{"Hashes": "SHA1=1"}], [{}]),
    Case("not_exists", 1, {"sel": {"Hashes|exists": False}}, "sel", [{}], [{"Hashes": "SHA1=1"}]),
    Case(
        "null",
        1,
        {"sel": {"ParentCommandLine": None}},
        "sel",
        [{}],
        [{"ParentCommandLine": "x"}, {"ParentCommandLine": ""}],
    ),
    Case(
        "fieldref",
        1,
        {"sel": {"ParentImage|fieldref": "Image"}},
        "sel",
        [
            {"Image": "C:\\x\\same.exe", "ParentImage": "C:\\x\\same.exe"},
            {"Image": "C:\\Windows\\System32\\cmd.exe", "ParentImage": "C:\\Windows\\system32\\cmd.exe"},
        ],
        [{"Image": "C:\\x\\same.exe", "ParentImage": "C:\\x\\other.exe"}],
    ),
    Case(
        "fieldref_endswith",
        1,
        {"sel": {"Image|fieldref|endswith": "ParentImage"}},
        "sel",
        [{"Image": "C:\\X\\MY_TOOL.EXE", "ParentImage": "my_tool.exe"}],
        [
            {"Image": "C:\\x\\myXtool.exe", "ParentImage": "my_tool.exe"},
            {"Image": "C:\\x\\run.exe", "ParentImage": "%"},
        ],
    ),
    Case(
        "not_of_a_missing_field",
        1,
        {"sel": {"Image|endswith": "\\tool.exe"}, "filter": {"ParentCommandLine|contains": "safe"}},
        "sel and not filter",
        [{"Image": "C:\\tool.exe"}, {"Image": "C:\\tool.exe", "ParentCommandLine": "other"}],
        [{"Image": "C:\\tool.exe", "ParentCommandLine": "safe mode"}],
    ),
    Case(
        "long_list",
        1,
        {
            "sel": {
                "Image|endswith": [f"\\a{i}.exe" for i in range(6)]
                + ["\\c++.exe", "\\a(1).exe", "\\dot.exe", "\\tool*.exe"]
            }
        },
        "sel",
        [{"Image": "C:\\C++.EXE"}, {"Image": "C:\\a(1).exe"}, {"Image": "C:\\tool-v2.exe"}],
        [{"Image": "C:\\dotxexe"}, {"Image": "C:\\a1.exe.bak"}],
    ),
    Case(
        "kept_field",
        1,
        {"sel": {"OriginalFileName": "Cmd.Exe", "ParentUser|endswith": "\\bob"}},
        "sel",
        [{"OriginalFileName": "cmd.exe", "ParentUser": "CORP\\Bob"}],
        [{"OriginalFileName": "cmd.exe"}, {"OriginalFileName": "cmd.exe.mui", "ParentUser": "CORP\\bob"}],
    ),
    Case(
        "number_on_text",
        1,
        {"sel": {"IntegrityLevel|gte": 2}},
        "sel",
        [{"IntegrityLevel": "3"}],
        [{"IntegrityLevel": "High"}, {"IntegrityLevel": "1"}],
    ),
]
# Every form of a value ignores case as DuckDB's lower() does, which lowers the dotted capital I to i (RE2's (?i)
# does not, and folds the long s as s, which lower() leaves as it is)
FOLDING_CASES = [
    Case("list_folds_as_one_value", 1, {"sel": {"User|endswith": [f"\\user{i}" for i in range(7)] + ["\\İsmail"]}},
         "sel", [{"User": "CORP\\İsmail"}, {"User": "CORP\\ISMAIL"}], [{"User": "CORP\\Esmail"}]),
    Case("wildcard_folds_as_one_value", 1, {"sel": {"CommandLine|contains": "ſ*x"}}, "sel",
         [{"CommandLine": "ſ and x"}], [{"CommandLine": "s and x"}]),
]  # fmt: skip
# Provider_Name and OriginalFileName are fields the events do not carry: absent, as Sigma reads a missing field
ABSENT_FIELD_CASES = [
    Case("absent_field_filtered_out", 1,
         {"sel": {"Image|endswith": "\\evil.exe"}, "filter": {"Provider_Name": "SystemTraceProvider-Process"}},
         "sel and not filter", [{"Image": "C:\\x\\evil.exe"}], [{"Image": "C:\\x\\good.exe"}]),
    Case("absent_field_null", 1, {"sel": {"Image|endswith": "\\evil.exe", "Provider_Name": None}}, "sel",
         [{"Image": "C:\\x\\evil.exe"}], [{"Image": "C:\\x\\good.exe"}]),
    Case("absent_field_not_exists", 1, {"sel": {"Image|endswith": "\\evil.exe", "Provider_Name|exists": False}},
         "sel", [{"Image": "C:\\x\\evil.exe"}], [{"Image": "C:\\x\\good.exe"}]),
    Case("absent_field_reference_filtered_out", 1,
         {"sel": {"Image|endswith": "\\evil.exe"}, "same": {"Image|fieldref": "TargetFilename"}},
         "sel and not same", [{"Image": "C:\\x\\evil.exe"}], [{"Image": "C:\\x\\good.exe"}]),
    Case("absent_field_one_branch", 3, {"port": {"DestinationPort": 4444}, "file": {"OriginalFileName": "nc.exe"}},
         "port or file", [{"DestinationPort": "4444"}], [{"DestinationPort": "443"}]),
]  # fmt: skip
NETWORK_CASES = [
    Case("number", 3, {"sel": {"DestinationPort": 4444}}, "sel",
         [{"DestinationPort": "4444"}], [{"DestinationPort": "44444"}]),
    Case("gte", 3, {"sel": {"DestinationPort|gte": 50000}}, "sel",
         [{"DestinationPort": "50001"}], [{"DestinationPort": "443"}]),
    Case("lt", 3, {"sel": {"DestinationPort|lt": 1024}}, "sel",
         [{"DestinationPort": "443"}], [{"DestinationPort": "1024"}, {"DestinationPort": "8080"}]),
    Case("lte", 3, {"sel": {"DestinationPort|lte": 1024}}, "sel",
         [{"DestinationPort": "1024"}, {"DestinationPort": "80"}], [{"DestinationPort": "1025"}]),
    Case("gt", 3, {"sel": {"DestinationPort|gt": 50000}}, "sel",
         [{"DestinationPort": "50001"}], [{"DestinationPort": "50000"}]),
    Case("cidr", 3, {"sel": {"DestinationIp|cidr": "192.168.0.0/16"}}, "sel",
         [{"DestinationIp": "192.168.5.5"}],
         [{"DestinationIp": "192.169.0.1"}, {"DestinationIp": "10.192.168.1"},
          {"DestinationIp": "::ffff:192.168.5.5"}]),
    Case("cidr_ipv6", 3, {"sel": {"DestinationIp|cidr": "2001:db8::/32"}}, "sel",
         [{"DestinationIp": "2001:db8:0:1::5"}], [{"DestinationIp": "2001:db9::1"}]),
    # an address is inside by its bits, whatever its spelling: 2001:db8:1::1 shares the text 2001:db8: only
    Case("cidr_ipv6_48", 3, {"sel": {"DestinationIp|cidr": "2001:db8::/48"}}, "sel",
         [{"DestinationIp": "2001:db8::1"}, {"DestinationIp": "2001:db8:0:ffff::1"},
          {"DestinationIp": "2001:0DB8:0000:0000:0000:0000:0000:0002"}, {"DestinationIp": "2001:db8::"},
          {"DestinationIp": "2001:db8::5%12"}],
         [{"DestinationIp": "2001:db8:1::1"}, {"DestinationIp": "2001:db8:10::"}, {"DestinationIp": "2001:db9::"},
          {"DestinationIp": "2001:db8::1:2:3:4:5:6"}, {"DestinationIp": "2001:db8::12345"},
          {"DestinationIp": "2001:db8::192.0.2.1"}, {"DestinationIp": "192.0.2.1"}, {"DestinationIp": "2001:db8::5%"},
          {"DestinationIp": "2001:db8::5%1%2"}]),
    # IPv4 and IPv6 networks in one list (one OR), and under not
    Case("cidr_list", 3, {"sel": {"DestinationIp|cidr": ["10.0.0.0/8", "2001:db8::/48", "fe80::/10"]}}, "sel",
         [{"DestinationIp": "10.1.2.3"}, {"DestinationIp": "2001:db8::5"}, {"DestinationIp": "FE80::1"}],
         [{"DestinationIp": "2001:db8:1::1"}, {"DestinationIp": "11.0.0.1"}, {"DestinationIp": "fec0::1"}]),
    Case("cidr_list_not", 3,
         {"sel": {"DestinationPort": 8443}, "local": {"DestinationIp|cidr": ["127.0.0.0/8", "::1/128", "fc00::/7"]}},
         "sel and not local",
         [{"DestinationPort": "8443", "DestinationIp": "2001:db8::1"}, {"DestinationPort": "8443"}],
         [{"DestinationPort": "8443", "DestinationIp": "::1"}, {"DestinationPort": "8443", "DestinationIp": "fd00::7"},
          {"DestinationPort": "8443", "DestinationIp": "127.0.0.1"}]),
    Case("cidr_ipv6_40", 3, {"sel": {"DestinationIp|cidr": "2603:1006:1400::/40"}}, "sel",
         [{"DestinationIp": "2603:1006:1400::1"}, {"DestinationIp": "2603:1006:14ff:ffff:ffff:ffff:ffff:ffff"}],
         [{"DestinationIp": "2603:1006:14::1"}, {"DestinationIp": "2603:1006:1500::"}]),
    # an IPv4 network that expands to two to seven prefixes (an OR) stays one term of the AND around it
    Case("cidr_prefixes_in_an_and", 3, {"sel": {"DestinationPort": 4444, "DestinationIp|cidr": "10.0.0.0/15"}}, "sel",
         [{"DestinationPort": "4444", "DestinationIp": "10.1.2.3"}],
         [{"DestinationPort": "80", "DestinationIp": "10.1.2.3"}]),
    Case("cidr_prefixes_in_a_filter", 3,
         {"sel": {"DestinationPort": 4444},
          "filter": {"Image|endswith": "\\ok.exe", "DestinationIp|cidr": "10.0.0.0/23"}},
         "sel and not filter",
         [{"DestinationPort": "4444", "Image": "C:\\bad.exe", "DestinationIp": "10.0.1.1"}],
         [{"DestinationPort": "4444", "Image": "C:\\ok.exe", "DestinationIp": "10.0.1.1"}]),
    # pySigma expands it to a wildcard, which an IPv6 address and an empty value match too
    Case("cidr_every_ipv4_address", 3, {"sel": {"DestinationIp|cidr": "0.0.0.0/0"}}, "sel",
         [{"DestinationIp": "8.8.8.8"}], [{"DestinationIp": "2001:db8::1"}, {"DestinationIp": ""}]),
    Case("boolean", 3, {"sel": {"Initiated": True}}, "sel",
         [{"Initiated": "true"}], [{"Initiated": "false"}]),
]  # fmt: skip
CASES = PROCESS_CASES + NETWORK_CASES + ABSENT_FIELD_CASES + FOLDING_CASES


def case_events(cases: list[Case]) -> Iterator[dict[str, Any]]:
    """Each case's events, its marker set, numbered so that the detections name them."""
    record = 10_000
    for case in cases:
        marker_field, marker_value = case.marker
        for kind in ("matches", "misses"):
            case.records[kind] = []
            for fields in getattr(case, kind):
                record += 1
                case.records[kind].append(record)
                yield sysmon_event(
                    case.event_id, f"{{C{record}}}", record=record, **{marker_field: marker_value}, **fields
                )


@pytest.fixture(scope="module")
def modifier_lake(tmp_path_factory: pytest.TempPathFactory) -> Lake:
    """One lake, one batch, every modifier case."""
    root = tmp_path_factory.mktemp("modifiers")
    rules = write_rules(root / "rules", {f"{case.name}.yml": case.rule() for case in CASES})
    lake = Lake(root, sigma_rules=rules)
    lake.land(case_events(CASES))
    lake.batch()
    return lake


@pytest.mark.parametrize("case", CASES, ids=[case.name for case in CASES])
def test_each_modifier_matches_exactly_its_events(modifier_lake: Lake, case: Case) -> None:
    assert modifier_lake.pipeline.sigma_rules().failures == []
    matched = modifier_lake.rows(
        "SELECT _record_number FROM sigma_detections WHERE rule_title = ? ORDER BY _record_number", [case.name]
    )
    assert [record for (record,) in matched] == case.records["matches"]


def test_a_detection_carries_the_rule_and_the_event(modifier_lake: Lake) -> None:
    (row,) = modifier_lake.rows(
        "SELECT rule_id, rule_title, level, tags, event_id, computer_name, event_date_creation, process_guid, "
        "process_path, _seq IS NOT NULL, _batch_id FROM sigma_detections WHERE rule_title = 'endswith'"
    )
    rule_id = str(uuid.uuid5(uuid.NAMESPACE_URL, "sysmon-assets-test/endswith"))
    record = PROCESS_CASES[2].records["matches"][0]
    assert row[:5] == (rule_id, "endswith", "medium", ["attack.test"], 1)
    assert row[5:] == ("HOST1.corp", row[6], f"{{C{record}}}", "C:\\a\\EVIL.EXE", True, 1)
    assert row[6] is not None


FAILING_RULES: dict[str, dict[str, Any] | str] = {
    "keywords.yml": rule_document("keywords only", "process_creation", {"keywords": ["evil"], "condition": "keywords"}),
    "unknown_field.yml": rule_document(
        "unknown field", "process_creation", {"sel": {"Provider_Name": "x"}, "condition": "sel"}
    ),
    "event3_lacks_field.yml": rule_document(
        "connection lacks the field", "network_connection", {"sel": {"OriginalFileName": "x"}, "condition": "sel"}
    ),
    "absent_field_required.yml": rule_document(
        "absent field required",
        "process_creation",
        {"sel": {"Image|endswith": "\\x.exe"}, "absent": {"Provider_Name": "x"}, "condition": "sel and absent"},
    ),
    "absent_field_referenced.yml": rule_document(
        "absent field referenced", "process_creation", {"sel": {"Image|fieldref": "TargetFilename"}, "condition": "sel"}
    ),
    "absent_field_present.yml": rule_document(
        "absent field present", "process_creation", {"sel": {"Provider_Name|exists": True}, "condition": "sel"}
    ),
    "file_event.yml": rule_document(
        "other logsource", "file_event", {"sel": {"TargetFilename|endswith": ".exe"}, "condition": "sel"}
    ),
    "lookbehind.yml": rule_document(
        "regex RE2 lacks", "process_creation", {"sel": {"CommandLine|re": "(?<=a)b"}, "condition": "sel"}
    ),
    "broken.yml": "title: [unclosed\n",
    "nested/fine.yaml": rule_document(
        "fine", "process_creation", {"sel": {"Image|endswith": "\\x.exe"}, "condition": "sel"}
    ),
}


def test_rules_that_cannot_run_are_listed_with_their_reasons(tmp_path: Path) -> None:
    rule_set = sigma.load_rule_set(write_rules(tmp_path / "rules", FAILING_RULES), None)
    assert [rule.title for rule in rule_set.rules] == ["fine"]  # a .yaml file, read from a subfolder too
    reasons = {failure.file: failure.reason for failure in rule_set.failures}
    assert reasons["keywords.yml"].startswith("does not convert: Value-only string expressions")
    assert reasons["unknown_field.yml"] == (
        "does not convert: needs field 'Provider_Name', which process creation (Sysmon event 1) does not carry "
        "(no event could match)"
    )
    assert "needs field 'Provider_Name'" in reasons["absent_field_required.yml"]
    assert "needs field 'Provider_Name'" in reasons["absent_field_present.yml"]
    assert "needs field 'TargetFilename'" in reasons["absent_field_referenced.yml"]
    assert (
        "needs field 'OriginalFileName', which network connection (Sysmon event 3)" in reasons["event3_lacks_field.yml"]
    )
    assert reasons["file_event.yml"] == (
        "logsource (category=file_event, product=windows, service=None) is neither process_creation nor "
        "network_connection on Windows"
    )
    assert reasons["lookbehind.yml"].startswith("DuckDB rejects its SQL:")
    assert reasons["broken.yml"].startswith("not a readable Sigma file:")
    assert rule_set.loaded == len(FAILING_RULES)
    titles = {failure.file: failure.title for failure in rule_set.failures}
    assert titles["unknown_field.yml"] == "unknown field"
    kinds = {failure.file: failure.kind for failure in rule_set.failures}
    assert kinds == {
        "keywords.yml": "unsupported",
        "unknown_field.yml": "field",
        "event3_lacks_field.yml": "field",
        "absent_field_required.yml": "field",
        "absent_field_present.yml": "field",
        "absent_field_referenced.yml": "field",
        "file_event.yml": "logsource",
        "lookbehind.yml": "sql",
        "broken.yml": "unreadable",
    }


def test_a_file_pysigma_fails_on_and_a_repeated_id_are_listed_and_the_rest_run(tmp_path: Path) -> None:
    from sysmon_assets.definitions import build_definitions

    fine = rule_document("fine", "process_creation", {"sel": {"Image|endswith": "\\x.exe"}, "condition": "sel"})
    other = rule_document("other", "process_creation", {"sel": {"Image|endswith": "\\y.exe"}, "condition": "sel"})
    rules = {
        "a_fine.yml": fine,
        "b_same_id.yml": {**other, "id": fine["id"]},
        "int_id.yml": {**other, "id": 1},
        "bad_date.yml": yaml.safe_dump(other) + "date: 2026-13-45\n",
    }
    folder = write_rules(tmp_path / "rules", rules)
    rule_set = sigma.load_rule_set(folder, None)
    assert [rule.file for rule in rule_set.rules] == ["a_fine.yml"]
    reasons = {failure.file: failure.reason for failure in rule_set.failures}
    assert reasons == {
        "b_same_id.yml": "repeats the id of a_fine.yml (a detection names its rule by id)",
        "int_id.yml": "pySigma cannot read it (AttributeError: 'int' object has no attribute 'replace'): check its "
        "fields' values",
        "bad_date.yml": "pySigma cannot read it (ValueError: month must be in 1..12): check its fields' values",
    }
    assert {failure.kind for failure in rule_set.failures} == {"unreadable"}
    # the Definitions load (each failure is the sigma_rules_converted check's to report), and a batch runs the rule
    assert build_definitions(Settings(sigma_rules=folder)).resolve_job_def("sysmon_micro_batch")
    lake = Lake(tmp_path, sigma_rules=folder)
    lake.land([process_create("{A}", event_data={"Image": "C:\\x.exe"})])
    lake.batch()
    assert lake.rows("SELECT rule_title FROM sigma_detections") == [("fine",)]


def test_rules_for_other_log_sources_are_listed_without_a_warning(tmp_path: Path) -> None:
    from sysmon_assets.dagster_layer.checks import sigma_rules_converted

    names = ("file_event.yml", "nested/fine.yaml")
    lake = Lake(tmp_path, sigma_rules=write_rules(tmp_path / "rules", {name: FAILING_RULES[name] for name in names}))
    passed, metadata = sigma_rules_converted(lake.pipeline, 1, StepResult("sigma_detections"))
    assert passed
    assert metadata["rules_not_evaluated"] == {"logsource": 1}
    assert [failure["file"] for failure in metadata["failures"]] == ["file_event.yml"]


def test_a_connection_hit_carries_its_process_context(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path / "rules",
        {
            "port.yml": rule_document(
                "backdoor port", "network_connection", {"sel": {"DestinationPort": 4444}, "condition": "sel"}
            ),
            # Sysmon's event 3 has no command line: a connection reads it from its process create
            "cli.yml": rule_document(
                "curl connects", "network_connection", {"sel": {"CommandLine|contains": "curl"}, "condition": "sel"}
            ),
        },
    )
    lake = Lake(tmp_path, sigma_rules=rules)
    create = process_create("{A}", "curl.exe http://203.0.113.7/x", event_data={"ParentImage": "C:\\w\\cmd.exe"})
    lake.land([create, network_connect("{a}", "203.0.113.7", event_data={"DestinationPort": "4444"})])
    lake.land([network_connect("{B}", "203.0.113.8", event_data={"DestinationPort": "4444"})])  # no create
    lake.batch()
    rows = lake.rows(
        "SELECT rule_title, process_guid, process_command_line, parent_process_path, parent_process_guid, dst_ip_addr, "
        "dst_port, event_id FROM sigma_detections ORDER BY rule_title, dst_ip_addr"
    )
    assert rows == [
        ("backdoor port", "{A}", "curl.exe http://203.0.113.7/x", "C:\\w\\cmd.exe", "{P}", "203.0.113.7", 4444, 3),
        ("backdoor port", "{B}", None, None, None, "203.0.113.8", 4444, 3),
        ("curl connects", "{A}", "curl.exe http://203.0.113.7/x", "C:\\w\\cmd.exe", "{P}", "203.0.113.7", 4444, 3),
    ]


def test_a_connection_reads_of_its_process_only_the_columns_used(tmp_path: Path) -> None:
    # every column read of the keyed table is read for each of its rows (a lake has no index)
    rules = write_rules(
        tmp_path / "rules",
        {
            "hash.yml": rule_document(
                "known bad hash", "network_connection", {"sel": {"Hashes|contains": "BAD"}, "condition": "sel"}
            )
        },
    )
    lake = Lake(tmp_path, sigma_rules=rules)
    lake.land([process_create("{A}", event_data={"Hashes": "SHA1=BAD"}), network_connect("{A}", "203.0.113.7")])
    recorders = lake.wrap_connections(lambda con: PlanRecorder(con, "INSERT INTO sigma_detections "))
    lake.batch()
    scans = [
        node["extra_info"]
        for recorder in recorders
        for plan in recorder.plans
        for node in plan_nodes(plan, "DUCKLAKE_SCAN")
        if node["extra_info"]["Table"] == "sysmon_process_create_table"
    ]
    context = {
        "process_guid",
        "process_command_line",
        "parent_process_path",
        "parent_process_command_line",
        "parent_process_guid",
    }
    assert [set(scan["Projections"]) for scan in scans] == [context | {"hashes"}]
    assert lake.rows("SELECT rule_title, process_guid, event_id FROM sigma_detections") == [
        ("known bad hash", "{A}", 3)
    ]


def _detections(lake: Lake) -> list[tuple]:
    return lake.rows("SELECT rule_id, _record_number, process_command_line FROM sigma_detections ORDER BY ALL")


def test_each_batch_evaluates_only_its_new_events_and_splits_give_the_same_detections(tmp_path: Path) -> None:
    rules = write_rules(
        tmp_path / "rules",
        {
            "cli.yml": rule_document(
                "cli", "process_creation", {"sel": {"CommandLine|contains": "evil"}, "condition": "sel"}
            ),
            "port.yml": rule_document(
                "port", "network_connection", {"sel": {"DestinationPort": 443}, "condition": "sel"}
            ),
        },
    )
    first = [process_create("{A}", "evil one", record=1), network_connect("{A}", record=2)]
    second = [
        process_create("{B}", "evil two", record=3),
        network_connect("{B}", record=4),
        network_connect("{A}", record=5),
    ]
    split = Lake(tmp_path / "split", sigma_rules=rules)
    split.land(first)
    split.batch()
    assert split.rows("SELECT count(*), max(_batch_id) FROM sigma_detections") == [(2, 1)]
    split.land(second)
    split.batch()
    # batch 2 wrote only the three new events' hits; batch 1's hits were not evaluated again
    assert split.rows("SELECT _batch_id, count(*) FROM sigma_detections GROUP BY ALL ORDER BY ALL") == [(1, 2), (2, 3)]
    split.batch()  # nothing new: nothing written
    assert split.count("sigma_detections") == 5
    whole = Lake(tmp_path / "whole", sigma_rules=rules)
    whole.land(first + second)
    whole.batch()
    assert _detections(whole) == _detections(split)


NC = "C:\\tools\\nc.exe"
LATE_CREATE_RULES = {
    "port.yml": rule_document("port", "network_connection", {"sel": {"DestinationPort": 4444}, "condition": "sel"}),
    "cli.yml": rule_document(
        "curl connects", "network_connection", {"sel": {"CommandLine|contains": "curl"}, "condition": "sel"}
    ),
    # matches a connection whose command line is unknown, as a Sysmon-only tool (no process create) sees it
    "unlisted.yml": rule_document(
        "not an allowed tool",
        "network_connection",
        {
            "sel": {"Image|endswith": "nc.exe"},
            "allowed": {"CommandLine|contains": "allowed"},
            "condition": "sel and not allowed",
        },
    ),
}


def _hits(lake: Lake) -> list[tuple]:
    return lake.rows(
        "SELECT rule_title, _record_number, process_command_line, _batch_id FROM sigma_detections ORDER BY ALL"
    )


def test_a_rule_reading_the_process_runs_on_a_connection_when_its_create_arrives(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", LATE_CREATE_RULES)
    connection = network_connect("{A}", record=1, event_data={"Image": NC, "DestinationPort": "4444"})
    create = process_create("{A}", "curl.exe http://203.0.113.7/x", record=2, event_data={"Image": NC})
    split = Lake(tmp_path / "split", sigma_rules=rules)
    split.land([connection])
    split.batch(T0)
    # the rule on the event's own fields hits at once; those reading the process wait for it
    assert _hits(split) == [("port", 1, None, 1)]
    split.land([create])
    split.batch(T0 + timedelta(minutes=5))
    assert _hits(split) == [
        ("curl connects", 1, "curl.exe http://203.0.113.7/x", 2),
        ("not an allowed tool", 1, "curl.exe http://203.0.113.7/x", 2),
        ("port", 1, None, 1),
    ]
    whole = Lake(tmp_path / "whole", sigma_rules=rules)
    whole.land([connection, create])
    whole.batch(T0)
    hits = "SELECT rule_title, _record_number FROM sigma_detections ORDER BY ALL"
    assert whole.rows(hits) == split.rows(hits) == [("curl connects", 1), ("not an allowed tool", 1), ("port", 1)]


def test_a_rule_reading_the_process_runs_without_it_once_the_join_gives_up(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", LATE_CREATE_RULES)
    lake = Lake(tmp_path, sigma_rules=rules)
    lake.pipeline.project.let_go_of_unmatched_at = 1
    lake.land([network_connect("{A}", record=1, event_data={"Image": NC})])
    lake.batch(T0)
    lake.batch(T0 + timedelta(minutes=10))  # still within the join's grace (15 minutes): still waiting
    assert _hits(lake) == []
    result = lake.batch(T0 + timedelta(minutes=16))
    assert result["sysmon_join"][0].expired == 1
    assert result["sigma_detections"][0].unmatched_read == {"sysmon_join": 1}
    assert _hits(lake) == [("not an allowed tool", 1, None, 3)]
    lake.land([process_create("{A}", "nc.exe allowed", record=2, event_data={"Image": NC})])
    lake.land([network_connect("{B}", record=3, event_data={"Image": NC})])
    lake.batch(T0 + timedelta(minutes=17))  # a create after the join gave up changes nothing: the hit was made
    assert _hits(lake) == [("not an allowed tool", 1, None, 3)]
    lake.batch(T0 + timedelta(minutes=33))
    assert _hits(lake) == [("not an allowed tool", 1, None, 3), ("not an allowed tool", 3, None, 5)]
    assert lake.count("dbt_like.unmatched") == 0  # the connections the join gave up on, once read, are let go of


def test_a_create_landing_in_the_batch_the_join_gives_up_is_not_read_by_the_connection(tmp_path: Path) -> None:
    """The join gives up on a connection in the batch its create lands in, past the grace: sysmon_join has no row
    for it, and the rules reading its process see none either (a probe's finding: they read the late create)."""
    lake = Lake(tmp_path, sigma_rules=write_rules(tmp_path / "rules", LATE_CREATE_RULES))
    lake.land([network_connect("{A}", record=1, event_data={"Image": NC})])
    lake.batch(T0)
    lake.land([process_create("{A}", "curl.exe allowed", record=2, event_data={"Image": NC})])
    assert lake.batch(T0 + timedelta(minutes=20))["sysmon_join"][0].expired == 1
    assert lake.count("sysmon_join") == 0
    assert _hits(lake) == [("not an allowed tool", 1, None, 2)]


def test_an_event_retention_keeps_a_given_up_connections_rows_until_the_hunt_has_read_them(tmp_path: Path) -> None:
    """The join gives up on a connection in a batch whose hunting step did not run; a retention then drops what is
    older than a day: the hunt still reads the connection's rekey row (by its arrival number) and makes its hit."""
    lake = Lake(tmp_path, sigma_rules=write_rules(tmp_path / "rules", LATE_CREATE_RULES))
    lake.land([network_connect("{A}", record=1, event_data={"Image": NC})])
    lake.batch(T0)
    for name in lake.pipeline.project.primary_models():
        if name != "sigma_detections":  # it failed, or was left out of the run
            lake.pipeline.run_model(name, "the join gives up", T0 + timedelta(minutes=16))
    with open_lake(lake.settings) as con:
        maintain(con, T0 + timedelta(days=2), 7, event_retention_days=1, project=lake.pipeline.project)
    lake.batch(T0 + timedelta(days=2))
    assert _hits(lake) == [("not an allowed tool", 1, None, 3)]


@pytest.mark.parametrize(("rule_files", "rekey_scans"), [(["port.yml"], 1), (["port.yml", "cli.yml"], 2)])
def test_the_history_is_read_for_connections_whose_wait_ended_only_when_a_rule_reads_the_process(
    tmp_path: Path, rule_files: list[str], rekey_scans: int
) -> None:
    rules = write_rules(tmp_path / "rules", {name: LATE_CREATE_RULES[name] for name in rule_files})
    lake = Lake(tmp_path, sigma_rules=rules)
    lake.land([network_connect("{A}", record=1, event_data={"DestinationPort": "4444"})])
    recorders = lake.wrap_connections(lambda con: PlanRecorder(con, "INSERT INTO sigma_detections "))
    lake.batch()
    scans = [
        node
        for recorder in recorders
        for plan in recorder.plans
        for node in plan_nodes(plan, "DUCKLAKE_SCAN")
        if node["extra_info"]["Table"] == "winlogbeat_stream_rekey"
    ]
    assert len(scans) == rekey_scans  # the batch's events, and (with a rule that waits) the history's


def test_a_run_that_leaves_out_the_process_table_gives_the_hits_of_a_run_that_does_not(tmp_path: Path) -> None:
    """A run of part of the assets reads no event the process table has not read yet: the hits (with their process
    context) are a whole run's once a later run completes the batch (a probe's finding: a connection's hit carried
    no process although its create had arrived)."""
    rules = write_rules(tmp_path / "rules", LATE_CREATE_RULES)
    events = [
        process_create("{A}", "curl.exe http://203.0.113.7/x", record=1, event_data={"Image": NC}),
        network_connect("{A}", record=2, event_data={"Image": NC, "DestinationPort": "4444"}),
    ]
    partial = Lake(tmp_path / "partial", sigma_rules=rules)
    partial.batch(T0)  # the tables exist
    partial.land(events)
    for name in partial.pipeline.project.primary_models():
        if name not in ("sysmon_process_create", "sysmon_process_create_table"):
            partial.pipeline.run_model(name, "without the process table", T0 + timedelta(minutes=1))
    partial.batch(T0 + timedelta(minutes=2))
    whole = Lake(tmp_path / "whole", sigma_rules=rules)
    whole.land(events)
    whole.batch(T0)
    hits = "SELECT rule_title, _record_number, process_command_line FROM sigma_detections ORDER BY ALL"
    assert partial.rows(hits) == whole.rows(hits)
    assert whole.rows(hits) == [
        ("curl connects", 2, "curl.exe http://203.0.113.7/x"),
        ("not an allowed tool", 2, "curl.exe http://203.0.113.7/x"),
        ("port", 2, "curl.exe http://203.0.113.7/x"),
    ]


def test_in_ksql_join_mode_a_rule_reading_the_process_runs_in_the_connections_batch(tmp_path: Path) -> None:
    rules = write_rules(tmp_path / "rules", LATE_CREATE_RULES)
    lake = Lake(tmp_path, sigma_rules=rules, join_mode="ksql")
    lake.land([network_connect("{A}", record=1, event_data={"Image": NC})])
    lake.batch(T0)
    assert _hits(lake) == [("not an allowed tool", 1, None, 1)]


def test_a_rule_set_is_converted_once_then_read_from_the_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rules = write_rules(tmp_path / "rules", {"a.yml": FAILING_RULES["nested/fine.yaml"]})
    conversions: list[Path] = []
    convert = sigma.convert_rules

    def counting(folder: Path, files: list[Path], digest: str) -> sigma.RuleSet:
        conversions.append(folder)
        return convert(folder, files, digest)

    monkeypatch.setattr(sigma, "convert_rules", counting)
    cache = tmp_path / "cache"
    first = sigma.load_rule_set(rules, cache)
    assert len(conversions) == 1
    assert list(cache.glob("rules-*.json")) == [cache / f"rules-{first.digest}.json"]
    assert sigma.load_rule_set(rules, cache) is first  # the process's memory
    monkeypatch.setattr(sigma, "_MEMO", {})  # another process: the cache file
    assert sigma.load_rule_set(rules, cache) == first
    assert len(conversions) == 1
    write_rules(rules, {"b.yml": rule_document("another", "process_creation", {"s": {"Image": "x"}, "condition": "s"})})
    changed = sigma.load_rule_set(rules, cache)  # new content: converted again
    assert len(conversions) == 2
    assert changed.digest != first.digest
    assert [rule.title for rule in changed.rules] == ["fine", "another"]
    edited = rules / "a.yml"
    edited.write_text(edited.read_text().replace("title: fine", "title: edit"))  # same size, new content
    assert [rule.title for rule in sigma.load_rule_set(rules, cache).rules] == ["edit", "another"]
    assert len(conversions) == 3


def test_rules_whose_cache_cannot_be_written_are_converted_and_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A probe's finding: a data folder the user may not write failed the definitions' import with a traceback
    from the cache's write (the lake's own error, naming it, comes when the batch opens it)."""
    rules = write_rules(tmp_path / "rules", {"a.yml": FAILING_RULES["nested/fine.yaml"]})
    blocked = tmp_path / "a file"
    blocked.write_text("")
    monkeypatch.setattr(sigma, "_MEMO", {})
    with caplog.at_level(logging.WARNING, logger=sigma.__name__):
        rule_set = sigma.load_rule_set(rules, blocked / "sigma")
    assert [rule.title for rule in rule_set.rules] == ["fine"]
    assert f"cannot cache the converted Sigma rules in {blocked / 'sigma'}" in caplog.text


def test_a_cache_write_that_fails_midway_leaves_no_file_and_the_rules_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    rules = write_rules(tmp_path / "rules", {"a.yml": FAILING_RULES["nested/fine.yaml"]})
    monkeypatch.setattr(sigma, "_MEMO", {})

    def disk_full(*args: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sigma.json, "dump", disk_full)
    rule_set = sigma.load_rule_set(rules, tmp_path / "cache")
    assert [rule.title for rule in rule_set.rules] == ["fine"]
    assert list((tmp_path / "cache").iterdir()) == []


def test_a_cached_rule_set_is_converted_again_when_the_backend_changes() -> None:
    backend = Path(sigma.__file__).with_name("sigma_backend.py").read_bytes()
    assert backend in sigma._converter_identity()  # its code is part of the cache file's name


def test_our_own_rules_all_convert(tmp_path: Path) -> None:
    rule_set = sigma.load_rule_set(DEFAULT_SIGMA_RULES, None)
    assert rule_set.failures == []
    assert {rule.event_id for rule in rule_set.rules} == {1, 3}
    assert all(rule.author == "sysmon-assets contributors" and rule.references for rule in rule_set.rules)
    assert Settings().sigma_rules == DEFAULT_SIGMA_RULES


def test_a_rules_folder_that_does_not_exist_is_refused(tmp_path: Path) -> None:
    from sysmon_assets.settings import SettingsError

    with pytest.raises(SettingsError, match="SYSMON_SIGMA_RULES"):
        Settings.from_env({"SYSMON_SIGMA_RULES": str(tmp_path / "missing")})


def test_a_filter_in_a_file_of_its_own_applies_to_the_rules_it_names_and_one_naming_none_is_listed(
    tmp_path: Path,
) -> None:
    """Sigma filters (a `filter:` document naming rules by id) usually live in files of their own: each file read
    alone, pySigma applied them to nothing, and the filter was dropped without a word (a probe's finding)."""
    whoami = rule_document(
        "whoami", "process_creation", {"sel": {"Image|endswith": "\\whoami.exe"}, "condition": "sel"}
    )
    admins = {"sel": {"User|endswith": "\\admin"}, "condition": "not sel"}
    filters = {
        "title": "not by admins",
        "id": str(uuid.uuid5(uuid.NAMESPACE_URL, "sysmon-assets-test/filter")),
        "logsource": {"category": "process_creation", "product": "windows"},
        "filter": {"rules": [whoami["id"]], **admins},
    }
    dangling = {
        **filters,
        "title": "names no rule",
        "id": str(uuid.uuid4()),
        "filter": {"rules": [str(uuid.uuid4())], **admins},
    }
    folder = write_rules(tmp_path / "rules", {"rule.yml": whoami, "filters/admins.yml": filters, "z.yml": dangling})
    rule_set = sigma.load_rule_set(folder, None)
    assert [rule.title for rule in rule_set.rules] == ["whoami"]
    assert [(f.file, f.kind, f.title) for f in rule_set.failures] == [("z.yml", "filter", "names no rule")]
    lake = Lake(tmp_path, sigma_rules=folder)
    image = {"Image": "C:\\W\\whoami.exe"}
    lake.land(
        [
            process_create("{U}", "whoami", event_data={**image, "User": "CORP\\alice"}),
            process_create("{A}", "whoami", event_data={**image, "User": "CORP\\admin"}),
        ]
    )
    lake.batch()
    assert lake.rows("SELECT rule_title, process_guid FROM sigma_detections") == [("whoami", "{U}")]


def test_a_filter_pysigma_reads_with_errors_is_listed_unreadable_with_its_error(tmp_path: Path) -> None:
    broken = {
        "title": "broken filter",
        "id": str(uuid.uuid4()),
        "logsource": {"category": "process_creation", "product": "windows"},
        "filter": {"rules": [str(uuid.uuid4())], "sel": {"User|nosuchmodifier": "x"}, "condition": "not sel"},
    }
    rule_set = sigma.load_rule_set(write_rules(tmp_path / "rules", {"broken.yml": broken}), None)
    assert [(f.file, f.kind, f.title, f.reason) for f in rule_set.failures] == [
        ("broken.yml", "unreadable", "broken filter", "not a valid Sigma filter: Unknown modifier 'nosuchmodifier'")
    ]


def test_a_correlation_rule_is_listed_unsupported(tmp_path: Path) -> None:
    """docs/hunting.md: correlations are a feature the conversion lacks; the rule they count still runs."""
    whoami = rule_document(
        "whoami", "process_creation", {"sel": {"Image|endswith": "\\whoami.exe"}, "condition": "sel"}
    )
    correlation = {
        "title": "many whoamis",
        "id": str(uuid.uuid4()),
        "correlation": {
            "type": "event_count",
            "rules": [whoami["id"]],
            "group-by": ["User"],
            "timespan": "1h",
            "condition": {"gte": 5},
        },
    }
    rule_set = sigma.load_rule_set(
        write_rules(tmp_path / "rules", {"rule.yml": whoami, "count.yml": correlation}), None
    )
    assert [rule.title for rule in rule_set.rules] == ["whoami"]
    assert [(f.file, f.kind, f.title, f.reason) for f in rule_set.failures] == [
        ("count.yml", "unsupported", "many whoamis", "SigmaCorrelationRule is not evaluated (only detection rules are)")
    ]


def test_a_field_kept_in_extra_fields_is_read_whatever_its_letter_case(tmp_path: Path) -> None:
    """Field names match in any letter case (docs/inputs.md), the first in the line winning; OriginalFileName,
    ParentUser and RuleName are kept in _extra_fields as written, and a rule read them by one spelling only (a
    probe's finding: a renamed shell spelled originalfilename was not detected)."""
    renamed = rule_document(
        "renamed shell", "process_creation", {"sel": {"OriginalFileName": "Cmd.Exe"}, "condition": "sel"}
    )
    parent_user = rule_document(
        "by admin", "process_creation", {"sel": {"ParentUser": "CORP\\admin"}, "condition": "sel"}
    )
    lake = Lake(tmp_path, sigma_rules=write_rules(tmp_path / "rules", {"a.yml": renamed, "b.yml": parent_user}))
    lake.land(
        [
            process_create("{EXACT}", event_data={"OriginalFileName": "Cmd.Exe"}),
            process_create("{LOWER}", event_data={"originalfilename": "Cmd.Exe", "PARENTUSER": "CORP\\admin"}),
            process_create("{FIRST}", event_data={"ORIGINALFILENAME": "cmd.exe", "OriginalFileName": "foo.exe"}),
            process_create("{LATER}", event_data={"originalFileName": "foo.exe", "OriginalFileName": "Cmd.Exe"}),
        ]
    )
    lake.batch()
    assert lake.rows("SELECT process_guid, rule_title FROM sigma_detections ORDER BY ALL") == [
        ("{EXACT}", "renamed shell"),
        ("{FIRST}", "renamed shell"),
        ("{LOWER}", "by admin"),
        ("{LOWER}", "renamed shell"),
    ]


def test_a_rule_without_a_product_reads_a_field_its_events_lack_as_absent(tmp_path: Path) -> None:
    """docs/hunting.md: product windows, or none. Without one, a field the event lacks was not marked absent, so the
    rule's SQL named a column that does not exist and it did not run."""
    rule = rule_document(
        "no product",
        "process_creation",
        {"sel": {"Image|endswith": "\\x.exe"}, "other": {"Provider_Name": "foo"}, "condition": "sel and not other"},
    )
    del rule["logsource"]["product"]
    rule_set = sigma.load_rule_set(write_rules(tmp_path / "rules", {"rule.yml": rule}), None)
    assert ([r.title for r in rule_set.rules], rule_set.failures) == (["no product"], [])


def test_the_command_line_refuses_a_folder_that_does_not_exist_and_reads_upper_case_suffixes(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    with pytest.raises(SystemExit):
        sigma.main([str(tmp_path / "missing")])
    assert "not a folder" in capsys.readouterr().err
    write_rules(tmp_path / "rules", {"FINE.YML": FAILING_RULES["nested/fine.yaml"]})
    assert sigma.main([str(tmp_path / "rules")]) == 0
    assert capsys.readouterr().out.endswith("1 of 1 rules run\n")


def test_the_severe_hits_check_counts_every_hit_and_lists_the_first_by_arrival(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sysmon_assets.dagster_layer import checks

    contains = {"sel": {"CommandLine|contains": "lsass"}, "condition": "sel"}
    rules = write_rules(
        tmp_path / "rules",
        {
            "high.yml": rule_document("lsass high", "process_creation", contains, "high"),
            "critical.yml": rule_document("lsass critical", "process_creation", contains, "critical"),
            "medium.yml": rule_document("lsass medium", "process_creation", contains, "medium"),
        },
    )
    lake = Lake(tmp_path, sigma_rules=rules)
    lake.land([process_create(f"{{P{n}}}", f"procdump lsass.exe {n}") for n in range(3)])
    lake.batch()
    monkeypatch.setattr(checks, "HITS_SHOWN", 3)
    recorders = lake.wrap_connections(lambda con: PlanRecorder(con, "SELECT rule_title"))
    passed, metadata = checks.sigma_severe_hits(lake.pipeline, 1, StepResult("sigma_detections"))
    (plan,) = [plan for recorder in recorders for plan in recorder.plans]
    assert list(plan_nodes(plan, "TOP_N"))  # the hits listed are fetched, not every hit of a large batch
    assert not passed
    assert metadata["severe_hits"] == 6  # two severe rules on three events; the medium rule's hits do not count
    ids = sorted(rule_document(title, "", {})["id"] for title in ("lsass high", "lsass critical"))
    shown = [(hit["process_command_line"], hit["rule_id"]) for hit in metadata["hits"]]
    assert shown == [
        ("procdump lsass.exe 0", ids[0]),
        ("procdump lsass.exe 0", ids[1]),
        ("procdump lsass.exe 1", ids[0]),
    ]


def test_dagster_warns_of_severe_hits_and_of_rules_that_cannot_run(tmp_path: Path) -> None:
    from sysmon_assets.definitions import build_definitions

    rules = write_rules(
        tmp_path / "rules",
        {
            "severe.yml": rule_document(
                "dumps lsass",
                "process_creation",
                {"sel": {"CommandLine|contains": "lsass"}, "condition": "sel"},
                "critical",
            ),
            "mild.yml": rule_document(
                "whoami", "process_creation", {"sel": {"CommandLine|contains": "whoami"}, "condition": "sel"}, "low"
            ),
            "unknown_field.yml": FAILING_RULES["unknown_field.yml"],
        },
    )
    lake = Lake(tmp_path, sigma_rules=rules)
    lake.land([process_create("{A}", "procdump lsass.exe"), process_create("{B}", "whoami /all")])
    job = build_definitions(lake.settings).resolve_job_def("sysmon_micro_batch")
    result = job.execute_in_process()
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    severe, converted = checks["severe_detections"], checks["sigma_rules_converted"]
    assert (severe.passed, severe.severity.value) == (False, "WARN")
    assert severe.metadata["severe_hits"].value == 1
    (hit,) = severe.metadata["hits"].value
    assert (hit["rule_title"], hit["level"], hit["process_command_line"]) == (
        "dumps lsass",
        "critical",
        "procdump lsass.exe",
    )
    assert (converted.passed, converted.severity.value) == (False, "WARN")
    (failure,) = converted.metadata["failures"].value
    assert (failure["file"], failure["title"], failure["kind"]) == ("unknown_field.yml", "unknown field", "field")
    assert converted.metadata["rules_not_evaluated"].value == {"field": 1}
    assert "Provider_Name" in failure["reason"]
    metadata = result.asset_materializations_for_node("sigma_detections")[0].metadata
    assert (metadata["rules_loaded"].value, metadata["rules_converted"].value, metadata["rules_failed"].value) == (
        3,
        2,
        1,
    )
    assert metadata["hits_by_level"].value == {"critical": 1, "low": 1}
    assert "Provider_Name" in metadata["rule_failures"].value[0]["reason"]

    lake.land([process_create("{C}", "whoami")])  # the next batch has no severe hit
    checks = {c.check_name: c for c in job.execute_in_process().get_asset_check_evaluations()}
    assert checks["severe_detections"].passed
    assert not checks["sigma_rules_converted"].passed


def test_the_docs_field_mapping_table_is_the_codes() -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "hunting.md").read_text(encoding="utf-8")
    assert sigma.mapping_table() in docs, "paste sysmon_assets.hunting.sigma.mapping_table() into docs/hunting.md"


def test_the_command_line_says_which_rules_run_and_why_not(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    names = ("nested/fine.yaml", "unknown_field.yml")
    folder = write_rules(tmp_path / "rules", {name: FAILING_RULES[name] for name in names})
    assert sigma.main([str(folder), "--sql"]) == 1
    out = capsys.readouterr().out
    assert "runs      nested/fine.yaml: fine (medium, event 1)" in out
    assert "ends_with(\"Image:lower\", '\\x.exe')" in out
    assert "field     unknown_field.yml: unknown field - does not convert: needs field 'Provider_Name'" in out
    assert out.endswith("1 of 2 rules run\n")
    assert sigma.main([str(DEFAULT_SIGMA_RULES)]) == 0


OWN_RULE_EVENTS = {
    "PowerShell Started With An Encoded Command": [
        process_create("{E1}", "powershell.exe -NoP -enc SQBFAFgA", event_data={"Image": "C:\\W\\powershell.exe"})
    ],
    "Office Application Starts A Shell": [
        process_create("{E2}", "cmd.exe /c x", event_data={"ParentImage": "C:\\Office\\WINWORD.EXE"})
    ],
    "Program Run From The Public Users Folder": [
        process_create("{E3}", "updater.exe", event_data={"Image": "C:\\Users\\Public\\updater.exe"})
    ],
    "Windows Shell Running Under Another Name": [
        process_create("{E4}", "svc.exe", event_data={"Image": "C:\\T\\svc.exe", "OriginalFileName": "Cmd.Exe"})
    ],
    "Volume Shadow Copies Deleted": [
        process_create("{E5}", "vssadmin delete shadows /all", event_data={"Image": "C:\\W\\vssadmin.exe"})
    ],
    "Program In A User-Writable Folder Opens A Connection": [
        network_connect("{E6}", "198.51.100.6", event_data={"Image": "C:\\Users\\Public\\updater.exe"})
    ],
    "Shell Connects To A Public Address": [
        network_connect("{E7}", "198.51.100.7", event_data={"Image": "C:\\W\\powershell.exe"})
    ],
    "Connection To A Port Common Backdoors Use": [
        network_connect("{E8}", "10.0.0.8", event_data={"DestinationPort": "4444", "Image": "C:\\A\\b.exe"})
    ],
}


def test_the_documented_detection_queries_run_and_the_last_day_is_utc(tmp_path: Path) -> None:
    docs = (Path(__file__).resolve().parents[2] / "docs" / "hunting.md").read_text(encoding="utf-8")
    section = docs.split("\n### Queries\n", 1)[1].split("\n### ", 1)[0]
    top_rules, severe_of_last_day, hosts_with_several_rules = re.findall(r"```sql\n(.*?)```", section, re.S)
    lake = Lake(tmp_path)
    now = datetime.now(UTC).replace(tzinfo=None)
    office_shell = {"ParentImage": r"C:\Office\WINWORD.EXE"}  # cmd.exe started by Word: a high-level rule's hit
    for guid, when in (("{RECENT}", now - timedelta(hours=20)), ("{OLD}", now - timedelta(days=2))):
        lake.land([process_create(guid, utc_time=when.strftime("%Y-%m-%d %H:%M:%S.000"), event_data=office_shell)])
    encoded = {"Image": r"C:\W\powershell.exe"}  # with -enc: a medium rule's hit
    lake.land([process_create("{ENCODED}", "powershell.exe -enc SQBFAFgA", event_data=encoded)])
    lake.land([process_create("{ELSEWHERE}", "powershell.exe -enc SQBFAFgA", event_data=encoded, computer="HOST2")])
    lake.batch()
    assert lake.rows(top_rules)
    # a session nine hours ahead of UTC reads the same last day (its wall clock would miss the hit of 20 hours ago)
    with sysmon_assets.connect(lake.settings) as con:
        con.execute("SET TimeZone = 'Asia/Tokyo'")
        assert [row[2] for row in con.execute(severe_of_last_day).fetchall()] == ["Office Application Starts A Shell"]
    # the host where two rules fired (the other host had one), with each rule's technique once
    assert lake.rows(hosts_with_several_rules) == [("HOST1.corp", 2, 3, ["attack.t1059.001", "attack.t1566.001"])]


def test_our_own_rules_each_detect_what_they_describe(tmp_path: Path) -> None:
    lake = Lake(tmp_path)  # the default rules: sigma_rules/
    lake.land(event for events in OWN_RULE_EVENTS.values() for event in events)
    lake.land([process_create("{B1}", "notepad.exe"), network_connect("{B2}", "10.0.0.9")])  # benign
    lake.batch()
    hits = lake.rows("SELECT rule_title, process_guid FROM sigma_detections ORDER BY ALL")
    expected = [
        (title, event["event_data"]["ProcessGuid"]) for title, events in OWN_RULE_EVENTS.items() for event in events
    ]
    assert hits == sorted(expected)
