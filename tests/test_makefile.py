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


def test_the_instance_settings_are_copied_from_outside_the_repository_root() -> None:
    """`dagster dev` warns on every start when the folder it starts in holds a dagster.yaml that is not
    DAGSTER_HOME's; `make ui` starts in the root and uses .dagster/."""
    assert not [name for name in ("dagster.yaml", "dagster.yml") if (ROOT / name).exists()]
    assert "cp instance/dagster.yaml .dagster/dagster.yaml" in dry_run("ui")
