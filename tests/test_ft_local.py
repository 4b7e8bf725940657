"""The local LoRA path: prompt tokens masked out of the loss; a short real training run
changes the adapter, is registered in MLflow with its tags and params, is evaluated against
its base, promoted, and answers `kb ask` with sources."""

import json
from pathlib import Path

import pytest

from dagster_project.cli import main as kb
from resources.finetuner import LocalLoRAFineTuner, TrainJob, encode_example, length_batches
from resources.ft_config import FTConfig
from resources.llm import LLM, PACKAGED_GGUF, packaged_model_folder
from resources.registry import alias_history, registered_versions
from resources.store import KBStore
from tests.kbtest import materialized
from tests.test_ft_helpers import FT_CHAIN, KB_CORE, check_results, run_assets, step_failures, write_topics

TOPICS = ["parking", "expenses", "laptops", "travel", "security", "overtime", "wellbeing",
          "visitors"]
MSGS = [{"role": "system", "content": "Cite the source."},
        {"role": "user", "content": "Context:\n[1] (source: a.md)\nYou get 25 days.\n\nQuestion: How many?"},
        {"role": "assistant", "content": "You get 25 days. (Source: a.md)"}]


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(packaged_model_folder()), gguf_file=PACKAGED_GGUF)


def test_only_answer_tokens_carry_loss(tokenizer):
    ids, labels, cut = encode_example(tokenizer, MSGS, 256)
    assert not cut
    assert len(ids) == len(labels)
    n_prompt = labels.index(next(x for x in labels if x != -100))
    assert all(x == -100 for x in labels[:n_prompt])
    answer = tokenizer.decode(ids[n_prompt:])
    assert answer.startswith("You get 25 days. (Source: a.md)") and "<|im_end|>" in answer
    prompt = tokenizer.decode(ids[:n_prompt])
    assert "Question: How many?" in prompt and prompt.endswith("assistant\n")


@pytest.mark.parametrize("max_len,expect", [(8, "skipped"), (55, "cut"), (256, "whole")])
def test_too_long_examples_are_skipped_or_cut(tokenizer, max_len, expect):
    out = encode_example(tokenizer, MSGS, max_len)
    if expect == "skipped":
        assert out is None
    else:
        assert out[2] == (expect == "cut") and len(out[0]) <= max_len


def test_length_batches_cover_every_example_once():
    import random

    lengths = [5, 50, 7, 48, 6, 52, 9, 47, 10]
    batches = length_batches(lengths, 2, random.Random(0))
    flat = sorted(i for b in batches for i in b)
    assert flat == list(range(len(lengths))) and all(len(b) <= 2 for b in batches)


@pytest.mark.slow
def test_local_fine_tune_trains_registers_promotes_and_answers(kb_paths, capsys):
    from mlflow import MlflowClient
    from safetensors.torch import load_file

    write_topics(kb_paths, TOPICS)
    overrides = {
        "finetuner": LocalLoRAFineTuner(max_steps=3, batch_size=2, max_seq_len=192,
                                        eval_loss_examples=2, log_every=1),
        # A 3-step fine-tune need not beat its base; margin -1 lets the test reach production.
        "ft_config": FTConfig(root=str(kb_paths.home / "ft"), min_examples=8,
                              eval_max_questions=3, eval_max_new_tokens=12, gate_margin=-1.0),
        "llm": LLM(batch_size=4),
    }
    r = run_assets(kb_paths, KB_CORE + FT_CHAIN, **overrides)
    assert r.success, step_failures(r)
    md = materialized(r)
    ft = md["fine_tuned_model"]
    assert ft["provider"] == "local" and ft["steps"] == 3 and ft["training_mode"] == "full"
    adapter = kb_paths.home / "ft" / "models" / "1" / "adapter"
    assert ft["model_ref"] == "models/1/adapter"  # relative to $KB_HOME/ft: a moved KB_HOME works
    weights = load_file(str(adapter / "adapter_model.safetensors"))
    lora_b = [v for k, v in weights.items() if "lora_B" in k]
    assert lora_b and any(float(v.abs().sum()) > 0 for v in lora_b)  # B starts at zero

    store = KBStore(db_path=str(kb_paths.db))
    mirror = registered_versions(store, "kb-assistant")
    assert [v["version"] for v in mirror] == [1] and mirror[0]["status"] == "passed"
    client = MlflowClient(tracking_uri=kb_paths.mlflow_uri, registry_uri=kb_paths.mlflow_uri)
    mv = client.get_model_version("kb-assistant", str(mirror[0]["mlflow_version"]))
    for tag in ("provider", "base_model", "dataset_version", "dataset_sha256", "kb_version",
                "dagster_run_id", "training_mode"):
        assert mv.tags.get(tag), tag
    assert mv.tags["dagster_run_id"] == r.run_id and mv.tags["kb_version"] == "1"
    run = client.get_run(mv.run_id)
    assert run.data.params["learning_rate"] == "0.001" and run.data.params["max_steps"] == "3"
    assert "ft_score_mean" in run.data.metrics and "train_loss_last" in run.data.metrics
    import mlflow

    mlflow.set_tracking_uri(kb_paths.mlflow_uri)
    mlflow.set_registry_uri(kb_paths.mlflow_uri)  # not one an earlier test set
    logged = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"models:/kb-assistant/{mv.version}", dst_path=str(kb_paths.home / "dl")))
    assert list(logged.rglob("adapter_model.safetensors"))  # the adapter is in MLflow
    assert list(logged.rglob("assistant.json"))

    assert check_results(r)["ft_dataset_valid"].passed and check_results(r)["ft_beats_base"].passed
    assert md["ft_eval"]["n_questions"] == 3
    assert md["assistant_release"]["production_version"] == 1
    moves = alias_history(store, "kb-assistant", "production")
    assert [m["to_version"] for m in moves] == [1] and moves[0]["actor"].startswith("dagster:")

    capsys.readouterr()
    assert kb(["ask", "How far ahead must trains and flights be booked?",
               "--max-new-tokens", "24"]) == 0
    out = capsys.readouterr().out
    assert "kb-assistant version 1 (production)" in out and "LoRA adapter" not in out.split("\n")[2:3]
    answer, sources = out.split("Sources:")
    assert answer.strip().splitlines()[-1].strip()  # some answer text
    assert "travel/travel_policy.md" in sources
    assert json.loads(kb_paths.home.joinpath("ft", "models", "1", "assistant.json")
                      .read_text())["provider"] == "local"


@pytest.mark.slow
def test_any_local_hf_model_folder_can_be_the_base(tmp_path):
    """A plain Hugging Face folder (config.json + safetensors + tokenizer) replaces the
    packaged GGUF by setting; here made from the packaged model itself (no downloads)."""
    from safetensors.torch import load_file

    from resources.llm import load_base

    tok, model = load_base("")
    folder = tmp_path / "hf-base"
    model.hf_quantizer = None  # the weights are already dequantised to fp32: a plain model
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    rows = [json.dumps({"messages": MSGS})] * 4
    (tmp_path / "train.jsonl").write_text("\n".join(rows) + "\n")
    tuner = LocalLoRAFineTuner(base_model_path=str(folder), max_steps=2, batch_size=2,
                               eval_loss_examples=2)
    res = tuner.train(TrainJob(str(tmp_path / "train.jsonl"), str(tmp_path / "train.jsonl"),
                               str(tmp_path / "adapter")))
    assert res.base_model == str(folder.resolve()) and res.metrics["steps"] == 2
    assert res.metrics["eval_loss_after"] < res.metrics["eval_loss_before"]
    weights = load_file(str(tmp_path / "adapter" / "adapter_model.safetensors"))
    assert any(float(v.abs().sum()) > 0 for k, v in weights.items() if "lora_B" in k)
    missing = LocalLoRAFineTuner(base_model_path=str(tmp_path / "nope"))
    with pytest.raises(Exception, match="has no config.json"):
        missing.train(TrainJob(str(tmp_path / "train.jsonl"), str(tmp_path / "train.jsonl"),
                               str(tmp_path / "a2")))
