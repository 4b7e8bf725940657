"""resources/ann_index.py: exact and HNSW vector indexes with chunk ids, recall measured
against exact search, the size/recall policy, and one real `kb build` with KB_ANN_KIND=hnsw
whose version records its recall and whose `kb search` answers as exact search does."""

import json
import os
import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from kb_core.settings import SettingError
from kb_core.lexical import term_counts
from resources.ann_index import (EF_SEARCH_STEPS, HNSW_PARAMS, IndexPolicy, ShardedSearch,
                                 build_vector_index, build_version_index, ef_search_of, exact_neighbours,
                                 index_kind, measure_recall, read_vector_index, recall_at_k,
                                 recall_queries)

REPO = Path(__file__).resolve().parents[1]
DIM = 384


def unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def random_vectors(n: int, seed: int = 0) -> np.ndarray:
    return unit(np.random.default_rng(seed).standard_normal((n, DIM)))


def clustered_vectors(n: int, seed: int = 0, clusters: int = 50) -> np.ndarray:
    """A gaussian mixture on the sphere: points at cosine ~0.7 from their cluster centre."""
    rng = np.random.default_rng(seed)
    centres = unit(rng.standard_normal((clusters, DIM)))
    return unit(centres[rng.integers(0, clusters, n)]
                + rng.standard_normal((n, DIM)) / np.sqrt(DIM))


def chunk_ids(n: int, seed: int = 1) -> np.ndarray:
    """Sparse, unordered int64 ids like chunk ids (hashes), not 0..n-1."""
    return np.random.default_rng(seed).choice(2**62, n, replace=False).astype(np.int64)


DATASETS = {"random": random_vectors, "clustered": clustered_vectors}


def test_hnsw_reaches_the_recall_target_at_the_chosen_params_on_clustered_vectors():
    vectors, ids = clustered_vectors(5000), chunk_ids(5000)
    index = build_vector_index(vectors, ids, DIM, "hnsw")
    assert index_kind(index) == "hnsw" and ef_search_of(index) == HNSW_PARAMS["efSearch"]
    queries = recall_queries(vectors, 200)
    assert measure_recall(index, vectors, ids, queries, k=10) >= 0.95


@pytest.mark.parametrize("data", DATASETS)
def test_the_version_policy_reaches_the_recall_target(data):
    """Uniform random 384-d vectors are HNSW's worst case (every neighbour is about as far):
    efSearch 64 misses (recall ~0.87 at 5k), so the policy raises it until 0.95 is met."""
    vectors, ids = DATASETS[data](5000), chunk_ids(5000)
    index, info = build_version_index(vectors, ids, DIM, IndexPolicy(kind="hnsw"))
    assert info["kind"] == "hnsw" == index_kind(index)
    assert ef_search_of(index) == info["params"]["efSearch"]
    assert measure_recall(index, vectors, ids, recall_queries(vectors, 200, seed=5)) >= 0.94
    assert info["recall_at_10"] >= 0.95


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_search_returns_chunk_ids_and_reconstruct_reads_by_chunk_id(kind):
    vectors, ids = clustered_vectors(800), chunk_ids(800)
    index = build_vector_index(vectors, ids, DIM, kind)
    _, found = index.search(vectors[:20], 1)
    assert found[:, 0].tolist() == ids[:20].tolist()  # each vector finds itself, by chunk id
    assert set(faiss.vector_to_array(index.id_map).tolist()) == set(ids.tolist())
    for row in (0, 399, 799):  # what the index checks compare with the embedding cache
        assert np.allclose(index.reconstruct(int(ids[row])), vectors[row])


@pytest.mark.parametrize("data", DATASETS)
def test_flat_equals_exact_search(data):
    vectors, ids = DATASETS[data](2000), chunk_ids(2000)
    queries = recall_queries(vectors, 50, seed=3)
    index = build_vector_index(vectors, ids, DIM, "flat")
    scores, found = index.search(queries, 10)
    brute = queries @ vectors.T
    order = np.argsort(-brute, axis=1)[:, :10]
    assert np.array_equal(found, ids[order])
    assert np.allclose(scores, np.take_along_axis(brute, order, 1), atol=1e-5)
    assert measure_recall(index, vectors, ids, queries) == 1.0


def test_recall_can_fail_a_weak_index():
    """The measure is no constant: a tiny HNSW graph searched narrowly misses neighbours."""
    vectors, ids = random_vectors(4000), chunk_ids(4000)
    weak = build_vector_index(vectors, ids, DIM, "hnsw",
                              {"M": 4, "efConstruction": 8, "efSearch": 1})
    assert measure_recall(weak, vectors, ids, recall_queries(vectors, 100)) < 0.9


@pytest.mark.parametrize("found, truth, expected", [
    ([[1, 2, 3]], [[1, 2, 3]], 1.0),
    ([[3, 2, 1]], [[1, 2, 3]], 1.0),  # order inside the top k does not matter
    ([[1, 9, 8]], [[1, 2, 3]], 1 / 3),
    ([[1, -1, -1]], [[1, 2, -1]], 0.5),  # -1: no result / fewer than k vectors
    ([[1, 2], [5, 6]], [[1, 2], [7, 8]], 0.5),
])
def test_recall_at_k(found, truth, expected):
    assert recall_at_k(np.array(found), np.array(truth)) == pytest.approx(expected)


@pytest.mark.parametrize("cosine", [0.5, 0.7, 0.9])
def test_recall_queries_sit_at_the_asked_cosine_from_their_source(cosine):
    vectors = clustered_vectors(1000)
    q = recall_queries(vectors, 100, cosine=cosine)
    assert q.shape == (100, DIM) and np.allclose(np.linalg.norm(q, axis=1), 1, atol=1e-5)
    assert np.allclose(q.dot(vectors.T).max(1).min() >= cosine - 0.01, True)
    assert np.array_equal(q, recall_queries(vectors, 100, cosine=cosine))  # deterministic


@pytest.mark.parametrize("kind, min_chunks, n, expected", [
    ("auto", 50_000, 49_999, "flat"), ("auto", 50_000, 50_000, "hnsw"),
    ("auto", 0, 10**7, "flat"), ("hnsw", 50_000, 10, "hnsw"), ("flat", 1, 10**7, "flat"),
])
def test_policy_wanted_kind(kind, min_chunks, n, expected):
    assert IndexPolicy(kind=kind, min_chunks=min_chunks).wanted_kind(n) == expected


def test_policy_from_settings_and_bad_values():
    p = IndexPolicy.from_settings({"KB_ANN_KIND": "hnsw", "KB_ANN_MIN_CHUNKS": "0",
                                   "KB_ANN_MIN_RECALL": "0.9"})
    assert (p.kind, p.min_chunks, p.min_recall) == ("hnsw", 0, 0.9)
    assert IndexPolicy.from_settings({}) == IndexPolicy()
    with pytest.raises(SettingError, match="KB_ANN_KIND"):
        IndexPolicy.from_settings({"KB_ANN_KIND": "ivf"})
    with pytest.raises(SettingError, match="KB_ANN_MIN_CHUNKS"):
        IndexPolicy.from_settings({"KB_ANN_MIN_CHUNKS": "-1"})


def test_version_index_records_recall_and_loader_restores_ef_search(tmp_path):
    vectors, ids = clustered_vectors(3000), chunk_ids(3000)
    index, info = build_version_index(vectors, ids, DIM, IndexPolicy(kind="hnsw"))
    assert info["kind"] == "hnsw" == index_kind(index)
    assert info["recall_at_10"] >= 0.95 and info["n_queries"] == 200
    assert info["params"]["M"] == HNSW_PARAMS["M"] and info["build_s"] > 0
    path = tmp_path / "index.faiss"
    faiss.write_index(index, str(path))
    info = json.loads(json.dumps({"vector_index": dict(info, params=dict(info["params"],
                                                                         efSearch=96))}))
    loaded = read_vector_index(path, info)
    assert index_kind(loaded) == "hnsw" and ef_search_of(loaded) == 96
    # Without a record, the file's own efSearch (FAISS 1.15 writes it) is what it was built at.
    assert ef_search_of(read_vector_index(path)) == ef_search_of(index)


def test_version_index_raises_ef_search_then_falls_back_to_exact():
    vectors, ids = random_vectors(3000), chunk_ids(3000)
    weak = {"M": 4, "efConstruction": 8, "efSearch": 1}
    # Reachable only by raising efSearch: the first efSearch tried is too low.
    index, info = build_version_index(vectors, ids, DIM,
                                      IndexPolicy(kind="hnsw", min_recall=0.5, params=weak))
    assert info["kind"] == "hnsw" and info["params"]["efSearch"] > 1
    assert info["efsearch_tried"][0]["recall_at_10"] < 0.5 <= info["recall_at_10"]
    # Unreachable: exact search, and the record says why.
    index, info = build_version_index(vectors, ids, DIM,
                                      IndexPolicy(kind="hnsw", min_recall=1.01, params=weak))
    assert info["kind"] == "flat" == index_kind(index) and "fell back" in info["note"]
    assert info["efsearch_tried"][-1]["efSearch"] == EF_SEARCH_STEPS[-1] == 2048


def test_small_versions_stay_exact_and_empty_versions_work():
    vectors, ids = clustered_vectors(100), chunk_ids(100)
    index, info = build_version_index(vectors, ids, DIM, IndexPolicy())
    assert info["kind"] == "flat" and info["recall_at_10"] == 1.0 and index.ntotal == 100
    index, info = build_version_index(np.zeros((0, DIM)), np.zeros(0), DIM,
                                      IndexPolicy(kind="hnsw"))
    assert index.ntotal == 0 and info["kind"] == "flat"


def test_mismatched_vectors_and_ids_are_refused():
    with pytest.raises(ValueError, match="3 vectors but 2 ids"):
        build_vector_index(random_vectors(3), chunk_ids(2), DIM, "hnsw")
    with pytest.raises(ValueError, match="kind 'ivf'"):
        build_vector_index(random_vectors(3), chunk_ids(3), DIM, "ivf")


def test_exact_neighbours_are_ids():
    vectors, ids = random_vectors(300), chunk_ids(300)
    assert exact_neighbours(vectors, ids, vectors[:5], 1)[:, 0].tolist() == ids[:5].tolist()


# --- one real `kb build` forced to HNSW on the sample documents

def kb_process(home: Path, *args: str, **env) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items()
               if k not in ("DAGSTER_HOME", "KB_INBOX", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    environ.update(KB_HOME=str(home), PYTHONPATH=str(REPO), **env)
    return subprocess.run([sys.executable, "-m", "dagster_project.cli", *args], cwd=REPO,
                          env=environ, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_kb_build_with_hnsw_records_recall_and_search_answers_as_exact(tmp_path, monkeypatch):
    home = tmp_path / "kb"
    assert kb_process(home, "init", "--samples").returncode == 0
    build = kb_process(home, "build", "--json", KB_ANN_KIND="hnsw")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    out = json.loads(build.stdout)
    # The index checks (ids, vectors vs the embedding cache via reconstruct, smoke query)
    # pass on the HNSW file.
    index_checks = [c for c in out["checks"] if c["asset"] == "faiss_index"]
    assert index_checks and all(c["passed"] for c in index_checks), index_checks

    info = json.loads((home / "versions" / "1" / "version.json").read_text())
    vi = info["vector_index"]
    assert vi["kind"] == "hnsw" and vi["requested"] == "hnsw", vi
    assert vi["recall_at_10"] >= 0.95 and vi["n_queries"] == min(200, info["n_chunks"])
    assert set(vi["params"]) == {"M", "efConstruction", "efSearch"}

    for var in ("KB_INBOX", "DAGSTER_HOME", "MLFLOW_TRACKING_URI", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KB_HOME", str(home))
    from kb_assets.searcher import Searcher
    from kb_core.paths import Paths
    from resources.vector_index import KBVersion

    searcher = Searcher.open(Paths.from_env(), 1)
    v = searcher.version
    assert index_kind(v.index) == "hnsw" and ef_search_of(v.index) == vi["params"]["efSearch"]
    ids = v.chunk_ids
    exact = build_vector_index(np.stack([v.index.reconstruct(int(i)) for i in ids]), ids,
                               v.index.d, "flat")
    exact_searcher = Searcher(KBVersion(v.number, v.path, v.info, exact, v.manifest, v.lexical),
                              searcher.embedder)
    golden = [json.loads(line) for line in
              (REPO / "sample_data" / "golden.jsonl").read_text(encoding="utf-8").splitlines()]
    questions = [g["question"] for g in golden]
    hnsw_hits = searcher.search_batch(questions, k=3)
    exact_hits = exact_searcher.search_batch(questions, k=3)
    assert [[h.chunk_id for h in hs] for hs in hnsw_hits] == \
        [[h.chunk_id for h in hs] for hs in exact_hits]
    answered = [g["doc_id"] in {h.doc_id for h in hs} for g, hs in zip(golden, hnsw_hits)]
    assert sum(answered) >= 0.6 * len(golden), sum(answered)

    search = kb_process(home, "search", golden[0]["question"], "-k", "3", "--json")
    assert search.returncode == 0, search.stderr[-2000:]
    hits = json.loads(search.stdout)["hits"]
    assert hits and golden[0]["doc_id"] in {h["doc_id"] for h in hits}

    # A change with default settings adds a small exact segment; the HNSW one is kept and
    # searched as it is beside it (not merged into a rebuilt exact index).
    (home / "inbox" / "bike.md").write_text(
        "# Bicycle allowance\nStaff who cycle to work receive a bicycle allowance of 17 "
        "credits a month, claimed through the facilities portal.\n", encoding="utf-8")
    build = kb_process(home, "build", "--json")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    info2 = json.loads((home / "versions" / "2" / "version.json").read_text())
    assert len(info2["segments"]) == 2 and info2["vector_index"]["requested"] == "sharded"
    assert info2["vector_index"]["segment_kinds"] == ["hnsw", "flat"]
    v2 = Searcher.open(Paths.from_env(), 2).version
    assert v2.sharded is not None and v2.sharded.kinds == ["hnsw", "flat"]
    search = kb_process(home, "search", "How much is the bicycle allowance?", "-k", "3",
                        "--json", "--kb-version", "2")
    assert search.returncode == 0, search.stderr[-2000:]
    assert "bike.md" in {h["doc_id"] for h in json.loads(search.stdout)["hits"]}


@pytest.mark.parametrize("vi, kind, fell_back", [
    (None, None, False),
    ({"kind": "flat", "requested": "auto", "params": {}, "recall_at_10": 1.0, "n_queries": 0,
      "build_s": 0.1, "note": "exact search"}, "flat", False),
    ({"kind": "hnsw", "requested": "hnsw", "params": dict(HNSW_PARAMS), "recall_at_10": 0.97,
      "n_queries": 200, "build_s": 9.0, "efsearch_tried": [{"efSearch": 64,
                                                             "recall_at_10": 0.97}],
      "note": "recall@10 0.970 >= 0.95 vs exact"}, "hnsw", False),
    ({"kind": "flat", "requested": "auto", "params": {}, "recall_at_10": 1.0, "n_queries": 200,
      "build_s": 9.0, "efsearch_tried": [{"efSearch": 512, "recall_at_10": 0.9}],
      "note": "fell back to exact search: ..."}, "flat", True),
])
def test_faiss_index_metadata_names_the_index_and_a_fallback(vi, kind, fell_back):
    from kb_assets.index import vector_index_metadata

    md = vector_index_metadata(vi)
    if vi is None:
        assert md == {}
        return
    assert md["vector_index_kind"] == kind
    assert md["vector_index_recall_at_10"] == vi["recall_at_10"]
    assert ("FELL BACK TO EXACT" in md["vector_index"].value) == fell_back


@pytest.mark.parametrize("kind", ["flat", "hnsw"])
def test_the_embedding_checks_read_a_published_index_of_either_kind(kind, tmp_path):
    """checks/state.py::version_vectors (drift vs the previous version) reads the stored
    vectors of a published (segmented) version; an HNSW index keeps them in its flat storage."""
    import pandas as pd

    from checks.state import version_vectors
    from resources.vector_index import VersionStore

    vectors, ids = clustered_vectors(500), chunk_ids(500)
    manifest = pd.DataFrame({"chunk_id": ids, "text": [f"chunk {i}" for i in range(500)]})
    store = VersionStore(root=str(tmp_path))
    path = store.publish_whole(1, build_vector_index(vectors, ids, DIM, kind), manifest,
                               {"dim": DIM}, [])
    got = version_vectors(path)
    assert got is not None and got.shape == vectors.shape
    order = np.argsort(ids)
    assert np.allclose(np.sort(got, axis=0), np.sort(vectors[order], axis=0))
    assert np.array_equal(store.load(1, texts=False).chunk_ids, np.sort(ids))

# --- several segments, some HNSW: searched shard by shard (ann_index.ShardedSearch) --------
def test_sharded_search_of_exact_shards_equals_one_exact_index():
    vectors, ids = random_vectors(900), chunk_ids(900)
    one = build_vector_index(vectors, ids, DIM, "flat")
    dead = ids[:40]  # deleted from the first shard: never returned
    sharded = ShardedSearch([(build_vector_index(vectors[:500], ids[:500], DIM, "flat"), dead),
                             (build_vector_index(vectors[500:], ids[500:], DIM, "flat"),
                              np.zeros(0, np.int64))])
    live = ~np.isin(ids, dead)
    exact = build_vector_index(vectors[live], ids[live], DIM, "flat")
    queries = recall_queries(vectors, 50)
    assert sharded.ntotal == live.sum() and sharded.d == DIM
    s_sharded, i_sharded = sharded.search(queries, 10)
    s_exact, i_exact = exact.search(queries, 10)
    assert (i_sharded == i_exact).all() and np.allclose(s_sharded, s_exact, atol=1e-5)
    assert not np.isin(i_sharded, dead).any()
    assert not (i_sharded == one.search(queries, 10)[1]).all()  # the deletions mattered
    # More asked than there are live rows: padded with -1, like FAISS.
    small = ShardedSearch([(build_vector_index(vectors[:3], ids[:3], DIM, "flat"), ids[:1])])
    _, i_small = small.search(queries[:2], 5)
    assert (i_small[:, 2:] == -1).all() and set(i_small[0, :2]) == set(ids[1:3])


def test_segmented_version_keeps_its_hnsw_segment_and_skips_deleted_rows(tmp_path):
    """A large HNSW segment plus a small new one, some rows deleted from the large one: the
    loaded version searches the HNSW segment as written (not a rebuilt exact merge), never
    returns a deleted row, reaches the recorded recall against exact search of the live rows,
    and the version record says so."""
    import pandas as pd

    from kb_assets.segment_publish import segments_record
    from resources.segments import write_segment
    from resources.vector_index import VersionStore

    vectors, ids = clustered_vectors(3200), chunk_ids(3200)
    store = VersionStore(root=str(tmp_path / "versions"))
    segments = []
    for part, policy in ((slice(0, 3000), IndexPolicy(kind="hnsw")),
                         (slice(3000, 3200), IndexPolicy(kind="auto"))):
        index, record = build_version_index(vectors[part], ids[part], DIM, policy)
        rows = pd.DataFrame({"chunk_id": ids[part], "doc_id": "d", "text": "t"})
        order = np.argsort(ids[part], kind="stable")
        segments.append(write_segment(store.path, index, rows.iloc[order].reset_index(drop=True),
                                      *term_counts(["t"] * len(rows)), record))
    record = segments_record(store, segments)
    assert record["kind"] == "hnsw" and record["segment_kinds"] == ["hnsw", "flat"]
    assert record["recall_at_10"] >= 0.95
    dead = ids[:100]
    deleted = pd.DataFrame({"segment": segments[0], "chunk_id": dead})
    store.publish(1, segments, deleted, {"dim": DIM, "vector_index": record}, [])

    v = store.load(1)
    assert v.sharded is not None and v.search_index is v.sharded
    assert v.sharded.kinds == ["hnsw", "flat"]
    live = ~np.isin(ids, dead)
    assert v.search_index.ntotal == v.index.ntotal == live.sum() == len(v.manifest)
    queries = recall_queries(vectors[live], 200)
    _, found = v.search_index.search(queries, 10)
    assert not np.isin(found, dead).any()
    truth = exact_neighbours(vectors[live], ids[live], queries, 10)
    assert recall_at_k(found, truth) >= 0.95
    # The new segment's rows are found exactly: a query equal to one of them finds it first.
    assert v.search_index.search(vectors[3100:3101], 1)[1][0, 0] == ids[3100]
    # The drift check reads the live vectors only (segments' indexes, no chunks or counts):
    # the same rows as the merged exact index (built on first use), in segment order.
    from checks.state import version_vectors
    from resources.segments import segment_vectors
    from resources.vector_index import version_vectors as ordered_vectors

    merged_ids, merged = segment_vectors(v.index)
    drift_rows = version_vectors(v.path)
    assert drift_rows.shape == merged.shape
    assert np.array_equal(np.sort(drift_rows, axis=0), np.sort(merged, axis=0))
    assert np.array_equal(ordered_vectors(v.path), merged)
    assert np.array_equal(np.sort(merged_ids), merged_ids) and not np.isin(merged_ids, dead).any()
    # At most max_rows of them: a uniform sample of live rows, deterministic.
    from resources.segments import sampled_vectors

    sample = sampled_vectors(v.path, v.info, 500)
    assert sample.shape == (500, DIM)
    assert np.array_equal(sample, sampled_vectors(v.path, v.info, 500))
    live_rows = {row.tobytes() for row in vectors[live]}
    assert all(row.tobytes() in live_rows for row in sample)  # never a deleted row
    assert len({row.tobytes() for row in sample}) == 500
    assert len(sampled_vectors(v.path, v.info, 10_000)) == live.sum()
    # The index checks read the sharded search: its live ids and stored vectors by id.
    assert np.array_equal(np.sort(v.sharded.ids()), merged_ids)
    for cid in (int(merged_ids[0]), int(ids[3100])):
        assert np.array_equal(v.sharded.reconstruct(cid), v.index.reconstruct(cid))
    with pytest.raises(KeyError):
        v.sharded.reconstruct(int(dead[0]))  # deleted from its segment: not in the version
