"""The Makefile's targets, as `make -n` prints them (nothing runs)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="GNU make is not installed")


def dry_run(*arguments: str) -> str:
    return subprocess.run(["make", "-n", *arguments], cwd=ROOT, capture_output=True, text=True, check=True).stdout


def test_make_ui_serves_on_ui_port_3000_by_default() -> None:
    assert "dagster dev -w workspace.yaml --port 3000" in dry_run("ui")
    assert "dagster dev -w workspace.yaml --port 3456" in dry_run("ui", "UI_PORT=3456")
