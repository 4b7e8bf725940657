"""The zero-hit decision, calibrated per KB version instead of constants tuned on one corpus.

A query is answered only when its best evidence beats what questions from unrelated domains
get from this same KB. The "null" sample is a bundled list of everyday questions in English
and Traditional Chinese (`data/unrelated_questions.txt`): for each script class (Latin
queries: dense cosine or BM25; mostly-CJK queries: BM25 only, the packaged embedder reads
CJK as [UNK]) the thresholds are the lowest null quantile at which at least
`target_refusal` of the null questions are refused. The KB's own (synthetic) questions then
check the other side: if more than `max_positive_loss` of them would be refused, the
thresholds step down the quantile ladder (never below refusing half of the null sample).
Pure: features in, thresholds out; the thresholds are stored in the version's metadata."""

from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kb_core.text import cjk_ratio

CALIBRATION_METHOD = "null-quantile-v1"
NULL_QUESTIONS_FILE = Path(__file__).with_name("data") / "unrelated_questions.txt"
CJK_QUERY_THRESHOLD = 0.5  # a query at least this CJK is judged on lexical evidence alone
# The quantile ladder searched, from permissive to strict.
_LADDER = np.round(np.arange(0.50, 0.991, 0.01), 2)
_MIN_SHARING = 5  # fewer word-sharing null questions than this: too few for a quantile


def null_questions(path: Path = NULL_QUESTIONS_FILE) -> list[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return [ln.strip() for ln in lines if ln.strip() and not ln.lstrip().startswith("#")]


def is_cjk_query(query: str) -> bool:
    return cjk_ratio(query) >= CJK_QUERY_THRESHOLD


@dataclass(frozen=True)
class Evidence:
    """The best scores a query gets from a version: dense cosine of the top neighbour and the
    top BM25 score in units of ln(1 + chunks) (IDF grows with log N)."""

    dense: float
    lexical: float
    cjk: bool


def readable_dense_top(version, ids: np.ndarray, scores: np.ndarray, look: int = 50) -> float:
    """Best cosine among the first `look` dense neighbours whose text the embedder can read.
    The packaged embedder maps CJK to [UNK]: a mostly-CJK chunk's vector is noise, and its
    cosine to any query (English ones included) says nothing about relevance."""
    for cid, score in zip(ids[:look].tolist(), scores[:look].tolist()):
        if cid < 0:
            continue
        row = int(version.rows_for_ids(np.array([cid]))[0])
        if cjk_ratio(str(version.manifest["text"].iat[row])) < CJK_QUERY_THRESHOLD:
            return float(score)
    return 0.0


def evidence(version, query: str, query_vec: np.ndarray,
             neighbours: tuple[np.ndarray, np.ndarray] | None = None) -> Evidence:
    """`neighbours`: this query's (scores, ids) row of a batched dense search, if done."""
    dense = 0.0
    index = version.search_index
    if index.ntotal:
        if neighbours is None:
            scores, ids = index.search(query_vec.reshape(1, -1).astype(np.float32),
                                       min(50, index.ntotal))
            neighbours = (scores[0], ids[0])
        dense = readable_dense_top(version, neighbours[1], neighbours[0])
    _, lex = version.lexical.search(query, 1)
    lexical = float(lex[0]) / math.log1p(max(1, version.lexical.n_docs)) if len(lex) else 0.0
    return Evidence(dense, lexical, is_cjk_query(query))


@dataclass(frozen=True)
class ClassThresholds:
    """Answer a query of this class when dense > `dense` or lexical > `lexical`."""

    dense: float  # +inf: dense evidence never counts (CJK queries)
    lexical: float
    quantile: float  # the null quantile the thresholds sit at
    null_refusal: float  # share of the null sample refused
    n_null: int
    positive_refusal: float | None  # share of the KB's own questions refused
    n_positive: int

    def accepts(self, e: Evidence) -> bool:
        return e.dense > self.dense or e.lexical > self.lexical


@dataclass(frozen=True)
class Calibration:
    method: str
    target_refusal: float
    max_positive_loss: float
    latin: ClassThresholds
    cjk: ClassThresholds

    def for_query(self, cjk: bool) -> ClassThresholds:
        return self.cjk if cjk else self.latin

    def accepts(self, e: Evidence) -> bool:
        return self.for_query(e.cjk).accepts(e)

    def as_dict(self) -> dict:
        d = asdict(self)
        for cls in ("latin", "cjk"):  # JSON has no infinity
            if math.isinf(d[cls]["dense"]):
                d[cls]["dense"] = None
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Calibration":
        def ct(x: dict) -> ClassThresholds:
            return ClassThresholds(**dict(x, dense=math.inf if x["dense"] is None else x["dense"]))

        return cls(d["method"], d["target_refusal"], d["max_positive_loss"], ct(d["latin"]),
                   ct(d["cjk"]))

    def summary_rows(self) -> list[tuple]:
        return [(name, "-" if math.isinf(t.dense) else round(t.dense, 3), round(t.lexical, 3),
                 t.quantile, f"{t.null_refusal:.0%} of {t.n_null}",
                 "-" if t.positive_refusal is None else f"{t.positive_refusal:.1%} of {t.n_positive}")
                for name, t in (("latin", self.latin), ("cjk", self.cjk))]


def _refusal(thresholds: tuple[float, float], sample: list[Evidence]) -> float:
    d, lx = thresholds
    return sum(1 for e in sample if not (e.dense > d or e.lexical > lx)) / len(sample)


def _calibrate_class(null: list[Evidence], positives: list[Evidence], use_dense: bool,
                     target: float, max_loss: float) -> ClassThresholds:
    if not null:
        raise ValueError("calibration needs null questions of every class")
    dense = np.array([e.dense for e in null]) if use_dense else None
    lexical = np.array([e.lexical for e in null])

    # Unrelated questions that merely share a word with the KB are the hard part of the null
    # sample (most share none, so a quantile over all of them would accept any shared word):
    # the target applies to them too.
    sharing = [e for e in null if e.lexical > 0]

    def enough(t: tuple[float, float]) -> bool:
        return (_refusal(t, null) >= target
                and (len(sharing) < _MIN_SHARING or _refusal(t, sharing) >= target))

    def at(q: float) -> tuple[float, float]:
        d = float(np.quantile(dense, q)) if use_dense else math.inf
        lx = float(np.quantile(lexical, q))
        if len(sharing) >= _MIN_SHARING:
            lx = max(lx, float(np.quantile([e.lexical for e in sharing], q)))
        return d, lx

    ladder = [float(q) for q in _LADDER]
    chosen = next((q for q in ladder if enough(at(q))), ladder[-1])
    # Step back towards half the null sample while the KB's own questions would be refused.
    while positives and _refusal(at(chosen), positives) > max_loss and chosen > ladder[0]:
        chosen = round(chosen - 0.01, 2)
    t = at(chosen)
    return ClassThresholds(
        dense=t[0], lexical=t[1], quantile=chosen, null_refusal=round(_refusal(t, null), 4),
        n_null=len(null),
        positive_refusal=round(_refusal(t, positives), 4) if positives else None,
        n_positive=len(positives))


def calibrate(null: list[Evidence], positives: list[Evidence], target_refusal: float = 0.8,
              max_positive_loss: float = 0.01) -> Calibration:
    """Thresholds per script class from the null sample's evidence, checked on positives."""
    by = {c: ([e for e in null if e.cjk == c], [e for e in positives if e.cjk == c])
          for c in (False, True)}
    return Calibration(
        CALIBRATION_METHOD, target_refusal, max_positive_loss,
        latin=_calibrate_class(*by[False], use_dense=True, target=target_refusal,
                               max_loss=max_positive_loss),
        cjk=_calibrate_class(*by[True], use_dense=False, target=target_refusal,
                             max_loss=max_positive_loss))


def calibrate_version(version, encode, positives: list[str], target_refusal: float = 0.8,
                      max_positive_loss: float = 0.01) -> Calibration:
    """Calibrate a (loaded or about-to-be-published) version: `encode` embeds a list of
    texts, `positives` are questions the KB should answer (its synthetic eval questions)."""
    null = null_questions()
    queries = null + positives
    vecs = np.ascontiguousarray(encode(queries), dtype=np.float32)
    index = version.search_index
    if index.ntotal and len(queries):  # one batched search: BLAS over all queries
        scores, ids = index.search(vecs, min(50, index.ntotal))
        ev = [evidence(version, q, v, (scores[i], ids[i]))
              for i, (q, v) in enumerate(zip(queries, vecs))]
    else:
        ev = [evidence(version, q, v) for q, v in zip(queries, vecs)]
    return calibrate(ev[:len(null)], ev[len(null):], target_refusal, max_positive_loss)


def null_questions_digest(path: Path = NULL_QUESTIONS_FILE) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def carried_calibration(base_info: dict | None, changed_rows: int, n_chunks: int,
                        carry_max: float, null_digest: str) -> dict | None:
    """The provenance record under which a new version keeps its base version's thresholds,
    or None when it must be calibrated on its own data.

    Why a share of changed rows bounds the error: the thresholds are quantiles of the null
    questions' best evidence. A null question's best dense score moves only if one of the
    changed rows is (or was) its best neighbour: for rows like the rest, a chance of about
    the changed share each, so about that share of the null sample moves, and the refused
    share moves by at most that (1% of 159 questions is under 2 of them, the resolution of
    the ladder's 0.01 steps). BM25 scores (in units of ln(1+N)) move with N and df by about
    the same relative amount. The share is counted since the last real calibration, so
    small changes add up until one of them recalibrates. A different null sample or method,
    or no base calibration: calibrate."""
    if carry_max <= 0 or not base_info or not base_info.get("relevance"):
        return None
    if base_info["relevance"].get("method") != CALIBRATION_METHOD:
        return None
    prov = base_info.get("relevance_provenance") or {
        "calibrated_on": base_info.get("version"), "chunks": base_info.get("n_chunks") or 0,
        "changed_since": 0, "null_questions": null_digest}
    if prov.get("null_questions") != null_digest or not prov.get("chunks"):
        return None
    changed = int(prov.get("changed_since", 0)) + int(changed_rows)
    if changed > carry_max * int(prov["chunks"]):
        return None
    return {"calibrated_on": prov["calibrated_on"], "chunks": int(prov["chunks"]),
            "changed_since": changed, "carry_max": carry_max, "carried": True,
            "null_questions": null_digest, "n_chunks_now": int(n_chunks)}


def own_calibration(number: int, n_chunks: int, carry_max: float, null_digest: str) -> dict:
    """The provenance record of thresholds calibrated on version `number` itself."""
    return {"calibrated_on": number, "chunks": int(n_chunks), "changed_since": 0,
            "carry_max": carry_max, "carried": False, "null_questions": null_digest,
            "n_chunks_now": int(n_chunks)}
