"""The two registered models, named once. A ModelSpec says what differs between them; the
release mechanism (evaluation lookup, promotion decision, CLI promote/rollback/versions) is
one piece of code that reads it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelSpec:
    name: str  # the MLflow registered model
    label: str  # how a version is named in messages: "KB version 3"
    eval_asset: str  # scores a candidate and stores the scores in eval_results
    gate_check: str  # the blocking check on eval_asset that decides whether it may be promoted
    promotion_asset: str  # moves `production`; CLI moves are reported as observations of it
    candidate_alias: str | None  # the alias a newly registered version gets (None: none)
    # `production` is mirrored by $KB_HOME's serving pointer: a rollback switches the pointer
    # first (no MLflow import), and `versions` repairs it when it disagrees with MLflow.
    serving_pointer: bool
    # Which evaluations are the gate's: those with details.trigger == this (None: all).
    gate_trigger: str | None
    no_production: str  # what answers while nothing is production
    none_in_production: str  # "<this> is in production yet" (rollback's error)
    rejected_means: str  # why a `rejected` version is refused
    unevaluated_means: str  # why a `registered` (never gated) version is refused
    # production_version in the promotion asset's metadata when nothing is production
    # (kept as each asset always reported it).
    none_version: int | None

    def promote_command(self, version: int) -> str:
        return f"kb promote {version}" + ("" if self is KB else f" --model {self.name}")


KB = ModelSpec(
    name="kb", label="KB version", eval_asset="retrieval_eval", gate_check="promotion_gate",
    promotion_asset="kb_promotion", candidate_alias="staging", serving_pointer=True, gate_trigger="dagster",
    no_production="nothing promoted", none_in_production="nothing",
    rejected_means="failed its evaluation gate",
    unevaluated_means="has not passed an evaluation gate yet", none_version=None)

ASSISTANT = ModelSpec(
    name="kb-assistant", label="kb-assistant version", eval_asset="ft_eval",
    gate_check="ft_beats_base", promotion_asset="assistant_release", candidate_alias=None,
    serving_pointer=False,
    gate_trigger=None, no_production="the base model answers",
    none_in_production="no kb-assistant version",
    rejected_means="did not beat its base model and the extractive answer",
    unevaluated_means="has not been evaluated yet", none_version=0)

MODELS: dict[str, ModelSpec] = {m.name: m for m in (KB, ASSISTANT)}
KB_MODEL, ASSISTANT_MODEL = KB.name, ASSISTANT.name


def spec_of(name: str) -> ModelSpec:
    try:
        return MODELS[name]
    except KeyError:
        raise ValueError(f"unknown model {name!r} (known: {', '.join(MODELS)})") from None
