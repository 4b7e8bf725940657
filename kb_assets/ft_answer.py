"""Answers from retrieved passages and how they are judged. Pure functions (the embedder is
passed in as `embed_fn`, texts -> unit vectors, or None for lexical only):

- the retrieval-only extractive answer: the sentences of a passage that best match the
  question (dense cosine + lexical overlap), cited, or a refusal when nothing matches well;
- refusals and citations: recognising them, dropping a citation of a passage that was not
  in the context;
- the three scores `ft_eval` reports per contender: correctness (key facts of the reference
  present), faithfulness (every sentence supported by a cited passage that was in the
  context), refusal accuracy (unanswerable questions refused), plus latency; and the gate.
"""

from __future__ import annotations

import re
import statistics
from dataclasses import dataclass

from kb_core.ft_data import _BULLET, _CJK_ENUM, _HEADING_MD, _SENTENCE, _STOP, clean_for_export, \
    first_sentences, is_cjk, shingles
from .ft_scoring import key_facts
from kb_core.text import CJK_CHAR, TOKEN

REFUSAL_EN = "The context does not answer this question."
REFUSAL_ZH = "提供的資料沒有回答這個問題。"
CITATION = re.compile(r"\((?:Source|source|來源)[:：]\s*([^()]+?)\)")
_CTX_SOURCE = re.compile(r"^\[(\d+)\] \(source: ([^)]+)\)$", re.M)
_REFUSAL_PATTERNS = re.compile(
    r"does not (?:answer|contain|say|mention|cover|include|provide)|doesn't (?:answer|contain|say|"
    r"mention|cover)|no answer|not (?:in|covered by|mentioned in) the (?:context|passages?)|"
    r"cannot (?:answer|find)|can't (?:answer|find)|no information|not enough information|"
    r"沒有回答|沒有(?:相關)?(?:資料|資訊|答案)|無法回答|未提及|沒有提到", re.I)
_QUESTION_END = ("?", "？")


def refusal_text(question: str) -> str:
    return REFUSAL_ZH if is_cjk(question) else REFUSAL_EN


def is_refusal(answer: str) -> bool:
    """An answer that declines (empty counts as declining: it claims nothing)."""
    a = CITATION.sub("", answer or "").strip()
    return not a or bool(_REFUSAL_PATTERNS.search(a[:200]))


def cite(answer: str, doc_id: str) -> str:
    return f"{answer} (Source: {doc_id})"


# -- sentences and matching ---------------------------------------------------------------
def sentences(text: str) -> list[str]:
    """Cleaned sentences of a passage (markdown headings, bullets and enumerations dropped)."""
    lines = [_CJK_ENUM.sub("", _BULLET.sub("", _HEADING_MD.sub("", ln))).strip()
             for ln in clean_for_export(text).split("\n")]
    return [p.strip() for ln in lines for p in _SENTENCE.split(ln) if p.strip()]


# Question and function characters of Chinese questions ("請問…有幾天？").
_STOP_ZH = set("請問什麼嗎呢的是有幾如何要我你們可以在了哪誰怎樣多少會能否該需")
_STOP_EN = set("through there their any some all much many very also into onto out up down "
               "if then than so not no yes get got has have had was were will would should "
               "could may might must shall its his her they them he she us".split())
_STOPS = _STOP | _STOP_ZH | _STOP_EN


def content_terms(text: str) -> set[str]:
    """Words that carry meaning: lower-cased, stop words out; CJK as characters + bigrams."""
    return {t for t in shingles(text) if t not in _STOPS and not (" " in t and any(
        w in _STOPS for w in t.split()))}


def lexical_match(question: str, sentence: str) -> float:
    """Share of the question's content terms (uni + bigrams) found in the sentence."""
    q = content_terms(question)
    if not q:
        return 0.0
    return len(q & content_terms(sentence)) / len(q)


@dataclass(frozen=True)
class Extraction:
    answer: str            # cited sentences, or the refusal
    refused: bool
    doc_id: str | None
    score: float           # match of the best sentence
    sentences: tuple[str, ...] = ()


def sentence_scores(query: str, sents: list[str], embed_fn=None) -> list[float]:
    """Dense cosine (when an embedder is given and the text is not CJK: the packaged MiniLM
    cannot read Chinese) averaged with lexical overlap."""
    lex = [lexical_match(query, s) for s in sents]
    if embed_fn is None or is_cjk(query) or not sents:
        return lex
    import numpy as np

    vecs = embed_fn([query] + sents)
    cos = np.clip(vecs[1:] @ vecs[0], 0.0, 1.0)
    return [0.5 * float(c) + 0.5 * x for c, x in zip(cos, lex)]


def best_sentences(query: str, passage: str, max_tokens: int, embed_fn=None,
                   hint: str | None = None) -> tuple[list[str], float]:
    """The passage's best-matching sentence for `query` (and `hint`, a reference answer, when
    given) plus the following sentence when it matches almost as well; questions inside the
    passage (an FAQ's own question) are never the answer."""
    sents = sentences(passage)
    cand = [i for i, s in enumerate(sents) if not s.endswith(_QUESTION_END)]
    if not cand:
        return [], 0.0
    all_scores = sentence_scores(query, sents, embed_fn)
    if hint:
        hs = sentence_scores(hint, sents, embed_fn)
        all_scores = [0.4 * a + 0.6 * b for a, b in zip(all_scores, hs)]
    # An FAQ passage: when the passage's own question matches best, its answer is what
    # follows it (the sentence after the question inherits the question's match).
    for i, s in enumerate(sents[:-1]):
        if s.endswith(_QUESTION_END) and not sents[i + 1].endswith(_QUESTION_END):
            all_scores[i + 1] = max(all_scores[i + 1], all_scores[i])
    texts = [sents[i] for i in cand]
    scores = [all_scores[i] for i in cand]
    best = max(range(len(cand)), key=lambda j: (scores[j], -j))
    picked = [texts[best]]
    if best + 1 < len(cand) and cand[best + 1] == cand[best] + 1 \
            and scores[best + 1] >= 0.8 * scores[best]:
        picked.append(texts[best + 1])
    out = first_sentences(" ".join(picked) if not is_cjk(picked[0]) else "".join(picked),
                          max_tokens)
    return [out], scores[best]


def extractive_answer(question: str, passages: list[tuple[str, str]], max_tokens: int = 40,
                      embed_fn=None, min_score: float = 0.3) -> Extraction:
    """The retrieval-only contender: the best-matching sentences of the top passage
    (`passages` = [(doc_id, text)] in rank order), cited; a refusal when no sentence
    matches the question at least `min_score` (no generation at all)."""
    if not passages:
        return Extraction(refusal_text(question), True, None, 0.0)
    doc_id, text = passages[0]
    picked, score = best_sentences(question, text, max_tokens, embed_fn)
    if not picked or score < min_score:
        return Extraction(refusal_text(question), True, None, round(score, 4))
    return Extraction(cite(picked[0], doc_id), False, doc_id, round(score, 4), tuple(picked))


# -- citations ----------------------------------------------------------------------------
def context_sources(context: str) -> list[str]:
    """doc ids of the passages in a prompt's context block, in order."""
    return [m.group(2) for m in _CTX_SOURCE.finditer(context)]


def parse_citations(answer: str) -> list[str]:
    out = []
    for m in CITATION.finditer(answer or ""):
        out += [p.strip() for p in re.split(r"[,;，；]", m.group(1)) if p.strip()]
    return list(dict.fromkeys(out))


def sanitize_citations(answer: str, allowed: list[str]) -> tuple[str, list[str], list[str]]:
    """(answer without citations of passages that were not in the context, kept citations,
    dropped citations). A model may invent a source; it is never shown as one."""
    kept, dropped = [], []

    def fix(m):
        ids = [p.strip() for p in re.split(r"[,;，；]", m.group(1)) if p.strip()]
        good = [i for i in ids if i in allowed]
        kept.extend(good)
        dropped.extend(i for i in ids if i not in allowed)
        return f"(Source: {', '.join(good)})" if good else ""

    clean = re.sub(r"\s+([.。])?$", r"\1", CITATION.sub(fix, answer or "")).strip()
    return clean, list(dict.fromkeys(kept)), list(dict.fromkeys(dropped))


# -- judging answers ----------------------------------------------------------------------
def answer_facts(reference: str, max_facts: int = 6) -> list[str]:
    """Key facts a correct answer contains: numbers, names and quoted terms of the reference
    (ft_scoring.key_facts, without its citation), topped up with its longest content words
    (CJK: bigrams) when it has fewer than three."""
    body = CITATION.sub("", reference)
    facts = [f for f in key_facts(body, max_facts)]
    if len(facts) < 3:
        toks = [t.lower() for t in TOKEN.findall(body)]
        if is_cjk(body):
            words = [a + b for a, b in zip(toks, toks[1:])
                     if CJK_CHAR.fullmatch(a) and CJK_CHAR.fullmatch(b)]
        else:
            words = sorted({t for t in toks if len(t) >= 4 and t not in _STOP},
                           key=lambda w: (-len(w), w))
        for w in dict.fromkeys(words):
            if len(facts) >= max(3, min(max_facts, len(facts) + 3)):
                break
            if not any(w in f.lower() for f in facts):
                facts.append(w)
    return facts[:max_facts]


def _norm(t: str) -> str:
    return re.sub(r"[\s,]", "", t.lower())


def correctness(answer: str, facts: list[str]) -> float:
    """Share of the key facts present in the answer (a refusal has none)."""
    if not facts or is_refusal(answer):
        return 0.0
    a = _norm(CITATION.sub("", answer))
    return sum(_norm(f) in a for f in facts) / len(facts)


def supported(sentence: str, passage_text: str, min_recall: float = 0.7) -> bool:
    """A claim is supported when its numbers all appear in the passage and most of its
    content words (CJK: characters) do."""
    nums = re.findall(r"\d+(?:[.,:]\d+)*", sentence)
    if any(n not in passage_text for n in nums):
        return False
    terms = {t for t in content_terms(sentence) if " " not in t}
    if not terms:
        return True
    have = content_terms(passage_text)
    return len(terms & have) / len(terms) >= min_recall


def faithful(answer: str, context: dict[str, str]) -> tuple[bool, str]:
    """(faithful, why not). `context` = doc_id -> passage text shown to the model. Every
    citation must name a passage of the context, there must be at least one, and every
    sentence must be supported by the cited passages."""
    cited = parse_citations(answer)
    if not cited:
        return False, "no citation"
    bad = [c for c in cited if c not in context]
    if bad:
        return False, f"cites a passage that was not in the context: {bad[0]}"
    text = "\n".join(context[c] for c in cited)
    for s in sentences(CITATION.sub("", answer)):
        if not supported(s, text):
            return False, f"unsupported: {s[:80]}"
    return True, ""


@dataclass(frozen=True)
class ContenderSummary:
    name: str
    n: int
    n_answerable: int
    n_unanswerable: int
    correctness: float        # mean over answerable questions
    faithfulness: float       # share of answered (not refused) questions that are faithful
    citation_valid: float     # share of answered questions citing only context passages
    refusal_accuracy: float   # share of unanswerable questions refused
    false_refusal: float      # share of answerable questions refused
    latency_s: float          # mean seconds per answer
    score: float              # the gate metric: mean of correctness, faithfulness, refusal acc.

    def as_dict(self, prefix: str = "") -> dict:
        return {f"{prefix}{k}": v for k, v in self.__dict__.items() if k != "name"}


def judge(answer: str, item: dict) -> dict:
    """Per-answer verdicts for one eval item ({answerable, facts, context: {doc: text}})."""
    refused = is_refusal(answer)
    ok, why = (None, "refused") if refused else faithful(answer, item["context"])
    cited = parse_citations(answer)
    return {"refused": refused, "correct": correctness(answer, item["facts"])
            if item["answerable"] else None,
            "faithful": ok, "why": why,
            "citation_valid": None if refused else all(c in item["context"] for c in cited)
            and bool(cited)}


def summarize_contender(name: str, verdicts: list[dict], items: list[dict],
                        seconds: float) -> ContenderSummary:
    ans = [v for v, it in zip(verdicts, items) if it["answerable"]]
    una = [v for v, it in zip(verdicts, items) if not it["answerable"]]
    answered = [v for v in verdicts if not v["refused"]]

    def mean(xs, default=0.0):
        return round(statistics.fmean(xs), 4) if xs else default
    corr = mean([v["correct"] for v in ans])
    faith = mean([1.0 if v["faithful"] else 0.0 for v in answered])
    ref = mean([1.0 if v["refused"] else 0.0 for v in una], 1.0)
    return ContenderSummary(
        name=name, n=len(verdicts), n_answerable=len(ans), n_unanswerable=len(una),
        correctness=corr, faithfulness=faith,
        citation_valid=mean([1.0 if v["citation_valid"] else 0.0 for v in answered]),
        refusal_accuracy=ref, false_refusal=mean([1.0 if v["refused"] else 0.0 for v in ans]),
        latency_s=round(seconds / max(1, len(verdicts)), 4),
        score=round((corr + faith + ref) / 3, 4))


def three_way_gate(tuned: ContenderSummary, others: list[ContenderSummary],
                   margin: float) -> tuple[bool, str]:
    """The fine-tune may become production only if its score beats every other contender
    (the base model and the extractive answer) by `margin`."""
    if tuned.n == 0:
        return False, "no held-out questions were answered"
    losers = [o for o in others if tuned.score - o.score < margin]
    if losers:
        worst = max(losers, key=lambda o: o.score)
        return False, (f"fine-tune does not beat the {worst.name} answer by the margin: score "
                       f"{tuned.score:.3f} vs {worst.score:.3f} (margin {margin:+.3f}); "
                       "fine-tuning was not worth it on these questions")
    best = max(others, key=lambda o: o.score)
    return True, (f"fine-tune beats every other contender: score {tuned.score:.3f} vs "
                  f"{best.name} {best.score:.3f} (margin {margin:+.3f})")


TABLE_METRICS = (("correctness (key facts)", "correctness"), ("faithfulness", "faithfulness"),
                 ("citations in context", "citation_valid"),
                 ("refusal accuracy (unanswerable)", "refusal_accuracy"),
                 ("false refusals (answerable)", "false_refusal"),
                 ("latency s/answer", "latency_s"), ("score (gate)", "score"))


def table_rows(summaries: list[ContenderSummary]) -> list[tuple]:
    """One row per metric, one column per contender (markdown and MLflow table)."""
    return [(label, *[getattr(s, key) for s in summaries]) for label, key in TABLE_METRICS]
