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


def test_next_publish_reuses_questions_of_unchanged_documents(kb_paths, monkeypatch):
    """Two real publishes on the samples: the second keeps the first's questions for every
    document whose content did not change (same qid and text), and records its own."""
    from resources.vector_index import VersionStore
    from tests.kbtest import copy_samples, run_job

    monkeypatch.setenv("KB_CALIBRATION_CARRY_MAX", "0")  # every version calibrates
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


def test_a_small_change_keeps_the_thresholds_and_small_changes_add_up(kb_paths, monkeypatch):
    """Real publishes on the samples with a 10% bound: a one-paragraph edit (its last chunk
    replaced: 2 chunks came or went) keeps version 1's thresholds without loading a version,
    recorded as carried with the chunks changed; the changes add up until a new document
    passes the bound and the version calibrates itself."""
    from resources.vector_index import VersionStore
    from tests.kbtest import copy_samples, materialized, run_job, write

    monkeypatch.setenv("KB_CALIBRATION_CARRY_MAX", "0.1")
    copy_samples(kb_paths)
    run_job(kb_paths, "index_job")
    versions = VersionStore(root=str(kb_paths.versions))
    v1 = versions.info(1)
    assert v1["relevance_provenance"]["calibrated_on"] == 1
    assert not v1["relevance_provenance"]["carried"]

    def changed_rows(a: int, b: int) -> int:
        from resources.store import KBStore

        with KBStore(db_path=str(kb_paths.db)).connect() as con:
            return con.execute("""
                SELECT count(*) FROM (
                  (SELECT chunk_id, text_hash FROM kb_version_members WHERE version = ?
                   EXCEPT SELECT chunk_id, text_hash FROM kb_version_members WHERE version = ?)
                  UNION ALL
                  (SELECT chunk_id, text_hash FROM kb_version_members WHERE version = ?
                   EXCEPT SELECT chunk_id, text_hash FROM kb_version_members WHERE version = ?))""",
                               [a, b, b, a]).fetchall()[0][0]

    victim = sorted(p for p in kb_paths.inbox.rglob("*.md"))[0]
    victim.write_text(victim.read_text(encoding="utf-8") + "\n\nA new closing paragraph.\n",
                      encoding="utf-8")
    result = run_job(kb_paths, "index_job")
    v2 = versions.info(2)
    prov = v2["relevance_provenance"]
    assert prov["carried"] and prov["calibrated_on"] == 1
    assert prov["changed_since"] == changed_rows(1, 2) > 0
    assert prov["changed_since"] <= 0.1 * v1["n_chunks"]
    assert v2["relevance"] == v1["relevance"]
    meta = materialized(result)["faiss_index"]
    assert meta["relevance_carried"] is True and meta["relevance_calibrated_on"] == 1

    # A whole new document: the share since version 1 passes 10%, version 3 calibrates.
    write(kb_paths, "policies/remote_work_stipend.md", "# Remote work stipend\n\n" + " ".join(
        f"Employees working remotely receive a monthly stipend of {n} dollars for internet, "
        f"furniture item {n} and electricity, claimed through the expense portal by day {n}."
        for n in range(1, 60)))
    run_job(kb_paths, "index_job")
    v3 = versions.info(3)
    assert changed_rows(1, 3) > 0.1 * v1["n_chunks"]
    assert v3["relevance_provenance"] == {**v3["relevance_provenance"], "calibrated_on": 3,
                                          "carried": False, "changed_since": 0}
