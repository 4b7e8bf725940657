"""Text normalisation, the token patterns shared by chunking and lexical retrieval, and
the entry points of PII masking and HTML extraction. Pure functions: no Dagster, no I/O."""

from __future__ import annotations

import hashlib
import re
import unicodedata

# CJK ideographs, kana and hangul: languages written without spaces, tokenised per character.
CJK_CLASS = r"\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff\u3040-\u30ff\uac00-\ud7af"
CJK_CHAR = re.compile(f"[{CJK_CLASS}]")
# One token = one CJK character, or one run of letters/digits in any other script.
TOKEN = re.compile(f"[{CJK_CLASS}]|[^\\W_{CJK_CLASS}]+")
SENTENCE_END = re.compile(r"[.!?;。！？；\n]")

# Zero-width and bidi-control characters that make identical text hash differently.
_INVISIBLE = re.compile("[\u200b-\u200f\u2028\u2029\u202a-\u202e\u2060-\u2064\ufeff\u00ad]")
# C0/C1 controls except tab and newline.
_CONTROL = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"[ \t\u00a0\u3000]+")
_BLANK_LINES = re.compile(r"\n{3,}")

NORMALISER_VERSION = "nfkc-ws-v1"


def normalise(text: str) -> str:
    """NFKC, drop invisible/control characters, collapse whitespace, keep paragraph breaks."""
    text = unicodedata.normalize("NFKC", text)
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    text = _INVISIBLE.sub("", text)
    text = _CONTROL.sub(" ", text)
    lines = [_SPACES.sub(" ", line).strip() for line in text.split("\n")]
    return _BLANK_LINES.sub("\n\n", "\n".join(lines)).strip()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def content_hash(text: str) -> str:
    """Content identity of a document: sha256 of its normalised text."""
    return sha256_text(normalise(text))


# --- PII and HTML: validated detectors (pii.py) and a real HTML5 parser (html_extract.py) ---
from .pii import PII_LABELS, mask_pii, pii_counts  # noqa: E402  (re-exported)


def find_pii(text: str) -> dict[str, int]:
    """Count of validated PII matches per kind."""
    return pii_counts(text)


def html_to_text(html: str) -> tuple[str, str]:
    """Return (title, visible text) of an HTML page; see html_extract."""
    from .html_extract import html_to_text as extract

    return extract(html)


def cjk_ratio(text: str) -> float:
    tokens = TOKEN.findall(text)
    if not tokens:
        return 0.0
    return sum(1 for t in tokens if CJK_CHAR.fullmatch(t)) / len(tokens)
