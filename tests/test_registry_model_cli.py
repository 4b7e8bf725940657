"""`kb versions|promote|rollback --model`: one command module for both registered models, on a
real sqlite-backed MLflow. The KB's production is mirrored by the serving pointer; the
assistant's never touches it."""

import json

import mlflow.pyfunc
import pytest

from dagster_project.cli import main
from kb_core.serving import pointer_path, resolve
from resources.registry import alias_history
from tests.registry_fixtures import open_registry, publish_tiny


class EchoModel(mlflow.pyfunc.PythonModel):
    def predict(self, context, model_input, params=None):
        return ["echo"] * len(model_input)


@pytest.fixture
def reg(kb_paths):
    return open_registry(kb_paths)


def _register(paths, store, registry, model, n, status):
    if model == "kb" and not (paths.versions / str(n)).exists():
        publish_tiny(paths.versions, n)  # a KB version is promotable only while its files exist
    d = paths.home / f"art-{model}-{n}"
    d.mkdir(exist_ok=True)
    (d / "v.txt").write_text(f"{model} v{n}")
    registry.register_version(store, model, n, EchoModel(), {"data": str(d)},
                              {"provider": "local", "dataset_version": n}, run_id=f"run-{n}",
                              pip_requirements=["pandas"])
    registry.set_status(store, model, n, status)


def test_assistant_commands_share_the_kb_code_path(reg, capsys):
    paths, store, registry = reg
    _register(paths, store, registry, "kb-assistant", 1, "passed")
    _register(paths, store, registry, "kb-assistant", 2, "rejected")
    _register(paths, store, registry, "kb-assistant", 3, "registered")
    capsys.readouterr()
    assert main(["rollback", "--model", "kb-assistant"]) == 2
    assert "no kb-assistant version is in production yet" in capsys.readouterr().err
    assert main(["promote", "7", "--model", "kb-assistant"]) == 2
    assert ("kb-assistant version 7 does not exist (registered: [1, 2, 3])"
            in capsys.readouterr().err)
    assert main(["promote", "2", "--model", "kb-assistant"]) == 2
    assert ("did not beat its base model and the extractive answer: refused"
            in capsys.readouterr().err)
    assert main(["promote", "3", "--model", "kb-assistant"]) == 2
    assert "kb-assistant version 3 has not been evaluated yet" in capsys.readouterr().err

    assert main(["promote", "1", "--model", "kb-assistant", "--reason", "first"]) == 0
    out = capsys.readouterr().out
    assert "kb-assistant production: None -> 1;" in out and "serving pointer" not in out
    assert main(["promote", "1", "--model", "kb-assistant"]) == 0
    assert "kb-assistant version 1 is already production" in capsys.readouterr().out
    assert main(["promote", "2", "--model", "kb-assistant", "--force"]) == 0
    assert "kb-assistant production: 1 -> 2 (forced)" in capsys.readouterr().out
    assert not pointer_path(paths).exists()  # the KB's serving pointer is not the assistant's
    assert registry.get_alias("kb", "production") is None

    assert main(["versions", "--model", "kb-assistant", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert (listing["model"], listing["production"]) == ("kb-assistant", 2)
    assert "serving_pointer" not in listing
    assert [v["status"] for v in listing["versions"]] == ["passed", "rejected", "registered"]
    assert main(["versions", "--model", "kb-assistant"]) == 0
    out = capsys.readouterr().out
    assert "| extractive score |" in out and "production: 2\n" in out

    assert main(["rollback", "--model", "kb-assistant", "--reason", "drill"]) == 0
    assert "kb-assistant production: 2 -> 1" in capsys.readouterr().out
    moves = alias_history(store, "kb-assistant", "production")
    assert [(m["from_version"], m["to_version"], m["forced"]) for m in moves] == [
        (None, 1, False), (1, 2, True), (2, 1, False)]
    assert moves[-1]["reason"] == "rollback: drill" and alias_history(store, "kb") == []


def test_kb_is_the_default_model_and_follows_the_pointer(reg, capsys):
    paths, store, registry = reg
    for n in (1, 2):
        _register(paths, store, registry, "kb", n, "passed")
    _register(paths, store, registry, "kb-assistant", 1, "passed")
    assert main(["promote", "1"]) == 0
    assert main(["promote", "2", "--model", "kb"]) == 0
    out = capsys.readouterr().out
    assert "production: 1 -> 2; serving pointer updated;" in out
    assert resolve(paths).version == 2
    assert main(["versions", "--json"]) == 0
    listing = json.loads(capsys.readouterr().out)
    assert (listing["model"], listing["production"], listing["serving_pointer"]) == ("kb", 2, 2)
    assert main(["versions", "--model", "kb-assistant", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["production"] is None
    assert main(["versions", "--model", "kb-assistant"]) == 0
    assert "production: none (the base model answers)" in capsys.readouterr().out
    assert main(["rollback"]) == 0
    assert resolve(paths).version == 1 and registry.get_alias("kb", "production") == 1
    assert main(["rollback", "--to", "1"]) == 2
    assert "KB version 1 is already production" in capsys.readouterr().err


@pytest.mark.parametrize("command", [["versions"], ["promote", "1"], ["rollback"]])
def test_unknown_model_is_a_usage_error(kb_paths, command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([*command, "--model", "kb-assistent"])
    assert exc.value.code == 2 and "invalid choice: 'kb-assistent'" in capsys.readouterr().err
