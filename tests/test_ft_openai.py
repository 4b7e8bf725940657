"""The OpenAI provider through the real `openai` SDK against a local server on 127.0.0.1:
success (registered model id, eval, promotion, `kb ask`), a job that fails OpenAI's file
validation (the asset fails with OpenAI's own error text), and the API key never written
anywhere under KB_HOME nor logged."""

import json
import logging
import secrets

import pytest

from dagster_project.cli import main as kb
from resources.ft_config import FTConfig
from resources.registry import alias_history, registered_versions
from resources.store import KBStore
from tests.fake_openai_server import FakeOpenAI
from tests.kbtest import materialized
from tests.test_ft_helpers import (FT_CHAIN, KB_CORE, check_results, run_assets, step_failures,
                                   train_topic, write_topics)

TOPICS = ["parking", "expenses", "laptops", "travel", "security", "overtime", "wellbeing",
          "visitors"]


@pytest.fixture
def openai_env(kb_paths, monkeypatch):
    key = "sk-test-" + secrets.token_hex(16)
    with FakeOpenAI(api_key=key, steps_to_finish=2) as server:
        monkeypatch.setenv("OPENAI_API_KEY", key)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        monkeypatch.setenv("KB_FT_PROVIDER", "openai")
        yield kb_paths, server, key


def fast_openai(paths, **kw):
    """Poll quickly: the local server finishes a job after two polls."""
    from resources.finetuner import OpenAIFineTuner

    return {"finetuner": OpenAIFineTuner(poll_initial_s=0.05, poll_max_s=0.2),
            "ft_config": FTConfig(root=str(paths.home / "ft"), **{"min_examples": 8, **kw})}


def assert_key_nowhere(paths, key: str, *texts: str) -> None:
    for p in paths.home.rglob("*"):
        if p.is_file():
            assert key.encode() not in p.read_bytes(), f"API key found in {p}"
    for t in texts:
        assert key not in t


def test_openai_fine_tune_registers_the_model_id_and_answers(openai_env, caplog, capsys):
    paths, server, key = openai_env
    caplog.set_level(logging.DEBUG)
    write_topics(paths, TOPICS)
    r = run_assets(paths, KB_CORE + FT_CHAIN, **fast_openai(paths))
    assert r.success, step_failures(r)
    md = materialized(r)
    ft = md["fine_tuned_model"]
    assert ft["provider"] == "openai" and ft["model_ref"].startswith("ft:gpt-4o-mini-2024-07-18:")
    paths_called = [q["path"] for q in server.requests]
    assert paths_called.count("/v1/files") == 2  # training + validation
    assert "/v1/fine_tuning/jobs" in paths_called
    assert all(q["authorization"] == f"Bearer {key}" for q in server.requests)

    store = KBStore(db_path=str(paths.db))
    row = registered_versions(store, "kb-assistant")[0]
    tags = row["tags"]
    assert tags["model_ref"] == ft["model_ref"] and tags["provider"] == "openai"
    assert tags["base_model"] == "gpt-4o-mini-2024-07-18"
    assert tags["dataset_version"] == "1" and tags["kb_version"] == "1"
    assert tags["dagster_run_id"] == r.run_id and tags["job_job_id"].startswith("ftjob-")
    assert md["ft_eval"]["gate_passed"] and check_results(r)["ft_beats_base"].passed
    assert md["assistant_release"]["production_version"] == 1

    # Unchanged data: no second job, no second version.
    jobs = len(server.jobs)
    r2 = run_assets(paths, FT_CHAIN, **fast_openai(paths))
    assert r2.success and materialized(r2)["fine_tuned_model"]["reused"]
    assert len(server.jobs) == jobs

    capsys.readouterr()
    assert kb(["ask", "How far ahead must trains and flights be booked?"]) == 0
    out = capsys.readouterr().out
    assert "kb-assistant version 1 (production)" in out
    assert "(Source: travel/travel_policy.md)" in " ".join(out.split()) and "Sources:" in out
    assert any(q["path"] == "/v1/chat/completions" for q in server.requests)
    assert_key_nowhere(paths, key, out, caplog.text)


def test_incremental_openai_fine_tune_continues_and_rolls_back(openai_env, capsys):
    paths, server, key = openai_env
    names = TOPICS[:6]
    new = train_topic(names, TOPICS[6:])
    write_topics(paths, names)
    assert run_assets(paths, KB_CORE + FT_CHAIN, **fast_openai(paths)).success
    first = registered_versions(KBStore(db_path=str(paths.db)), "kb-assistant")[0]["tags"]
    write_topics(paths, [new])
    r = run_assets(paths, KB_CORE + FT_CHAIN, **fast_openai(paths))
    assert r.success, step_failures(r)
    md = materialized(r)
    assert md["ft_dataset"]["mode"] == "incremental"
    assert md["fine_tuned_model"]["training_mode"] == "incremental"
    second = registered_versions(KBStore(db_path=str(paths.db)), "kb-assistant")[1]["tags"]
    assert second["parent_version"] == "1"
    job = server.jobs[second["job_job_id"]]
    assert job["model"] == first["model_ref"]  # continued from the parent fine-tune
    train = server.files[job["training_file"]]["content"].decode().splitlines()
    assert len(train) == md["ft_dataset"]["n_fresh"] + md["ft_dataset"]["n_replay"]
    assert md["assistant_release"]["production_version"] == 2

    capsys.readouterr()
    assert kb(["rollback", "--model", "kb-assistant", "--reason", "drill"]) == 0
    assert "kb-assistant production: 2 -> 1" in capsys.readouterr().out
    assert kb(["versions", "--model", "kb-assistant", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert listing["production"] == 1 and [v["version"] for v in listing["versions"]] == [1, 2]
    assert kb(["promote", "7", "--model", "kb-assistant"]) == 2
    moves = alias_history(KBStore(db_path=str(paths.db)), "kb-assistant", "production")
    assert [(m["from_version"], m["to_version"]) for m in moves] == [(None, 1), (1, 2), (2, 1)]
    assert moves[-1]["reason"] == "rollback: drill"


def test_failed_openai_job_fails_the_asset_with_openais_error(openai_env, caplog):
    paths, server, key = openai_env
    caplog.set_level(logging.DEBUG)
    write_topics(paths, ["parking", "expenses"])  # one document trains: too few for OpenAI
    r = run_assets(paths, KB_CORE + FT_CHAIN, **fast_openai(paths, min_examples=2))
    fails = step_failures(r)
    assert "fine_tuned_model" in fails
    msg = fails["fine_tuned_model"]
    assert "OpenAI fine-tuning job ftjob-" in msg and " failed: " in msg
    assert "but must have at least 10 examples" in msg  # OpenAI's own text
    assert "code=invalid_training_file" in msg
    assert registered_versions(KBStore(db_path=str(paths.db)), "kb-assistant") == []
    assert "ft_eval" not in materialized(r)
    assert_key_nowhere(paths, key, msg, caplog.text)


def test_rejected_key_is_reported_without_the_key(openai_env, monkeypatch):
    paths, server, key = openai_env
    write_topics(paths, TOPICS)
    monkeypatch.setenv("OPENAI_API_KEY", key + "-wrong")
    r = run_assets(paths, KB_CORE + ["ft_dataset", "fine_tuned_model"], **fast_openai(paths))
    msg = step_failures(r)["fine_tuned_model"]
    assert "Incorrect API key provided" in msg and "upload of the training file" in msg
    assert key not in msg
    assert_key_nowhere(paths, key + "-wrong")


def test_questions_can_be_generated_by_the_assistant_llm(openai_env):
    paths, server, key = openai_env
    write_topics(paths, TOPICS[:6])
    r = run_assets(paths, KB_CORE + ["ft_dataset"],
                   **fast_openai(paths, question_source="llm", questions_per_section=2))
    assert r.success, step_failures(r)
    assert check_results(r)["ft_dataset_valid"].passed
    lines = (paths.home / "ft" / "1" / "train.jsonl").read_text("utf-8").splitlines()
    questions = [json.loads(x)["messages"][1]["content"].rsplit("Question: ", 1)[1] for x in lines]
    # Section questions come from the LLM; the synthetic evaluation set adds its own.
    assert sum("(variant " in q for q in questions) >= len(questions) / 2
    assert sum(q["path"] == "/v1/chat/completions" for q in server.requests) >= 6


def test_missing_key_is_a_clear_error(kb_paths, monkeypatch):
    monkeypatch.setenv("KB_FT_PROVIDER", "openai")
    write_topics(kb_paths, TOPICS)
    r = run_assets(kb_paths, KB_CORE + ["ft_dataset", "fine_tuned_model"], **fast_openai(kb_paths))
    assert "OPENAI_API_KEY is not set" in step_failures(r)["fine_tuned_model"]
