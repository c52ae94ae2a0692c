"""Run one micro-batch from the Kafka source and SIGKILL this process at a chosen point.

``python -m tests.crash_points <point> <n>`` with the pipeline's ``SYSMON_*`` variables set:
- ``inside-chunk``: in the n-th chunk's transaction, after its offsets were written, before its commit;
- ``between-chunks``: after n chunks committed, before the next one starts;
- ``after-ingest``: after the ingest step committed, before the consumer group's offsets go to Kafka;
- ``between-steps``: after the ingest step, before the next recipe step.
"""

from __future__ import annotations

import os
import signal
import sys

from sysmon_assets.micro_batch.steps import SysmonPipeline
from sysmon_assets.settings import Settings
from sysmon_assets.sources import kafka_source

CHUNK_BYTES = 100_000


def die() -> None:
    """The crash: no cleanup, no flush, no exit handlers."""
    os.kill(os.getpid(), signal.SIGKILL)


def arm(point: str, n: int) -> None:
    """Patch the Kafka reader so the process dies at ``point``."""
    reader = kafka_source.KafkaReader
    calls = {"commit": 0, "frame": 0}
    commit_offsets, frame, close = reader.commit_offsets, reader._frame, reader.close

    def commit_then_maybe_die(self, con):
        commit_offsets(self, con)
        calls["commit"] += 1
        if point == "inside-chunk" and calls["commit"] == n:
            die()

    def frame_or_die(self, *args):
        calls["frame"] += 1
        if point == "between-chunks" and calls["frame"] == n + 1:
            die()
        return frame(self, *args)

    def die_before_close(self):
        if point == "after-ingest" and sys.exc_info()[1] is None:  # only after an ingest that succeeded
            die()
        close(self)

    reader.commit_offsets, reader._frame, reader.close = commit_then_maybe_die, frame_or_die, die_before_close


def main() -> None:
    """Arm the crash point, then run a whole batch (which should not finish)."""
    point, n = sys.argv[1], int(sys.argv[2])
    arm(point, n)
    pipeline = SysmonPipeline(Settings.from_env(), chunk_bytes=CHUNK_BYTES)
    if point == "between-steps":
        pipeline.run_model("winlogbeat_stream", "crash-run")
        die()
    pipeline.run_batch()
    sys.exit("the batch finished before its crash point")


if __name__ == "__main__":
    main()
