"""SigmaHQ's regression suite as the acceptance test: each case's .evtx lands through the pipeline's own EVTX input,
SigmaHQ's 1,234 rules run over it, and the case's rule must match exactly ``match_count`` of the case's events.

The rules and samples are third-party data kept beside the repository (../shared/data/sigma, SOURCES.md there).
Cases share lakes where they can: the rekey step keeps one delivery per (computer, channel, record number,
UtcTime), so cases whose samples share a (computer, channel, record number) go to different lakes, to be safe.
The rules are converted once for all of them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from sysmon_assets.hunting import sigma
from tests.conftest import Lake
from tests.recipe import SHARED, shared_path

SIGMA = ("data", "sigma")
CASES_DIR = SHARED.joinpath(*SIGMA, "regression", "process_creation")
# Cases whose expected count we do not reach, each with the reason and the count we do (docs/hunting.md lists them).
DIFFERENT_COUNTS = {
    "proc_creation_win_github_self_hosted_runner": (
        2,
        "info.yml gives no match_count (so 1 applies) while its description says the sample's two process events "
        "match the rule's two conditions; both do (Runner.Listener.exe configure, Runner.Worker.exe spawnclient)",
    ),
}


@dataclass(frozen=True)
class RegressionCase:
    """One SigmaHQ regression case: its rule, its sample and the events the rule must match."""

    name: str
    rule_id: str
    match_count: int
    evtx: Path
    deliveries: frozenset[tuple[str, str, int]]


def sample_events(path: Path) -> list[dict]:
    """The events of a case's JSON rendering (concatenated objects)."""
    text, decoder, position, events = path.read_text(encoding="utf-8"), json.JSONDecoder(), 0, []
    while True:
        while position < len(text) and text[position].isspace():
            position += 1
        if position == len(text):
            return events
        event, position = decoder.raw_decode(text, position)
        events.append(event["Event"])


def load_case(folder: Path) -> RegressionCase:
    info = yaml.safe_load((folder / "info.yml").read_text(encoding="utf-8"))
    (rule,) = info["rule_metadata"]
    (test,) = info["regression_tests_info"]
    evtx = folder / f"{rule['id']}.evtx"
    deliveries = frozenset(
        (event["System"]["Computer"], event["System"]["Channel"], int(event["System"]["EventRecordID"]))
        for event in sample_events(evtx.with_suffix(".json"))
    )
    return RegressionCase(folder.name, rule["id"], int(test.get("match_count", 1)), evtx, deliveries)


def lake_groups(cases: list[RegressionCase]) -> list[list[RegressionCase]]:
    """Cases in as few groups as a greedy pass finds, no two of a group sharing a delivery key."""
    groups: list[tuple[list[RegressionCase], set]] = []
    for case in cases:
        for members, keys in groups:
            if not keys & case.deliveries:
                members.append(case)
                keys |= case.deliveries
                break
        else:
            groups.append(([case], set(case.deliveries)))
    return [members for members, _ in groups]


CASE_NAMES = sorted(path.name for path in CASES_DIR.iterdir()) if CASES_DIR.is_dir() else ["(regression data missing)"]


@pytest.fixture(scope="module")
def matches(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Per case, how many of its sample's events its rule matched, every group run in a lake of its own."""
    rules = shared_path(*SIGMA, "rules")
    cases = [load_case(folder) for folder in sorted(shared_path(*SIGMA, "regression", "process_creation").iterdir())]
    counts: dict[str, int] = {}
    for index, group in enumerate(lake_groups(cases)):
        lake = Lake(tmp_path_factory.mktemp(f"regression-{index}"), sigma_rules=rules)
        for case in group:
            (lake.landing / f"{case.name}.evtx").write_bytes(case.evtx.read_bytes())
        lake.batch()
        hits = lake.rows(
            "SELECT s._source_file, d.rule_id, count(*) FROM sigma_detections AS d "
            "JOIN winlogbeat_stream AS s USING (_seq) GROUP BY ALL"
        )
        by_file = {(Path(source).stem, rule_id): count for source, rule_id, count in hits}
        counts.update({case.name: by_file.get((case.name, case.rule_id), 0) for case in group})
    return counts


@pytest.mark.parametrize("name", CASE_NAMES)
def test_the_case_rule_matches_exactly_match_count_events(matches: dict[str, int], name: str) -> None:
    case = load_case(CASES_DIR / name)
    expected = DIFFERENT_COUNTS[name][0] if name in DIFFERENT_COUNTS else case.match_count
    assert matches[name] == expected


def test_every_sigmahq_rule_for_our_events_converts() -> None:
    """proc_creation_win_conhost_susp_child_process names Provider_Name, which our events lack, in a filter only."""
    rule_set = sigma.load_rule_set(shared_path(*SIGMA, "rules"), None)
    assert (len(rule_set.rules), rule_set.failures) == (1234, [])
    assert "Uncommon Child Process Of Conhost.EXE" in {rule.title for rule in rule_set.rules}


def test_cases_sharing_a_delivery_key_are_in_different_lakes() -> None:
    def case(name: str, *records: int) -> RegressionCase:
        keys = frozenset(("HOST", "Microsoft-Windows-Sysmon/Operational", record) for record in records)
        return RegressionCase(name, name, 1, Path(name), keys)

    groups = lake_groups([case("a", 1, 2), case("b", 3), case("c", 2), case("d", 4)])
    assert [[member.name for member in group] for group in groups] == [["a", "b", "d"], ["c"]]
