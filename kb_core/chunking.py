"""Token-aware, CJK-aware chunking. Pure: no Dagster, no I/O.

What a token is comes from the tokenizer passed in (`token_units`): the embedder's own
tokenizer in the pipeline, so a chunk never holds more word pieces than the model reads, or
the Unicode unit (one CJK character or one run of letters/digits) by default. Both count a
CJK character as a token, so Chinese, which has no spaces, is cut the same way as English.
Chunks end before a heading (`#` line) when one lies in the last half of the window, else at a
sentence boundary in the last third, and consecutive chunks share `overlap` tokens. Token spans are consumed lazily with a sliding
buffer, so a 20 MB document is never copied into a token list."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Callable, Iterator

from .text import NORMALISER_VERSION, SENTENCE_END, sha256_text
from .token_units import UNICODE_TOKENIZER, UnicodeTokens

TOKENIZER_NAME = UNICODE_TOKENIZER
_TRAILING = ".!?;:。！？；：)」』】\"'"


@dataclass(frozen=True)
class ChunkerConfig:
    size: int = 200
    overlap: int = 40
    mask_pii: bool = True
    tokenizer: str = TOKENIZER_NAME  # the name of the token unit (see token_units)

    def __post_init__(self) -> None:
        if self.size < 8:
            raise ValueError(f"chunk size must be >= 8 tokens, got {self.size}")
        if not 0 <= self.overlap < self.size // 2 + 1:
            raise ValueError(f"chunk overlap must be in [0, size/2], got {self.overlap}")

    @property
    def version(self) -> str:
        """Everything that changes chunk text is part of the version."""
        return (f"{self.tokenizer}:size={self.size}:overlap={self.overlap}"
                f":pii={'mask' if self.mask_pii else 'keep'}:{NORMALISER_VERSION}")

    def as_dict(self) -> dict:
        return {"tokenizer": self.tokenizer, "size": self.size, "overlap": self.overlap,
                "mask_pii": self.mask_pii, "normaliser": NORMALISER_VERSION,
                "version": self.version}


@dataclass(frozen=True)
class Chunk:
    ordinal: int
    text: str
    n_tokens: int
    start: int  # character offsets in the cleaned document text
    end: int

    @property
    def text_hash(self) -> str:
        return sha256_text(self.text)


UNICODE = UnicodeTokens()


def chunk_text(text: str, cfg: ChunkerConfig, tokenizer=UNICODE,
               check: Callable[[str], None] | None = None) -> Iterator[Chunk]:
    """`check(stage)` is called once per chunk (a per-document time budget raises there)."""
    if tokenizer.name != cfg.tokenizer:
        raise ValueError(f"chunker configured for tokenizer {cfg.tokenizer!r}, "
                         f"given {tokenizer.name!r}")
    # Each buffered token: (start, end, boundary level after it: 0, 1 sentence, 2 heading)
    buf: list[tuple[int, int, bool]] = []
    ordinal = 0
    tokens = tokenizer.spans(text, check)
    pending = next(tokens, None)
    # With word pieces, punctuation is its own token: look at the token's last character too.
    back = 1 if tokenizer.punctuation_is_token else 0

    def boundary(start: int, end: int, next_start: int) -> int:
        """2: a heading line starts next (HTML headings arrive as `#` lines); 1: sentence end."""
        if SENTENCE_END.search(text, max(start, end - back), next_start) is None:
            return 0
        return 2 if "\n#" in text[end:next_start + 1] else 1

    while pending is not None or buf:
        while pending is not None and len(buf) < cfg.size:
            nxt = next(tokens, None)
            level = 2 if nxt is None else boundary(*pending, nxt[0])
            buf.append((pending[0], pending[1], level))
            pending = nxt
        if not buf:
            break
        if check:
            check("chunk")
        cut = len(buf)
        if pending is not None:  # more text follows: end before a heading in the last half,
            # else at a sentence end in the last third of the window
            cut = next((i + 1 for i in range(len(buf) - 1, len(buf) // 2 - 1, -1)
                        if buf[i][2] == 2), 0) or next(
                (i + 1 for i in range(len(buf) - 1, len(buf) * 2 // 3 - 1, -1) if buf[i][2]),
                len(buf))
        start, end = buf[0][0], buf[cut - 1][1]
        if not tokenizer.punctuation_is_token:
            # Keep sentence punctuation that directly follows the last token (it is no unit).
            while end < len(text) and text[end] in _TRAILING:
                end += 1
        yield Chunk(ordinal, text[start:end], cut, start, end)
        ordinal += 1
        if pending is None and cut == len(buf):
            break
        keep_from = max(cut - cfg.overlap, 1)
        buf = buf[keep_from:]


def chunk_id(doc_key: str, ordinal: int, text_hash: str) -> int:
    """Stable positive int64 id (FAISS ids are int64) of a chunk."""
    digest = hashlib.sha256(f"{doc_key}\x1f{ordinal}\x1f{text_hash}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & 0x7FFF_FFFF_FFFF_FFFF
