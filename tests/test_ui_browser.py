"""The Dagster UI in a real browser (Debian's chromium driven by playwright): open the asset
graph, "Materialize all" the knowledge-base chain, wait for the run, see the assets
materialized. Screenshots go to test-artifacts/; with KB_DOCS_SCREENSHOT=1 the asset graph
is also saved as docs/asset-graph.png (the README's picture)."""

import os
import shutil
import time
import urllib.parse
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance, DagsterRunStatus

from tests.kbtest import REPO, copy_samples
from tests.ui_stack import UIStack

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-quic", "--no-first-run", "--disable-sync"]
ARTIFACTS = REPO / "test-artifacts"
KB_CHAIN = ["raw_docs", "cleaned_chunks", "embeddings", "faiss_index"]
SELECTION = 'group:"ingest" or group:"index"'
# The UI shows spinners (role=progressbar, title "Loading…") and "Loading" text while it
# fetches; assert only once both are gone.
LOADED_JS = ("() => !document.body.innerText.includes('Loading') && "
             "!document.querySelector('[role=progressbar], [aria-label=loading]')")
DONE = {DagsterRunStatus.SUCCESS, DagsterRunStatus.FAILURE, DagsterRunStatus.CANCELED}


def wait_loaded(page, text: str, timeout_ms: int = 90_000) -> None:
    page.get_by_text(text).first.wait_for(timeout=timeout_ms)
    page.wait_for_function(LOADED_JS, timeout=timeout_ms)
    page.wait_for_timeout(500)  # let the graph layout settle before screenshots


def show_whole_graph(page) -> None:
    """Every group expanded, navigation and asset tree hidden: the picture for the README."""
    # The graph's own settings menu is the last gear button on the page.
    page.locator("button:has(div[aria-label='settings'])").last.click()
    item = page.locator("text=Expand all groups >> visible=true")
    if item.count():
        item.first.click()
    page.keyboard.press("Escape")
    page.get_by_text("Hide navigation").first.click()
    page.locator("button:has(div[aria-label='panel_show_right'])").last.click()
    page.wait_for_timeout(1500)
    page.wait_for_function(LOADED_JS, timeout=60_000)


def wait_for_run(instance, timeout: float = 600):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        runs = instance.get_runs()
        if runs and runs[0].status in DONE:
            return runs[0]
        time.sleep(1)
    raise TimeoutError(f"no finished run after {timeout}s: {[r.status for r in instance.get_runs()]}")


@pytest.fixture
def stack(kb_paths, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium missing: run scripts/ensure_chromium.sh (make test does)")
    copy_samples(kb_paths)
    # The sensor starts stopped so that the only run is the one clicked in the browser.
    ui = UIStack(kb_paths.home, tmp_path / "ui.log", KB_SENSOR="off")
    ui.start(wait_for_sensor=False)
    yield ui
    leftovers = ui.stop()
    assert leftovers == [], f"processes survived the stop: {leftovers}"


def test_materialize_all_from_the_asset_graph(stack, kb_paths):
    from playwright.sync_api import sync_playwright

    ARTIFACTS.mkdir(exist_ok=True)
    location = stack.location()
    with sync_playwright() as pw, DagsterInstance.get() as instance:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        page = browser.new_page(viewport={"width": 1600, "height": 900})
        try:
            # The global asset graph, filtered to the KB chain (the selection lives in the URL).
            page.goto(f"{stack.url}/asset-groups~{urllib.parse.quote(SELECTION)}/",
                      timeout=120_000)
            wait_loaded(page, "Materialize all")
            for group in ("ingest", "index"):
                assert page.get_by_text(group, exact=True).count() >= 1
            assert instance.get_runs() == []

            page.get_by_text("Materialize all").first.click()
            page.get_by_text("Launched run").first.wait_for(timeout=60_000)
            run = wait_for_run(instance)
            assert run.status == DagsterRunStatus.SUCCESS, f"run {run.run_id} {run.status}"
            assert run.tags.get("dagster/from_ui") == "true"
            assert {k.to_user_string() for k in run.asset_selection} == set(KB_CHAIN)

            # Each group page lists its assets with their latest materialization.
            for group, assets in (("ingest", KB_CHAIN[:2]), ("index", KB_CHAIN[2:])):
                page.goto(f"{stack.url}/locations/{urllib.parse.quote(location)}"
                          f"/asset-groups/{group}/list", timeout=120_000)
                wait_loaded(page, assets[0])
                body = page.inner_text("body")
                for name in assets:
                    assert name in body
                assert "Never materialized" not in body, body[:2000]
                assert "Materialized" in body or "ago" in body, body[:2000]
                page.screenshot(path=str(ARTIFACTS / f"ui-group-{group}.png"))

            # Check results are visible: every check the run evaluated on faiss_index is
            # listed on the asset's Checks tab with its outcome.
            checks = {e.dagster_event.event_specific_data.check_name: e.dagster_event.
                      event_specific_data.passed for e in instance.all_logs(
                          run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
                      if e.dagster_event.event_specific_data.asset_key.to_user_string()
                      == "faiss_index"}
            if checks:
                page.goto(f"{stack.url}/assets/faiss_index?view=checks", timeout=120_000)
                wait_loaded(page, next(iter(checks)))
                body = page.inner_text("body")
                for name in checks:
                    assert name in body, f"check {name} not shown:\n{body[:2000]}"
                assert "Passed" in body or "Succeeded" in body or "Failed" in body, body[:2000]
                page.screenshot(path=str(ARTIFACTS / "ui-checks-faiss_index.png"))

            # The run page tells the story too: the steps and the writer lock events.
            page.goto(f"{stack.url}/runs/{run.run_id}", timeout=120_000)
            wait_loaded(page, "Success")
            page.screenshot(path=str(ARTIFACTS / "ui-run.png"))

            # The whole graph, wide enough for the layout to fit every group legibly.
            page.set_viewport_size({"width": 1800, "height": 600})
            page.goto(f"{stack.url}/asset-groups", timeout=120_000)
            wait_loaded(page, "Materialize all")
            show_whole_graph(page)
            for name in KB_CHAIN + ["kb_release", "retrieval_eval"]:
                assert page.get_by_text(name, exact=True).count() >= 1, name
            shot = ARTIFACTS / "asset-graph.png"
            page.screenshot(path=str(shot))
            assert shot.stat().st_size > 20_000  # a rendered graph, not a blank page
            if os.environ.get("KB_DOCS_SCREENSHOT") == "1":
                (REPO / "docs").mkdir(exist_ok=True)
                shutil.copyfile(shot, REPO / "docs" / "asset-graph.png")
        finally:
            page.screenshot(path=str(ARTIFACTS / "ui-last-page.png"))
            browser.close()
