"""The seeded sample generator: deterministic and shaped like a real fleet."""

from __future__ import annotations

import json
import shlex
from collections import Counter
from pathlib import Path

from sysmon_assets.sample.generator import FleetSimulator, main, write_sample
from tests.conftest import Lake

ROOT = Path(__file__).resolve().parents[2]


def test_same_seed_same_bytes(tmp_path: Path) -> None:
    first = write_sample(tmp_path / "a", 300, seed=5)[0].read_bytes()
    second = write_sample(tmp_path / "b", 300, seed=5)[0].read_bytes()
    assert first == second
    assert write_sample(tmp_path / "c", 300, seed=6)[0].read_bytes() != first


def test_files_split_the_events(tmp_path: Path) -> None:
    paths = write_sample(tmp_path, 1000, files=3)
    assert [p.name for p in paths] == ["winlogbeat-000.ndjson", "winlogbeat-001.ndjson", "winlogbeat-002.ndjson"]
    assert sum(len(p.read_text().splitlines()) for p in paths) == 1000


def test_the_mix_looks_like_a_fleet() -> None:
    events = list(FleetSimulator(seed=1, hosts=20, start=__import__("datetime").datetime(2026, 1, 1)).events(20000))
    assert len(events) == 20000
    kinds = Counter((e["source_name"] == "Microsoft-Windows-Sysmon", e["event_id"]) for e in events)
    assert kinds[(True, 1)] and kinds[(True, 3)] and kinds[(False, 3)] and kinds[(True, 11)]
    assert len({e["computer_name"] for e in events}) == 20
    created, position = {}, {}
    for index, event in enumerate(events):
        guid = event["event_data"].get("ProcessGuid", "")
        if event["event_id"] == 1 and event["source_name"] == "Microsoft-Windows-Sysmon":
            created[guid.upper()] = index
    connects = [
        (i, e["event_data"]["ProcessGuid"])
        for i, e in enumerate(events)
        if e["event_id"] == 3 and e["source_name"] == "Microsoft-Windows-Sysmon"
    ]
    for index, guid in connects:
        position.setdefault(guid.upper(), index)
    unmatched = sum(1 for _, guid in connects if guid.upper() not in created)
    early = sum(1 for guid, index in position.items() if guid in created and index < created[guid])
    assert 0.2 < unmatched / len(connects) < 0.4
    assert early > 10
    assert any(guid != guid.upper() for _, guid in connects) and any(guid == guid.upper() for _, guid in connects)


def test_the_committed_sample_holds_process_chains_for_the_ancestry(tmp_path: Path) -> None:
    lake = Lake(tmp_path)
    (sample,) = (ROOT / "sample_data").glob("*.ndjson")
    lake.land(sample.read_text().splitlines())
    lake.batch()
    depths = dict(lake.rows("SELECT depth, count(*) FROM sysmon_process_ancestry GROUP BY ALL"))
    assert depths[1] > 10 and depths[0] > depths[1]  # most processes' parents started before the sample
    lineages = {row[0] for row in lake.rows("SELECT lineage FROM sysmon_process_ancestry WHERE depth = 1")}
    assert {"svchost.exe > rundll32.exe", "cmd.exe > updater.exe"} <= lineages
    chained = lake.rows("SELECT count(*) FROM sysmon_join_ancestry WHERE connection_lineage LIKE '% > % -> %'")
    assert chained[0][0] > 10


def test_make_sample_s_command_writes_the_committed_sample_byte_for_byte(tmp_path: Path) -> None:
    recipe = (ROOT / "Makefile").read_text().split("\nsample:")[1].split("\n\n")[0]
    (command,) = [line for line in recipe.splitlines() if "-m sysmon_assets.sample" in line]
    arguments = shlex.split(command.split("-m sysmon_assets.sample", 1)[1])
    main([tmp_path.as_posix() if argument == "sample_data" else argument for argument in arguments])
    (written,) = tmp_path.glob("*.ndjson")
    (committed,) = (ROOT / "sample_data").glob("*.ndjson")
    assert written.read_bytes() == committed.read_bytes()


def test_the_committed_sample_is_winlogbeat_6_layout() -> None:
    (sample,) = (ROOT / "sample_data").glob("*.ndjson")
    first = json.loads(sample.read_text().splitlines()[0])
    assert first["@metadata"]["version"].startswith("6.")
    assert {"source_name", "computer_name", "event_id", "record_number", "event_data"} <= first.keys()


def test_another_run_into_the_same_folder_continues_record_numbers_time_and_files(tmp_path: Path) -> None:
    """A redelivery is a repeated (computer, channel, record number, UtcTime): a second run, whatever its seed, repeats
    none, so its events are new to the rekey step."""
    (first,) = write_sample(tmp_path, 300, hosts=4, seed=5)
    (second,) = write_sample(tmp_path, 300, hosts=4, seed=6, continuing=True)
    assert (first.name, second.name) == ("winlogbeat-000.ndjson", "winlogbeat-001.ndjson")
    earlier, later = ([json.loads(line) for line in path.read_text().splitlines()] for path in (first, second))
    assert not {delivery(e) for e in earlier} & {delivery(e) for e in later}
    assert min(e["@timestamp"] for e in later) > max(e["@timestamp"] for e in earlier)
    assert [p.name for p in write_sample(tmp_path / "fresh", 10, continuing=True)] == ["winlogbeat-000.ndjson"]


def test_a_continued_run_with_the_same_seed_reuses_the_processes(tmp_path: Path) -> None:
    runs = [write_sample(tmp_path, 300, hosts=4, seed=seed, continuing=True)[0] for seed in (5, 5, 6)]
    guids = [
        {e["event_data"].get("ProcessGuid") for e in map(json.loads, path.read_text().splitlines())} for path in runs
    ]
    assert guids[0] == guids[1] and not (guids[0] - {None}) & guids[2]


def test_each_continued_run_lands_new_events(lake: Lake) -> None:
    write_sample(lake.landing, 200, hosts=3, seed=5)
    lake.batch()
    write_sample(lake.landing, 200, hosts=3, seed=6, continuing=True)
    lake.batch()
    landed = [
        json.loads(line) for path in sorted(lake.landing.glob("*.ndjson")) for line in path.read_text().splitlines()
    ]
    sysmon = [e for e in landed if e["source_name"] == "Microsoft-Windows-Sysmon"]
    assert lake.count("winlogbeat_stream") == 400
    assert lake.count("winlogbeat_stream_rekey") == len(sysmon)  # no event of the second run taken for a redelivery


def delivery(event: dict) -> tuple[str, str, str]:
    return event["computer_name"], event["log_name"], event["record_number"]
