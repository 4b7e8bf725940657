"""The model registry (MLflow), shared by the knowledge base (model `kb`) and the fine-tuned
assistant (model `kb-assistant`).

MLflow holds the model versions, their artifacts, metrics and aliases (`staging`,
`production`); DuckDB mirrors what audits need without importing MLflow: `registry_versions`
maps OUR version numbers (KB version N, assistant version N) to MLflow model versions, and
`alias_history` records every alias move (MLflow keeps no history of alias moves).

API (import `from resources.registry import Registry, alias_history, ...`):

    reg = Registry(tracking_uri="sqlite:///.../mlflow.db", artifact_root=".../mlartifacts",
                   kb_home=".../data")          # default_resources()["registry"]
    mv = reg.register_version(store, "kb-assistant", 3, python_model=MyPyfunc(),
                              artifacts={"adapter": "/path/dir"}, tags={"base_model": "..."},
                              run_id=context.run_id, metrics={"loss": 0.4},
                              pip_requirements=[...], signature=None)
        # -> MLflow model version (int). Idempotent: (model, 3) registered once; a second
        #    call returns the existing MLflow version without logging anything.
        #    `run_id` is the Dagster run id (stored as tag dagster_run_id). Tag values -> str.
    reg.log_metrics(store, "kb-assistant", 3, {"accuracy": 0.8})  # on the version's MLflow run
    reg.set_status(store, "kb-assistant", 3, "passed")   # registered | passed | rejected
    reg.get_alias("kb", "production")     # -> our version number (int) or None
    reg.aliases("kb")                     # -> {"production": 1, "staging": 3}
    move = reg.move_alias(store, "kb", "production", 3, actor="dagster:<run_id>",
                          reason="gate passed", forced=False, run_id=context.run_id)
        # -> AliasMove. Refuses (RegistryError) a version that is not registered, or whose
        #    status is "rejected" unless forced=True (recorded as forced). Records a row in
        #    alias_history. For model "kb" + alias "production" it also rewrites the serving
        #    pointer ($KB_HOME/serving.json) that `kb search` / `kb serve` follow.
    reg.versions("kb", store)             # -> list of dicts: version, mlflow_version, aliases,
                                          #    created_at, status, tags, mlflow_run_id
    alias_history(store, "kb")            # -> list of dicts, oldest first (no MLflow import)
    registered_versions(store, "kb")      # -> DuckDB mirror rows (no MLflow import)
    default_actor()                       # -> "user@host" for CLI moves

Errors are `RegistryError` (one line, safe to print); `RegistryUnavailable` (a subclass)
when the tracking server cannot be reached. `registry_versions.run_id` is the MLflow run id
(the Dagster run id is in tags["dagster_run_id"]). MLflow is imported lazily: importing it
costs seconds, and search paths must never pay that.
"""

from __future__ import annotations

import getpass
import json
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path
from types import SimpleNamespace

from dagster import ConfigurableResource
from pydantic import PrivateAttr

from kb_core.clock import utc_from_timestamp, utc_now
from kb_core.hooks import fault_point
from kb_core.models import MODELS
from kb_core.paths import apply_offline_env
from resources import persistence

from . import registry_mirror
from .duckdb_files import rows_of
from .registry_mirror import rollback_target  # noqa: F401 (part of this module's API)
from .release_config import ReleaseConfig
from .store import KBStore

STATUSES = ("registered", "passed", "rejected")
VERSION_TAG = "version_key"  # MLflow model-version tag carrying our version number


class RegistryError(Exception):
    """A registry operation that cannot be done; the message is one line for the user."""


class RegistryUnavailable(RegistryError):
    """The MLflow tracking server / database cannot be reached."""


@dataclass(frozen=True)
class AliasMove:
    model_name: str
    alias: str
    from_version: int | None
    to_version: int
    actor: str
    reason: str
    forced: bool
    run_id: str | None
    event_at: str

    def as_dict(self) -> dict:
        return asdict(self)


def default_actor() -> str:
    try:
        user = getpass.getuser()
    except Exception:  # no passwd entry in some containers
        user = os.environ.get("USER", "unknown")
    return f"{user}@{socket.gethostname()}"


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


class Registry(ConfigurableResource):
    """MLflow model registry (tracking + registry URI) with a DuckDB mirror."""

    tracking_uri: str
    artifact_root: str
    experiment: str = "kb-platform"
    kb_home: str = ""  # where serving.json lives; empty: never write the serving pointer
    _client = PrivateAttr(default=None)

    # -- connection -------------------------------------------------------------------
    def _check_reachable(self) -> None:
        uri = self.tracking_uri
        if uri.startswith(("http://", "https://")):
            import httpx

            try:
                httpx.get(uri.rstrip("/") + "/health", timeout=3.0)
            except httpx.HTTPError as exc:
                raise RegistryUnavailable(
                    f"MLflow tracking server {uri} is unreachable ({_one_line(exc)}); "
                    "KB versions on disk are unchanged") from None
        elif uri.startswith("sqlite:///"):
            folder = Path(uri[len("sqlite:///"):]).parent
            if not folder.is_dir():
                raise RegistryUnavailable(f"MLflow database folder {folder} does not exist")

    def client(self):
        """An MlflowClient bound to this registry (MLflow imported on first use)."""
        if self._client is None:
            # A dead server must fail fast, not after minutes of retries.
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
            os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "15")
            os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
            apply_offline_env()  # telemetry off before MLflow is imported
            self._check_reachable()
            from mlflow import MlflowClient

            self._client = MlflowClient(tracking_uri=self.tracking_uri,
                                        registry_uri=self.tracking_uri)
        return self._client

    def _wrap(self, what: str, exc: Exception) -> RegistryError:
        msg = _one_line(exc)
        cls = RegistryUnavailable if any(s in msg.lower() for s in (
            "connection", "max retries", "unreachable", "timed out")) else RegistryError
        if "/mlflow-artifacts/" in msg:  # the server proxies artifacts: its store failed
            msg = ("the server's artifact store did not take the upload (is the object store "
                   f"reachable from the MLflow server?): {msg}")
        return cls(f"MLflow ({self.tracking_uri}) could not {what}: {msg}")

    def _call(self, what: str, fn, *args, **kwargs):
        """Run an MLflow call, turning its exceptions into one-line RegistryErrors."""
        try:
            return fn(*args, **kwargs)
        except RegistryError:
            raise
        except Exception as exc:
            raise self._wrap(what, exc) from None

    def _experiment_id(self) -> str:
        client = self.client()
        exp = client.get_experiment_by_name(self.experiment)
        if exp is not None:
            return exp.experiment_id
        if self.tracking_uri.startswith(("http://", "https://")):
            # A tracking server decides where artifacts go (its --artifacts-destination or
            # --default-artifact-root). A local path here would put every version's files
            # on whichever machine created the experiment first, unreadable elsewhere.
            return client.create_experiment(self.experiment)
        Path(self.artifact_root).mkdir(parents=True, exist_ok=True)
        location = (Path(self.artifact_root).resolve().as_uri()
                    if "://" not in self.artifact_root else self.artifact_root)
        return client.create_experiment(self.experiment, artifact_location=location)

    # -- versions -----------------------------------------------------------------------
    def register_version(self, store: KBStore, model_name: str, version_key: int,
                         python_model, artifacts: dict[str, str], tags: dict,
                         run_id: str | None = None, metrics: dict | None = None,
                         pip_requirements: list[str] | None = None, signature=None,
                         code_paths: list[str] | None = None) -> int:
        existing = _mirror_row(store, model_name, version_key)
        if existing is not None:
            return int(existing["mlflow_version"])
        return self._call(f"register {model_name} version {version_key}", self._register,
                          store, model_name, int(version_key), python_model, artifacts,
                          tags, run_id, metrics or {}, pip_requirements, signature, code_paths)

    def _register(self, store, model_name, version_key, python_model, artifacts, tags,
                  run_id, metrics, pip_requirements, signature, code_paths=None) -> int:
        client = self.client()
        import mlflow

        found = [mv for mv in client.search_model_versions(f"name = '{model_name}'")
                 if (mv.tags or {}).get(VERSION_TAG) == str(version_key)]
        if found:  # registered before a crash lost the mirror row: adopt it, don't duplicate
            mv = found[0]
            _insert_mirror(store, model_name, version_key, int(mv.version), mv.run_id,
                           dict(mv.tags or {}))
            return int(mv.version)
        exp_id = self._experiment_id()
        str_tags = {k: str(v) for k, v in tags.items() if v is not None}
        str_tags.update({VERSION_TAG: str(version_key), "dagster_run_id": str(run_id or "")})
        mlflow.set_tracking_uri(self.tracking_uri)
        mlflow.set_registry_uri(self.tracking_uri)
        with mlflow.start_run(experiment_id=exp_id, run_name=f"{model_name}-v{version_key}",
                              tags=str_tags) as run:
            if metrics:
                mlflow.log_metrics({k: float(v) for k, v in metrics.items()})
            fault_point("registry:before_log_model")  # the run exists, no artifact yet
            # Explicit requirements: inference would load the model in a subprocess.
            info = mlflow.pyfunc.log_model(
                name="model", python_model=python_model, artifacts=artifacts,
                signature=signature, code_paths=code_paths,
                pip_requirements=pip_requirements or ["faiss-cpu", "pandas", "numpy"])
        try:
            client.get_registered_model(model_name)
        except Exception:
            client.create_registered_model(model_name)
        mv = client.create_model_version(model_name, source=info.model_uri,
                                         run_id=run.info.run_id, tags=str_tags,
                                         model_id=getattr(info, "model_id", None))
        mv = self._one_version_per_key(model_name, version_key, mv)
        _insert_mirror(store, model_name, version_key, int(mv.version), run.info.run_id, str_tags)
        return int(mv.version)

    def _one_version_per_key(self, model_name: str, version_key: int, created):
        """A create call that timed out on a loaded server is retried by MLflow's HTTP client
        and may have created two model versions of the same KB version: keep the first,
        delete the others (seen under load in the cluster test: MLflow `kb` version 2 was KB
        version 1 again)."""
        client = self.client()
        twins = sorted((mv for mv in client.search_model_versions(f"name = '{model_name}'")
                        if (mv.tags or {}).get(VERSION_TAG) == str(version_key)),
                       key=lambda mv: int(mv.version))
        for extra in twins[1:]:
            client.delete_model_version(model_name, extra.version)
        return twins[0] if twins else created

    def log_metrics(self, store: KBStore, model_name: str, version_key: int,
                    metrics: dict[str, float]) -> None:
        row = _mirror_row(store, model_name, version_key)
        if row is None:
            raise RegistryError(f"{model_name} version {version_key} is not registered")
        client = self.client()
        for k, v in metrics.items():
            self._call("log metrics", client.log_metric, row["run_id"], k, float(v))

    def log_eval_dataset(self, store: KBStore, model_name: str, version_key: int,
                         frame, name: str, digest: str, source: str) -> None:
        """Log the evaluation set as an MLflow dataset input of the version's run, so the
        MLflow UI shows which questions (and which revision of them) scored it."""
        row = _mirror_row(store, model_name, version_key)
        if row is None:
            raise RegistryError(f"{model_name} version {version_key} is not registered")
        import mlflow.data
        from mlflow.entities import DatasetInput, InputTag

        def log():
            ds = mlflow.data.from_pandas(frame, source=source, name=name, digest=digest[:36])
            entity = ds._to_mlflow_entity()
            self.client().log_inputs(row["run_id"], datasets=[DatasetInput(
                entity, tags=[InputTag("mlflow.data.context", "eval")])])
        self._call("log evaluation dataset", log)

    def set_status(self, store: KBStore, model_name: str, version_key: int, status: str) -> None:
        if status not in STATUSES:
            raise ValueError(f"status must be one of {STATUSES}, not {status!r}")
        with store.transaction() as con:
            persistence.set_registry_status(con, model_name, version_key, status)

    def _mlflow_to_key(self, model_name: str, mv) -> int:
        tag = (mv.tags or {}).get(VERSION_TAG)
        if tag is not None:
            return int(tag)
        raise RegistryError(f"MLflow {model_name} version {mv.version} has no {VERSION_TAG} tag")

    def aliases(self, model_name: str) -> dict[str, int]:
        client = self.client()
        try:
            rm = client.get_registered_model(model_name)
        except Exception as exc:
            if "RESOURCE_DOES_NOT_EXIST" in str(exc) or "not found" in str(exc).lower():
                return {}
            raise self._wrap("read aliases", exc) from None
        out = {}
        for alias, mlflow_version in (rm.aliases or {}).items():
            mv = self._call("read a model version", client.get_model_version,
                            model_name, str(mlflow_version))
            out[alias] = self._mlflow_to_key(model_name, mv)
        return out

    def get_alias(self, model_name: str, alias: str) -> int | None:
        client = self.client()
        try:
            mv = client.get_model_version_by_alias(model_name, alias)
        except Exception as exc:
            text = str(exc)
            if ("RESOURCE_DOES_NOT_EXIST" in text or "INVALID_PARAMETER_VALUE" in text
                    or "not found" in text.lower()):
                return None
            raise self._wrap(f"read alias {alias}", exc) from None
        return self._mlflow_to_key(model_name, mv)

    def versions(self, model_name: str, store: KBStore) -> list[dict]:
        client = self.client()
        mirror = {r["version"]: r for r in registered_versions(store, model_name)}
        found = self._call("list versions", client.search_model_versions,
                           f"name = '{model_name}'")
        by_alias: dict[int, list[str]] = {}
        for alias, key in self.aliases(model_name).items():
            by_alias.setdefault(key, []).append(alias)
        out = []
        for mv in found:
            key = self._mlflow_to_key(model_name, mv)
            row = mirror.get(key, {})
            out.append({
                "version": key, "mlflow_version": int(mv.version),
                "aliases": sorted(by_alias.get(key, [])),
                "created_at": utc_from_timestamp(mv.creation_timestamp / 1000).strftime(
                    "%Y-%m-%d %H:%M:%S"),
                "status": row.get("status", "unknown (not in DuckDB mirror)"),
                "tags": dict(mv.tags or {}), "mlflow_run_id": mv.run_id,
            })
        return sorted(out, key=lambda r: r["version"])

    # -- aliases ------------------------------------------------------------------------
    def move_alias(self, store: KBStore, model_name: str, alias: str, version: int,
                   actor: str, reason: str, forced: bool = False,
                   run_id: str | None = None) -> AliasMove:
        version = int(version)
        row = _mirror_row(store, model_name, version)
        if row is None:
            known = [r["version"] for r in registered_versions(store, model_name)]
            raise RegistryError(f"{model_name} version {version} is not registered "
                                f"(registered: {known or 'none'})")
        if row["status"] == "rejected" and not forced:
            raise RegistryError(f"{model_name} version {version} failed its evaluation gate; "
                                "use --force (recorded as forced) to move it anyway")
        client = self.client()
        current = self.get_alias(model_name, alias)
        self._call(f"set alias {alias}", client.set_registered_model_alias,
                   model_name, alias, str(row["mlflow_version"]))
        move = AliasMove(model_name, alias, current, version, actor, reason or "", bool(forced),
                         run_id, utc_now().isoformat(timespec="microseconds"))
        spec = MODELS.get(model_name)
        if spec and spec.serving_pointer and alias == "production" and self.kb_home:
            # Serving follows right after MLflow; recording it (DuckDB may be briefly locked
            # by a build) must not delay a rollback.
            self.sync_serving_pointer(version)
        with store.transaction() as con:
            persistence.record_alias_move(
                con, model_name=model_name, alias=alias, from_version=current,
                to_version=version, actor=actor, reason=move.reason, event_at=move.event_at,
                forced=move.forced, run_id=run_id)
        return move

    def sync_serving_pointer(self, version: int) -> None:
        """Point `kb search` / `kb serve` at `version` (after the MLflow alias moved)."""
        from kb_core.serving import write_pointer

        # write_pointer only needs `.home`.
        write_pointer(SimpleNamespace(home=Path(self.kb_home)), int(version))
        from resources.remote_versions import push_pointer

        push_pointer(Path(self.kb_home))


# -- DuckDB mirror (no MLflow import) ---------------------------------------------------
def _insert_mirror(store: KBStore, model_name: str, version_key: int, mlflow_version: int,
                   mlflow_run_id: str, tags: dict) -> None:
    with store.transaction() as con:
        persistence.mirror_registry_version(
            con, model_name=model_name, version=version_key, mlflow_version=mlflow_version,
            run_id=mlflow_run_id, tags=tags)


def _mirror_row(store: KBStore, model_name: str, version_key: int) -> dict | None:
    with store.connect(read_only=True) as con:
        rows = rows_of(con, "SELECT * FROM registry_versions WHERE model_name = ? AND version = ?",
                       [model_name, int(version_key)])
    return rows[0] if rows else None


def registered_versions(store: KBStore, model_name: str) -> list[dict]:
    return registry_mirror.registered_versions(store.db_path, model_name)


def alias_history(store: KBStore, model_name: str | None = None,
                  alias: str | None = None) -> list[dict]:
    return registry_mirror.alias_history(store.db_path, model_name, alias)


def registry_resources(paths) -> dict:
    """default_resources() entries: `registry` (MLflow) and `release_config` (gate policy)."""
    return {"registry": Registry(tracking_uri=paths.mlflow_uri,
                                 artifact_root=str(paths.mlflow_artifacts),
                                 kb_home=str(paths.home)),
            "release_config": ReleaseConfig.from_env(kb_home=str(paths.home))}
