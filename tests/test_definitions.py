"""Pin the asset graph: keys, groups, dependencies, checks, jobs, sensors. A rename or a
dropped edge must be a deliberate change of this file."""

import pytest
from dagster import AssetKey

from dagster_project.definitions import build_definitions

GRAPH = {  # asset -> (group, upstream assets)
    "inbox": ("ingest", set()),  # external: the folder people drop files into
    "raw_docs": ("ingest", {"inbox"}),
    "cleaned_chunks": ("ingest", {"raw_docs"}),
    "embeddings": ("index", {"cleaned_chunks"}),
    "faiss_index": ("index", {"embeddings"}),
    "kb_release": ("release", {"faiss_index"}),
    "eval_set": ("release", {"faiss_index"}),
    "retrieval_eval": ("release", {"kb_release", "eval_set"}),
    "kb_promotion": ("release", {"retrieval_eval"}),
    "ft_dataset": ("fine_tune", {"faiss_index", "eval_set"}),  # questions: the KB's eval set
    "fine_tuned_model": ("fine_tune", {"ft_dataset"}),
    "ft_eval": ("fine_tune", {"fine_tuned_model"}),
    "assistant_release": ("fine_tune", {"ft_eval"}),
}
BLOCKING = {"raw_docs:raw_docs_required_fields", "cleaned_chunks:chunks_unique_ids",
            "cleaned_chunks:chunking_drift", "embeddings:embeddings_dimension",
            "faiss_index:faiss_index_size", "faiss_index:faiss_index_ids_resolve",
            "retrieval_eval:promotion_gate", "ft_dataset:ft_dataset_valid", "ft_eval:ft_beats_base"}


@pytest.fixture(scope="module")
def graph(tmp_path_factory):
    from kb_core.paths import Paths

    home = tmp_path_factory.mktemp("defs")
    paths = Paths(home, home / "inbox", home / "kb.duckdb", home / "versions", home / "dagster",
                  f"sqlite:///{home / 'mlflow.db'}", home / "mlartifacts")
    defs = build_definitions(paths)
    return defs, defs.resolve_asset_graph()


def test_asset_keys_groups_and_dependencies(graph):
    _, g = graph
    actual = {k.to_user_string(): (g.get(k).group_name,
                                   {p.to_user_string() for p in g.get(k).parent_keys})
              for k in g.get_all_asset_keys()}
    assert actual == GRAPH


def test_every_asset_tells_its_story(graph):
    _, g = graph
    for key in g.get_all_asset_keys():
        node = g.get(key)
        assert node.description and "\n" not in node.description.strip(), key
        assert node.kinds, key


def test_correctness_checks_block(graph):
    _, g = graph
    specs = {f"{k.asset_key.to_user_string()}:{k.name}": g.get_check_spec(k)
             for k in g.asset_check_keys}
    assert BLOCKING <= set(specs)
    assert all(specs[name].blocking for name in BLOCKING)


def test_jobs_sensor_and_schedule(graph):
    defs, _ = graph
    assert {j.name for j in defs.resolve_all_job_defs()} >= {"kb_job", "index_job", "ft_job", "all_job"}
    kb_job = defs.resolve_job_def("kb_job")
    assert kb_job.tags.get("kb/writer") == "true"
    assert {s.name for s in defs.sensors} == {"inbox_sensor"}
    assert {s.name for s in defs.schedules} == {"nightly_fine_tune"}


def test_operator_pages(graph):
    """Every materializable asset has a code version (so the UI marks it stale after a code
    change), owners and a layer tag; the served KB has a freshness policy; the tables say
    what they hold; the inbox is external."""
    from kb_assets.asset_pages import SERVED_KB, TABLES

    _, g = graph
    for key in g.get_all_asset_keys():
        node, name = g.get(key), key.to_user_string()
        assert node.owners, name
        assert node.tags.get("kb/layer"), name
        if name == "inbox":
            assert not node.is_executable and node.code_version is None
            continue
        assert node.is_executable, name
        assert node.code_version and len(node.code_version) == 12, name
        assert (node.freshness_policy is not None) == (name in SERVED_KB), name
        if name in TABLES:
            assert node.metadata["dagster/column_schema"].columns, name
    # kb-writer tags on the decorators survive the mapping
    assert g.get(AssetKey("raw_docs")).tags.get("kb/writer") == "true"


def test_code_version_follows_the_code():
    """A change to an asset's module changes its code version; an unchanged module keeps it."""
    from kb_assets import asset_pages
    from kb_assets.ingest import raw_docs

    before = asset_pages.code_version_of(raw_docs)
    assert before == asset_pages.code_version_of(raw_docs)
    import inspect
    import sys

    module = sys.modules[raw_docs.op.compute_fn.decorated_fn.__module__]
    real = inspect.getsource
    try:
        inspect.getsource = lambda obj: real(obj) + ("\n# edited" if obj is module else "")
        assert asset_pages.code_version_of(raw_docs) != before
    finally:
        inspect.getsource = real


def test_every_kb_step_is_in_the_writer_pool_and_runs_in_one_process(graph):
    """Runs that write the KB queue on the `kb_writer` pool at run granularity (whatever
    job or UI selection made them, whichever machine queued them); launched runs use
    Dagster's public in-process executor (the store resource holds the file lock)."""
    import yaml
    from dagster import in_process_executor

    from kb_core.paths import DAGSTER_YAML
    from kb_core.writer_lock import KB_WRITER_POOL

    defs, _ = graph
    job = defs.resolve_job_def("all_job")
    pools = {node.name: node.definition.pool for node in job.graph.nodes}
    assert len(pools) >= len(GRAPH) - 1 + 5, pools  # every materializable asset + the checks
    assert set(pools.values()) == {KB_WRITER_POOL}, pools
    implicit = defs.resolve_implicit_global_asset_job_def()
    assert "kb/writer" not in implicit.tags  # so only the pool can queue a UI "Materialize"
    assert job.executor_def is in_process_executor
    concurrency = yaml.safe_load(DAGSTER_YAML)["concurrency"]
    assert concurrency["pools"] == {"granularity": "run", "default_limit": 1}


@pytest.mark.parametrize("value, executor", [("multiprocess", "multiprocess"),
                                             ("in_process", "in_process"), ("", "in_process")])
def test_kb_dagster_executor_chooses_the_launched_runs_executor(monkeypatch, value, executor):
    from dagster_project.definitions import build_definitions

    monkeypatch.setenv("KB_DAGSTER_EXECUTOR", value)
    defs = build_definitions()
    for job in ("kb_job", "all_job"):
        assert defs.resolve_job_def(job).executor_def.name == executor
    assert defs.resolve_implicit_global_asset_job_def().executor_def.name == executor


def test_an_unknown_executor_is_one_clear_error(monkeypatch):
    from dagster_project.definitions import build_definitions
    from kb_core.settings import SettingError

    monkeypatch.setenv("KB_DAGSTER_EXECUTOR", "celery")
    with pytest.raises(SettingError, match="KB_DAGSTER_EXECUTOR"):
        build_definitions()
