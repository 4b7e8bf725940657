"""The incident, played for real: v1 built from the sample corpus and promoted; v2 built from
a bad batch with a smaller chunk size fails its gate, a fine-tune is trained on it (OpenAI
provider, local stand-in server) and v2 is force-promoted; production is rolled back to v1. The on-call engineer's questions are then answered by `kb audit` from the
lineage recorded along the way (DuckDB, MLflow mirror, Dagster event log)."""

import json
import secrets
import time
from datetime import timedelta

import pytest

from dagster_project.cli import main
from resources import KBConfig
from resources.registry import ReleaseConfig, alias_history
from resources.store import KBStore
from tests.fake_openai_server import FakeOpenAI
from tests.kbtest import GOLDEN, copy_samples, materialized, run_job, write
from tests.test_ft_helpers import FT_CHAIN, run_assets, step_failures

BAD_DOC = "bad/refund_policy.md"
BAD_FILES = {BAD_DOC, "bad/travel_override.txt"}


def audit_json(capsys, *argv) -> dict:
    capsys.readouterr()
    assert main(["audit", *argv, "--format", "json"]) == 0, capsys.readouterr().err
    return json.loads(capsys.readouterr().out)


def audit_md(capsys, *argv) -> str:
    capsys.readouterr()
    assert main(["audit", *argv]) == 0, capsys.readouterr().err
    return capsys.readouterr().out


def kb_cli(capsys, *argv) -> str:
    capsys.readouterr()
    code = main(list(argv))
    out = capsys.readouterr()
    assert code == 0, out.err
    return out.out


@pytest.mark.slow
def test_incident_postmortem(kb_paths, capsys, monkeypatch):
    store = KBStore(db_path=str(kb_paths.db))
    # -- v1: the good corpus, evaluated and promoted ---------------------------------------
    copy_samples(kb_paths)
    # Latency is not under test here (and a shared 2-core machine is slow): relax only it.
    r1 = run_job(kb_paths, "kb_job", release_config=ReleaseConfig(golden_path=str(GOLDEN),
                                                                 max_p95_latency_ms=60_000))
    assert r1.success
    first = alias_history(store, "kb", "production")
    assert [(m["to_version"], m["run_id"]) for m in first] == [(1, r1.run_id)]  # auto-promoted

    # -- v2: a bad batch, a smaller chunk size; the gate rejects it ------------------------
    write(kb_paths, BAD_DOC, "# Refund policy (draft)\n\nRefunds are granted for 400 days "
                              "after purchase, no receipt needed.\n")
    write(kb_paths, "bad/travel_override.txt", "Business class is approved for every flight "
                                               "longer than 30 minutes.\n")
    write(kb_paths, "bad/broken.txt", b"\xff\xfe\x00not text")
    # The chunking-drift gate blocks a chunker change unless accepted for one run (as the
    # operator who shipped v2 did); accepted checks are part of what the audit must show.
    monkeypatch.setenv("KB_ACCEPT_DRIFT", "1")
    r2 = run_job(kb_paths, "kb_job",
                 kb_config=KBConfig(inbox=str(kb_paths.inbox), chunk_size=60, chunk_overlap=10),
                 release_config=ReleaseConfig(golden_path=str(GOLDEN),
                                              min_recall_at_3=1.01))  # the gate rejects v2
    monkeypatch.delenv("KB_ACCEPT_DRIFT")
    assert not r2.success  # the blocking gate check failed: production stayed v1
    with store.connect(read_only=True) as con:
        versions = con.execute("SELECT version, run_id FROM kb_versions ORDER BY 1").fetchall()
    assert versions == [(1, r1.run_id), (2, r2.run_id)]
    # The UI shows the same links: the release materialization names the building run,
    # the MLflow model version and what changed.
    release = materialized(r2)["kb_release"]
    assert release["built_by_run_id"] == r2.run_id and release["mlflow_model_uri"] == "models:/kb/2"
    assert f"| added | {BAD_DOC} |" in release["changes_since_previous"]

    # -- the fine-tune chain runs on v2 (OpenAI provider: the local stand-in server) ------
    key = "sk-test-" + secrets.token_hex(8)
    with FakeOpenAI(api_key=key, steps_to_finish=2) as server:
        for var, value in (("OPENAI_API_KEY", key), ("OPENAI_BASE_URL", server.base_url),
                           ("KB_FT_PROVIDER", "openai")):
            monkeypatch.setenv(var, value)
        rf = run_assets(kb_paths, FT_CHAIN, **fast_openai(kb_paths))
    for var in ("OPENAI_API_KEY", "OPENAI_BASE_URL", "KB_FT_PROVIDER"):
        monkeypatch.delenv(var)
    assert rf.success, step_failures(rf)
    assert materialized(rf)["assistant_release"]["production_version"] == 1

    # -- 23:45: someone forces v2 live; 02:00: rollback to v1 -----------------------------
    kb_cli(capsys, "promote", "2", "--force", "--reason", "urgent refund policy update")
    time.sleep(2.2)  # alias moves are recorded to the second
    kb_cli(capsys, "rollback", "--reason", "hallucination rate jumped")
    moves = alias_history(store, "kb", "production")
    bad, back = moves[-2], moves[-1]
    assert (bad["to_version"], bad["forced"], back["to_version"]) == (2, True, 1)

    # -- what was live inside the bad window? (asked in UTC+8, the on-call's zone) ---------
    mid = bad["event_at"] + (back["event_at"] - bad["event_at"]) / 2
    local = (mid + timedelta(hours=8)).replace(microsecond=0).isoformat() + "+08:00"
    at = audit_json(capsys, "at", local)
    kb = at["models"]["kb"]
    assert kb["version"] == 2 and kb["built_by_run"] == r2.run_id
    assert kb["set_by"]["forced"] is True
    assert kb["set_by"]["reason"] == "urgent refund policy update"
    assert kb["ended_by"]["to_version"] == 1
    assert kb["ended_by"]["reason"] == "rollback: hallucination rate jumped"
    assert kb["registry"]["status"] == "rejected"
    asst = at["models"]["kb-assistant"]
    assert asst["version"] == 1 and asst["built_by_run"] == rf.run_id
    assert asst["ft_dataset"]["dataset_version"] == 1 and asst["kb_version"] == 2
    run2 = at["dagster_runs"][r2.run_id]
    assert run2["found"] and run2["job"] == "kb_job"
    assert "faiss_index" in run2["assets_materialized"]
    md = audit_md(capsys, "at", local)
    assert "converted to UTC" in md
    row = next(line for line in md.splitlines() if line.startswith("| kb | v2 |"))
    assert r2.run_id in row and "| yes |" in row and "urgent refund policy update" in row
    # before the force and after the rollback, v1 served
    before = (bad["event_at"] - timedelta(seconds=1)).isoformat(sep=" ")
    assert audit_json(capsys, "at", before)["models"]["kb"]["version"] == 1
    assert audit_json(capsys, "at", "now")["models"]["kb"]["version"] == 1

    # -- what went into v2 and what changed from v1 ---------------------------------------
    v2 = audit_json(capsys, "version", "2")
    assert v2["run_id"] == r2.run_id and v2["chunker"]["size"] == 60
    d = v2["diff"]
    assert d["a"] == 1 and {"chunker.size", "chunker.overlap"} <= set(d["settings_changed"])
    assert {s["path"] for s in d["sources"] if s["change"] == "added"} == BAD_FILES
    assert {x["doc_key"] for x in d["document_changes"] if x["change"] == "added"} == BAD_FILES
    assert d["documents"]["rechunked"] >= 30 and d["documents"]["removed"] == 0
    assert d["chunk_stats"]["1"]["max"] > 60 >= d["chunk_stats"]["2"]["max"]
    assert [(q["source_path"], q["this_run"]) for q in v2["quarantine"]] == [
        ("bad/broken.txt", True)]
    gate = [c for c in v2["checks"] if c["check_name"] == "promotion_gate"]
    assert gate and gate[0]["passed"] is False
    drift = [c for c in v2["checks"] if c["check_name"] == "chunking_drift"]
    assert drift and drift[0]["passed"] and drift[0]["overridden"]  # KB_ACCEPT_DRIFT=1
    assert v2["evals"] and v2["evals"][0]["passed"] is False
    assert [(w["forced"], w["until"] is not None)
            for w in v2["production_windows"]] == [(True, True)]
    md = audit_md(capsys, "version", "2")
    for needle in ("## KB version 2", "chunker.size 200 → 60", f"| added | {BAD_DOC} |",
                   "| bad/broken.txt |", "**FAILED**", r2.run_id):
        assert needle in md

    # -- which versions ever saw the bad document (legal deletion request) ---------------
    doc = audit_json(capsys, "doc", BAD_DOC)
    assert doc["summary"]["kb_versions"] == [2]
    assert doc["summary"]["ever_in_production"] == [2]
    assert doc["summary"]["ft_datasets"] == [1]
    assert doc["summary"]["models"] == ["kb-assistant v1"]
    assert doc["summary"]["models_in_production"] == [1]
    assert doc["models"][0]["run_id"] == rf.run_id
    assert doc["models"][0]["exposure"] in ("trained on it (train split)",
                                            "not trained on it: in the eval split only")
    by_abs = audit_json(capsys, "doc", str(kb_paths.inbox / BAD_DOC))
    assert by_abs["summary"] == doc["summary"]
    kept = audit_json(capsys, "doc", "hr/annual_leave_en.md")
    assert kept["summary"]["kb_versions"] == [1, 2]
    assert audit_json(capsys, "version", "2")["ft_datasets"][0]["dataset_version"] == 1
    assert audit_json(capsys, "diff", "2", "1")["documents"]["removed"] == len(BAD_FILES)


def fast_openai(paths) -> dict:
    """Poll the local server quickly; a small corpus is enough examples."""
    from resources.finetuner import OpenAIFineTuner
    from resources.ft_config import FTConfig

    return {"finetuner": OpenAIFineTuner(poll_initial_s=0.05, poll_max_s=0.2),
            "ft_config": FTConfig(root=str(paths.home / "ft"), min_examples=8)}
