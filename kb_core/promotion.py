"""The promotion decision, one ladder for both models: given the gate's verdict on the
candidate this run evaluated, the auto-promotion setting and what is production now, what
happens to `production`. Pure: the assets carry out the decision (kb_assets/promotion.py)."""

from __future__ import annotations

from dataclasses import dataclass

from .models import ModelSpec

# Decision actions, in the order the ladder tests them.
NO_CANDIDATE, REJECTED, ALREADY, MANUAL, PROMOTE = (
    "no_candidate", "rejected", "already_production", "manual", "promote")


def version_label(version: int | None) -> str:
    return "none" if version is None else f"v{version}"


@dataclass(frozen=True)
class PromotionDecision:
    model: str
    action: str  # one of the actions above
    candidate: int | None  # the version this run evaluated (None: none)
    current: int | None  # production before the decision
    summary: str  # one markdown line for the asset's metadata

    @property
    def promote(self) -> bool:
        return self.action == PROMOTE


def decide_promotion(spec: ModelSpec, gate_passed: bool | None, auto_promote: bool,
                     current: int | None, candidate: int | None) -> PromotionDecision:
    """No candidate, then a failed gate, then "already production" (so a re-run never asks a
    person to promote what already serves), then auto-promotion off, then promote."""
    def done(action: str, summary: str) -> PromotionDecision:
        return PromotionDecision(spec.name, action, candidate, current, summary)

    stays = f"production stays {version_label(current)}"
    if candidate is None:
        return done(NO_CANDIDATE, f"No new {spec.label} evaluated in this run: {stays}.")
    if not gate_passed:
        return done(REJECTED, f"{spec.label} {candidate} failed its gate: {stays}.")
    if current == candidate:
        return done(ALREADY, f"{spec.label} {candidate} is already production.")
    if not auto_promote:
        return done(MANUAL, f"{spec.label} {candidate} passed its gate; automatic promotion is "
                            f"off: run `{spec.promote_command(candidate)}`. {stays[0].upper()}"
                            f"{stays[1:]}.")
    return done(PROMOTE, f"Promote **{spec.label} {candidate}** to production "
                         f"(was {version_label(current)}).")


def promoted_summary(spec: ModelSpec, from_version: int | None, to_version: int) -> str:
    return (f"Promoted **{spec.label} {to_version}** to production "
            f"(was {version_label(from_version)}).")
