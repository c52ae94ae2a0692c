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
from pathlib import Path

import pytest

from sysmon_assets.pipeline import HUNTING_MODELS, RECIPE_MODELS
from tests.test_definitions import RECIPE_EDGES

ROOT = Path(__file__).resolve().parents[1]
# The README's screenshot; refreshed only on request (make screenshot), so running the tests leaves the tree clean.
SCREENSHOT = ROOT / "docs" / "asset-graph.png"
UPDATE_SCREENSHOT = "SYSMON_UPDATE_SCREENSHOT"
CHROMIUM = Path("/usr/bin/chromium")

ASSETS_QUERY = """
{ assetNodes {
    assetKey { path } groupName description
    dependencyKeys { path }
    assetChecksOrError { ... on AssetChecks { checks { name blocking } } }
    assetMaterializations(limit: 1) {
      metadataEntries { label ... on TableColumnLineageMetadataEntry {
        lineage { columnName columnDeps { assetKey { path } columnName } } } }
    }
} }
"""
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
    assert set(nodes) == {*RECIPE_MODELS, *HUNTING_MODELS}
    for name, upstream in RECIPE_EDGES.items():
        assert {"/".join(k["path"]) for k in nodes[name]["dependencyKeys"]} == upstream
        assert nodes[name]["groupName"] == "sysmon_recipe"
        assert nodes[name]["description"].startswith("Recipe step")
    checks = {c["name"]: c["blocking"] for c in nodes["sysmon_process_create_table"]["assetChecksOrError"]["checks"]}
    assert checks == {
        "sysmon_process_create_table__not_null_process_guid": True,
        "sysmon_process_create_table__unique_process_guid": True,
    }
    assert "join_coverage" in {c["name"] for c in nodes["sysmon_join"]["assetChecksOrError"]["checks"]}
    sigma = nodes["sigma_detections"]
    assert {"/".join(k["path"]) for k in sigma["dependencyKeys"]} == {
        "winlogbeat_stream_rekey",
        "sysmon_process_create_table",
    }
    assert sigma["groupName"] == "hunting"
    assert "Sigma" in sigma["description"]
    assert {"severe_detections", "sigma_rules_converted"} <= {c["name"] for c in sigma["assetChecksOrError"]["checks"]}


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
        {"name": "lake_maintenance_hourly", "cronSchedule": "17 * * * *"},
        {"name": "sysmon_every_minute", "cronSchedule": "* * * * *"},
    ]
    assert repository["sensors"] == [{"name": "landing_sensor"}]


def test_a_browser_renders_the_asset_graph(webserver: str, tmp_path: Path) -> None:
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
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        group = f"{webserver}/locations/sysmon_assets.definitions/asset-groups/sysmon_recipe"
        page.goto(group, wait_until="domcontentloaded", timeout=120_000)
        skip = page.get_by_role("button", name="Skip")  # the first-visit newsletter dialog
        skip.wait_for(timeout=30_000)
        skip.click()
        for name in RECIPE_MODELS:
            page.get_by_text(name, exact=True).first.wait_for(timeout=120_000)
        page.wait_for_timeout(1500)
        screenshot = SCREENSHOT if os.environ.get(UPDATE_SCREENSHOT) else tmp_path / SCREENSHOT.name
        page.screenshot(path=str(screenshot))
        browser.close()
    assert screenshot.read_bytes().startswith(b"\x89PNG") and screenshot.stat().st_size > 10_000
