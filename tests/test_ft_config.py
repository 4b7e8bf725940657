"""Provider selection and KB_FT_* settings are configuration: one place, clear errors."""

import pytest

from dagster_project.cli import main as kb
from resources.finetuner import LocalLoRAFineTuner, OpenAIFineTuner
from resources.ft_config import SettingError, ft_resources


def test_default_is_local_and_offline(kb_paths):
    r = ft_resources(kb_paths, env={})
    assert isinstance(r["finetuner"], LocalLoRAFineTuner) and r["llm"].provider == "local"
    assert r["finetuner"].max_steps == 30 and r["ft_config"].root == str(kb_paths.home / "ft")


def test_openai_is_selected_by_configuration(kb_paths):
    r = ft_resources(kb_paths, env={"KB_FT_PROVIDER": "OpenAI", "KB_FT_EPOCHS": "3",
                                    "KB_FT_BASE_MODEL": "gpt-4.1-mini-2025-04-14"})
    assert isinstance(r["finetuner"], OpenAIFineTuner) and r["llm"].provider == "openai"
    assert r["finetuner"].base_model() == "gpt-4.1-mini-2025-04-14"
    assert r["finetuner"].n_epochs == 3 and "base_url" not in r["finetuner"].settings()


@pytest.mark.parametrize("env,field,value", [
    ({"KB_FT_MAX_STEPS": "5"}, "max_steps", 5),
    ({"KB_FT_LEARNING_RATE": "2e-4"}, "learning_rate", 2e-4),
    ({"KB_FT_LORA_RANK": "16"}, "lora_rank", 16),
    ({"KB_FT_BASE_MODEL": "/models/qwen"}, "base_model_path", "/models/qwen"),
])
def test_local_knobs(kb_paths, env, field, value):
    assert getattr(ft_resources(kb_paths, env=env)["finetuner"], field) == value


@pytest.mark.parametrize("env,message", [
    ({"KB_FT_PROVIDER": "azure"}, "KB_FT_PROVIDER='azure': expected one of local, openai"),
    ({"KB_FT_MAX_STEPS": "many"}, "KB_FT_MAX_STEPS='many': expected an integer"),
    ({"KB_FT_GATE_MARGIN": "high"}, "KB_FT_GATE_MARGIN='high': expected a number"),
])
def test_bad_settings_are_one_line_errors(kb_paths, env, message):
    with pytest.raises(SettingError, match=message):
        ft_resources(kb_paths, env=env)


def test_bad_setting_in_the_cli_is_exit_2_without_traceback(kb_paths, monkeypatch, capsys):
    monkeypatch.setenv("KB_FT_EVAL_QUESTIONS", "lots")
    assert kb(["build", "--select", "kb"]) == 2
    err = capsys.readouterr().err
    assert "KB_FT_EVAL_QUESTIONS='lots': expected an integer" in err and "Traceback" not in err


def test_model_ref_is_recorded_relative_to_the_ft_root(tmp_path):
    from resources.ft_config import FTConfig

    cfg = FTConfig(root=str(tmp_path / "kb" / "ft"))
    adapter = tmp_path / "kb" / "ft" / "models" / "3" / "adapter"
    assert cfg.ref_tag("local", str(adapter)) == "models/3/adapter"
    assert cfg.adapter_path({"model_ref": "models/3/adapter"}) == str(adapter)
    # Versions registered before keep their absolute folder; adapters elsewhere stay absolute.
    assert cfg.adapter_path({"model_ref": str(adapter)}) == str(adapter)
    assert cfg.ref_tag("local", "/elsewhere/adapter") == "/elsewhere/adapter"
    assert cfg.ref_tag("openai", "ft:gpt-4o-mini:org::abc") == "ft:gpt-4o-mini:org::abc"
    # The KB moved: the relative ref resolves under the new root.
    moved = FTConfig(root=str(tmp_path / "moved" / "ft"))
    assert moved.adapter_path({"model_ref": "models/3/adapter"}) == str(
        tmp_path / "moved" / "ft" / "models" / "3" / "adapter")
