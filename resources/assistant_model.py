"""The MLflow pyfunc form of a kb-assistant version: an `assistant.json` card (provider,
base model, adapter or OpenAI model id, house-style system prompt) plus, for local
fine-tunes, the LoRA adapter folder. `mlflow.pyfunc.load_model("models:/kb-assistant@production")`
answers DataFrames of (question, context). Imported only when registering or loading."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow.pyfunc


def write_assistant_card(folder: Path, result, system_prompt: str, dataset_version: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    card = folder / "assistant.json"
    card.write_text(json.dumps({
        "provider": result.provider, "base_model": result.base_model,
        "base_model_path": result.params.get("base_model_path", ""),
        "model_ref": result.model_ref, "system_prompt": system_prompt,
        "dataset_version": dataset_version}, indent=2, ensure_ascii=False), "utf-8")
    return card


def assistant_signature():
    """Input: `question` and (optional) `context` columns; output: one answer per row."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import ColSpec, Schema

    return ModelSignature(inputs=Schema([ColSpec("string", "question"),
                                         ColSpec("string", "context", required=False)]),
                          outputs=Schema([ColSpec("string")]))


def local_base_model(trained_on: str) -> str:
    """The base model a local fine-tune's adapter goes on, on the machine loading it: the
    packaged one (empty), or the folder/.gguf it was trained on when that path exists here,
    else KB_FT_BASE_MODEL when it names a copy. The adapter fits no other model, so anything
    else is an error naming the path, never a silent swap to the packaged model."""
    if not trained_on or Path(trained_on).exists():
        return trained_on
    from kb_core import settings

    copy = str(settings.get("KB_FT_BASE_MODEL") or "")
    if copy and Path(copy).exists():
        return copy
    raise FileNotFoundError(
        f"this kb-assistant version was fine-tuned on the base model {trained_on}, which is "
        "not on this machine: put the same model at that path, or set KB_FT_BASE_MODEL to a "
        "copy of it (its LoRA adapter fits no other model)")


class AssistantModel(mlflow.pyfunc.PythonModel):
    """Answers questions from given context passages in the fine-tuned house style."""

    def load_context(self, context):
        from resources.llm import LLM, AssistantRef

        card = json.loads(Path(context.artifacts["assistant"]).read_text("utf-8"))
        self.system_prompt = card["system_prompt"]
        if card["provider"] == "openai":
            self.llm = LLM(provider="openai", openai_model=card["base_model"])
            self.ref = AssistantRef("openai", card["model_ref"])
        else:
            self.llm = LLM(provider="local",
                           base_model_path=local_base_model(card.get("base_model_path", "")))
            self.ref = AssistantRef("local", card["base_model"], context.artifacts.get("adapter"))

    def predict(self, context, model_input, params=None):
        from kb_core.ft_data import chat_messages, user_prompt

        rows = model_input.to_dict("records") if hasattr(model_input, "to_dict") else model_input
        convs = [chat_messages(self.system_prompt, user_prompt(r["question"], r.get("context", "")))
                 for r in rows]
        return self.llm.chat(convs, self.ref)
