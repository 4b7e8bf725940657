"""Fine-tuning examples from KB documents: sections -> template questions -> chat examples
grounded in the section text (plus distractor passages), PII-masked; and the query-focused
passages `kb ask` shows the model in the same shape. Pure: no I/O. Splitting, leakage,
replay and the incremental plan are in ft_plan.py."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import asdict, dataclass, field, replace

from .text import CJK_CHAR, TOKEN, cjk_ratio, mask_pii, normalise

# Short on purpose: every token of it is paid for in every training step.
DEFAULT_SYSTEM_PROMPT = ("Answer from the context only, briefly, and cite the source. If the "
                         "context has no answer, say so.")
DEFAULT_ANSWER_TEMPLATE = "{answer} (Source: {source})"
USER_TEMPLATE = "Context:\n{context}\n\nQuestion: {question}"

TEMPLATES_EN = (
    "What does the {title} say about {heading}?",
    "What are the rules on {heading_lc}?",
    "Can you explain the {heading_lc} part of the {title}?",
    "{heading}: what do I need to know?",
)
TEMPLATES_ZH = (
    "{title}中關於「{heading}」的規定是什麼？",
    "請問{heading}的規定為何？",
    "依{title}，{heading}怎麼處理？",
    "關於{heading}，我需要知道什麼？",
)
OVERVIEW_EN = ("What is the {title} about?", "Who owns the {title} and what does it cover?")
OVERVIEW_ZH = ("{title}是關於什麼的規定？", "請簡介{title}。")

_HEADING_MD = re.compile(r"^#{1,6}\s+")
_HEADING_NUM = re.compile(r"^(?:\d+(?:\.\d+)*[.)]?|[一二三四五六七八九十]+、|[(（][一二三四五六七八九十\d]+[)）])\s*")
_BULLET = re.compile(r"^\s*(?:[-*•·]|\d+[.)])\s+")
_CJK_ENUM = re.compile(r"^\s*(?:[一二三四五六七八九十]+、|[(（][一二三四五六七八九十\d]+[)）])\s*")
_MD_MARKUP = re.compile(r"\*\*|__|(?<!\w)\*(?!\s)|`")
# A sentence ends at . ! ? ; followed by a space (not inside "2.4" or "e.g.x"), or at a
# CJK full stop.
_SENTENCE = re.compile(r"(?<=[.!?;])\s+|(?<=[。！？；])\s*")
_LANG_SUFFIX = re.compile(r"[_-](en|zh|zh-tw|tw|uk)$", re.I)


@dataclass(frozen=True)
class DatasetSettings:
    """Everything that shapes the examples; its fingerprint is part of the dataset hash."""
    system_prompt: str = DEFAULT_SYSTEM_PROMPT
    answer_template: str = DEFAULT_ANSWER_TEMPLATE
    questions_per_section: int = 2
    max_sections_per_doc: int = 8
    min_section_chars: int = 30
    max_context_tokens: int = 64    # approximate model tokens (n_tokens)
    max_answer_tokens: int = 48
    eval_fraction: float = 0.2
    replay_share: float = 0.2
    min_examples: int = 20
    near_duplicate_threshold: float = 0.8
    distractors: int = 1            # template examples: other documents' passages after the relevant one
    context_passages: int = 2       # retrieved passages in a prompt (as `kb ask -k 2` shows)
    refusal_share: float = 0.25     # share of examples whose context lacks the answer
    max_questions_per_doc: int = 3  # evaluation-set questions used per document
    exclude_flags: tuple[str, ...] = ("prompt_injection",)
    seed: str = "kb-ft-v1"

    @property
    def version(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode()).hexdigest()[:16]


@dataclass(frozen=True)
class SourceDoc:
    doc_key: str
    doc_id: str
    title: str
    text: str
    content_hash: str
    flags: tuple[str, ...] = ()


@dataclass(frozen=True)
class Section:
    index: int
    heading: str | None  # None: the preamble before the first heading
    body: str


@dataclass(frozen=True)
class Example:
    example_id: str
    doc_key: str
    doc_id: str
    doc_content_hash: str
    group: str           # split unit: the document family (translations share one)
    paraphrase_of: str   # doc_key#section: questions that are paraphrases of each other
    question: str
    messages: tuple[dict, ...] = field(hash=False)
    split: str = "train"
    passage: str = ""    # the grounding passage (also lent to other examples as a distractor)
    meta: dict | None = field(default=None, hash=False, compare=False)  # held-out: what ft_eval needs

    def line(self) -> str:
        """One JSONL line in the chat fine-tuning format (what OpenAI and SFT read)."""
        return json.dumps({"messages": list(self.messages)}, ensure_ascii=False)


# -- cleaning and sections ----------------------------------------------------------------
def clean_for_export(text: str) -> str:
    """Normalised, markdown-emphasis-free, PII-masked text: nothing raw leaves the KB."""
    return mask_pii(_MD_MARKUP.sub("", normalise(text)))[0]


def n_tokens(text: str) -> int:
    """Approximate model tokens (budgets): a word counts 1, a CJK character 2 (the base
    model's English-centric BPE spends two to three tokens per Chinese character)."""
    return sum(2 if CJK_CHAR.fullmatch(t) else 1 for t in TOKEN.findall(text))


def short_title(title: str) -> str:
    """The title without its site/company decorations, for questions: "Annual Leave Policy
    — London Office" -> "Annual Leave Policy"; "北風格子股份有限公司 病假及生理假作業要點(台北辦公室)"
    -> "病假及生理假作業要點"."""
    t = re.split(r"\s+[—–|]\s+|\s+-\s+", title)[0]
    t = re.sub(r"\s*[(（][^)）]*[)）]\s*", "" if CJK_CHAR.search(t) else " ", t).strip()
    if CJK_CHAR.search(t) and " " in t:
        t = t.rsplit(" ", 1)[-1]
    return t or title


def _is_heading(line: str) -> bool:
    if _HEADING_MD.match(line):
        return True
    if (len(line) > 60 or line.startswith(("|", "-", "*", "•")) or line[-1] in ".。!?;；,，:："
            or re.search(r"\S[:：]\s*\S", line)):  # "Email: x" is a field, not a heading
        return False
    words = len(line.split()) if not CJK_CHAR.search(line) else len(line) // 3
    return words <= 8


def clean_heading(line: str) -> str:
    h = _HEADING_NUM.sub("", _HEADING_MD.sub("", line)).strip(" *:：")
    return h.capitalize() if h.isupper() and not CJK_CHAR.search(h) else h


def _same_topic(heading: str, title: str) -> bool:
    """A heading that merely repeats (part of) the title introduces the preamble."""
    short, long_ = sorted((heading, title), key=len)
    return heading == title or (len(short) >= 8 and short in long_)


def split_sections(title: str, text: str, min_chars: int = 30) -> list[Section]:
    """Headed sections of a document. A heading is a markdown heading, or a short first
    line of a paragraph without closing punctuation ("1. Entitlement", "一、特休天數")."""
    title_n = normalise(title).lower()
    heading, body, found = None, [], []
    for para in normalise(text).split("\n\n"):
        lines = [ln for ln in para.split("\n") if ln.strip()]
        if not lines:
            continue
        first = lines[0]
        if _is_heading(first) and not _same_topic(clean_heading(first).lower(), title_n):
            found.append((heading, body))
            heading, body = clean_heading(first), lines[1:]
        elif not found and not body and _same_topic(clean_heading(first).lower(), title_n):
            body = lines[1:]  # the title line repeated at the top of the text
        else:
            body.extend(lines)
    found.append((heading, body))
    out = []
    for h, lines in found:
        b = "\n".join(_BULLET.sub("", ln) for ln in lines).strip()
        if len(b) >= min_chars and (h or not out):
            out.append(Section(len(out), h or None, b))
    return out


def first_sentences(text: str, max_tokens: int) -> str:
    """Leading sentences within a token budget (at least one, cut if it alone is over)."""
    out, used = [], 0
    for s in (p.strip() for p in _SENTENCE.split(text.replace("\n", " "))):
        if not s:
            continue
        t = n_tokens(s)
        if out and used + t > max_tokens:
            break
        out.append(s)
        used += t
        if used >= max_tokens:
            break
    joined = "".join(x if i == 0 or out[i - 1][-1] in "。！？；" else " " + x
                     for i, x in enumerate(out))
    if n_tokens(joined) > max_tokens:  # one long sentence: cut at the token budget
        used, end = 0, 0
        for m in TOKEN.finditer(joined):
            used += 2 if CJK_CHAR.fullmatch(m.group(0)) else 1
            if used > max_tokens:
                break
            end = m.end()
        joined = joined[:end] + "…"
    return joined


def is_cjk(text: str) -> bool:
    return cjk_ratio(text) > 0.3


# -- questions, prompts, examples ---------------------------------------------------------
def template_questions(title: str, heading: str | None, n: int, salt: str) -> list[str]:
    """n distinct paraphrases; the starting template rotates per section so that the
    set of phrasings varies across the corpus (deterministic)."""
    zh = is_cjk(title + (heading or ""))
    if heading is None:
        pool = OVERVIEW_ZH if zh else OVERVIEW_EN
    else:
        pool = TEMPLATES_ZH if zh else TEMPLATES_EN
    start = int(hashlib.sha256(salt.encode()).hexdigest()[:8], 16) % len(pool)
    picked = [pool[(start + i) % len(pool)] for i in range(min(n, len(pool)))]
    h = heading or ""
    return [t.format(title=title, heading=h, heading_lc=h[:1].lower() + h[1:]) for t in picked]


def user_prompt(question: str, context: str) -> str:
    return USER_TEMPLATE.format(context=context, question=question)


def chat_messages(system: str, user: str, assistant: str | None = None) -> list[dict]:
    msgs = [{"role": "system", "content": system}, {"role": "user", "content": user}]
    if assistant is not None:
        msgs.append({"role": "assistant", "content": assistant})
    return msgs


def split_group(doc_id: str) -> str:
    """Documents that are translations of one policy (x_en.md / x_zh.md, it-vpn-en /
    it-vpn-zh) form one group, so the held-out split cannot leak through a translation."""
    stem = doc_id.rsplit(".", 1)[0] if "/" in doc_id or "." in doc_id[-6:] else doc_id
    return _LANG_SUFFIX.sub("", stem).lower()


def _unit_hash(*parts: str) -> float:
    return int(hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:12], 16) / 16 ** 12


def build_examples(doc: SourceDoc, s: DatasetSettings, questions_fn=None) -> list[Example]:
    """Chat examples for one document. `questions_fn(title, section, n)` may supply
    questions (e.g. LLM-generated); templates are the deterministic default."""
    title = clean_for_export(doc.title) or doc.doc_id
    sections = split_sections(title, clean_for_export(doc.text), s.min_section_chars)
    out = []
    for sec in sections[:s.max_sections_per_doc]:
        salt = f"{doc.doc_key}#{sec.index}"
        qs = questions_fn(title, sec, s.questions_per_section) if questions_fn else None
        qs = qs or template_questions(short_title(title), sec.heading,
                                      s.questions_per_section, salt)
        passage = first_sentences(sec.body, s.max_context_tokens)
        context = f"[1] (source: {doc.doc_id})\n{passage}"
        answer = s.answer_template.format(answer=first_sentences(sec.body, s.max_answer_tokens),
                                          title=title, source=doc.doc_id,
                                          heading=sec.heading or title)
        for q in dict.fromkeys(clean_for_export(q) for q in qs):
            msgs = tuple(chat_messages(clean_for_export(s.system_prompt),
                                       user_prompt(q, context), answer))
            out.append(Example(example_key(doc.doc_key, msgs), doc.doc_key, doc.doc_id,
                               doc.content_hash, split_group(doc.doc_id), salt, q, msgs,
                               passage=passage))
    return out


def example_key(doc_key: str, messages) -> str:
    """Content address of an example: the same text from the same document, the same id."""
    blob = json.dumps([doc_key, list(messages)], ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def with_distractors(xs: list[Example], lenders: list[Example], n: int) -> list[Example]:
    """Add n passages of other document families after each example's own passage, as
    `kb ask` shows the model more than one retrieved passage. Chosen by rendezvous hashing
    within one of 256 buckets: adding a document changes few choices (incremental), and
    only `lenders` lend text (training examples never carry held-out text)."""
    if n <= 0:
        return xs
    lent: dict[str, tuple[str, str, str]] = {}
    for x in lenders:
        lent.setdefault(x.paraphrase_of, (x.doc_id, x.passage, x.group))
    buckets: dict[int, list[str]] = {}
    for key in lent:
        buckets.setdefault(_bucket(key), []).append(key)
    out = []
    for x in xs:
        cands = [k for k in buckets.get(_bucket(x.paraphrase_of), []) if lent[k][2] != x.group]
        if len(cands) < n:
            cands = [k for k in lent if lent[k][2] != x.group]
        picks = sorted(cands, key=lambda k: _unit_hash(x.paraphrase_of, k), reverse=True)[:n]
        ctx = "\n\n".join([f"[1] (source: {x.doc_id})\n{x.passage}"] + [
            f"[{i + 2}] (source: {lent[k][0]})\n{lent[k][1]}" for i, k in enumerate(picks)])
        msgs = (x.messages[0], {"role": "user", "content": user_prompt(x.question, ctx)},
                x.messages[2])
        out.append(replace(x, messages=msgs, example_id=example_key(x.doc_key, msgs)))
    return out


def _bucket(key: str) -> int:
    return int(hashlib.sha256(key.encode()).hexdigest()[:2], 16)


def shingles(text: str) -> set[str]:
    toks = [t.lower() for t in TOKEN.findall(text)]
    return set(toks) | {f"{a} {b}" for a, b in zip(toks, toks[1:])}


_STOP = set("the a an and or of to in on for is are do does did i you my we our what how can "
            "who when where which about with be it this that at by from as me need know "
            "rules rule say says part explain policy".split())


def focus_passage(text: str, question: str, max_tokens: int) -> str:
    """The part of a retrieved chunk that best matches the question, in the training
    passages' shape: cleaned, starting at the best-matching sentence, within budget."""
    lines = [_CJK_ENUM.sub("", _BULLET.sub("", _HEADING_MD.sub("", ln))).strip()
             for ln in clean_for_export(text).split("\n")]
    sents = [p.strip() for ln in lines for p in _SENTENCE.split(ln) if p.strip()]
    if not sents:
        return ""
    q = {t for t in shingles(question) if t not in _STOP}
    best = max(range(len(sents)), key=lambda i: (len(q & shingles(sents[i])), -i))
    return first_sentences("\n".join(sents[best:]), max_tokens)


def eligible(doc: SourceDoc, s: DatasetSettings) -> bool:
    return not (set(doc.flags) & set(s.exclude_flags))
