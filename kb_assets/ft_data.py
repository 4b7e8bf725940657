"""Fine-tuning data from KB documents: sections -> template questions -> chat examples
grounded in the section text; a held-out split by document group (translations together)
with a near-duplicate leakage guard; incremental planning with replay. Pure: no I/O."""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import Counter
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
_MD_MARKUP = re.compile(r"\*\*|__|(?<!\w)\*(?!\s)|`")
_SENTENCE = re.compile(r"(?<=[.!?。！？;；])\s*")
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
    max_answer_tokens: int = 32
    eval_fraction: float = 0.2
    replay_share: float = 0.2
    min_examples: int = 20
    near_duplicate_threshold: float = 0.8
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


def context_passage(doc_id: str, body: str, max_tokens: int, rank: int = 1) -> str:
    """Same shape as retrieval.context_block, so training prompts match `kb ask` prompts."""
    return f"[{rank}] (source: {doc_id})\n{first_sentences(body, max_tokens)}"


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
        context = context_passage(doc.doc_id, sec.body, s.max_context_tokens)
        answer = s.answer_template.format(answer=first_sentences(sec.body, s.max_answer_tokens),
                                          title=title, source=doc.doc_id,
                                          heading=sec.heading or title)
        for q in dict.fromkeys(clean_for_export(q) for q in qs):
            msgs = tuple(chat_messages(clean_for_export(s.system_prompt),
                                       user_prompt(q, context), answer))
            eid = hashlib.sha256(json.dumps([doc.doc_key, msgs], ensure_ascii=False)
                                 .encode()).hexdigest()[:20]
            out.append(Example(eid, doc.doc_key, doc.doc_id, doc.content_hash,
                               split_group(doc.doc_id), salt, q, msgs))
    return out


def eligible(doc: SourceDoc, s: DatasetSettings) -> bool:
    return not (set(doc.flags) & set(s.exclude_flags))


# -- split and leakage --------------------------------------------------------------------
def eval_groups(groups: list[str], s: DatasetSettings) -> set[str]:
    """Groups held out for evaluation: a stable hash threshold (adding documents does not
    move existing groups), at least one group whenever there are two or more."""
    groups = sorted(set(groups))
    held = {g for g in groups if _unit_hash(s.seed, g) < s.eval_fraction}
    if not held and len(groups) >= 2 and s.eval_fraction > 0:
        held = {min(groups, key=lambda g: _unit_hash(s.seed, g))}
    if len(held) == len(groups):  # never hold out everything
        held.discard(max(held, key=lambda g: _unit_hash(s.seed, g)))
    return held


def shingles(text: str) -> set[str]:
    toks = [t.lower() for t in TOKEN.findall(text)]
    return set(toks) | {f"{a} {b}" for a, b in zip(toks, toks[1:])}


def find_leaks(eval_questions: list[str], train_questions: list[str],
               threshold: float) -> list[tuple[int, str, float]]:
    """(eval index, training question, Jaccard) for each eval question whose uni+bigram
    set is at least `threshold` similar to some training question (or identical)."""
    index: dict[str, list[int]] = {}
    train_sets = [shingles(q) for q in train_questions]
    for i, sh in enumerate(train_sets):
        for g in sh:
            index.setdefault(g, []).append(i)
    leaks = []
    for e, q in enumerate(eval_questions):
        es = shingles(q)
        overlap = Counter(i for g in es for i in index.get(g, ()))
        best, best_i = 0.0, -1
        for i, inter in overlap.items():
            jac = inter / (len(es) + len(train_sets[i]) - inter)
            if jac > best:
                best, best_i = jac, i
        if best_i >= 0 and (best >= threshold or q.strip() == train_questions[best_i].strip()):
            leaks.append((e, train_questions[best_i], round(best, 3)))
    return leaks


def assign_splits(examples: list[Example], s: DatasetSettings) -> tuple[list[Example], list[Example], list]:
    """(train, eval, dropped leaks). Whole groups go to eval; an eval example that is a
    near-duplicate of any training question is dropped rather than kept."""
    held = eval_groups([x.group for x in examples], s)
    train = [x for x in examples if x.group not in held]
    ev = [replace(x, split="eval") for x in examples if x.group in held]
    leaks = find_leaks([x.question for x in ev], [x.question for x in train],
                       s.near_duplicate_threshold)
    bad = {i for i, _, _ in leaks}
    return train, [x for i, x in enumerate(ev) if i not in bad], leaks


# -- incremental plan ---------------------------------------------------------------------
@dataclass
class DatasetPlan:
    mode: str                   # "full" (train on the whole pool) or "incremental"
    reason: str
    content_sha256: str
    pool: list[Example]         # every current training example
    eval: list[Example]
    train: list[Example]        # what this version's fine-tune trains on
    fresh: list[Example]
    replay: list[Example]
    removed_ids: list[str]
    removed_docs: list[str]
    leaks_dropped: list = field(default_factory=list)


def content_sha256(pool: list[Example], ev: list[Example], s: DatasetSettings) -> str:
    h = hashlib.sha256(f"{s.version}\n".encode())
    for tag, xs in (("train", pool), ("eval", ev)):
        for eid in sorted(x.example_id for x in xs):
            h.update(f"{tag}:{eid}\n".encode())
    return h.hexdigest()


def select_replay(old: list[Example], share: float, salt: str) -> list[Example]:
    """A deterministic `share` of the older examples; the salt (the new content hash)
    rotates which ones, so successive fine-tunes revisit different old examples."""
    k = min(len(old), math.ceil(share * len(old))) if share > 0 else 0
    return sorted(old, key=lambda x: _unit_hash(salt, x.example_id))[:k]


def plan_dataset(examples: list[Example], s: DatasetSettings, prev_ids: set[str] | None,
                 prev_doc_keys: set[str] | None, prev_settings: str | None) -> DatasetPlan:
    """What the next dataset version holds. Additions and edits are trained incrementally
    (fresh examples + replay); a removed or newly excluded document forces a full rebuild,
    since a continued fine-tune would keep what it learned from it."""
    pool, ev, leaks = assign_splits(examples, s)
    digest = content_sha256(pool, ev, s)
    pool_ids = {x.example_id for x in pool}
    docs_now = {x.doc_key for x in pool}
    removed_ids = sorted((prev_ids or set()) - pool_ids)
    removed_docs = sorted((prev_doc_keys or set()) - docs_now)
    if prev_ids is None:
        mode, reason = "full", "first dataset version"
    elif prev_settings != s.version:
        mode, reason = "full", "dataset settings changed"
    elif removed_docs:
        mode, reason = "full", f"{len(removed_docs)} document(s) removed or excluded"
    else:
        mode, reason = "incremental", "new or changed documents only"
    if mode == "full":
        fresh, replay = list(pool), []
    else:
        fresh = [x for x in pool if x.example_id not in prev_ids]
        replay = select_replay([x for x in pool if x.example_id in prev_ids], s.replay_share, digest)
    return DatasetPlan(mode, reason, digest, pool, ev, fresh + replay, fresh, replay,
                       removed_ids, removed_docs, leaks)


# -- validation (used by the blocking check before any training) ---------------------------
ROLES = ("system", "user", "assistant")
MAX_CHARS = {"system": 2000, "user": 6000, "assistant": 2000}


def validate_line(raw: str) -> list[str]:
    """Problems with one JSONL line ("field: what is wrong"); empty when it is valid."""
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as exc:
        return [f"not JSON ({exc.msg} at column {exc.colno})"]
    if not isinstance(obj, dict) or not isinstance(obj.get("messages"), list):
        return ["messages: missing or not a list"]
    msgs = obj["messages"]
    roles = tuple(m.get("role") if isinstance(m, dict) else None for m in msgs)
    if roles != ROLES:
        return [f"messages: roles are {list(roles)}, expected {list(ROLES)}"]
    problems = []
    for i, m in enumerate(msgs):
        c = m.get("content")
        if not isinstance(c, str) or not c.strip():
            problems.append(f"messages[{i}].content ({m['role']}): empty or not text")
        elif len(c) > MAX_CHARS[m["role"]]:
            problems.append(f"messages[{i}].content ({m['role']}): {len(c)} characters "
                            f"> {MAX_CHARS[m['role']]}")
    return problems


def question_of(raw: str) -> str:
    """The question part of a line's user message (for the leakage check on files)."""
    user = json.loads(raw)["messages"][1]["content"]
    return user.rsplit("Question:", 1)[-1].strip()
