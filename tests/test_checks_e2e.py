"""Data-quality gates in real Dagster runs (real instance, DuckDB, FAISS, packaged model).

Each incident from the issue is reproduced with real files in a temporary inbox: the
blocking check fails, nothing downstream is materialized, the previous KB version still
answers, and the check's metadata names the cause. The gates run in a job made of the four
KB assets, the KB checks and a probe asset in the `release` group standing in for everything
downstream of faiss_index (the real release assets have their own tests)."""

import json
import random

import duckdb
import numpy as np
import pytest
from dagster import (AssetSelection, DagsterInstance, Definitions, MaterializeResult, asset,
                     define_asset_job)

from checks.kb_checks import KB_CHECKS
from resources.quality_config import QualityThresholds
from dagster_project.cli.build import summarize
from kb_core.serving import resolve
from kb_assets.chunks import cleaned_chunks
from kb_assets.embed import embeddings
from kb_assets.index import faiss_index
from kb_assets.ingest import raw_docs
from kb_assets.searcher import Searcher
from resources import default_resources
from resources.config import KBConfig
from resources.vector_index import SOURCES_FILE, VersionStore, build_faiss_index
from tests.kbtest import copy_samples, materialized, write

WORDS = ("policy leave travel budget laptop vpn badge parking visitor meeting expense receipt "
         "manager approval request form office remote contract training security password "
         "incident report device network access account holiday calendar payroll benefit "
         "insurance claim vendor invoice purchase order shipment warehouse inventory audit "
         "review quarter annual monthly weekly deadline project milestone release support "
         "ticket escalation priority customer partner region team member director").split()


@asset(deps=[faiss_index], group_name="release", description="stands in for downstream assets")
def release_probe() -> MaterializeResult:
    return MaterializeResult(metadata={"ran": True})


def run_gates(paths, **overrides):
    """One real in-process run of raw_docs -> ... -> faiss_index -> release_probe + KB checks."""
    defs = Definitions(
        assets=[raw_docs, cleaned_chunks, embeddings, faiss_index, release_probe],
        asset_checks=KB_CHECKS,
        jobs=[define_asset_job("gates_job", selection=AssetSelection.all())],
        resources=default_resources(paths, **overrides))
    with DagsterInstance.get() as instance:
        return defs.resolve_job_def("gates_job").execute_in_process(
            instance=instance, raise_on_error=False)


def checks(result) -> dict:
    return {e.check_name: e for e in result.get_asset_check_evaluations()}


def md(evaluation) -> dict:
    return {k: getattr(v, "value", v) for k, v in evaluation.metadata.items()}


def failed_blocking(result) -> set[str]:
    return {n for n, e in checks(result).items() if not e.passed and e.blocking}


def sentence(rng: random.Random, n: int) -> str:
    return " ".join(rng.choice(WORDS) for _ in range(n)).capitalize() + "."


def long_doc(rng: random.Random, n_tokens: int) -> str:
    sents, total = [], 0
    while total < n_tokens:
        k = rng.randint(8, 20)
        sents.append(sentence(rng, k))
        total += k
    return " ".join(sents)


def jsonl(records: list[dict]) -> str:
    return "\n".join(json.dumps(r) for r in records) + "\n"


def healthy_records(rng: random.Random, n: int, prefix: str) -> list[dict]:
    return [{"id": f"{prefix}-{i}", "title": f"{prefix} {i}", "text": sentence(rng, 30)}
            for i in range(n)]


def search_v(paths, version: int, query: str) -> list[str]:
    return [h.doc_id for h in Searcher.open(paths, version).search(query, k=3)]


def assert_blocked(result, at_asset: str, check_name: str) -> dict:
    """The run failed on `check_name`; nothing after `at_asset` was materialized."""
    assert not result.success
    assert check_name in failed_blocking(result), checks(result)
    order = ["raw_docs", "cleaned_chunks", "embeddings", "faiss_index", "release_probe"]
    done = materialized(result)
    for name in order[order.index(at_asset) + 1:]:
        assert name not in done, f"{name} ran after blocking check {check_name} failed"
    lines, ok = summarize(result)  # what `kb build` prints
    assert not ok and any(check_name in line and "FAILED" in line for line in lines), lines
    return md(checks(result)[check_name])


@pytest.mark.slow
def test_healthy_sample_batch_passes_every_check_then_incremental(kb_paths):
    copy_samples(kb_paths)
    r = run_gates(kb_paths)
    assert r.success
    evs = checks(r)
    assert len(evs) == 22 and all(e.passed for e in evs.values()), {
        n: e.description for n, e in evs.items() if not e.passed}
    assert materialized(r)["release_probe"]["ran"] is True
    # Recorded for audits, attached to the version the run published.
    with duckdb.connect(str(kb_paths.db), read_only=True) as con:
        rows = con.execute("SELECT asset, check_name, passed, kb_version, metadata "
                           "FROM check_results WHERE run_id = ?", [r.run_id]).fetchall()
    assert len(rows) == 22 and {row[3] for row in rows} == {1} and all(row[2] for row in rows)
    meta = json.loads(next(row[4] for row in rows if row[1] == "raw_docs_required_fields"))
    assert meta["expectations"][0]["success"] is True

    # An incremental healthy batch is compared against version 1 and passes too.
    rng = random.Random(3)
    write(kb_paths, "new/extra.md", "# Extra travel policy\n\n" + long_doc(rng, 120))
    r = run_gates(kb_paths)
    evs = checks(r)
    assert r.success and all(e.passed for e in evs.values()), {
        n: e.description for n, e in evs.items() if not e.passed}
    assert md(evs["raw_docs_required_fields"])["batch_documents"] == 1
    assert "unchanged content" in md(evs["chunking_drift"])["population"]
    assert 0 < md(evs["embeddings_centroid_drift"])["centroid_cosine"] <= 1
    assert materialized(r)["faiss_index"]["kb_version"] == 2


def test_incident_empty_fields_and_duplicates_blocked_until_fixed(kb_paths):
    rng = random.Random(1)
    write(kb_paths, "base.jsonl", jsonl(healthy_records(rng, 6, "base")))
    assert run_gates(kb_paths).success
    before = search_v(kb_paths, 1, "base policy")

    # 100 records: 60 with empty text (the export lost its text column for most rows), 6
    # copying another record's text.
    recs = healthy_records(rng, 100, "batch")
    for i in range(60):
        recs[i]["text"] = ""
    for i, src in zip(range(70, 76), range(80, 86)):
        recs[i]["text"] = recs[src]["text"]
    write(kb_paths, "export/batch.jsonl", jsonl(recs))
    r = run_gates(kb_paths)
    meta = assert_blocked(r, "raw_docs", "raw_docs_quarantine_ratio")
    assert meta["quarantined"] == 60 and meta["quarantine_ratio"] == 0.6
    assert "field 'text' is empty" in meta["offending_rows"]
    meta = md(checks(r)["raw_docs_non_empty_text"])
    assert not checks(r)["raw_docs_non_empty_text"].passed
    assert meta["failed_expectation"] == "expect_not_null(text)"
    assert "60 of 100 rows unexpected" in meta["observed"] and "50.0%" in meta["expected"]
    assert "export/batch.jsonl:1" in meta["offending_rows"]
    # Copies are listed, as a warning: they never block.
    dup = checks(r)["raw_docs_duplicate_content"]
    meta = md(dup)
    assert meta["duplicates"] == 6 and "batch-80" in meta["offending_rows"]
    assert "batch-70" in meta["offending_rows"] and dup.severity.value == "WARN"
    assert VersionStore(root=str(kb_paths.versions)).numbers() == [1]
    assert resolve(kb_paths).version == 1 and search_v(kb_paths, 1, "base policy") == before

    # A second build is judged against the published version, not the run's delta: still blocked.
    r = run_gates(kb_paths)
    assert_blocked(r, "raw_docs", "raw_docs_quarantine_ratio")
    assert md(checks(r)["raw_docs_duplicate_content"])["duplicates"] == 6

    # Fix the export: the next run proceeds and publishes (the copies are indexed once).
    write(kb_paths, "export/batch.jsonl", jsonl(recs[60:]))
    r = run_gates(kb_paths)
    assert r.success and not failed_blocking(r)
    assert materialized(r)["faiss_index"]["kb_version"] == 2 and "release_probe" in materialized(r)


def chunker(paths, size: int) -> KBConfig:
    return KBConfig(inbox=str(paths.inbox), chunk_size=size, chunk_overlap=40)


@pytest.mark.slow
def test_incident_chunker_shrinks_chunks_blocked_until_reverted_or_accepted(kb_paths):
    rng = random.Random(2)
    for i in range(6):
        write(kb_paths, f"handbook/part{i}.md", f"# Handbook part {i}\n\n" + long_doc(rng, 1400))
    assert run_gates(kb_paths, kb_config=chunker(kb_paths, 240)).success
    before = search_v(kb_paths, 1, "parking visitor badge")

    r = run_gates(kb_paths, kb_config=chunker(kb_paths, 150))
    meta = assert_blocked(r, "cleaned_chunks", "chunking_drift")
    # Sizes in the embedder's word pieces (it reads at most 254 per chunk).
    assert meta["previous_mean_tokens"] > 200 and meta["current_mean_tokens"] < 160
    assert meta["change_mean_tokens"] > 0.25 and "KB_ACCEPT_DRIFT" in checks(r)["chunking_drift"].description
    assert meta["failed_expectation"] == "expect_mean_between(n_tokens)"
    assert "embeddings" not in materialized(r)
    assert resolve(kb_paths).version == 1 and search_v(kb_paths, 1, "parking visitor badge") == before

    # Re-running with the same setting is still blocked (judged vs the published version).
    assert_blocked(run_gates(kb_paths, kb_config=chunker(kb_paths, 150)), "cleaned_chunks",
                   "chunking_drift")
    # Reverting the setting proceeds: same chunks as version 1, so no new version.
    r = run_gates(kb_paths, kb_config=chunker(kb_paths, 240))
    assert r.success and materialized(r)["faiss_index"]["new_version"] is False
    # Accepting the change explicitly proceeds and publishes; the next run compares with it.
    r = run_gates(kb_paths, kb_config=chunker(kb_paths, 150),
                  quality=QualityThresholds(accept_drift=True))
    assert r.success and materialized(r)["faiss_index"]["kb_version"] == 2
    assert "ACCEPTED" in checks(r)["chunking_drift"].description
    r = run_gates(kb_paths, kb_config=chunker(kb_paths, 150))
    assert r.success and checks(r)["chunking_drift"].passed


def publish_missing_ids(paths, source: int, number: int, drop: int) -> list[int]:
    """Publish a copy of version `source` whose FAISS index lacks `drop` chunk ids."""
    store = VersionStore(root=str(paths.versions))
    v = store.load(source)
    ids = v.chunk_ids
    keep = ids[:-drop]
    vectors = np.stack([v.index.reconstruct(int(i)) for i in keep])
    info = {k: val for k, val in v.info.items()
            if k not in ("version", "index_sha256", "manifest_sha256")}
    sources = json.loads((v.path / SOURCES_FILE).read_text(encoding="utf-8"))
    store.publish_whole(number, build_faiss_index(vectors, keep, v.index.d), v.manifest, info,
                        sources)
    return ids[-drop:].tolist()


def publish_foreign_vectors(paths, source: int, number: int) -> None:
    """Publish a copy of version `source` whose vectors belong to other chunks."""
    store = VersionStore(root=str(paths.versions))
    v = store.load(source)
    ids = v.chunk_ids
    vectors = np.stack([v.index.reconstruct(int(i)) for i in ids])
    info = {k: val for k, val in v.info.items()
            if k not in ("version", "index_sha256", "manifest_sha256")}
    sources = json.loads((v.path / SOURCES_FILE).read_text(encoding="utf-8"))
    store.publish_whole(number, build_faiss_index(np.roll(vectors, 1, axis=0), ids, v.index.d),
                        v.manifest, info, sources)


def test_incident_damaged_index_blocks_release(kb_paths):
    rng = random.Random(4)
    write(kb_paths, "docs.jsonl", jsonl(healthy_records(rng, 12, "doc")))
    assert run_gates(kb_paths).success
    before = search_v(kb_paths, 1, "doc policy")

    missing = publish_missing_ids(kb_paths, source=1, number=2, drop=3)
    r = run_gates(kb_paths)
    meta = assert_blocked(r, "faiss_index", "faiss_index_ids_resolve")
    assert "faiss_index_size" in failed_blocking(r)
    assert meta["missing_from_index"] == 3 and meta["kb_version"] == 2
    assert str(missing[0]) in meta["offending_rows"]
    assert "index=9" in checks(r)["faiss_index_size"].description
    # The damaged version is not the baseline of later runs; version 1 still answers.
    with duckdb.connect(str(kb_paths.db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM check_results WHERE kb_version = 2 AND "
                           "NOT passed AND blocking").fetchall()[0][0] >= 2
    assert search_v(kb_paths, 1, "doc policy") == before

    # The next run supersedes the damaged version with a fresh one and proceeds.
    r = run_gates(kb_paths)
    assert r.success and not failed_blocking(r)
    assert materialized(r)["faiss_index"]["kb_version"] == 3 and "release_probe" in materialized(r)
    assert search_v(kb_paths, 3, "doc policy") == before


def test_incident_index_vectors_do_not_match_chunk_table(kb_paths):
    rng = random.Random(5)
    write(kb_paths, "docs.jsonl", jsonl(healthy_records(rng, 10, "doc")))
    assert run_gates(kb_paths).success
    publish_foreign_vectors(kb_paths, source=1, number=2)
    r = run_gates(kb_paths)
    meta = assert_blocked(r, "faiss_index", "faiss_vectors_match_chunks")
    assert meta["mismatched"] == 10 and meta["sampled"] == 10
    assert checks(r)["faiss_index_size"].passed and checks(r)["faiss_index_ids_resolve"].passed


def test_pii_left_unmasked_is_blocked(kb_paths):
    write(kb_paths, "contacts.md", "# Contacts\n\nWrite to jane.doe@northwind.example or call "
                                   "+44 20 7946 0958 for badge requests.")
    write(kb_paths, "ok.md", "# Parking\n\nVisitors park in bay four after signing in.")
    r = run_gates(kb_paths, kb_config=KBConfig(inbox=str(kb_paths.inbox), mask_pii=False))
    meta = assert_blocked(r, "cleaned_chunks", "chunks_pii_free")
    assert meta["chunks_with_pii"] == 1 and "EMAIL" in checks(r)["chunks_pii_free"].description
    assert "contacts.md" in meta["offending_rows"]
    assert "jane.doe" not in meta["offending_rows"] and "ja***" in meta["offending_rows"]
    # With masking on (the default) the same documents pass.
    r = run_gates(kb_paths)
    assert r.success and checks(r)["chunks_pii_free"].passed


@pytest.mark.slow
def test_odd_batches_never_crash(kb_paths):
    # Empty inbox: a valid, explicit state.
    r = run_gates(kb_paths)
    evs = checks(r)
    assert r.success and all(e.passed for e in evs.values())
    assert "no valid documents" in evs["raw_docs_required_fields"].description
    assert "empty" in evs["faiss_smoke_query"].description

    # One document.
    write(kb_paths, "one.md", "# One\n\nA single short policy about visitor badges.")
    r = run_gates(kb_paths)
    assert r.success and all(e.passed for e in checks(r).values())
    assert "tolerated" not in checks(r)["raw_docs_duplicate_content"].description

    # All documents removed after a published version.
    (kb_paths.inbox / "one.md").unlink()
    r = run_gates(kb_paths)
    evs = checks(r)
    assert r.success and all(e.passed for e in evs.values()), {
        n: e.description for n, e in evs.items() if not e.passed}
    assert "no valid documents" in evs["raw_docs_required_fields"].description

    # Only broken files: quarantined, and a small batch is tolerated, not blocked.
    write(kb_paths, "bad.jsonl", '{"id": 1, "text": ""}\n{not json}\n')
    r = run_gates(kb_paths)
    evs = checks(r)
    assert r.success and evs["raw_docs_quarantine_ratio"].passed
    assert "tolerated" in evs["raw_docs_quarantine_ratio"].description


@pytest.mark.slow
def test_kb_build_cli_names_the_failed_check_exits_nonzero_and_search_is_unchanged(kb_paths):
    import os
    import subprocess
    import sys
    from pathlib import Path

    kb = [sys.executable, "-m", "dagster_project.cli"]  # `kb` from this checkout
    repo = Path(__file__).resolve().parents[1]
    env = {**os.environ, "KB_HOME": str(kb_paths.home)}
    rng = random.Random(6)
    write(kb_paths, "base.jsonl", jsonl(healthy_records(rng, 6, "base")))
    assert run_gates(kb_paths).success

    def kb_cmd(*args):
        return subprocess.run([*kb, *args], env=env, cwd=repo, capture_output=True, text=True,
                              timeout=600)

    before = kb_cmd("search", "base policy", "--json")
    assert before.returncode == 0 and json.loads(before.stdout)["hits"]
    recs = healthy_records(rng, 40, "batch")
    for r in recs[:24]:  # most of the export lost its text: a broken feed
        r["text"] = "   "
    write(kb_paths, "export.jsonl", jsonl(recs))
    build = kb_cmd("build", "--select", "kb")
    assert build.returncode == 1, build.stdout + build.stderr
    assert "FAILED" in build.stdout.splitlines()[0]
    line = next(x for x in build.stdout.splitlines() if "raw_docs_quarantine_ratio" in x)
    assert "FAILED (ERROR)" in line and "60.0% of 40 batch records were quarantined" in line
    assert "not run (an upstream step or blocking check failed): cleaned_chunks," in build.stdout
    assert "The last good KB version keeps serving" in build.stdout
    after = kb_cmd("search", "base policy", "--json")
    assert after.returncode == 0 and after.stdout == before.stdout
