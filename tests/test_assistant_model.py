"""Where a kb-assistant version's base model comes from on the machine that loads it
(resources/assistant_model.local_base_model): its LoRA adapter fits only the model it was
trained on, so a missing custom base model is an error, never a swap to the packaged one."""

import pytest

from resources.assistant_model import local_base_model


def test_the_packaged_base_model_loads_anywhere(monkeypatch):
    monkeypatch.delenv("KB_FT_BASE_MODEL", raising=False)
    assert local_base_model("") == ""


@pytest.mark.parametrize("kind", ["folder", "gguf"])
def test_the_trained_on_path_is_used_when_this_machine_has_it(tmp_path, monkeypatch, kind):
    monkeypatch.delenv("KB_FT_BASE_MODEL", raising=False)
    path = tmp_path / ("base" if kind == "folder" else "base.gguf")
    path.mkdir() if kind == "folder" else path.write_bytes(b"GGUF")
    assert local_base_model(str(path)) == str(path)


def test_a_missing_custom_base_model_is_an_error_naming_it(tmp_path, monkeypatch):
    monkeypatch.delenv("KB_FT_BASE_MODEL", raising=False)
    gone = str(tmp_path / "trainer-machine" / "my-base")
    with pytest.raises(FileNotFoundError, match="my-base.*KB_FT_BASE_MODEL"):
        local_base_model(gone)


def test_kb_ft_base_model_names_a_copy_on_this_machine(tmp_path, monkeypatch):
    copy = tmp_path / "copy-of-base"
    copy.mkdir()
    monkeypatch.setenv("KB_FT_BASE_MODEL", str(copy))
    assert local_base_model(str(tmp_path / "elsewhere" / "base")) == str(copy)
