"""Fine-tuning settings: the FTConfig resource (how examples are made: house style,
questions, split, replay; how a fine-tune is evaluated and gated) and `ft_resources`, which
turns the environment (KB_FT_PROVIDER, KB_FT_*) into the finetuner/llm/ft_config resources.
Defaults keep `kb build` fast."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from kb_core import settings
from kb_core.settings import SettingError  # noqa: F401  (re-exported)
from kb_core.ft_data import DEFAULT_ANSWER_TEMPLATE, DEFAULT_SYSTEM_PROMPT, DatasetSettings

from .finetuner import LocalLoRAFineTuner, OpenAIFineTuner
from .llm import DEFAULT_OPENAI_MODEL, LLM


class FTConfig(ConfigurableResource):
    """Dataset, evaluation and promotion settings of the fine-tune chain."""

    root: str                                   # $KB_HOME/ft
    # -- dataset (house style and shape)
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    answer_template: str = DEFAULT_ANSWER_TEMPLATE  # {answer} {source} {title} {heading}
    question_source: str = "templates"          # templates | llm (the assistant LLM writes them)
    questions_per_section: int = 2
    max_sections_per_doc: int = 8
    max_context_tokens: int = 64                # ~model tokens (word 1, CJK char 2)
    max_answer_tokens: int = 48
    eval_fraction: float = 0.2
    replay_share: float = 0.2
    min_examples: int = 20
    near_duplicate_threshold: float = 0.8
    distractors: int = 1                        # template examples: other documents' passages
    context_passages: int = 2                   # retrieved passages per prompt (kb ask -k)
    refusal_share: float = 0.25                 # examples whose context lacks the answer
    max_questions_per_doc: int = 3              # evaluation-set questions used per document
    golden_path: str = ""                       # curated questions (KB_GOLDEN); empty: the KB's set
    exclude_flags: list[str] = ["prompt_injection"]
    # -- evaluation and gate
    eval_max_questions: int = 24
    eval_max_new_tokens: int = 96
    eval_threshold: float = 0.75                # (kept for old results; not in the gate)
    gate_margin: float = 0.02                   # fine-tune must beat base AND extractive by this
    extractive_min_score: float = 0.3           # extractive answer refuses below this match
    auto_promote: bool = True                   # move `production` when the gate passes

    def dataset_settings(self) -> DatasetSettings:
        return DatasetSettings(
            system_prompt=self.system_prompt, answer_template=self.answer_template,
            questions_per_section=self.questions_per_section,
            max_sections_per_doc=self.max_sections_per_doc,
            max_context_tokens=self.max_context_tokens, max_answer_tokens=self.max_answer_tokens,
            eval_fraction=self.eval_fraction, replay_share=self.replay_share,
            min_examples=self.min_examples,
            near_duplicate_threshold=self.near_duplicate_threshold,
            distractors=self.distractors, exclude_flags=tuple(self.exclude_flags),
            context_passages=self.context_passages, refusal_share=self.refusal_share,
            max_questions_per_doc=self.max_questions_per_doc)

    @property
    def root_path(self) -> Path:
        return Path(self.root)

    def dataset_dir(self, version: int) -> Path:
        return self.root_path / str(version)

    def model_dir(self, assistant_version: int) -> Path:
        return self.root_path / "models" / str(assistant_version)

    def ref_tag(self, provider: str, model_ref: str) -> str:
        """`model_ref` as the registry records it: a local adapter folder relative to this
        root (`models/3/adapter`), so a KB_HOME moved or mounted elsewhere still resolves it;
        an OpenAI model id as it is."""
        if provider != "local":
            return model_ref
        try:
            return Path(model_ref).resolve().relative_to(self.root_path.resolve()).as_posix()
        except ValueError:  # an adapter outside KB_HOME stays absolute
            return model_ref

    def adapter_path(self, tags: dict) -> str:
        """The local adapter folder of a registered version (a relative ref resolves under
        this root; versions registered with an absolute path keep it)."""
        ref = tags.get("model_ref", "")
        return ref if not ref or Path(ref).is_absolute() else str(self.root_path / ref)


def ft_resources(paths, env=None) -> dict:
    """`finetuner`, `llm` and `ft_config` for this environment. KB_FT_PROVIDER=openai (with
    OPENAI_API_KEY) selects OpenAI; KB_FT_* variables tune the defaults (see README)."""

    def var(name: str, default=...):
        return settings.get(name, env, default)

    provider = var("KB_FT_PROVIDER")
    base = var("KB_FT_BASE_MODEL")
    if provider == "openai":
        tuner = OpenAIFineTuner(base_model_name=base or DEFAULT_OPENAI_MODEL,
                                n_epochs=var("KB_FT_EPOCHS", 0))
        llm = LLM(provider="openai", openai_model=var("KB_OPENAI_CHAT_MODEL") or base
                  or DEFAULT_OPENAI_MODEL)
    else:
        tuner = LocalLoRAFineTuner(
            base_model_path=base, epochs=var("KB_FT_EPOCHS", 1),
            max_steps=var("KB_FT_MAX_STEPS"),
            batch_size=var("KB_FT_BATCH_SIZE"),
            learning_rate=var("KB_FT_LEARNING_RATE"),
            lora_rank=var("KB_FT_LORA_RANK"),
            max_seq_len=var("KB_FT_MAX_SEQ_LEN"),
            num_threads=var("KB_FT_THREADS"))
        llm = LLM(provider="local", base_model_path=base)
    cfg = FTConfig(root=str(paths.home / "ft"),
                   eval_max_questions=var("KB_FT_EVAL_QUESTIONS"),
                   eval_max_new_tokens=var("KB_FT_EVAL_MAX_NEW_TOKENS"),
                   gate_margin=var("KB_FT_GATE_MARGIN"),
                   min_examples=var("KB_FT_MIN_EXAMPLES"),
                   replay_share=var("KB_FT_REPLAY_SHARE"),
                   refusal_share=var("KB_FT_REFUSAL_SHARE"),
                   max_questions_per_doc=var("KB_FT_QUESTIONS_PER_DOC"),
                   golden_path=var("KB_GOLDEN"))
    return {"finetuner": tuner, "llm": llm, "ft_config": cfg}
