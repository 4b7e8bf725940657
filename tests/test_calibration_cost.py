"""A publish pays for the change in calibration too: question vectors come through the
embedding cache (under "<model>#questions", apart from chunk vectors), and a version's
synthetic calibration questions are reused by the next publish for unchanged documents."""

import numpy as np

from kb_assets.embed import QUESTION_CACHE_SUFFIX, encode_cached
from resources.embedder import Embedder
from resources.store import KBStore


ASKED: list[int] = []  # module-level: Embedder is a pydantic model


class QuestionCounter(Embedder):
    def encode_questions(self, texts):
        ASKED.append(len(texts))
        return super().encode_questions(texts)


def test_question_vectors_are_encoded_once_and_kept_apart(kb_paths):
    store, emb = KBStore(db_path=str(kb_paths.db)), QuestionCounter()
    ASKED.clear()
    qs = ["How many days of leave?", "Who approves overtime?", "How many days of leave?"]
    first = encode_cached(store, emb, qs)
    second = encode_cached(store, emb, qs + ["A new question"])
    assert ASKED == [2, 1]  # duplicates once; then only the new text
    assert np.allclose(first, second[:3], atol=1e-6)
    assert np.allclose(first, emb.encode_questions(qs), atol=1e-5)
    with store.connect() as con:
        keys = {r[0] for r in con.execute("SELECT DISTINCT model_id FROM embedding_cache").fetchall()}
    assert keys == {emb.model_id + QUESTION_CACHE_SUFFIX}


def test_next_publish_reuses_questions_of_unchanged_documents(kb_paths):
    """Two real publishes on the samples: the second keeps the first's questions for every
    document whose content did not change (same qid and text), and records its own."""
    from resources.vector_index import VersionStore
    from tests.kbtest import copy_samples, run_job

    copy_samples(kb_paths)
    run_job(kb_paths, "index_job")
    first = VersionStore(root=str(kb_paths.versions)).info(1)["calibration_questions"]
    assert first
    victim = sorted(p for p in kb_paths.inbox.rglob("*.md"))[0]
    victim.write_text(victim.read_text(encoding="utf-8") + "\n\nA new closing paragraph.\n",
                      encoding="utf-8")
    run_job(kb_paths, "index_job")
    second = VersionStore(root=str(kb_paths.versions)).info(2)["calibration_questions"]
    before = {q["content_hash"]: q for q in first}
    reused = [q for q in second if q["content_hash"] in before]
    assert reused and all(q == before[q["content_hash"]] for q in reused)
    assert len(reused) >= len(second) - 1
