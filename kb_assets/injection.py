"""Prompt-injection detection on normalised text, English and Chinese. Pure, linear time.

Text is folded before matching so trivial evasions land on the same string: NFKC (full-width
letters), invisible characters removed, look-alike Cyrillic/Greek letters mapped to Latin,
lower case, and then every run of non-letters collapsed (English) or dropped (Chinese) —
"IGNORE  previous\\ninstructions", "ignore-prior-instructions" and "請忽略之前的所有指示"
all match. Patterns have bounded gaps only."""

from __future__ import annotations

import re
import unicodedata

from kb_core.text import CJK_CLASS

FLAG = "prompt_injection"

_INVISIBLE = re.compile("[\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\ufeff\u00ad\u034f]")
# Look-alikes that survive NFKC (Cyrillic and Greek letters used to dodge keyword filters).
_CONFUSABLES = str.maketrans("аеорсхуіјѕԁɡκνοτрАЕОРСХУІЈЅΑΒΕΗΙΚΜΝΟΡΤΧΥΖ",
                             "aeopcxyijsdgkvotpaeopcxyijsabehikmnoptxyz")
_NON_WORD = re.compile(f"[^a-z0-9{CJK_CLASS}]+")
_NOT_CJK = re.compile(f"[^{CJK_CLASS}]+")

_VERB = r"(?:ignore|disregard|forget|skip|override|bypass|drop|neglect)"
_WHEN = (r"(?:previous|prior|preceding|earlier|above|former|foregoing|original|initial|system"
         r"|your|my|the|all|any|these|those|every)")
_WHAT = (r"(?:instructions?|prompts?|directions?|directives?|rules?|commands?|guidelines?"
         r"|guidance|context|messages?|orders?|constraints?|polic(?:y|ies))")
_EN = [
    # ignore [all] (previous|prior|the above...) instructions; up to three filler words
    rf"\b{_VERB} (?:(?:all|any|of|the|everything|every|each) ){{0,3}}{_WHEN}"
    rf"(?: [a-z]+){{0,2}} {_WHAT}\b",
    rf"\b{_VERB} (?:everything|all|anything) (?:above|before|said|you were told)\b",
    r"\bignore the above\b",
    r"\b(?:reveal|show|print|repeat|output|leak|tell me) (?:me )?(?:your|the) "
    r"(?:hidden |secret |original |initial )?(?:system )?(?:prompt|instructions)\b",
    r"\byou are now (?:in )?(?:dan|developer mode|jailbroken|unrestricted|an? unfiltered)\b",
    r"\b(?:new|updated) instructions? (?:from|for) (?:the )?(?:system|admin|developer)\b",
]
_ZH_VERB = r"(?:忽略|忽視|無視|无视|忘記|忘记|忘掉|不要理會|不要理会|不理會|不理会|跳過|跳过|覆蓋|覆盖|違反|违反)"
_ZH_WHEN = r"(?:之前|先前|以前|前面|上面|以上|上述|原先|原來|原来|原本|系統|系统|所有|全部)"
_ZH_WHAT = r"(?:指示|指令|命令|規則|规则|提示|設定|设定|要求|規範|规范|限制)"
_ZH = [
    rf"{_ZH_VERB}.{{0,6}}{_ZH_WHEN}.{{0,6}}{_ZH_WHAT}",
    r"(?:顯示|显示|透露|洩漏|泄露|告訴我|告诉我|輸出|输出).{0,4}(?:系統|系统)(?:提示|指令)",
]
# Letter-spaced text ("i g n o r e  p r e v i o u s ...") is joined and matched without spaces.
_COMPACT_RE = re.compile(rf"{_VERB}(?:all|any|the|of){{0,3}}(?:previous|prior|preceding|earlier"
                         rf"|above|former)(?:instructions?|prompts?|rules?|directions?|commands?)")
_SYSTEM_PROMPT = re.compile(r"\bsystem[ \t]{1,3}prompt[ \t]{0,3}[:：]")
_EN_RE = re.compile("|".join(f"(?:{p})" for p in _EN))
_ZH_RE = re.compile("|".join(f"(?:{p})" for p in _ZH))


def fold(text: str) -> tuple[str, str]:
    """(English form: lower-case words separated by single spaces, CJK form: CJK only)."""
    text = _INVISIBLE.sub("", unicodedata.normalize("NFKC", text)).translate(_CONFUSABLES)
    words = _NON_WORD.sub(" ", text.lower())
    return words, _NOT_CJK.sub("", text)


def _spaced_letters(words: str) -> str:
    """'i g n o r e  p r e v i o u s' -> 'ignore previous': runs of single letters joined."""
    return re.sub(r"\b(?:[a-z] ){3,}[a-z]\b", lambda m: m.group().replace(" ", ""), words)


def injection_hits(text: str) -> list[str]:
    """The matched phrases (folded), empty when the text looks clean."""
    words, cjk = fold(text)
    hits = [m.group() for m in _EN_RE.finditer(words)]
    if not hits and re.search(r"\b(?:[a-z] ){3}", words):
        hits = [m.group() for m in _COMPACT_RE.finditer(_spaced_letters(words).replace(" ", ""))]
    low = unicodedata.normalize("NFKC", text).lower()
    hits += [m.group() for m in _SYSTEM_PROMPT.finditer(low)]
    hits += [m.group() for m in _ZH_RE.finditer(cjk)]
    return hits


def is_injection(text: str) -> bool:
    return bool(injection_hits(text))


def injection_flags(text: str) -> tuple[str, ...]:
    return (FLAG,) if is_injection(text) else ()
