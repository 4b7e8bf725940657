"""BM25 over CJK-aware tokens: character unigrams + bigrams for CJK runs, lower-cased and
lightly stemmed words for other scripts. Pure numpy/scipy; saved beside each KB version."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy import sparse

from .text import CJK_CHAR, TOKEN

LEXICAL_VERSION = "bm25-cjk-bigram-v1"

_STOPWORDS = frozenset(
    "a an and are as at be by do does for from how i if in is it its me my of on or our "
    "should so that the their this to was we what when where which who will with you your "
    "can may must not any all there".split()
)
# Very common function characters that carry no topic on their own (bigrams keep them).
_CJK_STOP = frozenset("的了是在我有和就不人都一也你要會嗎呢吧什麼")


def _stem(word: str) -> str:
    if len(word) > 4 and word.endswith("ies"):
        return word[:-3] + "y"
    if len(word) > 5 and word.endswith("ing"):
        return word[:-3]
    if len(word) > 4 and word.endswith("ed"):
        return word[:-2]
    if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
        return word[:-1]
    return word


def lexical_tokens(text: str) -> list[str]:
    out: list[str] = []
    run: list[str] = []  # consecutive CJK characters

    def flush() -> None:
        out.extend(c for c in run if c not in _CJK_STOP)
        out.extend(a + b for a, b in zip(run, run[1:]))
        run.clear()

    for m in TOKEN.finditer(text):
        tok = m.group()
        if CJK_CHAR.fullmatch(tok):
            if run and m.start() != prev_end:  # a gap (space, punctuation) ends the run
                flush()
            run.append(tok)
        else:
            if run:
                flush()
            word = tok.lower()
            if word not in _STOPWORDS:
                out.append(_stem(word))
        prev_end = m.end()
    if run:
        flush()
    return out


def term_counts(texts: list[str]) -> tuple[sparse.csr_matrix, list[str]]:
    """Raw term counts of `texts` (rows) over the returned term list (columns): what a KB
    segment stores so that BM25 statistics can be summed over segments at load time."""
    vocab: dict[str, int] = {}
    rows, cols, vals = [], [], []
    for i, text in enumerate(texts):
        counts: dict[int, int] = {}
        for t in lexical_tokens(text):
            j = vocab.setdefault(t, len(vocab))
            counts[j] = counts.get(j, 0) + 1
        rows.extend([i] * len(counts))
        cols.extend(counts.keys())
        vals.extend(counts.values())
    tf = sparse.csr_matrix((np.asarray(vals, np.float32), (np.asarray(rows, np.int64),
                                                         np.asarray(cols, np.int64))),
                           shape=(len(texts), len(vocab)))
    return tf, list(vocab)


def merge_counts(parts: list[tuple[sparse.spmatrix, list[str]]]) -> tuple[sparse.csr_matrix,
                                                                          list[str]]:
    """Stack the rows of several count matrices onto one vocabulary (first-seen term order).
    CSR arrays are concatenated with their columns renumbered: linear in the stored counts,
    no sort (a version of 100k chunks holds ~6.5M of them)."""
    if not parts:
        return sparse.csr_matrix((0, 0), dtype=np.float32), []
    csrs = [(sparse.csr_matrix(counts), terms) for counts, terms in parts]
    # 32-bit indices where they fit: the gather and the copies move half the bytes (a
    # 1M-chunk version holds ~65M counts).
    small = sum(c.nnz for c, _ in csrs) < 2**31 and sum(len(t) for _, t in csrs) < 2**31
    idx = np.int32 if small else np.int64
    vocab: dict[str, int] = {}
    data, indices, indptr, offset = [], [], [np.zeros(1, idx)], 0
    for csr, terms in csrs:
        first = not vocab and len(set(terms)) == len(terms)
        remap = np.array([vocab.setdefault(t, len(vocab)) for t in terms], dtype=idx)
        data.append(csr.data.astype(np.float32, copy=False))
        if not csr.nnz:
            indices.append(np.empty(0, idx))
        elif first:  # the first part's terms are the vocabulary's first: no renumbering
            indices.append(csr.indices.astype(idx, copy=False))
        else:
            indices.append(remap[csr.indices])
        indptr.append(csr.indptr[1:].astype(idx, copy=False) + idx(offset))
        offset += csr.nnz
    n_rows = sum(int(c.shape[0]) for c, _ in csrs)
    tf = sparse.csr_matrix((np.concatenate(data), np.concatenate(indices),
                            np.concatenate(indptr)), shape=(n_rows, len(vocab)))
    return tf, list(vocab)


@dataclass
class BM25Index:
    """Term-major (CSC) matrix of precomputed BM25 weights: a query sums a few columns."""

    weights: sparse.csc_matrix  # shape (n_docs, n_terms)
    vocab: dict[str, int]
    idf: np.ndarray
    k1: float = 1.2
    b: float = 0.75
    # Distinct terms per row, kept from the CSR pass that built the weights (None: loaded).
    terms_per_row: np.ndarray | None = None

    @classmethod
    def build(cls, texts: list[str], k1: float = 1.2, b: float = 0.75) -> "BM25Index":
        return cls.from_counts(*term_counts(texts), k1=k1, b=b)

    @classmethod
    def from_counts(cls, counts: sparse.spmatrix, terms: list[str], k1: float = 1.2,
                    b: float = 0.75) -> "BM25Index":
        """BM25 from raw term counts (rows = documents, columns = `terms`): N, df and the
        average length come from these rows only, so counts merged from several segments
        give the same scores as one build over the same texts. Terms no row holds are dropped."""
        tf = sparse.csr_matrix(counts, dtype=np.float32)
        n = tf.shape[0]
        df = np.bincount(tf.indices, minlength=tf.shape[1])
        if (df == 0).any():  # terms only deleted rows held
            keep = np.flatnonzero(df)
            tf, df, terms = tf[:, keep], df[keep], [terms[j] for j in keep.tolist()]
        vocab = {t: j for j, t in enumerate(terms)}
        lengths = np.asarray(tf.sum(axis=1), dtype=np.float32).ravel()
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5)).astype(np.float32)
        avg = float(lengths.mean()) if n else 0.0
        norm = k1 * (1 - b + b * lengths / (avg or 1.0))
        rows = np.repeat(np.arange(n), np.diff(tf.indptr))
        w = tf.data * (k1 + 1) / (tf.data + norm[rows]) * idf[tf.indices]
        # CSR -> CSC is a linear pass (COO -> CSC sorts).
        weights = sparse.csr_matrix((w.astype(np.float32), tf.indices, tf.indptr),
                                    shape=(n, len(vocab))).tocsc()
        return cls(weights, vocab, idf, k1, b, np.diff(tf.indptr))

    @property
    def n_docs(self) -> int:
        return self.weights.shape[0]

    def row_terms(self) -> np.ndarray:
        """Distinct terms each row holds (its stored weights)."""
        if self.terms_per_row is not None:
            return self.terms_per_row
        return np.bincount(self.weights.indices, minlength=self.n_docs)

    def query_terms(self, query: str) -> list[int]:
        return sorted({self.vocab[t] for t in lexical_tokens(query) if t in self.vocab})

    def coverage(self, query: str) -> float:
        """Share of the query's IDF mass that exists in the corpus vocabulary."""
        toks = set(lexical_tokens(query))
        if not toks:
            return 0.0
        known = [self.idf[self.vocab[t]] for t in toks if t in self.vocab]
        unknown = len(toks) - len(known)
        total = sum(known) + unknown * float(self.idf.max(initial=1.0))
        return float(sum(known) / total) if total else 0.0

    def search(self, query: str, top_n: int) -> tuple[np.ndarray, np.ndarray]:
        """Return (row positions, scores) of the best `top_n` rows with a positive score."""
        terms = self.query_terms(query)
        if not terms or self.n_docs == 0:
            return np.empty(0, np.int64), np.empty(0, np.float32)
        scores = np.asarray(self.weights[:, terms].sum(axis=1)).ravel()
        nz = np.flatnonzero(scores > 0)
        if nz.size > top_n:
            nz = nz[np.argpartition(-scores[nz], top_n - 1)[:top_n]]
        order = nz[np.argsort(-scores[nz], kind="stable")]
        return order.astype(np.int64), scores[order]

    def save(self, directory: Path) -> None:
        sparse.save_npz(directory / "bm25_weights.npz", self.weights, compressed=False)
        np.save(directory / "bm25_idf.npy", self.idf)
        (directory / "bm25_vocab.json").write_text(
            json.dumps({"version": LEXICAL_VERSION, "k1": self.k1, "b": self.b,
                        "vocab": self.vocab}, ensure_ascii=False), encoding="utf-8")

    @classmethod
    def load(cls, directory: Path) -> "BM25Index":
        meta = json.loads((directory / "bm25_vocab.json").read_text(encoding="utf-8"))
        weights = sparse.load_npz(directory / "bm25_weights.npz").tocsc()
        return cls(weights, meta["vocab"], np.load(directory / "bm25_idf.npy"),
                   meta["k1"], meta["b"])
