"""Pin the asset graph: keys, groups, dependencies, checks, jobs, sensors. A rename or a
dropped edge must be a deliberate change of this file."""

import pytest

from dagster_project.definitions import build_definitions

GRAPH = {  # asset -> (group, upstream assets)
    "raw_docs": ("ingest", set()),
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
