"""The Dagster UI end to end: a real dagster-webserver, its GraphQL API, and a real browser."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.dagster_layer.test_definitions import HUNTING_EDGES, RECIPE_EDGES
from tests.recipe import HUNTING_MODELS, RECIPE_MODELS

if TYPE_CHECKING:
    from playwright.sync_api import Page

ROOT = Path(__file__).resolve().parents[2]
# The README's screenshot; refreshed only on request (make screenshot), so running the tests leaves the tree clean.
SCREENSHOT = ROOT / "docs" / "asset-graph.png"
UPDATE_SCREENSHOT = "SYSMON_UPDATE_SCREENSHOT"
CHROMIUM = Path("/usr/bin/chromium")

ASSETS_QUERY = """
{ assetNodes {
    assetKey { path } groupName description jobNames
    dependencyKeys { path }
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
    assetMaterializations(limit: 1) {
      metadataEntries { label ... on TableColumnLineageMetadataEntry {
        lineage { columnName columnDeps { assetKey { path } columnName } } } }
    }
} }
"""
RUNS_QUERY = "{ runsOrError { ... on Runs { results { runId pipelineName tags { key value } } } } }"
REPOSITORY_QUERY = """
{ repositoriesOrError { ... on RepositoryConnection { nodes {
    schedules { name cronSchedule } sensors { name } } } } }
"""


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def graphql(url: str, query: str) -> dict:
    request = urllib.request.Request(
        f"{url}/graphql", data=json.dumps({"query": query}).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=60) as response:
        body = json.load(response)
    assert "errors" not in body, body
    return body["data"]


@pytest.fixture(scope="module")
def webserver(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("ui")
    (root / "home").mkdir()
    (root / "landing").mkdir()
    for sample in (ROOT / "sample_data").glob("*.ndjson"):
        shutil.copy(sample, root / "landing")
    env = {
        **os.environ,
        "DAGSTER_HOME": str(root / "home"),
        "SYSMON_LANDING_DIR": str(root / "landing"),
        "SYSMON_DATA_DIR": str(root / "data"),
    }
    bin_dir = Path(sys.executable).parent
    subprocess.run(
        [bin_dir / "dagster", "asset", "materialize", "-m", "sysmon_assets.definitions", "--select", "*"],
        cwd=ROOT,
        env=env,
        check=True,
        capture_output=True,
    )
    port = free_port()
    server = subprocess.Popen(
        [bin_dir / "dagster-webserver", "-m", "sysmon_assets.definitions", "-h", "127.0.0.1", "-p", str(port)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"{url}/server_info", timeout=5).read()
                break
            except (urllib.error.URLError, ConnectionError):
                assert server.poll() is None, "dagster-webserver exited"
                assert time.time() < deadline, "dagster-webserver did not start within 120 s"
                time.sleep(1)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_graphql_shows_the_assets_their_edges_and_checks(webserver: str) -> None:
    nodes = {"/".join(n["assetKey"]["path"]): n for n in graphql(webserver, ASSETS_QUERY)["assetNodes"]}
    assert set(nodes) == set(RECIPE_MODELS + HUNTING_MODELS)
    for name, upstream in RECIPE_EDGES.items():
        assert {"/".join(k["path"]) for k in nodes[name]["dependencyKeys"]} == upstream
        assert nodes[name]["groupName"] == "sysmon_recipe"
        assert nodes[name]["description"].startswith("Recipe step")
    for name, upstream in HUNTING_EDGES.items():
        assert {"/".join(k["path"]) for k in nodes[name]["dependencyKeys"]} == upstream
        assert nodes[name]["groupName"] == "hunting"
    checks = {c["name"]: c["blocking"] for c in nodes["sysmon_process_create_table"]["assetChecksOrError"]["checks"]}
    assert checks == {
        "sysmon_process_create_table__not_null_process_guid": True,
        "sysmon_process_create_table__unique_process_guid": True,
    }
    assert "join_coverage" in {c["name"] for c in nodes["sysmon_join"]["assetChecksOrError"]["checks"]}
    sigma_checks = {c["name"] for c in nodes["sigma_detections"]["assetChecksOrError"]["checks"]}
    assert {"severe_detections", "sigma_rules_converted"} <= sigma_checks


def test_the_ui_materializes_all_assets_through_the_first_job_they_share(webserver: str) -> None:
    """The UI's "Materialize all" outside a job's page launches the first of the jobs the assets share (getCommonJob
    in Dagster's LaunchAssetExecutionButton.tsx): the implicit __ASSET_JOB, which Dagster lists first
    (docs/dagster.md)."""
    for node in graphql(webserver, ASSETS_QUERY)["assetNodes"]:
        assert node["jobNames"] == ["__ASSET_JOB", "sysmon_micro_batch"], node["assetKey"]


def test_graphql_shows_column_lineage_of_sysmon_join(webserver: str) -> None:
    nodes = {"/".join(n["assetKey"]["path"]): n for n in graphql(webserver, ASSETS_QUERY)["assetNodes"]}
    (materialization,) = nodes["sysmon_join"]["assetMaterializations"]
    (entry,) = [e for e in materialization["metadataEntries"] if e["label"] == "dagster/column_lineage"]
    lineage = {item["columnName"]: item["columnDeps"] for item in entry["lineage"]}
    assert lineage["process_command_line"] == [
        {"assetKey": {"path": ["sysmon_process_create_table"]}, "columnName": "process_command_line"}
    ]
    assert lineage["dst_ip_addr"] == [{"assetKey": {"path": ["sysmon_network_connect"]}, "columnName": "dst_ip_addr"}]


def test_graphql_shows_the_schedule_and_the_sensor(webserver: str) -> None:
    (repository,) = graphql(webserver, REPOSITORY_QUERY)["repositoriesOrError"]["nodes"]
    assert sorted(repository["schedules"], key=lambda s: s["name"]) == [
        {"name": "lake_maintenance_every_10_minutes", "cronSchedule": "7-59/10 * * * *"},
        {"name": "sysmon_every_minute", "cronSchedule": "* * * * *"},
    ]
    assert repository["sensors"] == [{"name": "landing_sensor"}]


@contextmanager
def chromium_page() -> Iterator[Page]:
    """A page of Debian's Chromium driven by Playwright (skips, or under CI fails, without the browser)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} not installed (Debian package chromium; .ci/run installs it)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM),
            args=[
                "--no-sandbox",
                "--disable-gpu",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--no-first-run",
                "--disable-quic",
            ],
        )
        try:
            # wide enough that the group's graph, with its links to the hunting group's assets, shows whole names
            yield browser.new_page(viewport={"width": 1920, "height": 1080})
        finally:
            browser.close()


def open_page(page: Page, url: str) -> None:
    """Go to ``url`` and skip the first-visit newsletter dialog if it shows."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    page.goto(url, wait_until="domcontentloaded", timeout=120_000)
    skip = page.get_by_role("button", name="Skip")
    try:
        skip.wait_for(timeout=15_000)
        skip.click()
    except PlaywrightTimeout:
        pass  # shown once per browser profile, and this page is not the first


def test_a_browser_renders_the_asset_graph(webserver: str, tmp_path: Path) -> None:
    with chromium_page() as page:
        open_page(page, f"{webserver}/locations/sysmon_assets.definitions/asset-groups/sysmon_recipe")
        for name in RECIPE_MODELS:
            page.get_by_text(name, exact=True).first.wait_for(timeout=120_000)
        page.wait_for_timeout(1500)
        screenshot = SCREENSHOT if os.environ.get(UPDATE_SCREENSHOT) else tmp_path / SCREENSHOT.name
        page.screenshot(path=str(screenshot))
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000


def runs(url: str) -> dict[str, dict]:
    """The instance's runs by id, each with its job's name and its tags."""
    return {run["runId"]: run for run in graphql(url, RUNS_QUERY)["runsOrError"]["results"]}


def test_materialize_all_runs_the_job_on_its_page_and_the_implicit_asset_job_elsewhere(webserver: str) -> None:
    """What docs/dagster.md says of the UI's "Materialize all", clicked in a browser. The runs it launches stay
    queued: this instance has no daemon to start them."""
    location = f"{webserver}/locations/sysmon_assets.definitions"
    pages = {
        "lineage": f"{webserver}/asset-groups",
        "group": f"{location}/asset-groups/sysmon_recipe",
        "job": f"{location}/jobs/sysmon_micro_batch",
    }
    launched = {}
    with chromium_page() as page:
        for name, url in pages.items():
            before = runs(webserver)
            open_page(page, url)
            button = page.get_by_role("button", name="Materialize all").first
            button.wait_for(timeout=120_000)
            button.click()
            deadline = time.time() + 60
            while not (new := [run for run_id, run in runs(webserver).items() if run_id not in before]):
                assert time.time() < deadline, f"Materialize all on the {name} page launched no run"
                time.sleep(1)
            (run,) = new
            launched[name] = run["pipelineName"]
    # either job holds the writer's pool for the whole run (tests/dagster_layer/test_definitions.py)
    assert launched == {"lineage": "__ASSET_JOB", "group": "__ASSET_JOB", "job": "sysmon_micro_batch"}
