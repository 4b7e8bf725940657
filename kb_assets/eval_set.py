"""The evaluation set that belongs to a KB: the user's curated golden set when there is one
(`KB_GOLDEN`, or `$KB_HOME/golden/`), else questions the platform makes from the KB itself
(kb_assets/synthetic_questions.py), stored in DuckDB (`eval_questions`) and refreshed
incrementally: a document that did not change keeps its question."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kb_core import settings
from kb_core.clock import utc_now
from resources import persistence

from .golden import GoldenError, GoldenQuery, GoldenSet, load_golden
from .synthetic_questions import (GENERATOR_VERSION, SourceDoc, SyntheticQuestion,
                                  pick_documents, question_for)

CURATED, SYNTHETIC = "curated", "synthetic"
DEFAULT_SYNTHETIC_QUESTIONS = 200
SEED = "kb"


@dataclass(frozen=True)
class EvalQuestion:
    qid: str
    question: str
    relevant: dict[str, float]  # doc_id -> grade (> 0)
    kind: str  # CURATED | SYNTHETIC
    answer: str | None  # curated: the golden answer if given; synthetic: the source sentence
    source_chunk_id: int | None


@dataclass
class EvalSet:
    kind: str
    questions: list[EvalQuestion]
    sha256: str
    source: str  # the golden file/folder, or "eval_questions (synthetic, <generator>)"
    fmt: str  # jsonl | beir | synthetic

    def as_golden(self) -> GoldenSet:
        """The shape `golden.evaluate` scores."""
        return GoldenSet(Path(self.source), [GoldenQuery(q.qid, q.question, q.relevant)
                                             for q in self.questions], self.sha256, self.fmt)

    def frame(self) -> pd.DataFrame:
        """One row per question: what MLflow logs as the evaluation dataset."""
        return pd.DataFrame([{"qid": q.qid, "question": q.question,
                              "relevant": json.dumps(q.relevant, ensure_ascii=False),
                              "answer": q.answer or "", "kind": q.kind}
                             for q in self.questions])


# -- curated ------------------------------------------------------------------------------------
def curated_location(golden_path: str | None, kb_home: Path | None) -> Path | None:
    """KB_GOLDEN wins; else `$KB_HOME/golden/` when it holds a golden set; else None."""
    if golden_path:
        return Path(golden_path).expanduser().resolve()
    if kb_home is None:
        return None
    folder = kb_home / "golden"
    if (folder / "queries.jsonl").exists() or any(folder.glob("*.jsonl")):
        return folder
    return None


def load_curated(location: Path) -> EvalSet:
    """A BEIR folder, one project-jsonl file, or a folder of project-jsonl files."""
    if location.is_dir() and not (location / "queries.jsonl").exists():
        files = sorted(location.glob("*.jsonl"))
        if not files:
            raise GoldenError(f"golden folder {location} holds no .jsonl file")
        sets = [load_golden(f) for f in files]
        seen: dict[str, Path] = {}
        for gs in sets:
            for q in gs.queries:
                if q.qid in seen:
                    raise GoldenError(f"{gs.path}: qid {q.qid!r} is also in {seen[q.qid]}")
                seen[q.qid] = gs.path
        queries = [q for gs in sets for q in gs.queries]
        sha = hashlib.sha256("".join(gs.sha256 for gs in sets).encode()).hexdigest()
        fmt = "jsonl"
    else:
        gs = load_golden(location)
        queries, sha, fmt = gs.queries, gs.sha256, gs.format
    answers = _curated_answers(location) if fmt == "jsonl" else {}
    return EvalSet(CURATED, [EvalQuestion(q.qid, q.question, dict(q.relevant), CURATED,
                                          answers.get(q.qid), None) for q in queries],
                   sha, str(location), fmt)


def _curated_answers(location: Path) -> dict[str, str]:
    files = sorted(location.glob("*.jsonl")) if location.is_dir() else [location]
    out = {}
    for f in files:
        for line in f.read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                if isinstance(row, dict) and isinstance(row.get("answer"), str):
                    out[str(row.get("qid"))] = row["answer"]
    return out


def applicable(es: EvalSet, doc_ids: set[str], duplicates: dict[str, str]) -> tuple[EvalSet, list[EvalQuestion]]:
    """(questions that can be scored on a version holding `doc_ids`, those that cannot).

    A relevant id that is a copy of an indexed document counts as that document. A question
    none of whose relevant documents is in the version is not applicable: reported, never
    scored as a miss."""
    keep, skipped = [], []
    for q in es.questions:
        rel: dict[str, float] = {}
        for d, g in q.relevant.items():
            d = duplicates.get(d, d)
            if d in doc_ids:
                rel[d] = max(g, rel.get(d, 0.0))
        if rel:
            keep.append(EvalQuestion(q.qid, q.question, rel, q.kind, q.answer, q.source_chunk_id))
        else:
            skipped.append(q)
    return EvalSet(es.kind, keep, es.sha256, es.source, es.fmt), skipped


def coverage(es: EvalSet, doc_ids: set[str], duplicates: dict[str, str]) -> float:
    """Share of the version's documents that are the answer to at least one question."""
    answered = {duplicates.get(d, d) for q in es.questions for d in q.relevant}
    return len(answered & doc_ids) / len(doc_ids) if doc_ids else 0.0


# -- synthetic ----------------------------------------------------------------------------------
def _idf_lookup(lexical):
    vocab, idf = lexical.vocab, lexical.idf

    def f(term: str) -> float:
        j = vocab.get(term)
        return float(idf[j]) if j is not None else 0.0
    return f


def source_docs(manifest: pd.DataFrame, keys: set[str] | None = None) -> list[SourceDoc]:
    m = manifest if keys is None else manifest[manifest["doc_key"].isin(keys)]
    out = []
    for key, g in m.groupby("doc_key", sort=True):
        g = g.sort_values("ordinal")
        out.append(SourceDoc(key, str(g["doc_id"].iat[0]), str(g["doc_content_hash"].iat[0]),
                             tuple(zip(g["chunk_id"].astype(int).tolist(),
                                       g["text"].astype(str).tolist()))))
    return out


def synthetic_questions(version, n: int = DEFAULT_SYNTHETIC_QUESTIONS, seed: str = SEED,
                        keep: dict[str, SyntheticQuestion] | None = None) -> list[SyntheticQuestion]:
    """Up to `n` known-item questions for a version: a stable sample of its documents, one
    question each. `keep` maps content_hash -> an existing question to reuse unchanged."""
    keys = pick_documents(version.manifest["doc_key"].unique().tolist(), n, seed)
    idf = _idf_lookup(version.lexical)
    out = []
    for doc in source_docs(version.manifest, keys):
        old = (keep or {}).get(doc.content_hash)
        if old is not None and old.doc_key == doc.doc_key:
            out.append(old)
            continue
        q = question_for(doc, idf, seed)
        if q is not None:
            out.append(q)
    return out


def refresh_synthetic(store, version, run_id: str, n: int = DEFAULT_SYNTHETIC_QUESTIONS
                      ) -> dict:
    """Bring `eval_questions` in line with `version`: unchanged documents keep their question,
    new or changed sampled documents get one, the rest are retired (kept for audits)."""
    with store.connect(read_only=True) as con:
        rows = con.execute("""SELECT qid, doc_key, doc_id, content_hash, question, answer,
                                     source_chunk_id FROM eval_questions
                              WHERE active AND generator = ?""", [GENERATOR_VERSION]).fetchall()
    existing = {r[3]: SyntheticQuestion(*r) for r in rows}
    questions = synthetic_questions(version, n, SEED, existing)
    new = [q for q in questions if q.qid not in {e.qid for e in existing.values()}]
    keep_ids = {q.qid for q in questions}
    retired = [e.qid for e in existing.values() if e.qid not in keep_ids]
    at = utc_now()
    with store.transaction() as con:
        persistence.retire_eval_questions(con, retired, at)
        persistence.replace_eval_questions(con, pd.DataFrame([{
            "qid": q.qid, "doc_key": q.doc_key, "doc_id": q.doc_id,
            "content_hash": q.content_hash, "question": q.question, "answer": q.answer,
            "source_chunk_id": q.source_chunk_id, "generator": GENERATOR_VERSION,
            "created_at": at, "created_run_id": run_id, "active": True,
            "retired_at": None} for q in new]))
    return {"questions": len(questions), "added": len(new), "retired": len(retired),
            "kept": len(questions) - len(new)}


def load_synthetic(store) -> EvalSet:
    with store.connect(read_only=True) as con:
        rows = con.execute("""SELECT qid, question, doc_id, content_hash, answer, source_chunk_id
                              FROM eval_questions WHERE active ORDER BY qid""").fetchall()
    questions = [EvalQuestion(r[0], r[1], {r[2]: 1.0}, SYNTHETIC, r[4], r[5]) for r in rows]
    sha = hashlib.sha256("\n".join(f"{q.qid}\t{q.question}\t{r[2]}"
                                   for q, r in zip(questions, rows)).encode()).hexdigest()
    return EvalSet(SYNTHETIC, questions, sha, f"eval_questions ({GENERATOR_VERSION})", SYNTHETIC)


def load_eval_set(store, golden_path: str | None, kb_home: Path | None) -> EvalSet:
    """The curated golden set when there is one, else the stored synthetic set."""
    location = curated_location(golden_path, kb_home)
    if location is not None:
        if not location.exists():
            raise GoldenError(f"golden set {location} does not exist (KB_GOLDEN)")
        return load_curated(location)
    return load_synthetic(store)


def load_eval_questions(store, golden_path: str | None = None,
                        kb_home: Path | None = None) -> tuple[str, list[EvalQuestion]]:
    """(kind, questions): the KB's evaluation questions (for fine-tuning data and ft_eval).
    Defaults: KB_GOLDEN from the environment, KB_HOME = the folder of the store's file."""
    
    golden_path = golden_path if golden_path is not None else settings.get("KB_GOLDEN")
    kb_home = kb_home if kb_home is not None else Path(store.db_path).parent
    es = load_eval_set(store, golden_path, kb_home)
    return es.kind, es.questions
