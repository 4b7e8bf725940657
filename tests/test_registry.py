"""The registry API on a real sqlite-backed MLflow: registration, aliases, alias history, the
serving pointer, rollback targets and error messages. (End-to-end runs: test_registry_e2e.)"""

import json
import socket
import time

import mlflow.pyfunc
import pytest

from dagster_project.cli import main
from kb_core.serving import pointer_path, resolve
from resources.registry import (Registry, RegistryError, RegistryUnavailable, alias_history,
                                registered_versions, rollback_target)
from tests.registry_fixtures import open_registry, publish_tiny


class EchoModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return [open(context.artifacts["data"] + "/v.txt").read()] * len(model_input)


@pytest.fixture
def reg(kb_paths):
    return open_registry(kb_paths)


def _register(paths, store, registry, model, n):
    if model == "kb" and not (paths.versions / str(n)).exists():
        publish_tiny(paths.versions, n)  # a KB version is promotable only while its files exist
    d = paths.home / f"art-{model}-{n}"
    d.mkdir(exist_ok=True)
    (d / "v.txt").write_text(f"{model} v{n}")
    return registry.register_version(store, model, n, EchoModel(), {"data": str(d)},
                                     {"kb_version": n, "empty": None}, run_id=f"run-{n}",
                                     metrics={"recall_at_3": 0.5 + n / 10},
                                     pip_requirements=["pandas"])


def test_register_is_idempotent_and_mirrored(reg):
    paths, store, registry = reg
    assert registry.get_alias("kb", "production") is None and registry.aliases("kb") == {}
    assert _register(paths, store, registry, "kb", 1) == 1
    assert _register(paths, store, registry, "kb", 2) == 2
    assert _register(paths, store, registry, "kb", 2) == 2  # not registered twice
    rows = registered_versions(store, "kb")
    assert [(r["version"], r["mlflow_version"], r["status"]) for r in rows] == [
        (1, 1, "registered"), (2, 2, "registered")]
    assert rows[1]["tags"]["dagster_run_id"] == "run-2" and "empty" not in rows[1]["tags"]
    client = registry.client()
    assert len(client.search_model_versions("name = 'kb'")) == 2
    run = client.get_run(rows[1]["run_id"])
    assert run.data.metrics["recall_at_3"] == pytest.approx(0.7)
    registry.log_metrics(store, "kb", 2, {"mrr": 0.9})
    assert client.get_run(rows[1]["run_id"]).data.metrics["mrr"] == pytest.approx(0.9)
    # our number, not MLflow's: the two models number independently
    assert _register(paths, store, registry, "kb-assistant", 7) == 1
    listed = registry.versions("kb-assistant", store)
    assert [(v["version"], v["mlflow_version"]) for v in listed] == [(7, 1)]


def test_a_retried_create_leaves_one_model_version(reg, monkeypatch):
    """MLflow's HTTP client retries a create that timed out on a loaded server, which may have
    created the version already: the registry keeps one model version per KB version."""
    from mlflow import MlflowClient

    paths, store, registry = reg
    real = MlflowClient.create_model_version

    def created_twice(self, *args, **kwargs):
        real(self, *args, **kwargs)  # the request that timed out but went through
        return real(self, *args, **kwargs)
    monkeypatch.setattr(MlflowClient, "create_model_version", created_twice)
    assert _register(paths, store, registry, "kb", 1) == 1
    versions = registry.client().search_model_versions("name = 'kb'")
    assert [int(mv.version) for mv in versions] == [1]
    assert registered_versions(store, "kb")[0]["mlflow_version"] == 1
    monkeypatch.setattr(MlflowClient, "create_model_version", real)
    assert _register(paths, store, registry, "kb", 2) == 3  # MLflow numbers on; ours is 2


def test_alias_moves_are_recorded_and_the_kb_pointer_follows(reg):
    paths, store, registry = reg
    for n in (1, 2):
        _register(paths, store, registry, "kb", n)
    _register(paths, store, registry, "kb-assistant", 1)
    m1 = registry.move_alias(store, "kb", "production", 1, "alice@h", "first", run_id="r1")
    assert (m1.from_version, m1.to_version) == (None, 1)
    assert resolve(paths).version == 1 and resolve(paths).source == "production"
    registry.move_alias(store, "kb", "staging", 2, "dagster:r2", "candidate")
    assert resolve(paths).version == 1  # only production moves the serving pointer
    m2 = registry.move_alias(store, "kb", "production", 2, "bob@h", "better")
    assert (m2.from_version, m2.to_version) == (1, 2) and resolve(paths).version == 2
    registry.move_alias(store, "kb-assistant", "production", 1, "carol@h", "ft")
    assert resolve(paths).version == 2  # the assistant model never touches it
    assert registry.aliases("kb") == {"production": 2, "staging": 2}
    hist = alias_history(store, "kb")
    assert [(h["alias"], h["from_version"], h["to_version"], h["actor"]) for h in hist] == [
        ("production", None, 1, "alice@h"), ("staging", None, 2, "dagster:r2"),
        ("production", 1, 2, "bob@h")]
    assert hist[0]["run_id"] == "r1" and hist[0]["event_at"] is not None
    assert [h["model_name"] for h in alias_history(store)].count("kb-assistant") == 1
    model = mlflow.pyfunc.load_model("models:/kb@production")
    assert list(model.predict(["q"])) == ["kb v2"]


def test_refused_moves(reg):
    paths, store, registry = reg
    _register(paths, store, registry, "kb", 1)
    with pytest.raises(RegistryError, match=r"kb version 9 is not registered \(registered: \[1\]\)"):
        registry.move_alias(store, "kb", "production", 9, "a@h", "x")
    registry.set_status(store, "kb", 1, "rejected")
    with pytest.raises(RegistryError, match="failed its evaluation gate"):
        registry.move_alias(store, "kb", "production", 1, "a@h", "x")
    assert alias_history(store, "kb") == [] and not pointer_path(paths).exists()
    move = registry.move_alias(store, "kb", "production", 1, "a@h", "incident", forced=True)
    assert move.forced and alias_history(store, "kb")[0]["forced"] is True
    with pytest.raises(ValueError):
        registry.set_status(store, "kb", 1, "great")


@pytest.mark.parametrize("moves, current, expected", [
    ([], None, None),
    ([(1, "gate passed")], 1, None),
    ([(1, "gate passed"), (3, "gate passed")], 3, 1),
    ([(1, "p"), (2, "p"), (3, "p")], 3, 2),
    ([(1, "p"), (2, "p"), (3, "p"), (2, "rollback from 3")], 2, 1),  # walks further back
    ([(1, "p"), (3, "p"), (1, "rollback from 3"), (2, "manual promote")], 2, 1),
    ([(1, "p"), (2, "p"), (3, "p"), (1, "rollback: bad night")], 1, None),
    ([(1, "p"), (2, "p")], 5, 2),  # production moved outside our history: last known
    ([(1, "p"), (1, "p"), (2, "p")], 2, 1),
])
def test_rollback_target(moves, current, expected):
    history = [{"to_version": v, "reason": r} for v, r in moves]
    assert rollback_target(history, current) == expected


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_server_is_one_clear_line(kb_paths, monkeypatch, capsys):
    uri = f"http://127.0.0.1:{_closed_port()}"
    registry = Registry(tracking_uri=uri, artifact_root=str(kb_paths.mlflow_artifacts))
    t0 = time.monotonic()
    with pytest.raises(RegistryUnavailable, match=f"MLflow tracking server {uri} is unreachable"):
        registry.get_alias("kb", "production")
    assert time.monotonic() - t0 < 10
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    assert main(["versions"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kb versions: MLflow tracking server") and "\n" not in err


def test_cli_promote_refusals_and_pointer_repair(reg, capsys):
    paths, store, registry = reg
    for n in (1, 2, 3):
        _register(paths, store, registry, "kb", n)
    registry.set_status(store, "kb", 1, "passed")
    registry.set_status(store, "kb", 2, "rejected")
    assert main(["promote", "7"]) == 2
    assert "KB version 7 does not exist (registered: [1, 2, 3])" in capsys.readouterr().err
    assert main(["promote", "2"]) == 2
    assert "failed its evaluation gate: refused" in capsys.readouterr().err
    assert main(["promote", "3"]) == 2
    assert "has not passed an evaluation gate" in capsys.readouterr().err
    assert main(["rollback"]) == 2
    assert "nothing is in production" in capsys.readouterr().err
    assert main(["promote", "1", "--reason", "first"]) == 0
    assert main(["promote", "2", "--force", "--reason", "incident 42"]) == 0
    assert "production: 1 -> 2 (forced)" in capsys.readouterr().out
    last = alias_history(store, "kb")[-1]
    assert (last["to_version"], last["forced"], last["reason"]) == (2, True, "incident 42")
    assert "@" in last["actor"]
    # Someone (or a crash) left the pointer wrong: MLflow wins, `kb versions` repairs it.
    pointer_path(paths).write_text(json.dumps({"alias": "production", "version": 3}))
    assert main(["versions"]) == 0
    out = capsys.readouterr().out
    assert "serving pointer said 3, MLflow production is 2: pointer repaired" in out
    assert "| 2 | production |" in out and resolve(paths).version == 2
    assert main(["rollback"]) == 0
    assert registry.get_alias("kb", "production") == 1 and resolve(paths).version == 1
    assert alias_history(store, "kb")[-1]["reason"] == "rollback from 2"
