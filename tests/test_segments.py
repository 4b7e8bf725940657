"""Issue 13: segmented, immutable KB versions. A KB built in incremental steps (adds, an edit,
a delete) searches exactly like a one-segment build of the same contents; compaction keeps the
contents and results; old full-copy versions still load; the MLflow copy is self-contained."""

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from scipy import sparse

from kb_assets.searcher import Searcher
from kb_assets.segment_publish import membership_diff, needs_compaction, same_rows
from kb_core.lexical import BM25Index, merge_counts, term_counts
from kb_core.paths import Paths
from resources.embedder import Embedder
from resources.segments import SEGMENTS_DIR, materialize, read_into_page_cache
from resources.vector_index import VersionStore, load_version_dir
from tests.kbtest import env_vars, materialized, run_job, write

TEXTS = ["Annual leave is 20 days per year", "VPN access needs a token", "年假有二十天",
         "Expense claims are due within 30 days", "The VPN token expires after a year",
         "leave requests go to your manager", "報銷需要在三十天內提交"]
QUERIES = ["annual leave days", "VPN token", "年假", "expense claims due", "manager approval",
           "報銷 三十天", "how many days of leave"]


# --- pure parts -------------------------------------------------------------------------------
def test_bm25_from_counts_equals_build():
    a, b = BM25Index.build(TEXTS), BM25Index.from_counts(*term_counts(TEXTS))
    assert set(a.vocab) == set(b.vocab)
    for q in QUERIES:
        ra, sa = a.search(q, 5)
        rb, sb = b.search(q, 5)
        assert ra.tolist() == rb.tolist() and np.allclose(sa, sb)


def test_bm25_merged_counts_with_dropped_rows_equal_one_build():
    """Statistics (N, df, avgdl) come from the live rows only, however the rows were split."""
    live = [t for i, t in enumerate(TEXTS) if i != 3]
    parts = [term_counts(TEXTS[:4]), term_counts(TEXTS[4:])]
    counts, terms = merge_counts(parts)
    keep = np.array([i for i in range(len(TEXTS)) if i != 3])
    merged = BM25Index.from_counts(counts[keep], terms)
    single = BM25Index.build(live)
    assert set(merged.vocab) == set(single.vocab)  # "expense"/"claim" only lived in row 3
    assert np.isclose(merged.coverage("expense VPN"), single.coverage("expense VPN"))
    for q in QUERIES:
        rm, sm = merged.search(q, 10)
        rs, ss = single.search(q, 10)
        assert rm.tolist() == rs.tolist() and np.allclose(sm, ss)


@pytest.mark.parametrize("splits", [(4,), (0, 4), (2, 2, 5), (1, 1)])
def test_merged_counts_are_the_counts_of_one_pass(splits):
    """Rows stacked onto one vocabulary, whatever the split (an empty part included): each
    row holds exactly the counts term_counts gives its text."""
    bounds = [0, *splits, len(TEXTS)]
    parts = [term_counts(TEXTS[a:b]) for a, b in zip(bounds, bounds[1:])]
    counts, terms = merge_counts(parts)
    whole, whole_terms = term_counts(TEXTS)
    assert sorted(terms) == sorted(whole_terms) and len(set(terms)) == len(terms)
    column = {t: j for j, t in enumerate(terms)}
    expected = np.zeros(counts.shape, dtype=np.float32)
    dense_whole = whole.toarray()
    for j, t in enumerate(whole_terms):
        expected[:, column[t]] = dense_whole[:, j]
    assert np.array_equal(counts.toarray(), expected)


@pytest.mark.parametrize("n_segments,deleted,rows,expected", [
    (8, 0, 100, False), (9, 0, 100, True), (2, 20, 100, False), (2, 21, 100, True),
    (1, 0, 0, False)])
def test_needs_compaction(n_segments, deleted, rows, expected):
    assert needs_compaction(n_segments, deleted, rows, 8, 0.2) is expected


def test_membership_diff_edit_delete_add():
    cols = dict(doc_key="k", doc_id="d", source_path="s", title=None, ordinal=0, n_tokens=3,
                text_hash="h", doc_content_hash="c")
    prev = pd.DataFrame([dict(cols, chunk_id=1), dict(cols, chunk_id=2),
                         dict(cols, chunk_id=3)]).assign(segment=["a", "a", "b"])
    cur = pd.DataFrame([dict(cols, chunk_id=1), dict(cols, chunk_id=3, title="new"),
                        dict(cols, chunk_id=4)])
    d = membership_diff(prev, cur)
    assert sorted(d.added["chunk_id"]) == [3, 4]
    assert sorted(zip(d.deleted["segment"], d.deleted["chunk_id"])) == [("a", 2), ("b", 3)]


@pytest.mark.parametrize("left,right,expected", [
    ({"t": [None, "x"], "n": [1, 2]}, {"t": [float("nan"), "x"], "n": [1, 2]}, [True, True]),
    ({"t": [None, "x"]}, {"t": ["", "y"]}, [True, False]),  # DuckDB NULL vs parquet ""
    ({"n": [1, 2]}, {"n": [1.0, 3.0]}, [True, False]),  # int64 vs float64 spelling
    ({"n": pd.array([1, None], dtype="Int32")}, {"n": [1.0, float("nan")]}, [True, True]),
    ({"t": ["a", "b"], "n": [1, 2]}, {"t": ["a", "b"], "n": [1, 5]}, [True, False]),
])
def test_same_rows_ignores_spelling_not_values(left, right, expected):
    assert same_rows(pd.DataFrame(left), pd.DataFrame(right)).tolist() == expected


# --- whole builds -----------------------------------------------------------------------------
def docs(tag: str, n: int, start: int = 0, edit: str = "") -> str:
    return "\n".join(json.dumps({"id": f"{tag}-{i}", "title": f"{tag} policy {i}",
                                 "text": f"Rule {i} of the {tag} policy{edit}: item {i} needs "
                                         f"approval number {i * 7} from the {tag} team. "
                                         + ("員工每年有十四天年假。" if i % 3 == 0 else "")})
                     for i in range(start, start + n)) + "\n"


def build(paths: Paths) -> dict:
    result = run_job(paths, "index_job")
    assert result.success
    return materialized(result)


def final_inbox(paths: Paths) -> None:
    write(paths, "a.jsonl", docs("travel", 12))
    write(paths, "b.jsonl", docs("expense", 8, edit=" (revised)"))
    write(paths, "c.jsonl", docs("security", 6))


def search_all(version, embedder: Embedder) -> list:
    s = Searcher(version, embedder)
    out = []
    for q in ["travel approval number 14", "expense policy revised", "security team item 3",
              "年假", "approval from the travel team"]:
        qv = embedder.encode_query(q).reshape(1, -1).astype(np.float32)
        scores, ids = version.index.search(qv, 10)
        rows, lex = version.lexical.search(q, 10)
        hybrid = s.search(q, 10)
        out.append((ids[0].tolist(), scores[0], version.chunk_ids[rows].tolist(), lex,
                    [h.chunk_id for h in hybrid], np.array([h.score for h in hybrid])))
    return out


def assert_same_results(a: list, b: list) -> None:
    for (di, ds, li, ls, hi, hs), (dj, dt, lj, lt, hj, ht) in zip(a, b):
        assert di == dj and np.allclose(ds, dt, atol=1e-6)
        assert li == lj and np.allclose(ls, lt, atol=1e-5)
        assert hi == hj and np.allclose(hs, ht, atol=1e-6)


@pytest.fixture(scope="module")
def embedder():
    return Embedder()


def steps(paths: Paths) -> list[dict]:
    """Adds, an edit, a delete (of a whole file and of documents in a file)."""
    out = []
    write(paths, "a.jsonl", docs("travel", 10))
    write(paths, "b.jsonl", docs("expense", 10))
    out.append(build(paths))
    write(paths, "c.jsonl", docs("security", 6))
    write(paths, "a.jsonl", docs("travel", 12))
    out.append(build(paths))
    write(paths, "b.jsonl", docs("expense", 10, edit=" (revised)"))  # edits every expense doc
    out.append(build(paths))
    write(paths, "b.jsonl", docs("expense", 8, edit=" (revised)"))  # deletes two documents
    write(paths, "d.jsonl", docs("parking", 4))
    out.append(build(paths))
    (paths.inbox / "d.jsonl").unlink()  # deletes a file
    out.append(build(paths))
    return out


def test_incremental_build_searches_like_one_build(tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("KB_COMPACT_MAX_DELETED", "0.9")  # keep the segments apart
    monkeypatch.setenv("KB_HOME", str(tmp_path / "steps"))
    inc = Paths.from_env().ensure()
    steps(inc)
    monkeypatch.setenv("KB_HOME", str(tmp_path / "once"))
    once = Paths.from_env().ensure()
    final_inbox(once)
    build(once)

    vs_inc, vs_once = VersionStore(root=str(inc.versions)), VersionStore(root=str(once.versions))
    assert vs_inc.numbers() == [1, 2, 3, 4, 5]
    a, b = vs_inc.load(5), vs_once.load(1)
    assert len(a.info["segments"]) == 4 and a.info["deleted_rows"] > 0
    assert not a.info["compacted"] and a.info["base_version"] == 4
    assert len(b.info["segments"]) == 1
    assert a.info["fingerprint"] == b.info["fingerprint"]
    cols = ["chunk_id", "doc_id", "title", "text", "text_hash", "doc_content_hash"]
    pd.testing.assert_frame_equal(a.manifest[cols], b.manifest[cols])
    assert a.index.ntotal == b.index.ntotal == len(a.manifest)
    assert_same_results(search_all(a, embedder), search_all(b, embedder))
    # Every step wrote one new segment at most; the unchanged ones are shared by versions.
    assert len(list((inc.versions / SEGMENTS_DIR).iterdir())) == 4
    assert not (inc.versions / "5" / "index.faiss").exists()


def test_compaction_keeps_contents_and_results(tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("KB_COMPACT_MAX_SEGMENTS", "2")
    monkeypatch.setenv("KB_HOME", str(tmp_path / "compact"))
    paths = Paths.from_env().ensure()
    results = steps(paths)
    vs = VersionStore(root=str(paths.versions))
    infos = [vs.info(n) for n in vs.numbers()]
    assert any(i["compacted"] for i in infos)
    assert [len(i["segments"]) for i in infos][:2] == [1, 2]
    compacted = next(i for i in infos if i["compacted"])
    assert len(compacted["segments"]) == 1
    monkeypatch.setenv("KB_HOME", str(tmp_path / "once"))
    once = Paths.from_env().ensure()
    final_inbox(once)
    build(once)
    a, b = vs.load(5), VersionStore(root=str(once.versions)).load(1)
    assert a.info["fingerprint"] == b.info["fingerprint"]
    assert_same_results(search_all(a, embedder), search_all(b, embedder))
    # Segments no version names any more are kept: older versions still name them.
    assert all(r["faiss_index"]["new_version"] for r in results)


def test_full_copy_version_still_loads_and_next_build_rewrites(tmp_path, monkeypatch, embedder):
    """An older KB_HOME: version dirs with index.faiss, manifest.parquet and bm25_* inside."""
    import faiss

    from resources.vector_index import INDEX_FILE, MANIFEST_FILE

    monkeypatch.setenv("KB_HOME", str(tmp_path / "old"))
    paths = Paths.from_env().ensure()
    write(paths, "a.jsonl", docs("travel", 6))
    build(paths)
    vs = VersionStore(root=str(paths.versions))
    v = vs.load(1)
    # Rewrite version 1 in the old full-copy layout, as main wrote it.
    d = paths.versions / "1"
    faiss.write_index(v.index, str(d / INDEX_FILE))
    v.manifest.to_parquet(d / MANIFEST_FILE, index=False)
    v.lexical.save(d)
    info = {k: val for k, val in v.info.items() if k != "segments"}
    (d / "version.json").write_text(json.dumps(info), encoding="utf-8")
    shutil.rmtree(paths.versions / SEGMENTS_DIR)
    old = vs.load(1)
    assert_same_results(search_all(old, embedder), search_all(v, embedder))
    write(paths, "b.jsonl", docs("expense", 3))
    r = build(paths)["faiss_index"]
    assert r["kb_version"] == 2
    v2 = vs.load(2)
    assert v2.info["base_version"] is None and len(v2.info["segments"]) == 1
    assert vs.load(1).index.ntotal == 6  # the old version still serves


def test_materialized_copy_is_self_contained(tmp_path, monkeypatch, embedder):
    monkeypatch.setenv("KB_HOME", str(tmp_path / "m"))
    paths = Paths.from_env().ensure()
    write(paths, "a.jsonl", docs("travel", 5))
    build(paths)
    write(paths, "b.jsonl", docs("expense", 5))
    build(paths)
    copy = materialize(paths.versions / "2", tmp_path / "elsewhere" / "2")
    shutil.rmtree(paths.versions)  # nothing left to fall back on
    loaded = load_version_dir(copy)
    assert loaded.number == 2 and len(loaded.info["segments"]) == 2
    assert loaded.index.ntotal == len(loaded.manifest) == 10
    hits = Searcher(loaded, embedder).search("expense policy approval", 3)
    assert hits and hits[0].doc_id.startswith("expense")


def test_damaged_segment_file_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("KB_HOME", str(tmp_path / "bad"))
    paths = Paths.from_env().ensure()
    write(paths, "a.jsonl", docs("travel", 3))
    build(paths)
    vs = VersionStore(root=str(paths.versions))
    seg = paths.versions / SEGMENTS_DIR / vs.info(1)["segments"][0]
    c = sparse.load_npz(seg / "bm25_counts.npz")
    sparse.save_npz(seg / "bm25_counts.npz", c[:1])
    with pytest.raises(ValueError, match="bm25_counts.npz"):
        vs.load(1)


# --- retention --------------------------------------------------------------------------------
@pytest.mark.parametrize("protected,keep_last,keep_days,expected", [
    (set(), 2, 0, [1, 2, 3]), ({2}, 2, 0, [1, 3]), (set(), 5, 0, []),
    (set(), 1, 2.5, [1, 2, 3]), (set(), 1, 100, [])])
def test_removable_versions(protected, keep_last, keep_days, expected):
    from datetime import datetime, timedelta

    from kb_core.retention import removable_versions

    now = datetime(2026, 12, 2, 12)
    created = {n: now - timedelta(days=10 - 2 * n) for n in range(1, 6)}  # v5 is 0 days old
    assert removable_versions(created, protected, keep_last, keep_days, now) == expected


def test_retention_removes_old_version_files_and_keeps_shared_segments(tmp_path, monkeypatch,
                                                                        embedder):
    monkeypatch.setenv("KB_RETAIN_LAST", "1")
    monkeypatch.setenv("KB_RETAIN_DAYS", "0")
    monkeypatch.setenv("KB_HOME", str(tmp_path / "r"))
    paths = Paths.from_env().ensure()
    write(paths, "a.jsonl", docs("travel", 5))
    build(paths)
    (paths.home / "serving.json").write_text(json.dumps({"alias": "production", "version": 1}))
    write(paths, "b.jsonl", docs("expense", 5))
    build(paths)
    write(paths, "c.jsonl", docs("security", 5))
    r = build(paths)["faiss_index"]
    vs = VersionStore(root=str(paths.versions))
    assert vs.numbers() == [1, 3] and r["versions_removed"] == "[2]"  # 1 is served
    v3 = vs.load(3)  # its segments (two of them written for versions 1 and 2) are all kept
    assert len(v3.info["segments"]) == 3 and v3.index.ntotal == len(v3.manifest) == 15
    named = {s for n in vs.numbers() for s in vs.info(n)["segments"]}
    assert {p.name for p in (paths.versions / SEGMENTS_DIR).iterdir()} == named
    import duckdb

    with duckdb.connect(str(paths.db), read_only=True) as con:  # lineage rows stay
        assert con.execute("SELECT count(*) FROM kb_versions").fetchall()[0][0] == 3


def test_reading_a_version_into_the_page_cache_reads_exactly_its_segments(tmp_path, monkeypatch,
                                                                          caplog):
    """What `kb serve` reads before it swaps a version in: every file of the segments the
    version names, once, and nothing else (a leftover folder under segments/ is not read)."""
    monkeypatch.setenv("KB_COMPACT_MAX_DELETED", "0.9")
    monkeypatch.setenv("KB_HOME", str(tmp_path / "kb"))
    paths = Paths.from_env().ensure()
    write(paths, "a.jsonl", docs("travel", 10))
    build(paths)
    write(paths, "b.jsonl", docs("expense", 6))
    build(paths)
    leftover = paths.versions / SEGMENTS_DIR / "not-named-by-any-version"
    leftover.mkdir()
    (leftover / "index.faiss").write_bytes(b"x" * 4096)
    version = VersionStore(root=str(paths.versions)).load(2)
    assert len(version.info["segments"]) == 2
    named = [paths.versions / SEGMENTS_DIR / seg for seg in version.info["segments"]]
    expected = sum(f.stat().st_size for d in named for f in d.iterdir() if f.is_file())
    assert read_into_page_cache(version.path, version.info, block=1000) == expected > 0
    assert read_into_page_cache(None, version.info) == 0  # a version with no folder
    # more than half the memory: reading it would only evict itself
    assert read_into_page_cache(version.path, version.info, memory=2 * expected - 2) == 0
    assert read_into_page_cache(version.path, version.info, memory=2 * expected) == expected
    assert read_into_page_cache(version.path, {"n_chunks": 3}) == 0  # a whole-copy version

    from tests.serve_thread import ServerThread

    with caplog.at_level("WARNING", logger="kb.serve"), ServerThread(paths) as url:
        import httpx

        assert httpx.get(f"{url}/search", params={"q": "travel approval"}).json()["version"] == 2
    swapped = [r.getMessage() for r in caplog.records if "now serving KB version 2" in r.message]
    assert swapped and f"{expected / 2**20:.1f} MB of segments read into the page cache" \
        in swapped[0], swapped
