"""`--json` shapes (README "JSON output") of the commands that need a built KB, and what
`kb build` prints: one real `kb build` process on the sample documents (slow: it builds a
whole KB), then every command against that KB."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from dagster_project.cli import main

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
KB = [sys.executable, "-m", "dagster_project.cli"]
STEP_OUTCOMES = {"ok", "warn", "FAILED", "skipped"}


def kb_process(home: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items()
           if k not in ("DAGSTER_HOME", "KB_INBOX", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_LOGGING_LEVEL")}
    env.update(KB_HOME=str(home), PYTHONPATH=str(REPO))
    return subprocess.run([*KB, *args], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """(KB_HOME, the `kb build --json` process) after `kb init --samples`."""
    home = tmp_path_factory.mktemp("terminal") / "kb"
    assert kb_process(home, "init", "--samples").returncode == 0
    build = kb_process(home, "build", "--json")
    assert build.returncode == 0, build.stdout[-3000:] + build.stderr[-3000:]
    return home, build


@pytest.fixture
def kb_env(built, monkeypatch):
    home, _ = built
    for var in ("KB_INBOX", "DAGSTER_HOME", "MLFLOW_TRACKING_URI", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("KB_HOME", str(home))
    return home


def run_json(capsys, *argv) -> tuple[int, dict]:
    capsys.readouterr()
    rc = main(list(argv))
    out = capsys.readouterr().out
    return rc, json.loads(out)


def test_build_json_shape_and_a_quiet_terminal(built):
    home, build = built
    out = json.loads(build.stdout)  # stdout is the JSON object and nothing else
    assert {"command", "run_id", "job", "succeeded", "duration_s", "kb_home", "steps", "not_run",
            "materialized", "checks", "warnings"} <= set(out)
    assert out["succeeded"] is True and out["job"] == "kb_job" and out["kb_home"] == str(home)
    assert out["materialized"]["kb_promotion"]["production_version"] == 1
    assert all({"step", "status", "duration_s"} <= set(s) for s in out["steps"])
    assert {"asset", "check", "passed", "severity", "blocking", "description"} <= set(out["checks"][0])
    assert len(out["checks"]) >= 20 and all(c["passed"] for c in out["checks"])
    # stderr: the run line, then one line per step with outcome and duration; no Dagster
    # DEBUG stream, no MLflow database setup, no CloudPickle warning.
    err = build.stderr.splitlines()
    assert err[0].startswith(f"kb build (kb): run {out['run_id']} of kb_job"), err[:2]
    step_lines = [x for x in err if x.split() and x.split()[0] in STEP_OUTCOMES]
    assert [x.split()[1] for x in step_lines] == [s["step"] for s in out["steps"]]
    assert all(x.split()[2].endswith("s") for x in step_lines)
    noise = [x for x in err if " - DEBUG - " in x or "mlflow" in x.lower() or "CloudPickle" in x
             or "Warning" in x]
    assert not noise, noise
    assert len(err) <= len(step_lines) + 3, err


def test_build_verbose_brings_the_event_stream_back(built):
    home, _ = built
    build = kb_process(home, "build", "--verbose", "--force")  # nothing changed: forced
    assert build.returncode == 0, build.stderr[-2000:]
    assert " - DEBUG - " in build.stderr and "STEP_SUCCESS" in build.stderr
    assert build.stdout.splitlines()[0].startswith("kb build (kb) run ")
    assert "check raw_docs:raw_docs_required_fields passed" in build.stdout


def test_search_json_has_the_http_api_shape(kb_env, capsys):
    rc, out = run_json(capsys, "search", "How many days of annual leave?", "--k", "2", "--json")
    assert rc == 0
    assert set(out) == {"version", "source", "query", "zero_hit", "hits"}
    assert out["version"] == 1 and out["source"] == "production" and out["zero_hit"] is False
    assert set(out["hits"][0]) == {"rank", "score", "doc_id", "source", "title", "text",
                                   "untrusted"}
    assert len(out["hits"]) <= 2
    rc, old = run_json(capsys, "search", "How many days of annual leave?", "-k", "2",
                       "--version", "1", "--json")  # the old spellings still work
    assert rc == 0 and old["source"] == "requested" and old["hits"] == out["hits"]


def test_eval_versions_golden_audit_ask_json(kb_env, capsys, tmp_path):
    rc, ev = run_json(capsys, "eval", "--kb-version", "1", "-k", "5", "--json")
    assert rc == 0 and ev["version"] == 1 and ev["k"] == 5 and ev["passed"] is True
    assert {"kind", "metrics", "gate", "per_query", "production_version"} <= set(ev)
    rc, vs = run_json(capsys, "versions", "--json")
    assert rc == 0 and vs["production"] == 1
    assert {"serving_pointer", "pointer_repaired", "versions", "unregistered_on_disk"} <= set(vs)
    assert {"version", "aliases", "status", "created_at", "tags"} <= set(vs["versions"][0])
    rc, gs = run_json(capsys, "golden", "suggest", "-n", "3", "--out",
                      str(tmp_path / "s.jsonl"), "--json")
    assert rc == 0 and gs == {"kb_version": 1, "out": str(tmp_path / "s.jsonl"), "n_questions": 3}
    rc, a = run_json(capsys, "audit", "version", "1", "--no-runs", "--json")
    rc2, b = run_json(capsys, "audit", "version", "1", "--no-runs", "--format", "json")
    assert rc == rc2 == 0 and set(a) == set(b) and a["version"] == 1
    rc, ans = run_json(capsys, "ask", "How many days of annual leave do I get?", "--json")
    assert rc == 0 and {"answer", "contender", "refused", "citations", "kb_version",
                        "assistant_version", "sources"} <= set(ans)


def test_promote_and_rollback_json(kb_env, capsys):
    rc, same = run_json(capsys, "promote", "1", "--json")
    assert rc == 0 and same == {"model": "kb", "alias": "production", "from_version": 1,
                                "to_version": 1, "changed": False, "forced": False,
                                "actor": None, "reason": None}
    (kb_env / "inbox" / "zz-new.md").write_text(
        "# Bicycle storage\n\nStaff may keep bicycles in the basement racks on level B1; "
        "the racks are open from 07:00 to 21:00 on working days.\n", encoding="utf-8")
    build = kb_process(kb_env, "build", "--json")
    assert build.returncode == 0, build.stderr[-2000:]
    assert json.loads(build.stdout)["materialized"]["kb_promotion"]["production_version"] == 2
    rc, back = run_json(capsys, "rollback", "--reason", "drill", "--json")
    assert rc == 0 and back["changed"] is True
    assert (back["from_version"], back["to_version"], back["reason"]) == (2, 1, "rollback: drill")
    rc, fwd = run_json(capsys, "promote", "2", "--json")
    assert rc == 0 and (fwd["from_version"], fwd["to_version"]) == (1, 2) and fwd["actor"]


def test_serve_json_startup_line(built):
    import socket

    home, _ = built
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**{k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "KB_INBOX")},
           "KB_HOME": str(home), "PYTHONPATH": str(REPO)}
    # Started with SIGTERM ignored, as nohup, background jobs and some test runners hand it
    # down (an xdist worker did in CI): kb serve must still stop when terminated right after
    # its startup line, before uvicorn has installed its own handlers.
    import signal

    proc = subprocess.Popen([*KB, "serve", "--port", str(port), "--json"], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGTERM, signal.SIG_IGN))
    try:
        line = json.loads(proc.stdout.readline())
    finally:
        # SIGTERM during startup: uvicorn finishes starting (model, version, warm-up query),
        # then stops; on a loaded CI machine that can take tens of seconds.
        proc.terminate()
        try:
            proc.wait(timeout=120)
        finally:
            proc.kill()
    assert line["url"] == f"http://127.0.0.1:{port}" and line["source"] == "production"
    assert line["kb_home"] == str(home) and line["version"] >= 1
