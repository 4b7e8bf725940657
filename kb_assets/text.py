"""Text normalisation, PII masking, HTML extraction and the token patterns shared by
chunking and lexical retrieval. Pure functions: no Dagster, no I/O."""

from __future__ import annotations

import hashlib
import re
import unicodedata
from html.parser import HTMLParser

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


# --- PII -----------------------------------------------------------------------------------
PII_PATTERNS: dict[str, re.Pattern[str]] = {
    "EMAIL": re.compile(r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"),
    # Taiwan national ID (letter + 1/2 + 8 digits) and UK NI numbers.
    "NATIONAL_ID": re.compile(r"\b[A-Z][12]\d{8}\b|\b[A-CEGHJ-PR-TW-Z]{2}\d{6}[A-D]\b"),
    "CARD": re.compile(r"\b(?:\d{4}[ -]){3}\d{4}\b"),
    # Three separated digit groups (+886-2-2345-6789, (02) 2345-6789, 0912-345-678);
    # office extensions ("ext. 4455"), dates and year ranges are deliberately not masked.
    "PHONE": re.compile(
        r"(?<![\w+])(?:\+\d{1,3}[ -]?\d{1,4}|\(\d{1,4}\)|\d{2,4})[ -]\d{3,4}[ -]\d{3,4}(?![\w])"
    ),
}


def mask_pii(text: str) -> tuple[str, dict[str, int]]:
    counts: dict[str, int] = {}
    for label, pattern in PII_PATTERNS.items():
        text, n = pattern.subn(f"[{label}]", text)
        if n:
            counts[label] = n
    return text, counts


def find_pii(text: str) -> dict[str, int]:
    return {label: len(p.findall(text)) for label, p in PII_PATTERNS.items() if p.search(text)}


# --- HTML ------------------------------------------------------------------------------------
class _TextExtractor(HTMLParser):
    _SKIP = {"script", "style", "noscript", "template", "svg", "head"}
    _BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section",
              "article", "header", "footer", "table", "ul", "ol", "blockquote", "pre", "title"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []
        self.title = ""
        self._skip_depth = 0
        self._in_title = False

    def handle_starttag(self, tag, attrs):
        if tag == "title":
            self._in_title = True
        elif tag in self._SKIP:
            self._skip_depth += 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_endtag(self, tag):
        if tag == "title":
            self._in_title = False
        elif tag in self._SKIP and self._skip_depth:
            self._skip_depth -= 1
        if tag in self._BLOCK:
            self.parts.append("\n")

    def handle_data(self, data):
        if self._in_title:
            self.title += data
        elif not self._skip_depth:
            self.parts.append(data)


def html_to_text(html: str) -> tuple[str, str]:
    """Return (title, visible text) of an HTML page; scripts and styles are dropped."""
    parser = _TextExtractor()
    parser.feed(html)
    parser.close()
    return normalise(parser.title), normalise("".join(parser.parts))


def cjk_ratio(text: str) -> float:
    tokens = TOKEN.findall(text)
    if not tokens:
        return 0.0
    return sum(1 for t in tokens if CJK_CHAR.fullmatch(t)) / len(tokens)
