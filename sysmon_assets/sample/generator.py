"""Seeded generator of realistic Winlogbeat 6.x Sysmon NDJSON for demos, tests and benchmarks.

The layout is the one the KSQL recipe consumes (Winlogbeat 6.x `wineventlog` events with a
nested `event_data`). The mix is shaped like a real fleet: ProcessCreate (1) and
NetworkConnect (3) plus other Sysmon ids and non-Sysmon channels, many hosts, GUID letter
case that differs by host, connections from processes whose create was never shipped, and a
few connections that land before their process create.

Writing into a folder that already holds generated NDJSON continues it: record numbers, the clock and the file
numbers go on after the files there, so the next batch lands new events, never redeliveries (a redelivery is a
repeated computer, channel, record number and UtcTime, and the rekey step keeps only its first delivery).

Run ``python -m sysmon_assets.sample --help``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import NamedTuple

SYSMON = "Microsoft-Windows-Sysmon"
SYSMON_CHANNEL = "Microsoft-Windows-Sysmon/Operational"
SYSMON_PROVIDER_GUID = "{5770385f-c22a-43e0-bf4c-06f5698ffbd9}"

IMAGES = [
    (r"C:\Windows\System32\svchost.exe", "Host Process for Windows Services", r"C:\Windows\system32\services.exe"),
    (r"C:\Windows\System32\WindowsPowerShell\v1.0\powershell.exe", "Windows PowerShell", r"C:\Windows\explorer.exe"),
    (r"C:\Program Files\Mozilla Firefox\firefox.exe", "Firefox", r"C:\Windows\explorer.exe"),
    (r"C:\Windows\System32\cmd.exe", "Windows Command Processor", r"C:\Windows\explorer.exe"),
    (r"C:\Windows\System32\rundll32.exe", "Windows host process (Rundll32)", r"C:\Windows\System32\svchost.exe"),
    (r"C:\Users\Public\updater.exe", "Updater", r"C:\Windows\System32\cmd.exe"),
    (r"C:\Windows\System32\wuauclt.exe", "Windows Update", r"C:\Windows\System32\svchost.exe"),
    (r"C:\Program Files\Microsoft Office\root\Office16\OUTLOOK.EXE", "Microsoft Outlook", r"C:\Windows\explorer.exe"),
]
OTHER_SYSMON_IDS = {5: "Process terminated", 7: "Image loaded", 11: "File created", 13: "Registry value set"}
NON_SYSMON = [
    ("Microsoft-Windows-Security-Auditing", "Security", 4624, "Logon"),
    ("Service Control Manager", "System", 7036, "None"),
    # A non-Sysmon provider that also uses event id 3: it must never reach the join.
    ("Microsoft-Windows-Kernel-General", "System", 3, "None"),
]
# How each host renders GUIDs: Windows tools and forwarders disagree on letter case.
GUID_STYLES = ("upper", "lower", "mixed")
FIRST_RECORD = 1001
TIMESTAMP_FORMAT = "%Y-%m-%dT%H:%M:%S.%fZ"


@dataclass
class Host:
    """One simulated Windows endpoint with its own record counter and GUID rendering."""

    name: str
    ip: str
    guid_style: str
    record_number: int = FIRST_RECORD - 1
    machine_part: str = ""
    processes: list[dict] = field(default_factory=list)


def _render_guid(raw: str, host: Host, event_id: int) -> str:
    if host.guid_style == "upper" or (host.guid_style == "mixed" and event_id == 1):
        return "{" + raw.upper() + "}"
    return "{" + raw.lower() + "}"


def _utc(ts: datetime) -> str:
    return ts.strftime("%Y-%m-%d %H:%M:%S.") + f"{ts.microsecond // 1000:03d}"


def _envelope(host: Host, ts: datetime, provider: str, channel: str, event_id: int, task: str) -> dict:
    host.record_number += 1
    return {
        "@timestamp": ts.strftime(TIMESTAMP_FORMAT[:-3]) + f"{ts.microsecond // 1000:03d}Z",
        "@metadata": {"beat": "winlogbeat", "type": "doc", "version": "6.8.0", "topic": "winlogbeat"},
        "beat": {"name": host.name, "hostname": host.name, "version": "6.8.0"},
        "host": {"name": host.name},
        "computer_name": f"{host.name}.corp.example",
        "level": "Information",
        "log_name": channel,
        "source_name": provider,
        "event_id": event_id,
        "record_number": str(host.record_number),
        "task": task,
        "type": "wineventlog",
        "opcode": "Info",
        "version": 5,
        "process_id": 2440,
        "thread_id": 3120,
        "provider_guid": SYSMON_PROVIDER_GUID if provider == SYSMON else "{00000000-0000-0000-0000-000000000000}",
        "user": {"name": "SYSTEM", "domain": "NT AUTHORITY", "type": "User", "identifier": "S-1-5-18"},
    }


def _message(title: str, event_data: dict) -> str:
    return title + ":\nRuleName: \n" + "\n".join(f"{k}: {v}" for k, v in event_data.items())


class FleetSimulator:
    """Produces a deterministic, time-ordered stream of Winlogbeat events for a fleet."""

    def __init__(self, seed: int, hosts: int, start: datetime, first_record: int = FIRST_RECORD) -> None:
        self.rng = random.Random(seed)
        self.clock = start
        self.hosts = [
            Host(
                name=f"WS{i:04d}",
                ip=f"10.{i // 250}.{i % 250}.{self.rng.randint(2, 250)}",
                guid_style=GUID_STYLES[i % len(GUID_STYLES)],
                record_number=first_record - 1,
                machine_part=f"{self.rng.getrandbits(32):08x}",
            )
            for i in range(hosts)
        ]

    def _tick(self) -> datetime:
        self.clock += timedelta(milliseconds=self.rng.randint(1, 40))
        return self.clock

    def _new_process(self, host: Host, shipped: bool) -> dict:
        image, description, parent = self.rng.choice(IMAGES)
        bits = self.rng.getrandbits
        raw_guid = f"{host.machine_part[:8]}-{bits(16):04x}-{bits(16):04x}-0000-0010{bits(32):08x}"
        proc = {
            "raw_guid": raw_guid,
            "pid": self.rng.randint(200, 65000),
            "image": image,
            "description": description,
            "parent": parent,
            "user": self.rng.choice([r"NT AUTHORITY\SYSTEM", rf"CORP\{host.name.lower()}-user"]),
            "shipped": shipped,
            # the host's latest process of the parent's image started it (a chain for the ancestry); none: a process
            # older than the sample (services.exe, explorer.exe), whose create the sample lacks
            "parent_process": next((p for p in reversed(host.processes) if p["image"] == parent), None),
        }
        host.processes.append(proc)
        if len(host.processes) > 40:
            host.processes.pop(0)
        return proc

    def process_create(self, host: Host, proc: dict) -> dict:
        """A Sysmon event 1 for ``proc``."""
        ts = self._tick()
        guid = _render_guid(proc["raw_guid"], host, 1)
        proc["command_line"] = f'"{proc["image"]}" -k netsvcs -p -s Task{self.rng.randint(1, 999)}'
        session = self.rng.choice([0, 1])
        hashes = f"SHA1={self.rng.getrandbits(160):040X},MD5={self.rng.getrandbits(128):032X}"
        drawn_parent_pid = self.rng.randint(4, 1000)  # drawn for every create: a linked parent changes no later draw
        parent = proc["parent_process"]
        if parent is None:  # started before the sample, which holds no create of it
            parent_guid = "{" + f"{host.machine_part}-0000-0000-0000-000000000001" + "}"
            parent_pid, parent_command_line = drawn_parent_pid, proc["parent"]
        else:
            parent_guid, parent_pid = _render_guid(parent["raw_guid"], host, 1), parent["pid"]
            parent_command_line = parent.get("command_line", proc["parent"])  # none if its create was not shipped
        data = {
            "UtcTime": _utc(ts),
            "ProcessGuid": guid,
            "ProcessId": str(proc["pid"]),
            "Image": proc["image"],
            "FileVersion": "10.0.17763.1 (WinBuild.160101.0800)",
            "Description": proc["description"],
            "Product": "Microsoft® Windows® Operating System",
            "Company": "Microsoft Corporation",
            "CommandLine": proc["command_line"],
            "CurrentDirectory": "C:\\Windows\\system32\\",
            "User": proc["user"],
            "LogonGuid": "{" + f"{host.machine_part}-0000-0000-0000-0000e7030000" + "}",
            "LogonId": "0x3e7",
            "TerminalSessionId": str(session),
            "IntegrityLevel": "System",
            "Hashes": hashes,
            "ParentProcessGuid": parent_guid,
            "ParentProcessId": str(parent_pid),
            "ParentImage": proc["parent"],
            "ParentCommandLine": parent_command_line,
        }
        event = _envelope(host, ts, SYSMON, SYSMON_CHANNEL, 1, "Process Create (rule: ProcessCreate)")
        event["event_data"] = data
        event["message"] = _message("Process Create", data)
        return event

    def network_connect(self, host: Host, proc: dict) -> dict:
        """A Sysmon event 3 opened by ``proc``."""
        ts = self._tick()
        dst_port = self.rng.choice([443, 80, 53, 445, 8080])
        data = {
            "UtcTime": _utc(ts),
            "ProcessGuid": _render_guid(proc["raw_guid"], host, 3),
            "ProcessId": str(proc["pid"]),
            "Image": proc["image"],
            "User": proc["user"],
            "Protocol": "tcp",
            "Initiated": "true",
            "SourceIsIpv6": "false",
            "SourceIp": host.ip,
            "SourceHostname": f"{host.name}.corp.example",
            "SourcePort": str(self.rng.randint(49152, 65535)),
            "SourcePortName": "",
            "DestinationIsIpv6": "false",
            "DestinationIp": ".".join(str(self.rng.randint(1, 223 if octet == 0 else 254)) for octet in range(4)),
            "DestinationHostname": self.rng.choice(["", "update.example.com", "cdn.example.net"]),
            "DestinationPort": str(dst_port),
            "DestinationPortName": {443: "https", 80: "http", 53: "domain"}.get(dst_port, ""),
        }
        event = _envelope(host, ts, SYSMON, SYSMON_CHANNEL, 3, "Network connection detected (rule: NetworkConnect)")
        event["event_data"] = data
        event["message"] = _message("Network connection detected", data)
        return event

    def other_sysmon(self, host: Host, proc: dict) -> dict:
        """A Sysmon event that is neither 1 nor 3."""
        ts = self._tick()
        event_id, title = self.rng.choice(sorted(OTHER_SYSMON_IDS.items()))
        data = {
            "UtcTime": _utc(ts),
            "ProcessGuid": _render_guid(proc["raw_guid"], host, event_id),
            "ProcessId": str(proc["pid"]),
            "Image": proc["image"],
        }
        event = _envelope(host, ts, SYSMON, SYSMON_CHANNEL, event_id, title)
        event["event_data"] = data
        event["message"] = _message(title, data)
        return event

    def non_sysmon(self, host: Host) -> dict:
        """An event from another provider (Security, System, ...)."""
        ts = self._tick()
        provider, channel, event_id, task = self.rng.choice(NON_SYSMON)
        event = _envelope(host, ts, provider, channel, event_id, task)
        event["event_data"] = {"SubjectUserName": "SYSTEM", "Param1": "Windows Update", "Param2": "running"}
        event["message"] = f"{provider} event {event_id}"
        return event

    def events(
        self, count: int, missing_create_share: float = 0.3, early_connect_share: float = 0.02
    ) -> Iterator[dict]:
        """Yield exactly ``count`` events in landing order."""
        return itertools.islice(self._stream(missing_create_share, early_connect_share), count)

    def _connecting_process(self, host: Host, missing_create_share: float) -> dict:
        """The process behind a connection: one whose create was never shipped ``missing_create_share`` of the time."""
        unshipped = self.rng.random() < missing_create_share
        pool = [proc for proc in host.processes if proc["shipped"] != unshipped]
        if unshipped and (not pool or self.rng.random() < 0.2):
            return self._new_process(host, shipped=False)
        return self.rng.choice(pool or host.processes)

    def _stream(self, missing_create_share: float, early_connect_share: float) -> Iterator[dict]:
        held_back: list[dict] = []
        while True:
            host = self.rng.choice(self.hosts)
            roll = self.rng.random()
            if held_back and roll < 0.05:
                yield held_back.pop(0)
            elif roll < 0.25 or not host.processes:
                proc = self._new_process(host, shipped=True)
                create = self.process_create(host, proc)
                if self.rng.random() < early_connect_share:
                    # This process's first connection lands before its create does.
                    held_back.append(create)
                    yield self.network_connect(host, proc)
                else:
                    yield create
            elif roll < 0.75:
                yield self.network_connect(host, self._connecting_process(host, missing_create_share))
            elif roll < 0.90:
                yield self.other_sysmon(host, self.rng.choice(host.processes))
            else:
                yield self.non_sysmon(host)


class Continuation(NamedTuple):
    """Where generated events go on after the NDJSON already in a folder."""

    first_record: int
    start: datetime
    first_file: int


def continuation(out_dir: Path, start: datetime) -> Continuation:
    """After every record number and time in ``out_dir``'s ``*.ndjson`` files (``start`` and the first file
    number if there are none). One record counter for all hosts, so no (computer, channel, record number)
    repeats whichever hosts the next run simulates."""
    last_record, last_time, last_file = FIRST_RECORD - 1, start, -1
    for path in out_dir.glob("*.ndjson"):
        numbered = re.fullmatch(r"winlogbeat-(\d+)\.ndjson", path.name)
        last_file = max(last_file, int(numbered.group(1))) if numbered else last_file
        for record, time in _generated(path):
            last_record, last_time = max(last_record, record), max(last_time, time)
    later = last_time + timedelta(seconds=1) if last_time > start else start
    return Continuation(last_record + 1, later, last_file + 1)


def _generated(path: Path) -> Iterator[tuple[int, datetime]]:
    """Record number and time of each line this generator wrote (other lines in the folder are not its own)."""
    with path.open(encoding="utf-8", errors="replace") as lines:
        for line in lines:
            try:
                event = json.loads(line)
                yield int(event["record_number"]), datetime.strptime(event["@timestamp"], TIMESTAMP_FORMAT)
            except (ValueError, KeyError, TypeError):
                continue


def write_sample(
    out_dir: Path,
    events: int,
    files: int = 1,
    hosts: int = 25,
    seed: int = 42,
    start: datetime = datetime(2026, 11, 1, 8, 0, 0),
    continuing: bool = False,
) -> list[Path]:
    """Write ``events`` generated events, in landing order, split over ``files`` NDJSON files; return their paths.
    ``continuing``: after the NDJSON already in ``out_dir`` (see :func:`continuation`), in new files."""
    out_dir.mkdir(parents=True, exist_ok=True)
    after = continuation(out_dir, start) if continuing else Continuation(FIRST_RECORD, start, 0)
    paths = [out_dir / f"winlogbeat-{i:03d}.ndjson" for i in range(after.first_file, after.first_file + files)]
    per_file = -(-events // files)
    generator = FleetSimulator(seed, hosts, after.start, after.first_record).events(events)
    for path in paths:
        with path.open("w", encoding="utf-8", newline="\n") as handle:
            for _, event in zip(range(per_file), generator, strict=False):
                handle.write(json.dumps(event, ensure_ascii=False) + "\n")
    return paths


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: generate sample NDJSON into a folder."""
    parser = argparse.ArgumentParser(prog="python -m sysmon_assets.sample", description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("data/landing"), help="folder to write into")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--files", type=int, default=1)
    parser.add_argument("--hosts", type=int, default=25)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--continue",
        dest="continuing",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="go on after the NDJSON already in --out (record numbers, clock, file numbers)",
    )
    args = parser.parse_args(argv)
    paths = write_sample(args.out, args.events, args.files, args.hosts, args.seed, continuing=args.continuing)
    print(f"wrote {args.events} events into {len(paths)} file(s) under {args.out}")


if __name__ == "__main__":
    main()
