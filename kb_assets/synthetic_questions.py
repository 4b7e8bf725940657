"""Known-item questions made from a KB's own documents, for KBs that come without a golden
set. Pure: no Dagster, no I/O.

For a document, pick its most distinctive sentence (highest mean IDF over the KB), then
keep only some of its rarer terms in a shuffled order inside a neutral question frame, so
the question is not a verbatim copy of the passage (a copied sentence would be found by any
index, broken or not). The choice is a seeded hash of the document's content: the same
document in the same KB gets the same question on every run and machine."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable
from dataclasses import dataclass

from kb_core.lexical import lexical_tokens
from kb_core.text import CJK_CHAR, TOKEN, cjk_ratio

GENERATOR_VERSION = "known-item-v1"
_SENTENCES = re.compile(r"[^.!?;。！？；\n]+[.!?;。！？；]?")
_EN_FRAMES = ("What about {}?", "Tell me about {}.", "{}?", "Where can I find {}?",
              "Looking for {}.", "Information on {}?")
_ZH_FRAMES = ("請問{}？", "關於{}的說明？", "{}？", "想了解{}。", "{}是什麼？")


@dataclass(frozen=True)
class SourceDoc:
    doc_key: str
    doc_id: str
    content_hash: str
    chunks: tuple[tuple[int, str], ...]  # (chunk_id, text) in document order


@dataclass(frozen=True)
class SyntheticQuestion:
    qid: str
    doc_key: str
    doc_id: str
    content_hash: str
    question: str
    answer: str  # the sentence the question was made from
    source_chunk_id: int


def unit_hash(*parts: str) -> int:
    return int.from_bytes(hashlib.sha256("\x1f".join(parts).encode()).digest()[:8], "big")


def sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCES.findall(text) if s.strip()]


def _words(sentence: str) -> list[str]:
    """Latin-script content words (original spelling), in order, without repeats."""
    seen, out = set(), []
    for m in TOKEN.finditer(sentence):
        w = m.group()
        if CJK_CHAR.fullmatch(w) or len(w) < 3 or w.isdigit():
            continue
        if not lexical_tokens(w) or w.lower() in seen:
            continue  # a stopword
        seen.add(w.lower())
        out.append(w)
    return out


def _cjk_pieces(sentence: str) -> list[tuple[int, str]]:
    """(offset, bigram) for every two-character window of the sentence's CJK runs."""
    out: list[tuple[int, str]] = []
    for m in re.finditer(f"(?:{CJK_CHAR.pattern})+", sentence):
        run = m.group()
        out.extend((m.start() + i, run[i:i + 2]) for i in range(len(run) - 1))
    return out


def make_question(sentence: str, idf: Callable[[str], float], seed: str) -> str | None:
    """A question about `sentence` that keeps some of its rarer terms, reordered, or None
    when the sentence has too little content to ask about."""
    h = unit_hash(seed, sentence)
    if cjk_ratio(sentence) >= 0.5:
        pieces = _cjk_pieces(sentence)
        if len(pieces) < 6:
            return None
        want = 3 + h % 2  # 3-4 of the rarest word-sized pieces, not overlapping
        keep: list[tuple[int, str]] = []
        for off, piece in sorted(pieces, key=lambda p: (-idf(p[1]), p[0])):
            if all(abs(off - o) >= 2 for o, _ in keep) and piece not in {p for _, p in keep}:
                keep.append((off, piece))
            if len(keep) == want:
                break
        keep = sorted(keep, key=lambda p: unit_hash(seed, p[1]))
        return _ZH_FRAMES[h % len(_ZH_FRAMES)].format("".join(p for _, p in keep))
    words = _words(sentence)
    if len(words) < 3:
        return None
    ranked = sorted(words, key=lambda w: (-idf(w.lower()), w))
    n = min(len(ranked), 3 + h % 3)  # 3-5 of the rarest words, never the whole sentence
    if n >= len(words):
        n = max(2, len(words) - 1)
    keep = sorted(ranked[:n], key=lambda w: unit_hash(seed, w))
    return _EN_FRAMES[h % len(_EN_FRAMES)].format(" ".join(keep))


def sentence_score(sentence: str, idf: Callable[[str], float]) -> float:
    toks = lexical_tokens(sentence)
    return sum(idf(t) for t in toks) / len(toks) if len(toks) >= 3 else 0.0


def question_for(doc: SourceDoc, idf_of_token: Callable[[str], float], seed: str = "kb"
                 ) -> SyntheticQuestion | None:
    """One known-item question for `doc`: from one of its three most distinctive sentences
    (seeded choice), or None when the document has no sentence worth asking about."""
    cands = []
    for chunk_id, text in doc.chunks:
        for s in sentences(text):
            score = sentence_score(s, idf_of_token)
            if score > 0:
                cands.append((score, s, chunk_id))
    if not cands:
        return None
    cands.sort(key=lambda c: (-c[0], c[1]))
    top = cands[:3]
    order = sorted(range(len(top)), key=lambda i: unit_hash(seed, doc.content_hash, str(i)))

    def token_idf(term: str) -> float:  # a word or a CJK piece, scored as the index sees it
        toks = lexical_tokens(term)
        return max((idf_of_token(t) for t in toks), default=0.0)

    for i in order:
        _, sentence, chunk_id = top[i]
        q = make_question(sentence, token_idf, f"{seed}:{doc.content_hash}")
        if q:
            qid = f"syn-{doc.content_hash[:12]}"
            return SyntheticQuestion(qid, doc.doc_key, doc.doc_id, doc.content_hash, q,
                                     sentence, chunk_id)
    return None


def pick_documents(doc_keys: list[str], n: int, seed: str = "kb") -> set[str]:
    """A stable sample: the `n` documents with the smallest seeded hash. Adding documents
    moves few existing ones out, so most questions survive from version to version."""
    return set(sorted(doc_keys, key=lambda k: unit_hash(seed, k))[:n])
