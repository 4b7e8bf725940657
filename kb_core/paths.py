"""Where state lives. Everything hangs off KB_HOME (kb_core/home.py finds it); each path can be
overridden by its own environment variable. Also switches telemetry and model hubs off."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from kb_core import settings
from kb_core.home import kb_home

OFFLINE_ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "TOKENIZERS_PARALLELISM": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    # With a tracking server, MLflow writes "View run ... at: <url>" to stdout at each run's
    # end, which broke `kb build --json` (the run's links are in the asset metadata).
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
    "DO_NOT_TRACK": "1",
    "DAGSTER_DISABLE_TELEMETRY": "1",
    "GIT_PYTHON_REFRESH": "quiet",
    "HF_HUB_DISABLE_PROGRESS_BARS": "1",
    "TRANSFORMERS_VERBOSITY": "error",
    "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1",
}

DAGSTER_YAML = """\
# Written by the kb platform. Telemetry and sign-up prompts are off.
telemetry:
  enabled: false
nux:
  enabled: false
concurrency:
  runs:
    max_concurrent_runs: 4
    tag_concurrency_limits:
      # Runs that write the knowledge base never overlap: a second trigger queues.
      # kb_job and all_job (and so the sensor and schedule runs) carry this tag.
      - key: kb/writer
        limit: 1
  pools:
    # Every KB asset and check is in the pool `kb_writer` (kb_core/writer_lock.py). At run
    # granularity the run queue starts one run holding it at a time, including the UI's
    # "Materialize" runs that carry no kb/writer tag and runs queued from other machines
    # sharing this instance's storage. On one machine the store resource's file lock also
    # covers `kb build`, which does not pass through the queue.
    granularity: run
    default_limit: 1
run_queue:
  # Look at the queue every 2 s instead of 5 s: part of the drop-to-searchable latency.
  dequeue_interval_seconds: 2
"""

# Added when KB_DAGSTER_PG_URL is set (a team sharing one Dagster instance): runs, the event
# log and schedule/sensor state live in PostgreSQL (dagster-postgres). Dagster reads the URL
# from the environment when it loads the instance, so a password never lands in this file.
DAGSTER_PG_STORAGE_YAML = """\
storage:
  postgres:
    postgres_url:
      env: KB_DAGSTER_PG_URL
"""
# dagster-postgres hands the URL to SQLAlchemy 2.1, which reads a bare postgresql:// as the
# psycopg 3 driver; dagster-postgres installs (and is written against) psycopg2.
PG_SCHEME = "postgresql+psycopg2"


def dagster_yaml(environ: Mapping[str, str] | None = None) -> str:
    """The dagster.yaml the platform writes: DAGSTER_YAML, plus PostgreSQL storage when
    KB_DAGSTER_PG_URL is set (else exactly DAGSTER_YAML: SQLite under DAGSTER_HOME)."""
    url = settings.get("KB_DAGSTER_PG_URL", environ)
    if not url:
        return DAGSTER_YAML
    scheme = urlsplit(url).scheme
    if scheme != PG_SCHEME:  # the value itself is not echoed: it may hold a password
        hint = (" (SQLAlchemy 2.1 reads a bare postgresql:// as psycopg 3, which is not "
                "installed)" if scheme in ("postgresql", "postgres") else "")
        raise settings.SettingError(
            f"KB_DAGSTER_PG_URL: expected a URL starting {PG_SCHEME}:// (e.g. {PG_SCHEME}://"
            f"user:password@host:5432/dagster), got scheme {scheme!r}{hint}")
    return DAGSTER_YAML + DAGSTER_PG_STORAGE_YAML


def apply_offline_env() -> None:
    for key, value in OFFLINE_ENV.items():
        os.environ.setdefault(key, value)


@dataclass(frozen=True)
class Paths:
    home: Path
    inbox: Path
    db: Path
    versions: Path
    dagster_home: Path
    mlflow_uri: str
    mlflow_artifacts: Path

    @classmethod
    def from_env(cls) -> "Paths":
        home = kb_home()  # KB_HOME, else the nearest KB home upward, else ./data
        inbox = Path(settings.get("KB_INBOX") or home / "inbox").expanduser().resolve()
        uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{home / 'mlflow.db'}"
        return cls(home=home, inbox=inbox, db=home / "kb.duckdb", versions=home / "versions",
                   dagster_home=Path(os.environ.get("DAGSTER_HOME", home / "dagster")).resolve(),
                   mlflow_uri=uri, mlflow_artifacts=home / "mlartifacts")

    def ensure(self) -> "Paths":
        for d in (self.home, self.inbox, self.versions, self.dagster_home, self.mlflow_artifacts):
            d.mkdir(parents=True, exist_ok=True)
        cfg = self.dagster_home / "dagster.yaml"
        # Our own file is kept current (KB_DAGSTER_PG_URL set or not); a file someone wrote
        # themselves (without our header) is left alone.
        wanted = dagster_yaml()
        current = cfg.read_text(encoding="utf-8") if cfg.exists() else None
        if current is None or (current != wanted
                               and current.startswith("# Written by the kb platform.")):
            cfg.write_text(wanted, encoding="utf-8")
        os.environ["DAGSTER_HOME"] = str(self.dagster_home)
        return self

