"""Fine-tuning settings as a resource: how examples are made (house style, questions, split,
replay) and how a fine-tune is evaluated and gated. Defaults keep `kb build` fast."""

from __future__ import annotations

from pathlib import Path

from dagster import ConfigurableResource

from kb_assets.ft_data import DEFAULT_ANSWER_TEMPLATE, DEFAULT_SYSTEM_PROMPT, DatasetSettings


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
    max_answer_tokens: int = 32
    eval_fraction: float = 0.2
    replay_share: float = 0.2
    min_examples: int = 20
    near_duplicate_threshold: float = 0.8
    distractors: int = 1                        # other documents' passages in each prompt
    exclude_flags: list[str] = ["prompt_injection"]
    # -- evaluation and gate
    eval_max_questions: int = 24
    eval_max_new_tokens: int = 64
    eval_threshold: float = 0.75                # "good answer": similarity at least this
    gate_margin: float = 0.02                   # fine-tune must beat base by this (score)
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
            distractors=self.distractors, exclude_flags=tuple(self.exclude_flags))

    @property
    def root_path(self) -> Path:
        return Path(self.root)

    def dataset_dir(self, version: int) -> Path:
        return self.root_path / str(version)

    def model_dir(self, assistant_version: int) -> Path:
        return self.root_path / "models" / str(assistant_version)
