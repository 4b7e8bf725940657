"""`kb build` with nothing to do (issue 13): the no-change decision as plain functions, then
the real CLI on a real KB (Dagster, DuckDB, FAISS, the packaged model): an unchanged inbox
skips without importing Dagster, GX or the model; an edited file, a new setting value, a
failed previous run and a damaged version each run."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dagster_project.cli import build_skip, main
from dagster_project.cli.build_skip import Snapshot, reason_to_run
from kb_core.paths import Paths
from tests.kbtest import write
from tests.registry_fixtures import write_corpus

REPO = Path(__file__).resolve().parents[1]


# --- the decision, as plain functions -----------------------------------------------------
def snap(**changes) -> Snapshot:
    base = dict(job="kb_job", key="k1", inbox={"a.md": [3, 10, "sha-a"], "b.md": [4, 11, "sha-b"]},
                store=[["kb.duckdb", 100, 5]], versions="v-digest", serving={"version": 2},
                kb_version=2, run_id="r")
    return Snapshot(**{**base, **changes})


@pytest.mark.parametrize("record, now, expected", [
    (snap(), snap(), None),
    (snap(), snap(job="index_job"), None),  # kb_job did index_job's work too
    (snap(), snap(inbox={"a.md": [3, 99, "sha-a"], "b.md": [4, 11, "sha-b"]}), None),  # touched
    (None, snap(), "no successful build is recorded"),
    (snap(job="index_job"), snap(), "the last successful build ran index_job, not kb_job"),
    (snap(), snap(job="all_job"), "all_job always runs"),
    (snap(), snap(key="k2"), "a setting, code file or library version changed"),
    (snap(), snap(inbox={"a.md": [3, 10, "sha-a"], "b.md": [5, 12, "sha-b2"]}),
     "the inbox changed: 1 changed (e.g. b.md)"),
    (snap(), snap(inbox={"a.md": [3, 10, "sha-a"]}), "the inbox changed: 1 removed (e.g. b.md)"),
    (snap(), snap(inbox={**snap().inbox, "c.md": [1, 1, "c"]}), "the inbox changed: 1 added"),
    (snap(), snap(store=[["kb.duckdb", 100, 6]]), "the DuckDB store was written since"),
    (snap(), snap(versions="other"), "the KB versions on disk changed since"),
    (snap(), snap(kb_version=3), "the KB versions on disk changed since"),
    (snap(), snap(serving={"version": 1}), "the serving pointer moved since"),
])
def test_reason_to_run(record, now, expected):
    reason = reason_to_run(record, now)
    assert reason == expected if expected is None else reason.startswith(expected)


def test_settings_key_follows_kb_variables_not_locations(tmp_path, monkeypatch):
    monkeypatch.setenv("KB_HOME", str(tmp_path))
    paths = Paths.from_env()
    key = lambda env: build_skip.settings_key(env, paths, code=[], libraries={})  # noqa: E731
    base = key({"KB_QUALITY_MIN_DOC_CHARS": "20", "PATH": "/bin"})
    assert key({"KB_QUALITY_MIN_DOC_CHARS": "20", "PATH": "/usr/bin", "KB_HOME": "x"}) == base
    assert key({"KB_QUALITY_MIN_DOC_CHARS": "21"}) != base
    assert key({"KB_QUALITY_MIN_DOC_CHARS": "20", "KB_ACCEPT_DRIFT": "1"}) != base
    assert build_skip.settings_key({}, paths, code=[["x.py", 1, 2]], libraries={}) != key({})
    assert build_skip.settings_key({}, paths, code=[], libraries={"torch": "2"}) != key({})


def test_inbox_entries_hash_only_what_moved(tmp_path):
    (tmp_path / "a.md").write_text("alpha")
    (tmp_path / "b.md").write_text("beta")
    first = build_skip.inbox_entries(tmp_path, {})
    # A recorded hash is trusted while size and mtime match (raw_docs's rule) ...
    trusted = build_skip.inbox_entries(tmp_path, {**first, "a.md": [*first["a.md"][:2], "fake"]})
    assert trusted["a.md"][2] == "fake" and trusted["b.md"] == first["b.md"]
    # ... and re-read once they do not.
    os.utime(tmp_path / "a.md", ns=(1, 1))
    again = build_skip.inbox_entries(tmp_path, {**first, "a.md": [*first["a.md"][:2], "fake"]})
    assert again["a.md"][2] == first["a.md"][2]


def test_versions_digest_sees_damage(tmp_path):
    v = tmp_path / "1"
    v.mkdir()
    (v / "index.faiss").write_bytes(b"x" * 100)
    (tmp_path / ".tmp-2").mkdir()
    before = build_skip.versions_digest(tmp_path)
    (tmp_path / ".tmp-2" / "half").write_bytes(b"y")  # an unfinished version does not count
    assert build_skip.versions_digest(tmp_path) == before
    with open(v / "index.faiss", "r+b") as f:
        f.truncate(50)
    assert build_skip.versions_digest(tmp_path) != before


# --- the real CLI ---------------------------------------------------------------------------
def build(capsys, *extra: str) -> tuple[int, str]:
    code = main(["build", "--select", "index", *extra])
    return code, capsys.readouterr().out


def skipped(out: str) -> bool:
    return "nothing changed since" in out


PROBE = """
import sys
from dagster_project.cli import main
code = main(["build", "--select", "index", "--json"])
heavy = [m for m in ("dagster", "great_expectations", "sentence_transformers", "torch", "mlflow")
         if m in sys.modules]
print("HEAVY", ",".join(heavy), file=sys.stderr)
sys.exit(code)
"""


def test_no_change_build_skips_and_every_change_runs(kb_paths, capsys, monkeypatch):
    write_corpus(kb_paths.inbox)
    code, out = build(capsys)
    assert code == 0 and not skipped(out) and build_skip.read_record(kb_paths).kb_version == 1

    # Unchanged: skipped in a fresh process that never imports Dagster, GX, torch or MLflow.
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-c", PROBE], cwd=REPO, capture_output=True, text=True,
                       env={**os.environ, "PYTHONPATH": str(REPO)}, timeout=120)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["skipped"] is True and out["kb_version"] == 1 and out["run_id"] is None
    assert "HEAVY \n" in r.stderr + "\n", r.stderr
    print(f"no-change kb build in a new process: {time.perf_counter() - t0:.2f}s")

    leave = kb_paths.inbox / "policies" / "leave.md"
    os.utime(leave, ns=(time.time_ns(), time.time_ns()))  # touched, same bytes
    code, out = build(capsys)
    assert code == 0 and "nothing changed since KB version 1" in out

    leave.write_text(leave.read_text() + " Leave requests go through the HR portal.")
    code, out = build(capsys)
    assert code == 0 and not skipped(out) and build_skip.read_record(kb_paths).kb_version == 2
    assert skipped(build(capsys)[1])

    monkeypatch.setenv("KB_QUALITY_MIN_CENTROID_COSINE", "0.05")  # a new setting value
    code, out = build(capsys)
    assert code == 0 and not skipped(out)
    assert skipped(build(capsys)[1])
    assert not skipped(build(capsys, "--force")[1])
    assert skipped(build(capsys)[1])

    # A failed run: afterwards no successful build is recorded, so the next one runs even
    # with the inbox and settings back as they were.
    original = leave.read_bytes()
    leave.write_text(leave.read_text() + " Unpaid leave needs a manager's approval.")
    monkeypatch.setenv("KB_QUALITY_MAX_CHUNK_TOKENS", "3")
    code, out = build(capsys)
    assert code == 1 and not skipped(out) and build_skip.read_record(kb_paths) is None
    monkeypatch.delenv("KB_QUALITY_MAX_CHUNK_TOKENS")
    leave.write_bytes(original)
    code, out = build(capsys)
    assert code == 0 and not skipped(out)
    assert skipped(build(capsys)[1])

    # A damaged version: the next build runs instead of vouching for it.
    latest = max((p for p in kb_paths.versions.iterdir() if p.name.isdigit()),
                 key=lambda p: int(p.name))
    victim = max((p for p in latest.rglob("*") if p.is_file()), key=lambda p: p.stat().st_size)
    with open(victim, "r+b") as f:
        f.truncate(victim.stat().st_size // 2)
    code, out = build(capsys)
    assert not skipped(out)
