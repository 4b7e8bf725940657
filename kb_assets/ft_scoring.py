"""Scoring a fine-tune against its base model on held-out questions: embedding cosine to
the reference answer plus key-fact coverage (numbers, names, quoted terms, the cited
source). Pure functions; the asset supplies the cosines from the embedder."""

from __future__ import annotations

import re
import statistics
import unicodedata
from dataclasses import dataclass

_NUMBER = re.compile(r"(?:NT\$|US\$|£|\$|€)?\d[\d,.:]*\d%?|(?:NT\$|US\$|£|\$|€)?\d%?")
_CAMEL = re.compile(r"\b[A-Z][a-z]+[A-Z][A-Za-z]*\b")
_QUOTED = re.compile(r"「([^」]{1,20})」")
_SOURCE = re.compile(r"\(Source: ([^)]+)\)")


def _norm(text: str) -> str:
    return re.sub(r"[\s,]", "", unicodedata.normalize("NFKC", text).lower())


def key_facts(reference: str, max_facts: int = 8) -> list[str]:
    """What a correct answer must contain: numbers and amounts, product-style names,
    quoted terms, and the cited source document."""
    facts: list[str] = []
    src = _SOURCE.search(reference)
    body = _SOURCE.sub("", reference)
    for m in _NUMBER.finditer(body):
        facts.append(m.group(0).rstrip(".:"))
    facts += _CAMEL.findall(body) + _QUOTED.findall(body)
    if src:
        facts.append(src.group(1).strip())
    return list(dict.fromkeys(f for f in facts if f))[:max_facts]


def fact_coverage(answer: str, facts: list[str]) -> float | None:
    """Share of key facts present in the answer (None when the reference has none)."""
    if not facts:
        return None
    a = _norm(answer)
    return sum(_norm(f) in a for f in facts) / len(facts)


def item_score(cosine: float, coverage: float | None) -> float:
    """One number per answer: the mean of similarity and fact coverage."""
    return cosine if coverage is None else (cosine + coverage) / 2


@dataclass(frozen=True)
class ModelSummary:
    n: int
    cosine_mean: float
    fact_coverage_mean: float
    score_mean: float
    share_above_threshold: float

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in self.__dict__.items()}


def summarize(cosines: list[float], coverages: list[float | None],
              threshold: float) -> ModelSummary:
    n = len(cosines)
    if n == 0:
        return ModelSummary(0, 0.0, 0.0, 0.0, 0.0)
    covs = [c for c in coverages if c is not None]
    scores = [item_score(c, v) for c, v in zip(cosines, coverages)]
    return ModelSummary(
        n=n, cosine_mean=round(statistics.fmean(cosines), 4),
        fact_coverage_mean=round(statistics.fmean(covs), 4) if covs else 0.0,
        score_mean=round(statistics.fmean(scores), 4),
        share_above_threshold=round(sum(c >= threshold for c in cosines) / n, 4))


def gate(tuned: ModelSummary, base: ModelSummary, margin: float) -> tuple[bool, str]:
    """A fine-tune may become production only if it beats its base by `margin` (score)."""
    if tuned.n == 0:
        return False, "no held-out questions were answered"
    delta = round(tuned.score_mean - base.score_mean, 4)
    verdict = "beats" if delta >= margin else "does not beat"
    return delta >= margin, (f"fine-tune {verdict} its base by the margin: score "
                             f"{tuned.score_mean:.3f} vs {base.score_mean:.3f} "
                             f"(delta {delta:+.3f}, margin {margin:+.3f})")


def pick_eval(items: list[tuple[str, object]], n: int) -> list[int]:
    """Indexes of up to n items, round-robin across documents (item = (doc_id, ...)), so a
    long document cannot fill the evaluation alone. Deterministic."""
    by_doc: dict[str, list[int]] = {}
    for i, (doc, _) in enumerate(items):
        by_doc.setdefault(doc, []).append(i)
    queues = [by_doc[d] for d in sorted(by_doc)]
    out: list[int] = []
    while len(out) < n and any(queues):
        for q in queues:
            if q and len(out) < n:
                out.append(q.pop(0))
    return sorted(out)
