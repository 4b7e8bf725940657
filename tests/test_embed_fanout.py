"""Fan-out of an embedding backlog (kb_assets/embed_fanout.py): KB_EMBED_WORKERS worker
processes embed shards of the uncached chunks and the `embeddings` asset merges them into the
DuckDB cache. Real model (ONNX fp32, the default), real DuckDB, real worker processes, the
real asset materialized by Dagster.

The workers' vectors are compared EXACTLY (bit for bit) with the in-process ones: a worker
encodes the very slices the in-process path encodes (same texts per encode call, so the same
batches and padding, by construction), and ONNX Runtime's CPU kernels give the same floats
with 1 thread per worker as with 2 in one process (measured here). A cosine bound (>= 0.99999)
would hide a difference in the numerics; exact equality does not. (Splitting a slice into two
encode calls also gave identical floats here, so this guards the numerics and the pairing of
vectors with their cache keys, not the batch composition.) The bfloat16 encoder (used under
`auto` for large backlogs on AMX-BF16 CPUs) is not thread-count invariant, so these tests pin
ONNX, and one test checks the bf16 fan-out by cosine and by pairing instead."""

from __future__ import annotations

import os
import textwrap

import numpy as np
import pytest
from dagster import materialize

from kb_core import settings
from kb_core.text import sha256_text
from kb_assets import embed_fanout
from kb_assets.embed import PROGRESS_EVERY, embeddings, encode_batches, load_vectors
from resources import persistence
from resources.embedder import PACKAGED_MODEL_ID, Embedder
from resources.store import KBStore
from tests.kbtest import REPO

WORDS = ("annual leave request manager approval parking space badge office remote work "
         "expense claim travel insurance laptop password training safety fire drill "
         "holiday overtime salary review contract notice period pension").split()
N_TEXTS = 300
COMMIT_EVERY = 64  # 5 commit batches of 300 texts: worker 0 gets 3 parts, worker 1 gets 2


def corpus(n: int = N_TEXTS) -> list[str]:
    """Short, distinct texts of varied length (4-27 words), a few in Chinese."""
    out = []
    for i in range(n):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(4 + i % 24)]
        text = f"Policy {i}: " + " ".join(words) + "."
        out.append(text + " 員工請假規定。" if i % 10 == 0 else text)
    return out


def make_store(home, texts: list[str]) -> KBStore:
    store = KBStore(db_path=str(home / "kb.duckdb"))
    with store.transaction() as con:
        persistence.insert(con, "chunks", [
            {"chunk_id": i, "doc_key": f"doc{i}", "ordinal": 0, "text": t,
             "text_hash": sha256_text(t)} for i, t in enumerate(texts)])
    return store


def run_embeddings(store: KBStore):
    return materialize([embeddings], resources={"store": store, "embedder": Embedder()},
                       raise_on_error=False)


def metadata(result) -> dict:
    [mat] = [e.event_specific_data.materialization
             for e in result.get_asset_materialization_events()]
    return {k: getattr(v, "value", v) for k, v in mat.metadata.items()}


def cached(store: KBStore) -> int:
    with store.connect() as con:
        return con.execute("SELECT count(*) FROM embedding_cache WHERE model_id = ?",
                           [PACKAGED_MODEL_ID]).fetchone()[0]


@pytest.fixture
def fanout_env(monkeypatch):
    monkeypatch.setenv("KB_EMBED_WORKERS", "2")
    monkeypatch.setenv("KB_EMBED_FANOUT_MIN", "100")
    monkeypatch.setenv("KB_EMBED_COMMIT_EVERY", str(COMMIT_EVERY))
    monkeypatch.delenv("KB_EMBED_BACKEND", raising=False)
    monkeypatch.setenv("KB_EMBED_BF16_MIN", "0")  # ONNX: bit for bit across thread counts


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> np.ndarray:
    """The in-process vectors of corpus() (KB_EMBED_WORKERS=1), in corpus order."""
    texts = corpus()
    store = make_store(tmp_path_factory.mktemp("inproc"), texts)
    saved = {k: os.environ.get(k)
             for k in ("KB_EMBED_WORKERS", "KB_EMBED_COMMIT_EVERY", "KB_EMBED_BF16_MIN")}
    os.environ["KB_EMBED_WORKERS"], os.environ["KB_EMBED_COMMIT_EVERY"] = "1", str(COMMIT_EVERY)
    os.environ["KB_EMBED_BF16_MIN"] = "0"
    try:
        result = run_embeddings(store)
    finally:
        for k, v in saved.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    assert result.success
    meta = metadata(result)
    assert meta["embed_workers"] == 1 and meta["chunks_embedded"] == len(texts)
    assert "embed_worker_pids" not in meta
    return load_vectors(store, PACKAGED_MODEL_ID, [sha256_text(t) for t in texts], 384)


def test_two_workers_give_the_in_process_vectors(tmp_path, fanout_env, reference):
    texts = corpus()
    store = make_store(tmp_path, texts)
    result = run_embeddings(store)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    meta = metadata(result)
    assert meta["embed_workers"] == 2 and meta["chunks_embedded"] == N_TEXTS
    pids = meta["embed_worker_pids"]
    assert len(set(pids)) == 2 and os.getpid() not in pids  # two processes really ran
    assert sum(meta["embed_worker_texts"]) == N_TEXTS
    assert all(r > 0 for r in meta["embed_worker_texts_per_s"])
    assert meta["embed_worker_threads"] == max(1, embed_fanout.cores() // 2)
    got = load_vectors(store, PACKAGED_MODEL_ID, [sha256_text(t) for t in texts], 384)
    assert np.array_equal(got, reference), \
        f"max |diff| {np.abs(got - reference).max()}: the workers' batches differ?"
    assert not any((tmp_path / embed_fanout.SHARDS_DIR).iterdir())  # shards removed
    again = metadata(run_embeddings(store))  # all cached: nothing to fan out
    assert again["chunks_embedded"] == 0 and again["embed_workers"] == 1


CRASH_HOOK = """
import os, signal, sys
from kb_core.hooks import set_fault_hook

def _crash(name):
    # Worker 1 dies (SIGKILL) right after writing its first part.
    if name == "embedding:worker_part_written" and sys.argv[-1].endswith("shard-1"):
        print("simulated crash of worker 1 after its first part", file=sys.stderr, flush=True)
        os.kill(os.getpid(), signal.SIGKILL)

set_fault_hook(_crash)
"""


def test_a_killed_worker_fails_the_step_after_the_finished_parts_are_merged(
        tmp_path, fanout_env, reference, monkeypatch):
    hooks = tmp_path / "hooks"
    hooks.mkdir()
    (hooks / "sitecustomize.py").write_text(textwrap.dedent(CRASH_HOOK), encoding="utf-8")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(hooks), str(REPO)]))
    texts = corpus()
    hashes = [sha256_text(t) for t in texts]
    home = tmp_path / "kb"
    home.mkdir()
    store = make_store(home, texts)

    result = run_embeddings(store)
    assert not result.success
    [failure] = [e for e in result.all_events if e.is_step_failure]
    error = failure.event_specific_data.error
    message = error.cause.message if error.cause else error.message  # the step's own error
    assert "embedding worker 1 of 2" in message and "exited with code -9" in message, message
    assert "shard-1" in message and "simulated crash of worker 1" in message, message
    # Worker 0's 3 parts and worker 1's first part (64 texts) are merged, nothing else.
    # Slices are dealt round-robin: worker 1 has slices 1 and 3 ([64, 128) and [192, 256)
    # of the length-sorted backlog), one 64-text part each; it wrote the first.
    merged = N_TEXTS - COMMIT_EVERY
    assert cached(store) == merged
    last = message.strip().splitlines()[-1]  # what `kb build` prints of a failed step
    assert "worker 1 (" in last and "shard-1, exit code -9)" in last, last
    assert f"{merged} of {N_TEXTS} vectors" in last and "re-run" in last, last
    with store.connect() as con:
        have = {h for (h,) in con.execute("SELECT text_hash FROM embedding_cache").fetchall()}
    idx = [i for i, h in enumerate(hashes) if h in have]
    got = load_vectors(store, PACKAGED_MODEL_ID, [hashes[i] for i in idx], 384)
    assert np.array_equal(got, reference[idx])  # merged parts are whole and right
    leftover = list((home / embed_fanout.SHARDS_DIR).iterdir())
    assert len(leftover) == 1  # kept (with the workers' output) until the next run

    monkeypatch.delenv("PYTHONPATH")
    rerun = run_embeddings(store)
    assert rerun.success
    meta = metadata(rerun)
    # Only the 64 still uncached: below KB_EMBED_FANOUT_MIN, so in-process this time.
    assert meta["chunks_embedded"] == COMMIT_EVERY and meta["embed_workers"] == 1
    assert meta["chunks_reused_from_cache"] == merged
    assert not list((home / embed_fanout.SHARDS_DIR).iterdir())  # the leftover is gone
    assert np.array_equal(load_vectors(store, PACKAGED_MODEL_ID, hashes, 384), reference)


def test_bf16_workers_pair_every_vector_with_its_text(tmp_path, fanout_env, monkeypatch):
    """bfloat16 workers (1 thread each) against the in-process bf16 encoder (2 threads): the
    floats differ in the 4th decimal (oneDNN's blocking depends on the thread count), so the
    check is cosine >= 0.9999 per text, and each worker vector's nearest in-process vector
    is its own text's (a vector merged under the wrong cache key would fail that)."""
    monkeypatch.setenv("KB_EMBED_BACKEND", "bf16")
    texts = corpus()
    hashes = [sha256_text(t) for t in texts]
    monkeypatch.setenv("KB_EMBED_WORKERS", "1")
    (tmp_path / "inproc").mkdir()
    inproc = make_store(tmp_path / "inproc", texts)
    assert metadata(run_embeddings(inproc))["encoder_backend"] == "bf16"
    want = load_vectors(inproc, PACKAGED_MODEL_ID, hashes, 384)

    monkeypatch.setenv("KB_EMBED_WORKERS", "2")
    (tmp_path / "fanout").mkdir()
    store = make_store(tmp_path / "fanout", texts)
    result = run_embeddings(store)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    meta = metadata(result)
    assert meta["embed_workers"] == 2 and meta["encoder_backend"] == "bf16"
    got = load_vectors(store, PACKAGED_MODEL_ID, hashes, 384)
    assert (got * want).sum(axis=1).min() >= 0.9999
    assert np.array_equal((got @ want.T).argmax(axis=1), np.arange(len(texts)))


def test_below_the_threshold_no_worker_process_starts(tmp_path, fanout_env, monkeypatch):
    monkeypatch.setenv("KB_EMBED_FANOUT_MIN", "1000")

    def no_process(*args, **kwargs):
        raise AssertionError(f"a worker process was started: {args}")

    monkeypatch.setattr(embed_fanout, "start_worker", no_process)
    store = make_store(tmp_path, corpus(150))
    result = run_embeddings(store)
    assert result.success, [e.message for e in result.all_events if e.is_failure]
    meta = metadata(result)
    assert meta["embed_workers"] == 1 and meta["chunks_embedded"] == 150
    assert "embed_worker_pids" not in meta
    assert not (tmp_path / embed_fanout.SHARDS_DIR).exists()


def test_worker_count_and_threshold(monkeypatch):
    monkeypatch.delenv("KB_EMBED_WORKERS", raising=False)
    monkeypatch.delenv("KB_EMBED_FANOUT_MIN", raising=False)
    assert embed_fanout.fanout_workers(10**6) == 1  # default: in-process, as before
    monkeypatch.setenv("KB_EMBED_WORKERS", "3")
    minimum = settings.get("KB_EMBED_FANOUT_MIN")
    assert embed_fanout.fanout_workers(minimum - 1) == 1
    assert embed_fanout.fanout_workers(minimum) == 3
    monkeypatch.setenv("KB_EMBED_WORKERS", "0")
    with pytest.raises(settings.SettingError, match="KB_EMBED_WORKERS='0'"):
        embed_fanout.fanout_workers(10**6)


@pytest.mark.parametrize("n, commit_every", [(0, 512), (1, 512), (300, 64), (1000, 512),
                                             (1000, 100), (129, 128), (700, 1000)])
def test_encode_batches_are_the_in_process_slices(n, commit_every):
    batches = encode_batches(n, commit_every)
    flat = [s for b in batches for s in b]
    assert [a for a, _ in flat] == ([0] + [b for _, b in flat[:-1]] if flat else [])
    assert (flat[-1][1] if flat else 0) == n
    for k, batch in enumerate(batches):
        start = k * commit_every
        # what encode_slices cuts a commit batch of todo[start:start + commit_every] into
        expected = [(start + i, start + min(i + PROGRESS_EVERY, min(commit_every, n - start)))
                    for i in range(0, min(commit_every, n - start), PROGRESS_EVERY)]
        assert batch == expected


def test_leftover_shard_folders_are_removed(tmp_path):
    store = KBStore(db_path=str(tmp_path / "kb.duckdb"))
    dead = tmp_path / embed_fanout.SHARDS_DIR / "run-dead" / "shard-0"
    dead.mkdir(parents=True)
    (dead / "part-00000.json").write_text("{}")
    (dead / ".part-00001.npy.tmp").write_bytes(b"half")
    assert embed_fanout.clean_leftovers(store) == 1
    assert not list((tmp_path / embed_fanout.SHARDS_DIR).iterdir())
    assert embed_fanout.clean_leftovers(KBStore(db_path=str(tmp_path / "x" / "kb.duckdb"))) == 0
