"""The units the chunker counts. Two implementations of one small interface (`name`,
`spans(text)`, `count(texts)`, `punctuation_is_token`):

- `UnicodeTokens`: one CJK character or one run of letters/digits (the original unit, kept
  for tests and for embedders without a tokenizer file);
- `ModelTokens`: the embedder's own tokenizer (Hugging Face `tokenizer.json`, Rust fast
  tokenizer), so a chunk of N units is exactly what the model reads and none is truncated.

`spans` yields character offsets lazily: the text is encoded in batches of segments cut at
whitespace, so a 20 MB document is never turned into one huge encoding."""

from __future__ import annotations

import hashlib
import json
import re
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterator

from .text import TOKEN

UNICODE_TOKENIZER = "unicode-word-cjk-char-v1"
SEGMENT_CHARS = 16_384    # characters per encoded segment
SEGMENTS_PER_BATCH = 32   # segments per encode_batch call (the Rust side parallelises)
# WordPiece reads a whitespace-free "word" longer than this as one [UNK]; a span that long is
# counted as one unit per 101-201 characters, so a 5 MB base64 run cannot become one chunk
# (pieces of <= 100 characters would be read as many word pieces: found by the fuzz tests).
MAX_WORD_CHARS = 100
_WS_BACK = re.compile(r"\s", re.UNICODE)


class UnicodeTokens:
    name = UNICODE_TOKENIZER
    punctuation_is_token = False
    max_tokens = None  # no model limit

    def spans(self, text: str, check: Callable[[str], None] | None = None
              ) -> Iterator[tuple[int, int]]:
        for n, m in enumerate(TOKEN.finditer(text)):
            if check and n % 65_536 == 65_535:
                check("tokenize")
            yield m.start(), m.end()

    def count(self, texts: list[str]) -> list[int]:
        return [sum(1 for _ in TOKEN.finditer(t)) for t in texts]


def _segments(text: str) -> Iterator[tuple[int, int]]:
    """[start, end) pieces of about SEGMENT_CHARS, cut just after whitespace so no token is
    split (WordPiece pre-tokenises on whitespace and punctuation). A whitespace-free stretch
    is cut after its last non-alphanumeric character, else hard."""
    n, start = len(text), 0
    while start < n:
        end = min(n, start + SEGMENT_CHARS)
        if end < n:
            window = text[start + SEGMENT_CHARS // 2:end]
            cut = max(window.rfind(" "), window.rfind("\n"))
            if cut < 0:
                cut = next((i for i in range(len(window) - 1, -1, -1)
                            if not window[i].isalnum()), -1)
            if cut >= 0:
                end = start + SEGMENT_CHARS // 2 + cut + 1
        yield start, end
        start = end


class ModelTokens:
    """A Hugging Face fast tokenizer loaded from a model folder (never from a hub)."""

    punctuation_is_token = True

    def __init__(self, folder: str | Path):
        from tokenizers import Tokenizer

        folder = Path(folder)
        path = folder / "tokenizer.json"
        if path.is_file():
            raw = path.read_bytes()
            self._tok = Tokenizer.from_str(raw.decode("utf-8"))
        else:  # only vocab files: let transformers build the fast tokenizer, offline
            from kb_core.paths import apply_offline_env

            apply_offline_env()
            from transformers import AutoTokenizer

            fast = AutoTokenizer.from_pretrained(str(folder), local_files_only=True, use_fast=True)
            if not getattr(fast, "is_fast", False):
                raise FileNotFoundError(f"no fast tokenizer for {folder}: the chunker cannot "
                                        "count the embedder's tokens")
            self._tok = Tokenizer.from_str(fast.backend_tokenizer.to_str())
            raw = self._tok.to_str().encode("utf-8")
        self._tok.no_truncation()
        self._tok.no_padding()
        kind = json.loads(raw).get("model", {}).get("type", "hf").lower()
        self.max_tokens = model_max_tokens(folder)
        # Identity = the tokenizer file's content and the model's limit: either changing
        # changes chunk boundaries, so it is part of the chunker version.
        self.name = f"{kind}-{hashlib.sha256(raw).hexdigest()[:12]}-max{self.max_tokens}"
        self.folder = str(folder)

    def _encode(self, pieces: list[str]):
        return self._tok.encode_batch(pieces, add_special_tokens=False)

    def spans(self, text: str, check: Callable[[str], None] | None = None
              ) -> Iterator[tuple[int, int]]:
        batch: list[tuple[int, int]] = []
        segs = _segments(text)
        while True:
            batch = [s for _, s in zip(range(SEGMENTS_PER_BATCH), segs)]
            if not batch:
                return
            if check:
                check("tokenize")
            for (s0, _), enc in zip(batch, self._encode([text[a:b] for a, b in batch])):
                for a, b in enc.offsets:
                    if b - a <= MAX_WORD_CHARS:
                        yield s0 + a, s0 + b
                    else:  # one [UNK] for the model: counted as pieces of 101-201 chars, so
                        # any piece a chunk boundary leaves alone is still one [UNK]
                        step = MAX_WORD_CHARS + 1
                        cuts = list(range(a, b - step + 1, step)) + [b]
                        for x, y in zip(cuts, cuts[1:]):
                            yield s0 + x, s0 + y

    def count(self, texts: list[str]) -> list[int]:
        """Tokens the model reads for each text, without [CLS]/[SEP]."""
        return [len(e.ids) for e in self._encode(texts)] if texts else []


def model_max_tokens(folder: str | Path) -> int:
    """Word pieces the model reads per text, [CLS] and [SEP] excluded: sentence-transformers'
    max_seq_length, else the tokenizer's model_max_length, else BERT's 512."""
    folder = Path(folder)
    for name, key in (("sentence_bert_config.json", "max_seq_length"),
                      ("tokenizer_config.json", "model_max_length")):
        try:
            value = json.loads((folder / name).read_text("utf-8")).get(key)
        except (OSError, ValueError):
            continue
        if isinstance(value, int) and 0 < value < 1_000_000:
            return value - 2
    return 510


@lru_cache(maxsize=4)
def model_tokens(folder: str) -> ModelTokens:
    return ModelTokens(folder)
