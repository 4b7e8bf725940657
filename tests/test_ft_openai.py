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


# --- the job id is recorded before polling; a re-run resumes the job -----------------
class CrashAfterCreate:
    """A logger that dies when the job was created, as a crash or restart would right after
    `jobs.create` returned (polling may last hours)."""

    def info(self, msg):
        if "created" in msg:
            raise RuntimeError("simulated crash while polling")

    warning = info


def chat_files(tmp_path, n=12):
    lines = "".join(json.dumps({"messages": [{"role": "user", "content": f"q{i}"},
                                             {"role": "assistant", "content": f"a{i}"}]}) + "\n"
                    for i in range(n))
    (tmp_path / "train.jsonl").write_text(lines, encoding="utf-8")
    (tmp_path / "eval.jsonl").write_text(lines, encoding="utf-8")
    from resources.finetuner import TrainJob

    return TrainJob(str(tmp_path / "train.jsonl"), str(tmp_path / "eval.jsonl"),
                    str(tmp_path / "out" / "adapter"), state_dir=str(tmp_path / "jobs"))


def creates(server) -> int:
    return sum(q["method"] == "POST" and q["path"] == "/v1/fine_tuning/jobs"
               for q in server.requests)


@pytest.fixture
def fake_openai(monkeypatch):
    key = "sk-test-" + secrets.token_hex(8)
    with FakeOpenAI(api_key=key, steps_to_finish=3) as server:
        monkeypatch.setenv("OPENAI_API_KEY", key)
        monkeypatch.setenv("OPENAI_BASE_URL", server.base_url)
        yield server


def test_crash_after_job_creation_resumes_the_same_job(fake_openai, tmp_path):
    from resources.finetuner import OpenAIFineTuner

    tuner = OpenAIFineTuner(poll_initial_s=0.01, poll_max_s=0.05)
    job = chat_files(tmp_path)
    with pytest.raises(RuntimeError, match="simulated crash"):
        tuner.train(job, CrashAfterCreate())
    [recorded] = list((tmp_path / "jobs").glob("openai-*.json"))
    job_id = json.loads(recorded.read_text())["job_id"]
    assert list(fake_openai.jobs) == [job_id] and creates(fake_openai) == 1

    result = tuner.train(job, logging.getLogger("test"))  # the re-run
    assert creates(fake_openai) == 1 and len(fake_openai.files) == 2  # no new job, no re-upload
    assert result.details["job_id"] == job_id and result.details["resumed"] is True
    assert result.model_ref == fake_openai.jobs[job_id]["fine_tuned_model"]

    again = tuner.train(job)  # finished job: its result is reported, nothing is created
    assert again.model_ref == result.model_ref and creates(fake_openai) == 1


def test_recorded_failed_job_is_reported_then_a_rerun_starts_anew(fake_openai, tmp_path):
    from resources.finetuner import FineTuneError, OpenAIFineTuner

    tuner = OpenAIFineTuner(poll_initial_s=0.01, poll_max_s=0.05)
    job = chat_files(tmp_path)
    with pytest.raises(RuntimeError):
        tuner.train(job, CrashAfterCreate())
    fake_openai.fail_jobs = "The job failed due to a server error."
    with pytest.raises(FineTuneError, match="ftjob-.* failed: The job failed due to a server error"):
        tuner.train(job)  # resumed: its final state is reported, not a second job
    assert creates(fake_openai) == 1
    fake_openai.fail_jobs = None
    assert tuner.train(job).details["resumed"] is False and creates(fake_openai) == 2


def test_changed_dataset_never_resumes_another_datasets_job(fake_openai, tmp_path):
    from resources.finetuner import OpenAIFineTuner

    tuner = OpenAIFineTuner(poll_initial_s=0.01, poll_max_s=0.05)
    with pytest.raises(RuntimeError):
        tuner.train(chat_files(tmp_path, 12), CrashAfterCreate())
    result = tuner.train(chat_files(tmp_path, 13))
    assert result.details["resumed"] is False and creates(fake_openai) == 2


@pytest.mark.slow
def test_sigkill_while_polling_then_rerun_resumes_the_job(fake_openai, tmp_path):
    """The real thing: a process polling the job is SIGKILLed; the re-run resumes it."""
    import os
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    from resources.finetuner import OpenAIFineTuner

    fake_openai.steps_to_finish = 10**9  # keeps running until the test lets it finish
    job = chat_files(tmp_path)
    code = ("from resources.finetuner import OpenAIFineTuner, TrainJob\n"
            "OpenAIFineTuner(poll_initial_s=0.05, poll_max_s=0.1).train(TrainJob("
            f"{job.train_file!r}, {job.eval_file!r}, {job.out_dir!r}, state_dir={job.state_dir!r}))")
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=Path(__file__).resolve().parents[1],
                            start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not any(j["_polls"] >= 2 for j in fake_openai.jobs.values()):
        assert proc.poll() is None and time.monotonic() < deadline, "the job was never polled"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    [job_id] = fake_openai.jobs
    fake_openai.steps_to_finish = fake_openai.jobs[job_id]["_polls"] + 2
    result = OpenAIFineTuner(poll_initial_s=0.01, poll_max_s=0.05).train(job)
    assert result.details == {**result.details, "job_id": job_id, "resumed": True}
    assert creates(fake_openai) == 1 and len(fake_openai.files) == 2
