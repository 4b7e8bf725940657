"""The pages a reviewer (MLflow) and an operator (Dagster) read, from real runs: two KB
versions through kb_job with sqlite MLflow; the second adds one document and changes
another. Checked through MLflow's own client and Dagster's own instance."""

import json
from pathlib import Path

import mlflow
import pytest
from dagster import AssetKey, DagsterInstance, TableMetadataValue

from resources.registry import Registry, registered_versions
from resources.registry_pages import kb_description, logged_model_id, version_changes
from resources.store import KBStore
from tests.kbtest import materialized, mlflow_uris_kept, registry_kb_env
from tests.registry_fixtures import NEW_DOC


@pytest.fixture(scope="module")
def two_versions(registry_kb):
    """(paths, [run 1 result, run 2 result]) for two published, evaluated KB versions: the
    session's shared `registry_kb` (tests/conftest.py), which these tests only read."""
    paths, runs = registry_kb
    with mlflow_uris_kept(), registry_kb_env(paths.home):
        import mlflow

        mlflow.set_tracking_uri(paths.mlflow_uri)
        mlflow.set_registry_uri(paths.mlflow_uri)
        yield paths, runs


@pytest.mark.slow  # two real kb_job runs (~2 min on 2 shared cores)
def test_runs_succeed(two_versions):
    _, (r1, r2) = two_versions
    assert r1.success and r2.success
    assert materialized(r2)["kb_release"]["kb_version"] == 2


@pytest.mark.slow  # two real kb_job runs (~2 min on 2 shared cores)
def test_version_changes_and_description(two_versions):
    paths, _ = two_versions
    store = KBStore(db_path=str(paths.db))
    c1, c2 = version_changes(store, 1), version_changes(store, 2)
    assert c1["previous_version"] is None and len(c1["added"]) == 8
    assert c2 == {"previous_version": 1, "added": [NEW_DOC[0]], "removed": [],
                  "changed": ["policies/parking.md"], "n_docs": 9}
    text = kb_description(2, c2, {"n_chunks": 9, "embedding_model": "m", "dim": 384,
                                  "chunker": {"version": "v", "size": 1, "overlap": 0}}, "abc")
    assert "1 added, 1 changed, 0 removed" in text and "`policies/bicycles.md`" in text
    assert "http://dagster.example:3000/runs/abc" in text


@pytest.mark.slow  # two real kb_job runs (~2 min on 2 shared cores)
def test_mlflow_version_page(two_versions):
    paths, (_, r2) = two_versions
    store = KBStore(db_path=str(paths.db))
    reg = Registry(tracking_uri=paths.mlflow_uri, artifact_root=str(paths.mlflow_artifacts))
    client = reg.client()
    row = [r for r in registered_versions(store, "kb") if r["version"] == 2][0]
    mv = client.get_model_version("kb", str(row["mlflow_version"]))
    # what changed, and where it was built
    assert "1 added, 1 changed, 0 removed" in mv.description
    assert "policies/parking.md" in mv.description and "bicycles" in mv.description
    assert mv.tags["dagster_run_id"] == r2.run_id
    assert mv.tags["dagster_run_url"] == f"http://dagster.example:3000/runs/{r2.run_id}"
    assert mv.tags["validation_status"] == "passed"
    assert mv.tags["documents_added"] == "1" and mv.tags["documents_changed"] == "1"
    assert client.get_registered_model("kb").description
    # params on the run and on the logged model
    run = client.get_run(row["run_id"])
    assert run.data.params["embedding.model"] and run.data.params["chunker.size"]
    model = client.get_logged_model(logged_model_id(mv))
    assert model.params["embedding.dim"] == "384"
    assert json.loads(model.tags["mlflow.modelVersions"]) == [
        {"name": "kb", "version": str(mv.version)}]
    # metrics on the logged model, linked to the evaluation dataset the run logged
    by_key = {m.key: m for m in model.metrics}
    assert by_key["recall_at_3"].value >= 0.9
    inputs = run.inputs.dataset_inputs
    assert [d.dataset.name for d in inputs] == [by_key["recall_at_3"].dataset_name]
    assert by_key["recall_at_3"].dataset_digest == inputs[0].dataset.digest
    # the per-question results as a table artifact
    local = client.download_artifacts(row["run_id"], "eval/per_question.json",
                                      str(paths.home / "dl"))
    table = json.loads(open(local).read())
    assert len(table["data"]) == 12 and "first_relevant_rank" in table["columns"]
    # self-contained: the project's code and pinned requirements travel with the model
    local_model = mlflow.artifacts.download_artifacts(f"models:/kb/{mv.version}",
                                                      dst_path=str(paths.home / "model"))
    reqs = (Path(local_model) / "requirements.txt").read_text().split()
    assert "torch==2.13.0" in reqs and any(r.startswith("sentence-transformers==") for r in reqs)
    assert all("==" in r for r in reqs if not r.startswith("-")), reqs
    assert (Path(local_model) / "code" / "kb_assets" / "kb_model.py").is_file()


@pytest.mark.slow  # two real kb_job runs (~2 min on 2 shared cores)
def test_dagster_materializations_carry_numbers_and_tables(two_versions):
    paths, (_, r2) = two_versions
    m = materialized(r2)
    assert m["raw_docs"]["dagster/row_count"] == 9
    assert m["cleaned_chunks"]["dagster/row_count"] >= 9
    assert m["embeddings"]["dagster/row_count"] >= 9
    assert m["faiss_index"]["dagster/row_count"] == m["faiss_index"]["n_chunks"]
    assert isinstance(m["retrieval_eval"]["recall_at_3"], float)
    with DagsterInstance.get() as instance:
        ev = instance.get_latest_materialization_event(AssetKey("retrieval_eval"))
        table = ev.asset_materialization.metadata["per_question"]
        assert isinstance(table, TableMetadataValue) and len(table.records) == 12
        assert {c.name for c in table.schema.columns} >= {"qid", "first_relevant_rank"}


def test_loss_metadata_numbers_and_table():
    from kb_assets.asset_pages import loss_metadata

    md = loss_metadata([(1, 2.5), (2, 2.0), (3, 1.25)])
    assert md["train_loss_first"] == 2.5 and md["train_loss_final"] == 1.25
    assert md["train_loss_reduction"] == 1.25 and md["train_steps"] == 3
    assert [r.data["train_loss"] for r in md["loss_curve"].records] == [2.5, 2.0, 1.25]
    assert loss_metadata([]) == {}
