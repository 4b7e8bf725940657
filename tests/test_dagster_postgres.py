"""KB_DAGSTER_PG_URL puts the Dagster instance's runs, event log and schedules on PostgreSQL
(dagster-postgres), tested against a real PostgreSQL server (`pg_server`, tests/conftest.py):
the dagster.yaml kb writes, `kb build` and `kb audit` on it, two KB_HOMEs ("machines")
sharing one database, and two machines creating its schema at the same moment."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import psycopg2
import pytest
from dagster import AssetKey, DagsterInstance, DagsterRunStatus, job, op
from dagster._core.instance.config import dagster_instance_config
from dagster._core.instance.ref import InstanceRef

from kb_core.paths import DAGSTER_PG_STORAGE_YAML, DAGSTER_YAML, Paths
from kb_core.settings import SettingError
from tests.kbtest import REPO

KB = [sys.executable, "-m", "dagster_project.cli"]  # `kb` from this checkout
URL = "postgresql+psycopg2://kb:s3cret@db.example:5432/dagster"


def libpq(url: str) -> str:
    """KB_DAGSTER_PG_URL as psycopg2.connect takes it."""
    return url.replace("postgresql+psycopg2://", "postgresql://", 1)


def machine(monkeypatch, home: Path, url: str | None) -> Paths:
    """Point this process at `home` (one "machine") with KB_DAGSTER_PG_URL = url."""
    monkeypatch.delenv("KB_INBOX", raising=False)
    monkeypatch.setenv("KB_HOME", str(home))
    monkeypatch.setenv("DAGSTER_HOME", str(home / "dagster"))  # restored after the test
    if url is None:
        monkeypatch.delenv("KB_DAGSTER_PG_URL", raising=False)
    else:
        monkeypatch.setenv("KB_DAGSTER_PG_URL", url)
    return Paths.from_env().ensure()


def sqlite_files(paths: Paths) -> list[str]:
    """SQLite storage Dagster made under DAGSTER_HOME (history/runs.db, schedules, ...)."""
    return sorted(str(p.relative_to(paths.dagster_home)) for p in paths.dagster_home.rglob("*.db"))


# ------------------------------------------------------------------ dagster.yaml
@pytest.mark.parametrize("url, expected", [
    (None, DAGSTER_YAML),
    ("", DAGSTER_YAML),
    (URL, DAGSTER_YAML + DAGSTER_PG_STORAGE_YAML),
])
def test_dagster_yaml_names_postgres_only_when_the_url_is_set(tmp_path, monkeypatch, url,
                                                             expected):
    paths = machine(monkeypatch, tmp_path / "kb", url)
    text = (paths.dagster_home / "dagster.yaml").read_text(encoding="utf-8")
    assert text == expected
    assert "s3cret" not in text and "db.example" not in text  # the URL stays in the environment
    # Dagster's own schema accepts the file; the storage it names is dagster-postgres's.
    config, _ = dagster_instance_config(str(paths.dagster_home))
    storage = InstanceRef.from_dir(str(paths.dagster_home)).storage_data
    if url:
        assert config["storage"] == {"postgres": {"postgres_url": {"env": "KB_DAGSTER_PG_URL"}}}
        assert (storage.module_name, storage.class_name) == ("dagster_postgres",
                                                            "DagsterPostgresStorage")
    else:
        assert "storage" not in config and storage.class_name == "DagsterSqliteStorage"


def test_dagster_yaml_follows_the_setting_and_leaves_a_users_file_alone(tmp_path, monkeypatch):
    cfg = tmp_path / "kb" / "dagster" / "dagster.yaml"
    machine(monkeypatch, tmp_path / "kb", URL)
    assert cfg.read_text() == DAGSTER_YAML + DAGSTER_PG_STORAGE_YAML
    machine(monkeypatch, tmp_path / "kb", None)  # unset again: back to SQLite, exactly as before
    assert cfg.read_text() == DAGSTER_YAML
    own = "storage:\n  postgres:\n    postgres_db:\n      username: me\n"
    cfg.write_text(own)  # no header line: the user's file, never overwritten
    machine(monkeypatch, tmp_path / "kb", URL)
    assert cfg.read_text() == own


@pytest.mark.parametrize("url, hint", [
    ("postgresql://kb:s3cret@db.example/dagster", "psycopg 3"),
    ("postgres://kb:s3cret@db.example/dagster", "psycopg 3"),
    ("mysql://kb:s3cret@db.example/dagster", "'mysql'"),
    ("db.example:5432", "got scheme"),
])
def test_a_url_dagster_cannot_use_is_a_setting_error_without_the_password(tmp_path, monkeypatch,
                                                                          url, hint):
    with pytest.raises(SettingError) as err:
        machine(monkeypatch, tmp_path / "kb", url)
    message = str(err.value)
    assert message.startswith("KB_DAGSTER_PG_URL: expected a URL starting postgresql+psycopg2://")
    assert hint in message and "s3cret" not in message
    assert not (tmp_path / "kb" / "dagster" / "dagster.yaml").exists()


# ------------------------------------------------------------------ two machines, one instance
@op
def say_hello() -> str:
    return "hello"


@job(tags={"kb/trigger": "test"})
def hello_job():
    say_hello()


def test_a_run_from_one_machine_is_seen_by_another(pg_url, tmp_path, monkeypatch):
    first = machine(monkeypatch, tmp_path / "first", pg_url)
    with DagsterInstance.get() as instance:
        assert type(instance.run_storage).__name__ == "PostgresRunStorage"
        result = hello_job.execute_in_process(instance=instance)
    assert result.success
    second = machine(monkeypatch, tmp_path / "second", pg_url)
    with DagsterInstance.get() as instance:
        run = instance.get_run_by_id(result.run_id)
        assert run is not None and run.status == DagsterRunStatus.SUCCESS
        assert run.tags["kb/trigger"] == "test"
        assert any(e.step_key == "say_hello" for e in instance.all_logs(result.run_id))
    assert sqlite_files(first) == [] and sqlite_files(second) == []
    # Without the setting the second machine is on its own SQLite instance again.
    machine(monkeypatch, tmp_path / "second", None)
    with DagsterInstance.get() as instance:
        assert instance.get_run_by_id(result.run_id) is None


FIRST_USE = """
import sys, time
from pathlib import Path
from resources.dagster_instance import open_instance
import dagster_postgres  # imported before the start line: only the schema creation races
from kb_core.paths import Paths
Paths.from_env().ensure()
Path(sys.argv[1]).touch()
while not Path(sys.argv[2]).exists():
    time.sleep(0.005)
with open_instance() as instance:
    print(type(instance.run_storage).__name__, len(instance.get_runs()))
"""


def test_machines_creating_the_schema_at_once_all_succeed(pg_url, tmp_path):
    """Dagster creates its tables on first use; machines do not share a file lock, so several
    may create them at the same moment (dagster-postgres retries the losers)."""
    go = tmp_path / "go"
    procs = []
    for i in range(3):
        env = {k: v for k, v in os.environ.items() if k not in ("DAGSTER_HOME", "KB_INBOX")}
        env.update(KB_HOME=str(tmp_path / f"m{i}"), KB_DAGSTER_PG_URL=pg_url)
        procs.append(subprocess.Popen([sys.executable, "-c", FIRST_USE, str(tmp_path / f"ready{i}"),
                                       str(go)], env=env, cwd=REPO, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    deadline = time.monotonic() + 240
    while not all((tmp_path / f"ready{i}").exists() for i in range(3)):
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate()[1][-2000:] for p in procs if p.poll() is not None]
        time.sleep(0.05)
    go.touch()
    for p in procs:
        out, err = p.communicate(timeout=240)
        assert p.returncode == 0, err[-3000:]
        assert out.split() == ["PostgresRunStorage", "0"]
    with psycopg2.connect(libpq(pg_url)) as con, con.cursor() as cur:
        cur.execute("SELECT count(*) FROM alembic_version")
        assert cur.fetchone() == (1,)
        cur.execute("SELECT count(*) FROM pg_tables WHERE tablename IN "
                    "('runs', 'event_logs', 'jobs', 'instance_info')")
        assert cur.fetchone() == (4,)


# ------------------------------------------------------------------ kb build on PostgreSQL
def kb(home: Path, url: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """`kb ARGS` in its own process: KB_HOME and KB_DAGSTER_PG_URL, no other KB_* setting but
    the session's shared model cache."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KB_") and k not in ("DAGSTER_HOME", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    env.update(KB_HOME=str(home), KB_DAGSTER_PG_URL=url)
    if os.environ.get("KB_MODEL_CACHE"):
        env["KB_MODEL_CACHE"] = os.environ["KB_MODEL_CACHE"]
    return subprocess.run([*KB, *args], env=env, cwd=REPO, capture_output=True, text=True,
                          timeout=timeout)


@pytest.fixture(scope="module")
def pg_build(pg_server, tmp_path_factory):
    """`kb init --samples` and `kb build` on a fresh KB_HOME whose Dagster instance is a fresh
    PostgreSQL database: (home, url, the build's --json object)."""
    url = pg_server.create_database("kb_build")
    home = tmp_path_factory.mktemp("pg_build") / "kb"
    init = kb(home, url, "init", "--samples")
    assert init.returncode == 0, init.stderr[-3000:]
    build = kb(home, url, "build", "--json")
    assert build.returncode == 0, build.stderr[-3000:]
    return home, url, json.loads(build.stdout)


@pytest.mark.slow
def test_kb_build_records_its_run_in_postgres(pg_build):
    home, url, summary = pg_build
    assert summary["succeeded"] and summary["run_id"]
    with psycopg2.connect(libpq(url)) as con, con.cursor() as cur:
        cur.execute("SELECT run_id, pipeline_name, status FROM runs")
        assert cur.fetchall() == [(summary["run_id"], "kb_job", "SUCCESS")]
        cur.execute("SELECT count(*) FROM event_logs WHERE run_id = %s "
                    "AND dagster_event_type = 'ASSET_MATERIALIZATION'", (summary["run_id"],))
        assert cur.fetchone()[0] >= len(summary["materialized"]) > 0
    dagster_home = home / "dagster"
    assert not (dagster_home / "history" / "runs.db").exists()
    assert sorted(str(p.relative_to(dagster_home)) for p in dagster_home.rglob("*.db")) == []


@pytest.mark.slow
def test_kb_audit_reads_the_run_from_postgres(pg_build):
    home, url, summary = pg_build
    out = kb(home, url, "audit", "version", "1", "--format", "json")
    assert out.returncode == 0, out.stderr[-3000:]
    facts = json.loads(out.stdout)["dagster_runs"][summary["run_id"]]
    assert facts["found"] is True and facts["status"] == "SUCCESS", facts
    assert facts["job"] == "kb_job" and "kb_release" in facts["assets_materialized"]


@pytest.mark.slow
def test_another_machine_sees_the_build_and_its_materializations(pg_build, tmp_path,
                                                                 monkeypatch):
    _, url, summary = pg_build
    machine(monkeypatch, tmp_path / "other", url)
    with DagsterInstance.get() as instance:
        run = instance.get_run_by_id(summary["run_id"])
        assert run is not None and run.status == DagsterRunStatus.SUCCESS
        event = instance.get_latest_materialization_event(AssetKey("kb_release"))
        assert event is not None and event.run_id == summary["run_id"]


class PgError(Exception):
    def __init__(self, pgcode):
        super().__init__(f"pg {pgcode}")
        self.pgcode = pgcode


class Wrapped(Exception):  # like sqlalchemy.exc.ProgrammingError: the driver's error in .orig
    def __init__(self, orig):
        super().__init__(str(orig))
        self.orig = orig


@pytest.mark.parametrize("exc, race", [
    (Wrapped(PgError("42710")), True),   # DuplicateObject: type "runs" already exists
    (Wrapped(PgError("42P07")), True),   # DuplicateTable
    (Wrapped(PgError("23505")), True),   # UniqueViolation on pg_type
    (Wrapped(PgError("42601")), False),  # a syntax error is not a race
    (ValueError("no pgcode"), False),
])
def test_schema_races_are_told_from_other_errors(exc, race):
    from resources.dagster_instance import schema_race

    assert schema_race(exc) is race
    try:  # also when raised from inside another exception (dagster-postgres wraps them)
        try:
            raise exc
        except Exception as inner:
            raise RuntimeError("too many retries for DB creation") from inner
    except RuntimeError as outer:
        assert schema_race(outer) is race
