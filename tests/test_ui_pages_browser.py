"""The operator's and the reviewer's pages in a real browser (Debian's chromium driven by
playwright), after one real kb_job run on the sample inbox:
- Dagster: a materialized asset shows its metadata (row count, owners, code version), its
  check results, and the Plots tab draws its numeric metadata;
- MLflow (`mlflow server` on loopback): the production KB version's page shows its
  description (what changed), validation status, Dagster run link, and its metrics.
Screenshots go to test-artifacts/."""

import re
from pathlib import Path

import pytest
from dagster import DagsterEventType, DagsterInstance

from tests.kbtest import copy_samples, env_vars, materialized, run_job
from tests.test_ui_browser import ARGS, ARTIFACTS, CHROMIUM, LOADED_JS, wait_loaded
from tests.team_services import mlflow_server
from tests.ui_stack import UIStack

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def built_kb(tmp_path_factory):
    """A KB_HOME after one kb_job run on the samples: (paths, run result)."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium missing: run scripts/ensure_chromium.sh (make test does)")
    from kb_core.paths import Paths

    home = tmp_path_factory.mktemp("uipages")
    with env_vars(KB_HOME=str(home / "kb"), DAGSTER_HOME=str(home / "kb" / "dagster"),
                  MLFLOW_TRACKING_URI=None, KB_INBOX=None, KB_DAGSTER_URL=None):
        paths = Paths.from_env().ensure()
        copy_samples(paths)
        result = run_job(paths)
        assert result.success, materialized(result)
        yield paths, result


def _browser(pw):
    return pw.chromium.launch(executable_path=CHROMIUM, args=ARGS)


def test_dagster_asset_page_metadata_checks_and_plot(built_kb, tmp_path):
    from playwright.sync_api import sync_playwright

    paths, run = built_kb
    ARTIFACTS.mkdir(exist_ok=True)
    with DagsterInstance.get() as instance:
        checks = {e.dagster_event.event_specific_data.check_name for e in instance.all_logs(
            run.run_id, of_type=DagsterEventType.ASSET_CHECK_EVALUATION)
            if e.dagster_event.event_specific_data.asset_key.to_user_string() == "faiss_index"}
    assert checks, "no checks evaluated on faiss_index"
    n_chunks = materialized(run)["faiss_index"]["n_chunks"]
    stack = UIStack(paths.home, tmp_path / "ui.log", KB_SENSOR="off").start(
        wait_for_sensor=False)
    try:
        with sync_playwright() as pw:
            browser = _browser(pw)
            page = browser.new_page(viewport={"width": 1600, "height": 1000})
            try:
                # The overview: latest materialization's metadata and the definition.
                page.goto(f"{stack.url}/assets/faiss_index", timeout=120_000)
                wait_loaded(page, "n_chunks")
                body = page.inner_text("body")
                page.screenshot(path=str(ARTIFACTS / "ui-asset-faiss_index.png"), full_page=True)
                for text in ("kb_version", "n_chunks", "index_sha256", "kb-platform",
                             "Row count", "Freshness policy", "Columns", "chunk_id",
                             "kb/layer: serving", "kb.duckdb.kb_version_members"):
                    assert text in body, f"{text} not shown:\n{body[:3000]}"
                assert f"{n_chunks:,}" in body or str(n_chunks) in body

                # Check results.
                page.goto(f"{stack.url}/assets/faiss_index?view=checks", timeout=120_000)
                wait_loaded(page, next(iter(checks)))
                body = page.inner_text("body")
                for name in checks:
                    assert name in body, f"check {name} not shown:\n{body[:3000]}"
                assert "Passed" in body or "Succeeded" in body, body[:3000]
                page.screenshot(path=str(ARTIFACTS / "ui-asset-checks.png"), full_page=True)

                # Plots: numeric metadata (the evaluation scores) drawn as charts: the
                # overview's Metadata section switches from Table to Plots.
                page.goto(f"{stack.url}/assets/retrieval_eval", timeout=120_000)
                wait_loaded(page, "recall_at_3")
                page.get_by_text("Plots", exact=True).last.click()
                page.locator("canvas").first.wait_for(timeout=60_000)
                page.wait_for_function(LOADED_JS, timeout=60_000)
                body = page.inner_text("body")
                for metric in ("recall_at_3", "mrr", "zero_hit_rate"):
                    assert metric in body, f"no plot of {metric}:\n{body[:3000]}"
                assert page.locator("canvas").count() >= 3
                shot = ARTIFACTS / "ui-asset-plots.png"
                page.screenshot(path=str(shot), full_page=True)
                assert shot.stat().st_size > 20_000  # charts rendered, not a blank page
            finally:
                page.screenshot(path=str(ARTIFACTS / "ui-pages-last.png"))
                browser.close()
    finally:
        leftovers = stack.stop()
    assert leftovers == [], f"processes survived the stop: {leftovers}"


def test_mlflow_page_of_the_production_kb_version(built_kb, tmp_path):
    from playwright.sync_api import sync_playwright

    from resources.registry import Registry
    from resources.registry_pages import logged_model_id

    paths, run = built_kb
    reg = Registry(tracking_uri=paths.mlflow_uri, artifact_root=str(paths.mlflow_artifacts))
    mv = reg.client().get_model_version_by_alias("kb", "production")
    ARTIFACTS.mkdir(exist_ok=True)
    with mlflow_server(tmp_path, paths.mlflow_uri) as url, sync_playwright() as pw:
        browser = _browser(pw)
        page = browser.new_page(viewport={"width": 1600, "height": 1000})
        try:
            page.goto(f"{url}/#/models/kb/versions/{mv.version}", timeout=120_000)
            page.get_by_text("validation_status").first.wait_for(timeout=90_000)
            page.wait_for_timeout(1500)
            body = page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "mlflow-kb-production.png"), full_page=True)
            assert "production" in body  # the alias
            assert "The first KB version" in body and "documents" in body, body[:3000]
            assert "passed" in body and run.run_id in body, body[:3000]
            assert "dagster_run_url" in body
            # Its logged model's page ("Source model"): the metrics, linked to the
            # evaluation dataset they were computed on, and the params.
            model_id = logged_model_id(mv)
            exp_id = reg.client().get_logged_model(model_id).experiment_id
            page.goto(f"{url}/#/experiments/{exp_id}/models/{model_id}", timeout=120_000)
            page.get_by_text("recall_at_3").first.wait_for(timeout=90_000)
            page.wait_for_timeout(1500)
            body = page.inner_text("body")
            page.screenshot(path=str(ARTIFACTS / "mlflow-kb-logged-model.png"),
                            full_page=True)
            for text in ("recall_at_3", "mrr", "zero_hit_rate", "kb-eval-",
                         "embedding.model", "chunker.size"):
                assert text in body, f"{text} not on the model page:\n{body[:4000]}"
            # ...and it links back to the registered version.
            assert re.search(rf"Model versions\s+kb\s+v{mv.version}\b", body), body[:4000]
        finally:
            browser.close()
