"""Golden question sets and the retrieval evaluation that scores a KB version with them.

Two formats:
- project jsonl: one object per line with `qid`, `question` and `doc_id` (or a `doc_ids`
  list); other fields (lang, answer, key_facts) are kept but not needed.
- a BEIR folder: `queries.jsonl` (`_id`, `text`) and `qrels/test.tsv` (query-id, corpus-id,
  score; header optional). corpus-id is the inbox document's `id`. Queries without a
  positive qrel are not evaluated (as in BEIR).
A hit is relevant when its doc_id is one of the query's relevant doc ids."""

from __future__ import annotations

import csv
import hashlib
import json
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kb_core import progress

from .metrics import summarize

DEFAULT_GOLDEN = Path(__file__).resolve().parents[1] / "sample_data" / "golden.jsonl"


class GoldenError(ValueError):
    """A golden set that cannot be read; the message names the file, line and field."""


@dataclass(frozen=True)
class GoldenQuery:
    qid: str
    question: str
    relevant: dict[str, float]
    lang: str | None = None


@dataclass
class GoldenSet:
    path: Path
    queries: list[GoldenQuery]
    sha256: str
    format: str  # "jsonl" | "beir"
    skipped: int = 0  # BEIR queries without a positive qrel


def resolve_golden(path: str | None) -> Path:
    return Path(path).expanduser().resolve() if path else DEFAULT_GOLDEN


def load_golden(path: str | Path | None = None) -> GoldenSet:
    p = resolve_golden(str(path) if path else None)
    if not p.exists():
        raise GoldenError(f"golden set {p} does not exist")
    gs = _load_beir(p) if p.is_dir() else _load_jsonl(p)
    if not gs.queries:
        raise GoldenError(f"golden set {p} has no questions")
    return gs


def _sha(*files: Path) -> str:
    h = hashlib.sha256()
    for f in files:
        h.update(f.read_bytes())
    return h.hexdigest()


def _load_jsonl(p: Path) -> GoldenSet:
    queries, seen = [], set()
    with open(p, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GoldenError(f"{p}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise GoldenError(f"{p}:{n}: expected a JSON object")
            qid, question = row.get("qid"), row.get("question")
            docs = row.get("doc_ids", row.get("doc_id"))
            if qid is None or str(qid).strip() == "":
                raise GoldenError(f"{p}:{n}: missing field 'qid'")
            if not isinstance(question, str) or not question.strip():
                raise GoldenError(f"{p}:{n}: field 'question' must be a non-empty string")
            if isinstance(docs, str):
                docs = [docs]
            if (not isinstance(docs, list) or not docs
                    or not all(isinstance(d, str) and d.strip() for d in docs)):
                raise GoldenError(f"{p}:{n}: field 'doc_id' must be a non-empty string "
                                  "(or 'doc_ids' a list of them)")
            if str(qid) in seen:
                raise GoldenError(f"{p}:{n}: duplicate qid {qid!r}")
            seen.add(str(qid))
            queries.append(GoldenQuery(str(qid), question.strip(), {d: 1.0 for d in docs},
                                       row.get("lang")))
    return GoldenSet(p, queries, _sha(p), "jsonl")


def _load_beir(p: Path) -> GoldenSet:
    qfile, qrels = p / "queries.jsonl", p / "qrels" / "test.tsv"
    for f in (qfile, qrels):
        if not f.exists():
            raise GoldenError(f"BEIR folder {p} lacks {f.relative_to(p)}")
    texts: dict[str, str] = {}
    with open(qfile, encoding="utf-8") as f:
        for n, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise GoldenError(f"{qfile}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or "_id" not in row or not str(row.get("text", "")).strip():
                raise GoldenError(f"{qfile}:{n}: needs fields '_id' and a non-empty 'text'")
            texts[str(row["_id"])] = str(row["text"]).strip()
    relevant: dict[str, dict[str, float]] = {}
    with open(qrels, encoding="utf-8", newline="") as f:
        for n, cols in enumerate(csv.reader(f, delimiter="\t"), start=1):
            if not cols or not "".join(cols).strip():
                continue
            if n == 1 and cols[0].strip().lower() in ("query-id", "query_id", "qid"):
                continue
            if len(cols) < 3:
                raise GoldenError(f"{qrels}:{n}: expected query-id, corpus-id, score")
            qid, doc, score = cols[0].strip(), cols[1].strip(), cols[2].strip()
            try:
                grade = float(score)
            except ValueError:
                raise GoldenError(f"{qrels}:{n}: score {score!r} is not a number") from None
            if qid not in texts:
                raise GoldenError(f"{qrels}:{n}: query-id {qid!r} is not in queries.jsonl")
            if grade > 0:
                relevant.setdefault(qid, {})[doc] = grade
    queries = [GoldenQuery(q, texts[q], relevant[q]) for q in texts if q in relevant]
    return GoldenSet(p, queries, _sha(qfile, qrels), "beir", skipped=len(texts) - len(queries))


@contextmanager
def one_torch_thread():
    """Time queries as `kb serve` runs them: one torch thread. With two on a busy 2-core
    machine, a single-query encode burnt ~15x the CPU (OpenMP spinning) and ran ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def timed_questions(golden: GoldenSet, sample: int) -> list[str]:
    """`sample` questions spread over the set: the ones whose latency is timed."""
    step = max(1, len(golden.queries) // max(1, sample))
    return [q.question for q in golden.queries[::step][:sample]]


@dataclass
class EvalReport:
    version: int
    metrics: dict[str, float]
    per_query: list[dict] = field(default_factory=list)  # qid, rank of first relevant, n_hits
    query_vectors: object = None  # reusable for another version with the same embedder


def evaluate(searcher, golden: GoldenSet, k: int = 10, query_vectors=None,
             latency_sample: int = 50) -> EvalReport:
    """Score one KB version. Questions are embedded in one batch (one model load, however
    many questions); latency is timed end to end (embed + search) per question on
    `latency_sample` questions spread over the set, as a served query would see it (0: not
    timed, no latency in the metrics; the release evaluation times versions side by side)."""
    from .retrieval import hybrid_search

    questions = [q.question for q in golden.queries]
    if query_vectors is None:
        query_vectors = searcher.embedder.encode(questions)
    results, per_query = [], []
    for i, (q, vec) in enumerate(zip(golden.queries, query_vectors), start=1):
        progress.report("evaluating", i, len(golden.queries), "questions")
        hits = hybrid_search(searcher.version, q.question, vec, k, searcher.config)
        ranked = [h.doc_id for h in hits]
        results.append((ranked, q.relevant))
        first = next((i for i, d in enumerate(ranked, start=1) if d in q.relevant), 0)
        per_query.append({"qid": q.qid, "question": q.question, "first_relevant_rank": first,
                          "n_hits": len(hits), "top_doc": ranked[0] if ranked else None,
                          "expected": sorted(q.relevant)})
    latencies = None
    if latency_sample > 0:
        latencies = []
        with one_torch_thread():
            searcher.search(golden.queries[0].question, k=k)  # warm-up, not timed
            for question in timed_questions(golden, latency_sample):
                t0 = time.perf_counter()
                searcher.search(question, k=k)
                latencies.append((time.perf_counter() - t0) * 1000)
    metrics = summarize(results, latencies, k)
    metrics["n_queries"] = len(results)
    return EvalReport(searcher.version.number, metrics, per_query, query_vectors)
