"""Process ancestry (docs/hunting.md): sysmon_process_ancestry's chains, filled in as late ancestors arrive,
and sysmon_join_ancestry, the connections with the chain of the process that opened them."""

from __future__ import annotations

import json
import re
from datetime import timedelta
from pathlib import Path, PureWindowsPath
from typing import Any

import pytest

from sysmon_assets.micro_batch.shards import file_shard
from sysmon_assets.sources.landed_files import file_key
from sysmon_assets.storage.lake import connect, open_lake
from tests.conftest import T0, Lake, land, network_connect, process_create, profile_operators, profile_to, snapshot
from tests.micro_batch.test_shards import SHARDS, assert_shards_match_one_pipeline, shard_pipelines
from tests.recipe import HUNTING_MODELS, shared_path
from tests.sql.test_real_data import extract_ndjson

EXPLORER = r"C:\Windows\explorer.exe"
CMD = r"C:\Windows\System32\cmd.exe"
POWERSHELL = r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe"
WHOAMI = r"C:\Windows\System32\whoami.exe"
ZERO_GUID = "{00000000-0000-0000-0000-000000000000}"
ROOT = Path(__file__).resolve().parents[2]


def create(guid: str, parent: str | None, image: str, command_line: str | None = None) -> dict[str, Any]:
    """A ProcessCreate of ``image`` whose parent is ``parent`` (None: the event names no parent GUID)."""
    event = process_create(guid, command_line or Path(image.replace("\\", "/")).name, event_data={"Image": image})
    if parent is None:
        del event["event_data"]["ParentProcessGuid"]
    else:
        event["event_data"]["ParentProcessGuid"] = parent
    return event


def chains(lake: Lake) -> dict[str, tuple[str, int, str]]:
    """``{process_guid: (lineage, depth, chain_end)}`` of the whole ancestry table."""
    rows = lake.rows("SELECT process_guid, lineage, depth, chain_end FROM sysmon_process_ancestry")
    return {guid: (lineage, depth, end) for guid, lineage, depth, end in rows}


def batch_ids(lake: Lake) -> dict[str, int]:
    """``{process_guid: the batch that wrote its row}``."""
    return dict(lake.rows("SELECT process_guid, _batch_id FROM sysmon_process_ancestry"))


def connection_lines(lake: Lake) -> list[tuple[str, str]]:
    return lake.rows("SELECT chain_end, connection_lineage FROM sysmon_join_ancestry ORDER BY _seq")


def test_a_chain_of_four_in_one_batch_nearest_ancestor_first(lake: Lake) -> None:
    lake.land(
        [
            create("{WHOAMI}", "{PS}", WHOAMI, "whoami /all"),
            create("{PS}", "{CMD}", POWERSHELL, "powershell -nop -enc SQBFAFgA"),
            create("{CMD}", "{EXPLORER}", CMD, "cmd.exe /c powershell -nop -enc SQBFAFgA"),
            create("{EXPLORER}", "", EXPLORER, "C:\\Windows\\Explorer.EXE"),
        ]
    )
    lake.batch()
    assert chains(lake) == {
        "{EXPLORER}": ("explorer.exe", 0, "root"),
        "{CMD}": ("explorer.exe > cmd.exe", 1, "root"),
        "{PS}": ("explorer.exe > cmd.exe > powershell.exe", 2, "root"),
        "{WHOAMI}": ("explorer.exe > cmd.exe > powershell.exe > whoami.exe", 3, "root"),
    }
    ((process_path, command_line, ancestors),) = lake.rows(
        "SELECT process_path, process_command_line, ancestors FROM sysmon_process_ancestry "
        "WHERE process_guid = '{WHOAMI}'"
    )
    assert (process_path, command_line) == (WHOAMI, "whoami /all")
    assert ancestors == [
        {"process_guid": "{PS}", "process_path": POWERSHELL, "process_command_line": "powershell -nop -enc SQBFAFgA"},
        {
            "process_guid": "{CMD}",
            "process_path": CMD,
            "process_command_line": "cmd.exe /c powershell -nop -enc SQBFAFgA",
        },
        {"process_guid": "{EXPLORER}", "process_path": EXPLORER, "process_command_line": "C:\\Windows\\Explorer.EXE"},
    ]


def test_a_late_parent_then_a_late_grandparent_fill_in_the_chain(lake: Lake) -> None:
    lake.land([create("{PS}", "{CMD}", POWERSHELL), create("{OTHER}", "{NOBODY}", WHOAMI)])
    lake.batch(T0)
    assert chains(lake)["{PS}"] == ("powershell.exe", 0, "missing_parent")
    lake.land([create("{CMD}", "{EXPLORER}", CMD)])
    lake.batch(T0 + timedelta(minutes=1))
    assert chains(lake)["{PS}"] == ("cmd.exe > powershell.exe", 1, "missing_parent")
    lake.land([create("{EXPLORER}", None, EXPLORER)])
    lake.batch(T0 + timedelta(minutes=2))
    assert chains(lake) == {
        "{EXPLORER}": ("explorer.exe", 0, "root"),
        "{CMD}": ("explorer.exe > cmd.exe", 1, "root"),
        "{PS}": ("explorer.exe > cmd.exe > powershell.exe", 2, "root"),
        "{OTHER}": ("whoami.exe", 0, "missing_parent"),
    }
    # each batch rewrote the rows below what it brought, and only those
    assert batch_ids(lake) == {"{EXPLORER}": 3, "{CMD}": 3, "{PS}": 3, "{OTHER}": 1}


def test_a_missing_parent_stops_the_chain_and_says_so(lake: Lake) -> None:
    lake.land([create("{CMD}", "{NEVER-SHIPPED}", CMD), create("{PS}", "{CMD}", POWERSHELL)])
    lake.batch()
    assert chains(lake) == {
        "{CMD}": ("cmd.exe", 0, "missing_parent"),
        "{PS}": ("cmd.exe > powershell.exe", 1, "missing_parent"),
    }


def test_no_parent_guid_an_empty_one_or_the_all_zero_one_is_a_root(lake: Lake) -> None:
    """A process keyed '' (KSQL keys on '') is not the parent of the processes whose parent GUID is empty."""
    lake.land(
        [
            create("", "", EXPLORER),
            create("{NONE}", None, CMD),
            create("{EMPTY}", "", POWERSHELL),
            create("{ZERO}", ZERO_GUID.lower(), WHOAMI),
        ]
    )
    lake.batch()
    assert chains(lake) == {
        "": ("explorer.exe", 0, "root"),
        "{NONE}": ("cmd.exe", 0, "root"),
        "{EMPTY}": ("powershell.exe", 0, "root"),
        "{ZERO}": ("whoami.exe", 0, "root"),
    }


def test_cycles_stop_the_chain_and_say_so(lake: Lake) -> None:
    lake.land(
        [
            create("{A}", "{B}", r"C:\a.exe"),
            create("{B}", "{A}", r"C:\b.exe"),
            create("{CHILD}", "{A}", r"C:\child.exe"),
            create("{SELF}", "{SELF}", r"C:\self.exe"),
        ]
    )
    lake.batch()
    assert chains(lake) == {
        "{A}": ("b.exe > a.exe", 1, "cycle"),
        "{B}": ("a.exe > b.exe", 1, "cycle"),
        "{CHILD}": ("b.exe > a.exe > child.exe", 2, "cycle"),
        "{SELF}": ("self.exe", 0, "cycle"),
    }


def test_a_cycle_closed_by_a_later_batch(lake: Lake) -> None:
    lake.land([create("{A}", "{B}", r"C:\a.exe"), create("{CHILD}", "{A}", r"C:\child.exe")])
    lake.batch(T0)
    assert chains(lake)["{CHILD}"] == ("a.exe > child.exe", 1, "missing_parent")
    lake.land([create("{B}", "{A}", r"C:\b.exe")])
    lake.batch(T0 + timedelta(minutes=1))
    assert chains(lake) == {
        "{A}": ("b.exe > a.exe", 1, "cycle"),
        "{B}": ("a.exe > b.exe", 1, "cycle"),
        "{CHILD}": ("b.exe > a.exe > child.exe", 2, "cycle"),
    }


def test_the_depth_setting_limits_the_chain_and_what_a_late_ancestor_rewrites(tmp_path: Path) -> None:
    lake = Lake(tmp_path, ancestry_depth=2)
    lake.land([create("{G1}", "{G0}", r"C:\g1.exe"), create("{G2}", "{G1}", r"C:\g2.exe")])
    lake.land([create("{G3}", "{G2}", r"C:\g3.exe")])
    lake.batch(T0)
    assert chains(lake) == {
        "{G1}": ("g1.exe", 0, "missing_parent"),
        "{G2}": ("g1.exe > g2.exe", 1, "missing_parent"),
        # two generations: whether g1's parent exists is beyond the depth
        "{G3}": ("g1.exe > g2.exe > g3.exe", 2, "depth_limit"),
    }
    lake.land([create("{G0}", None, r"C:\g0.exe")])
    lake.batch(T0 + timedelta(minutes=1))
    assert chains(lake) == {
        "{G0}": ("g0.exe", 0, "root"),
        "{G1}": ("g0.exe > g1.exe", 1, "root"),
        "{G2}": ("g0.exe > g1.exe > g2.exe", 2, "root"),  # two generations reach the root
        "{G3}": ("g1.exe > g2.exe > g3.exe", 2, "depth_limit"),
    }
    # g0 is three generations above g3: its arrival does not touch g3's row
    assert batch_ids(lake) == {"{G0}": 2, "{G1}": 2, "{G2}": 2, "{G3}": 1}


def test_a_new_depth_applies_to_the_rows_batches_write_from_then_on(tmp_path: Path) -> None:
    shallow = Lake(tmp_path, ancestry_depth=1)
    shallow.land([create("{G0}", None, r"C:\g0.exe"), create("{G1}", "{G0}", r"C:\g1.exe")])
    shallow.land([create("{G2}", "{G1}", r"C:\g2.exe")])
    shallow.batch(T0)
    assert chains(shallow)["{G2}"] == ("g1.exe > g2.exe", 1, "depth_limit")
    deep = Lake(tmp_path, ancestry_depth=8)  # the same lake
    deep.land([create("{G3}", "{G2}", r"C:\g3.exe")])
    deep.batch(T0 + timedelta(minutes=1))
    assert chains(deep)["{G3}"] == ("g0.exe > g1.exe > g2.exe > g3.exe", 3, "root")
    assert chains(deep)["{G2}"] == ("g1.exe > g2.exe", 1, "depth_limit")  # not rewritten: nothing above it changed
    # a rebuild between runs: without the table and its offsets, the next batch writes every process's row anew
    with open_lake(deep.settings) as con:
        con.execute("DROP TABLE sysmon_process_ancestry")
        con.execute("DELETE FROM dbt_like.offsets WHERE model = 'sysmon_process_ancestry'")
    rebuilt = Lake(tmp_path, ancestry_depth=8)
    rebuilt.batch(T0 + timedelta(minutes=2))
    assert chains(rebuilt)["{G2}"] == ("g0.exe > g1.exe > g2.exe", 2, "root")
    assert len(chains(rebuilt)) == 4


def test_the_default_depth_is_eight_generations(lake: Lake) -> None:
    lake.land([create(f"{{G{n}}}", f"{{G{n - 1}}}" if n else None, rf"C:\g{n}.exe") for n in range(10)])
    lake.batch()
    lineage, depth, end = chains(lake)["{G9}"]
    assert (lineage.split(" > ")[0], depth, end) == ("g1.exe", 8, "depth_limit")
    assert chains(lake)["{G8}"] == (" > ".join(f"g{n}.exe" for n in range(9)), 8, "root")


def test_an_updated_create_rewrites_the_chains_below_it(lake: Lake) -> None:
    lake.land([create("{CMD}", "{EXPLORER}", CMD, "cmd.exe /c first"), create("{PS}", "{CMD}", POWERSHELL)])
    lake.batch(T0)
    # the process table keeps the latest create per GUID (a second create for {CMD}, with another parent)
    lake.land([create("{CMD}", "{SERVICES}", CMD, "cmd.exe /c second"), create("{SERVICES}", None, "services.exe")])
    lake.batch(T0 + timedelta(minutes=1))
    assert chains(lake)["{PS}"] == ("services.exe > cmd.exe > powershell.exe", 2, "root")
    assert lake.rows(
        "SELECT ancestors[1].process_command_line FROM sysmon_process_ancestry WHERE process_guid = '{PS}'"
    ) == [("cmd.exe /c second",)]


def test_a_connection_shows_its_ancestry_line_and_a_late_ancestor_fills_it_in(lake: Lake) -> None:
    lake.land(
        [
            create("{CMD}", "{EXPLORER}", CMD),
            create("{PS}", "{CMD}", POWERSHELL),
            network_connect("{ps}", "203.0.113.7"),
            network_connect("{PS}", "2001:db8::7", event_data={"DestinationIsIpv6": "true"}),
        ]
    )
    lake.batch(T0)
    assert connection_lines(lake) == [
        ("missing_parent", "cmd.exe > powershell.exe -> 203.0.113.7:443"),
        ("missing_parent", "cmd.exe > powershell.exe -> [2001:db8::7]:443"),
    ]
    lake.land([create("{EXPLORER}", None, EXPLORER)])
    lake.batch(T0 + timedelta(minutes=1))
    assert connection_lines(lake) == [
        ("root", "explorer.exe > cmd.exe > powershell.exe -> 203.0.113.7:443"),
        ("root", "explorer.exe > cmd.exe > powershell.exe -> [2001:db8::7]:443"),
    ]
    # a reader at batch 1 (time travel) sees the line as that batch left it
    with connect(lake.settings, batch_id=1) as reader:
        assert reader.execute("SELECT connection_lineage FROM sysmon_join_ancestry ORDER BY _seq").fetchall() == [
            ("cmd.exe > powershell.exe -> 203.0.113.7:443",),
            ("cmd.exe > powershell.exe -> [2001:db8::7]:443",),
        ]
    # the view reads sysmon_join, whose rows the late ancestor left as they were: the recipe's columns, unchanged
    assert lake.rows("SELECT _batch_id FROM sysmon_join") == [(1,), (1,)]
    assert lake.rows("SELECT _batch_id, depth FROM sysmon_join_ancestry") == [(1, 2), (1, 2)]
    join_columns = [name for name, *_ in lake.rows("DESCRIBE sysmon_join")]
    view_columns = [name for name, *_ in lake.rows("DESCRIBE sysmon_join_ancestry")]
    assert [c for c in view_columns if c not in join_columns] == [
        "ancestors",
        "depth",
        "chain_end",
        "lineage",
        "connection_lineage",
    ]
    assert [c for c in view_columns if c in join_columns] == join_columns


def test_the_connection_view_is_a_view_and_every_batch_is_complete_at_it(lake: Lake) -> None:
    lake.land([create("{PS}", None, POWERSHELL), network_connect("{PS}")])
    lake.batch(T0)
    lake.batch(T0 + timedelta(minutes=1))  # nothing new
    assert batch_ids(lake) == {"{PS}": 1}
    views = lake.rows("SELECT view_name FROM duckdb_views() WHERE database_name = 'lake' AND schema_name = 'main'")
    assert views == [("sysmon_join_ancestry",)]
    notes = lake.rows(
        "SELECT commit_extra_info FROM ducklake_snapshots('lake') "
        "WHERE commit_extra_info LIKE '%\"batch_complete\": true%' ORDER BY snapshot_id"
    )
    assert notes == [
        ('{"batch_id": 1, "step": "sysmon_join_ancestry", "batch_complete": true}',),
        ('{"batch_id": 2, "step": "sysmon_join_ancestry", "batch_complete": true}',),
    ]
    # the view was created once: the second batch's step had nothing to replace
    created = lake.rows(
        "SELECT count(*) FROM ducklake_snapshots('lake') "
        "WHERE changes::VARCHAR LIKE '%views_%main.sysmon_join_ancestry%'"
    )
    assert created == [(1,)]


EVENTS = [
    # children before their parents, a cycle closed late, a missing parent, an updated create, connections
    create("{WHOAMI}", "{PS}", WHOAMI),
    network_connect("{WHOAMI}", "198.51.100.1"),
    create("{PS}", "{CMD}", POWERSHELL),
    create("{A}", "{B}", r"C:\a.exe"),
    create("{ORPHAN}", "{NEVER}", r"C:\orphan.exe"),
    network_connect("{PS}", "203.0.113.7"),
    create("{CMD}", "{EXPLORER}", CMD, "cmd.exe /c first"),
    create("{B}", "{A}", r"C:\b.exe"),
    create("{CHILD}", "{B}", r"C:\child.exe"),
    create("{EXPLORER}", ZERO_GUID, EXPLORER),
    create("{CMD}", "{EXPLORER}", CMD, "cmd.exe /c second"),
    network_connect("{CHILD}", "192.0.2.1"),
]


# in six batches, every process that has a parent in EVENTS lands a batch before it
@pytest.mark.parametrize("batches", [2, 6])
def test_the_same_events_over_more_batches_give_the_same_ancestry(tmp_path: Path, batches: int) -> None:
    one = Lake(tmp_path / "one")
    one.land(EVENTS)
    one.batch(T0)
    split = Lake(tmp_path / "split")
    size = -(-len(EVENTS) // batches)
    for index in range(batches):
        split.land(EVENTS[index * size : (index + 1) * size])
        split.batch(T0 + timedelta(minutes=index))
    expected = snapshot(one.settings, HUNTING_MODELS)
    assert snapshot(split.settings, HUNTING_MODELS) == expected
    assert len(expected["sysmon_process_ancestry"]) == 8
    assert connection_lines(split) == [
        ("root", "explorer.exe > cmd.exe > powershell.exe > whoami.exe -> 198.51.100.1:443"),
        ("root", "explorer.exe > cmd.exe > powershell.exe -> 203.0.113.7:443"),
        ("cycle", "a.exe > b.exe > child.exe -> 192.0.2.1:443"),
    ]


def shard_files(landing: Path) -> list[Path]:
    """One landing file per shard, index = the shard that reads it (files are dealt out by their inode)."""
    owned: dict[int, Path] = {}
    for attempt in range(200):
        path = landing / f"candidate-{attempt}.ndjson"
        path.touch()
        owned.setdefault(file_shard(file_key(path), SHARDS), path)
        if len(owned) == SHARDS:
            break
    for path in landing.glob("candidate-*.ndjson"):
        if path not in owned.values():
            path.unlink()
    return [owned[index] for index in range(SHARDS)]


def fill_across_shards(landing: Path) -> None:
    """A chain whose generations each land in another shard's file, children first."""
    child, parent, grandparent = shard_files(landing)
    land(child, [create("{PS}", "{CMD}", POWERSHELL), network_connect("{PS}", "203.0.113.7")])
    land(parent, [create("{CMD}", "{EXPLORER}", CMD)])
    land(grandparent, [create("{EXPLORER}", None, EXPLORER)])


def test_a_run_that_leaves_out_the_process_table_gives_a_whole_runs_ancestry(tmp_path: Path) -> None:
    """A run of part of the assets reads no create the process table has not read yet: the chains are a whole
    run's once a later run completes the batch."""
    events = [create("{CMD}", "{EXPLORER}", CMD), create("{EXPLORER}", "", EXPLORER)]
    partial = Lake(tmp_path / "partial")
    partial.batch(T0)  # the tables exist
    partial.land(events)
    for name in partial.pipeline.project.primary_models():
        if name != "sysmon_process_create_table":
            partial.pipeline.run_model(name, "without the process table", T0 + timedelta(minutes=1))
    partial.batch(T0 + timedelta(minutes=2))
    whole = Lake(tmp_path / "whole")
    whole.land(events)
    whole.batch(T0)
    assert chains(partial) == chains(whole)
    assert chains(whole) == {
        "{EXPLORER}": ("explorer.exe", 0, "root"),
        "{CMD}": ("explorer.exe > cmd.exe", 1, "root"),
    }


def test_shards_that_commit_a_chains_generations_in_turn_fill_it_in(lake: Lake) -> None:
    """The child's shard writes first, then the parent's, then the grandparent's: each later shard's batch
    rewrites rows an earlier shard wrote."""
    fill_across_shards(lake.landing)
    pipelines = shard_pipelines(lake)
    for minutes, pipeline in enumerate(pipelines):
        pipeline.run_batch(batch_time=T0 + timedelta(minutes=minutes))
    assert chains(lake)["{PS}"] == ("explorer.exe > cmd.exe > powershell.exe", 2, "root")
    assert connection_lines(lake) == [("root", "explorer.exe > cmd.exe > powershell.exe -> 203.0.113.7:443")]
    assert batch_ids(lake) == {"{PS}": 3, "{CMD}": 3, "{EXPLORER}": 3}  # batch 3 is the third shard's first


def test_shards_at_once_give_one_pipelines_ancestry(tmp_path: Path) -> None:
    sharded = assert_shards_match_one_pipeline(tmp_path, fill_across_shards)
    assert chains(sharded)["{PS}"] == ("explorer.exe > cmd.exe > powershell.exe", 2, "root")


def expected_connection_lines(path: Path, depth: int = 8) -> list[str]:
    """Each joined connection's line, computed without the pipeline: first delivery of each event, latest create
    per GUID, parents followed through ParentProcessGuid (braces and letter case aside)."""
    seen, creates, connects = set(), {}, []

    def key(guid: str | None) -> str:
        return (guid or "").strip("{} ").upper()

    for line in path.read_text(encoding="utf-8").splitlines():
        event = json.loads(line) if line.strip() else {}
        delivery = (event.get("computer_name"), event.get("log_name"), event.get("record_number"))
        if event.get("source_name") != "Microsoft-Windows-Sysmon" or delivery in seen:
            continue
        seen.add(delivery)
        data = event["event_data"]
        if int(event["event_id"]) == 1 and key(data.get("ProcessGuid")):
            creates[key(data["ProcessGuid"])] = data
        elif int(event["event_id"]) == 3:
            connects.append(data)
    lines = []
    for connection in connects:
        guid = key(connection.get("ProcessGuid"))
        if guid not in creates:
            continue
        chain = [guid]
        while len(chain) <= depth and key(creates[chain[-1]].get("ParentProcessGuid")) in creates.keys() - chain:
            chain.append(key(creates[chain[-1]]["ParentProcessGuid"]))
        names = [PureWindowsPath(creates[member]["Image"]).name for member in reversed(chain)]
        lines.append(f"{' > '.join(names)} -> {connection['DestinationIp']}:{connection['DestinationPort']}")
    return sorted(lines)


def test_real_data_connections_show_the_chains_an_independent_computation_finds(tmp_path: Path) -> None:
    """OTRF's Empire 'invoke runas' data set (Winlogbeat 6.7): a launcher started by wscript.exe from cmd.exe."""
    lake = Lake(tmp_path)
    tarball = shared_path("data", "real", "otrf-security-datasets", "empire_invoke_runas.tar.gz")
    landed = extract_ndjson(tarball, lake.landing)
    lake.batch()
    lines = sorted(line for (line,) in lake.rows("SELECT connection_lineage FROM sysmon_join_ancestry"))
    assert lines == expected_connection_lines(landed)
    assert "cmd.exe > wscript.exe > powershell.exe -> 10.0.10.106:443" in lines
    # the processes started before the capture have no create: every chain ends at a missing parent
    assert lake.rows("SELECT DISTINCT chain_end FROM sysmon_process_ancestry") == [("missing_parent",)]


def documented_queries() -> tuple[list[str], list[str]]:
    """The SQL blocks of docs/hunting.md's "Process ancestry" section, and the text blocks (their output)."""
    text = (ROOT / "docs" / "hunting.md").read_text(encoding="utf-8")
    section = text.split("\n## Process ancestry\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```sql\n(.*?)```", section, re.S), re.findall(r"```text\n(.*?)```", section, re.S)


def test_the_documented_queries_give_what_the_docs_say(lake: Lake) -> None:
    (every, script_hosts, descendants, endings, missing), (printed,) = documented_queries()
    explorer = "{03BA39F5-ED98-5CA4-0000-0010A4A70000}"
    lake.land(
        [
            create(explorer, None, EXPLORER),
            create("{CMD}", explorer, CMD),
            create("{PS}", "{CMD}", POWERSHELL),
            network_connect("{PS}", "203.0.113.7"),
        ]
    )
    lake.batch(T0)
    assert [line for (line,) in lake.rows(every)] == printed.splitlines()
    # a macro's launcher: cmd.exe (whose parent was never shipped) > wscript.exe > powershell.exe
    lake.land(
        [
            create("{CMD2}", "{NEVER-SHIPPED}", CMD),
            create("{WSCRIPT}", "{CMD2}", r"C:\Windows\System32\WScript.exe"),
            create("{PS2}", "{WSCRIPT}", POWERSHELL),
            network_connect("{PS2}", "198.51.100.9"),
        ]
    )
    lake.batch(T0 + timedelta(minutes=1))
    lines = [row[-1] for row in lake.rows(script_hosts)]
    assert lines == ["cmd.exe > WScript.exe > powershell.exe -> 198.51.100.9:443"]
    assert lake.rows(descendants) == [
        ("{CMD}", "explorer.exe > cmd.exe"),
        ("{PS}", "explorer.exe > cmd.exe > powershell.exe"),
    ]
    assert lake.rows(endings) == [("missing_parent", 3), ("root", 3)]
    # the create of cmd.exe names its parent's image (conftest's process_create: explorer.exe)
    assert lake.rows(missing) == [("{NEVER-SHIPPED}", EXPLORER, 3)]


class JoinBuilds:
    """A connection wrapper that records, per hash join of the ancestry's staging statement, the rows its build
    side (DuckDB builds from a join's right child) took in, from DuckDB's profiler."""

    def __init__(self, con: Any, profile: Path) -> None:
        self.con, self.profile, self.builds = con, profile, []

    def execute(self, sql: str, params: list | None = None) -> Any:
        if not (sql.startswith("CREATE OR REPLACE TEMP TABLE __upsert") and "WITH RECURSIVE" in sql):
            return self.con.execute(sql, params or [])
        profile_to(self.con, self.profile)
        try:
            return self.con.execute(sql, params or [])
        finally:
            self.con.execute("SET enable_profiling = 'no_output'")
            self.builds.extend(_build_rows(json.loads(self.profile.read_text())))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.con, name)


def _build_rows(profile: dict) -> list[int]:
    return [
        operator["children"][1]["operator_cardinality"]
        for operator in profile_operators(profile)
        if operator.get("operator_name", "").strip() == "HASH_JOIN"
    ]


def test_the_ancestry_builds_its_joins_from_the_batchs_processes_not_the_whole_table(
    lake: Lake, tmp_path: Path
) -> None:
    lake.land([create(f"{{OLD-{n}}}", f"{{OLD-{n - 1}}}", CMD) for n in range(3000)], name="history.ndjson")
    lake.batch()
    lake.land([create("{NEW-1}", "{OLD-2999}", WHOAMI), create("{NEW-2}", "{NEW-1}", WHOAMI)], name="new.ndjson")
    recorders = lake.wrap_connections(lambda con: JoinBuilds(con, tmp_path / "profile.json"))
    lake.batch(T0 + timedelta(minutes=1))
    builds = [rows for recorder in recorders for rows in recorder.builds]
    assert builds  # the statement was profiled
    # the chains of the two new processes name at most 2 + 8 processes; the table holds 3,002
    assert max(builds) <= 20, builds
    assert chains(lake)["{NEW-2}"][1:] == (8, "depth_limit")


def test_a_create_without_image_and_a_connection_without_destination_show_a_question_mark(lake: Lake) -> None:
    parent = create("{P1}", None, r"C:\Windows\explorer.exe")
    nameless = create("{N1}", "{P1}", "unused")
    del nameless["event_data"]["Image"]
    ipv6 = {"DestinationIsIpv6": "true", "DestinationIp": None}
    lake.land(
        [
            parent,
            nameless,
            network_connect("{N1}", event_data={"DestinationIp": None, "DestinationPort": ""}),
            network_connect("{N1}", event_data=ipv6),  # an IPv6 connection without its address
            network_connect("{N1}", event_data={"DestinationIsIpv6": "True", "DestinationIp": "2001:db8::1"}),
        ]
    )
    lake.batch()
    assert chains(lake)["{N1}"] == ("explorer.exe > ?", 1, "root")
    assert lake.rows("SELECT connection_lineage FROM sysmon_join_ancestry ORDER BY _seq") == [
        ("explorer.exe > ? -> ?:?",),
        ("explorer.exe > ? -> ?:443",),
        ("explorer.exe > ? -> [2001:db8::1]:443",),
    ]
