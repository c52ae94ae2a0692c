"""The recipe's dbt_like project is built once per Dagster process: the Definitions and the runs share it."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path

import pytest

from dbt_like import runner
from sysmon_assets.definitions import build_definitions
from sysmon_assets.micro_batch.recipe_project import shared_project
from sysmon_assets.micro_batch.steps import SysmonPipeline
from sysmon_assets.settings import Settings
from sysmon_assets.storage.lake_connections import LakeConnections
from tests.conftest import land, network_connect, process_create


def test_a_dagster_process_parses_the_models_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    parsed: list[Path] = []
    discover = runner.discover_models
    monkeypatch.setattr(runner, "discover_models", lambda models_dir: parsed.append(models_dir) or discover(models_dir))
    settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data")
    land(settings.landing_dir / "winlogbeat.ndjson", [process_create("{G}"), network_connect("{G}")])

    job = build_definitions(settings).resolve_job_def("sysmon_micro_batch")
    assert job.execute_in_process().success
    land(settings.landing_dir / "winlogbeat.ndjson", [network_connect("{G}")])
    assert job.execute_in_process().success

    assert len(parsed) == 1, "the Definitions and both runs' pipelines share one project"


def test_a_pipeline_of_its_own_builds_its_own_project(tmp_path: Path) -> None:
    settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data")
    assert shared_project(settings) is shared_project(settings)
    assert SysmonPipeline(settings).project is not shared_project(settings)


def test_a_step_told_idle_opens_no_connection_and_reports_its_batch(tmp_path: Path) -> None:
    """Each step through a pipeline of its own over the shared project (as the Dagster resource hands them out
    outside a run): in an idle batch only the ingest step and the last step open a connection, and every step
    reports the batch it belongs to."""
    settings = Settings(landing_dir=tmp_path / "landing", data_dir=tmp_path / "data")
    land(settings.landing_dir / "winlogbeat.ndjson", [process_create("{G}"), network_connect("{G}")])
    project = shared_project(settings)
    SysmonPipeline(settings, project=project).run_batch(run_key="first")
    connections = LakeConnections(settings)
    opened: list[str] = []

    def counted(name: str) -> Callable[[], AbstractContextManager]:
        @contextmanager
        def connect() -> Iterator[object]:
            opened.append(name)
            with connections() as con:
                yield con

        return connect

    batch_ids = set()
    for name in project.primary_models():
        pipeline = SysmonPipeline(settings, connect=counted(name), project=project)
        pipeline.run_model(name, "idle")
        batch_ids.add(pipeline.last_batch_id)
    connections.close()
    assert opened == ["winlogbeat_stream", "sysmon_join_ancestry"]
    assert batch_ids == {project.opened_batch("idle").batch_id}
