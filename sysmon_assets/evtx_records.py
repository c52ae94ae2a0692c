"""EVTX files as landed lines: each record becomes one JSON line ``{"evtx": <the record's Event object>}``.

Records are parsed with the ``evtx`` package (a Rust EVTX parser). An EVTX file's position counts
records, not bytes, so a file that grows is read on from the first record not yet read.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import evtx

from sysmon_assets.landed_lines import LandingError

RECORDS_PER_CHUNK = 20_000


def record_lines(path: Path, skip: int, chunk_records: int = RECORDS_PER_CHUNK) -> Iterator[list[bytes]]:
    """Lists of at most ``chunk_records`` JSON lines, one per record of ``path`` after the first ``skip``.

    A record the parser cannot read becomes a line that is not JSON, naming the parser's error, so it
    lands in winlogbeat_rejects instead of being lost.
    """
    try:
        records = evtx.PyEvtxParser(str(path)).records_json()
    except (OSError, RuntimeError) as error:
        raise LandingError(f"cannot read EVTX file {path}: {error}") from error
    lines: list[bytes] = []
    index = 0
    while True:
        try:
            record = next(records)
        except StopIteration:
            break
        except RuntimeError as error:
            record = {"data": f"EVTX record unreadable: {error}"}
        index += 1
        if index <= skip:
            continue
        data = record["data"]
        if data.startswith('{"Event":'):
            data = '{"evtx":' + data[len('{"Event":') :]
        lines.append(data.encode("utf-8"))
        if len(lines) >= chunk_records:
            yield lines
            lines = []
    if lines:
        yield lines
