"""What the checks judge, read from DuckDB and the version directories.

"The batch" is the candidate KB state versus the last good PUBLISHED version (the baseline),
not the current run's delta: active documents whose (doc_key, content_hash) the baseline
does not hold, plus quarantine rows raised since the baseline was published. So a bad batch
fails again on a re-run even though raw_docs no longer sees it as new."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from resources.store import fetch_one

# A version stays a baseline unless its own index checks failed (a damaged publish).
BASELINE_SQL = """
    SELECT version, created_at, path, embedding_model, dim, chunker FROM kb_versions v
    WHERE NOT EXISTS (
        SELECT 1 FROM check_results c
        WHERE c.kb_version = v.version AND c.asset = 'faiss_index'
          AND NOT c.passed AND c.blocking)
    ORDER BY version DESC LIMIT 1"""


@dataclass(frozen=True)
class Baseline:
    """The last good published KB version, or the empty baseline before the first."""

    version: int | None = None
    created_at: datetime | None = None
    path: str | None = None
    embedding_model: str | None = None
    dim: int | None = None
    chunker: dict | None = None

    @property
    def exists(self) -> bool:
        return self.version is not None

    def label(self) -> str:
        return f"KB version {self.version}" if self.exists else "no published version yet"


def baseline(con) -> Baseline:
    row = fetch_one(con, BASELINE_SQL)
    if row is None:
        return Baseline()
    chunker = json.loads(row[5]) if isinstance(row[5], str) else row[5]
    return Baseline(row[0], row[1], row[2], row[3], row[4], chunker)


def _version_param(base: Baseline) -> int:
    return base.version if base.exists else -1  # -1 matches no member row


def counts(con) -> dict:
    r = fetch_one(con, """SELECT count(*) FILTER (WHERE active), count(*) FILTER (WHERE NOT active)
                          FROM documents""")
    return {"active_docs": int(r[0] or 0), "inactive_docs": int(r[1] or 0)}


def batch_docs(con, base: Baseline) -> pd.DataFrame:
    """Active documents the baseline lacks (new or changed), with a duplicate flag.

    A document is a duplicate when another active document has the same content and
    comes first: documents already published come before batch documents, then doc_key order.
    `text` is a short preview, NULL when the text is empty, so nothing large is loaded."""
    return con.execute("""
        WITH published AS (
            SELECT DISTINCT doc_key, doc_content_hash FROM kb_version_members WHERE version = ?),
        active AS (
            SELECT d.doc_key, d.doc_id, d.content_hash, (p.doc_key IS NULL) AS in_batch
            FROM documents d
            LEFT JOIN published p ON p.doc_key = d.doc_key AND p.doc_content_hash = d.content_hash
            WHERE d.active),
        ranked AS (
            SELECT doc_key, in_batch,
                   row_number() OVER w AS copy_no, first_value(doc_id) OVER w AS first_id
            FROM active
            WHERE content_hash IN (SELECT content_hash FROM active WHERE in_batch)
            WINDOW w AS (PARTITION BY content_hash ORDER BY in_batch, doc_key))
        SELECT d.doc_key, d.doc_id, d.source_path, d.line, d.title, d.content_hash,
               CASE WHEN d.text IS NULL OR length(trim(d.text)) = 0 THEN NULL
                    ELSE left(regexp_replace(left(d.text, 400), '\\s+', ' ', 'g'), 80) END AS text,
               coalesce(length(d.text), 0) AS n_chars,
               r.copy_no > 1 AS is_duplicate,
               CASE WHEN r.copy_no > 1 THEN r.first_id END AS duplicate_of
        FROM ranked r JOIN documents d USING (doc_key)
        WHERE r.in_batch ORDER BY d.doc_key""", [_version_param(base)]).df()


def batch_quarantine(con, base: Baseline) -> pd.DataFrame:
    """Quarantine rows of the batch: active ones raised since the baseline was published."""
    since = base.created_at if base.exists else datetime(1970, 1, 1)
    return con.execute("""
        SELECT source_path, line, reason FROM quarantine
        WHERE active AND event_at > ? ORDER BY source_path, line""", [since]).df()


def candidate_chunks(con) -> pd.DataFrame:
    """Every active chunk with its length; text itself is not loaded (only whether it has a
    non-blank character), so 100k chunks cost a fraction of a second."""
    return con.execute("""
        SELECT c.chunk_id, c.doc_key, d.doc_id, c.ordinal, c.n_tokens,
               c.doc_content_hash,
               CASE WHEN regexp_matches(c.text, '\\S') THEN length(c.text) ELSE 0 END AS text_chars
        FROM chunks c JOIN documents d USING (doc_key)
        WHERE d.active ORDER BY c.chunk_id""").df()


def chunker_versions(con) -> list[str]:
    return [r[0] for r in con.execute(
        "SELECT DISTINCT chunker_version FROM chunks ORDER BY 1").fetchall()]


def baseline_members(con, base: Baseline) -> pd.DataFrame:
    return con.execute("""
        SELECT chunk_id, doc_key, doc_content_hash, text_hash, n_tokens
        FROM kb_version_members WHERE version = ?""", [_version_param(base)]).df()


def new_chunk_texts(con, base: Baseline) -> pd.DataFrame:
    """Full text of active chunks whose text the baseline does not hold (the PII scan set)."""
    return con.execute("""
        SELECT c.chunk_id, d.doc_id, c.text FROM chunks c JOIN documents d USING (doc_key)
        WHERE d.active AND c.text_hash NOT IN (
            SELECT text_hash FROM kb_version_members WHERE version = ?)
        ORDER BY c.chunk_id""", [_version_param(base)]).df()


def embedding_coverage(con, model_id: str) -> tuple[int, int, pd.DataFrame]:
    """(active chunks, active chunks without a cached vector for the model, a few of those).
    An anti-join on text_hash only: vector sizes are judged on the new vectors."""
    sql = """
        FROM chunks c JOIN documents d USING (doc_key)
        WHERE d.active AND NOT EXISTS (
            SELECT 1 FROM embedding_cache e WHERE e.model_id = ? AND e.text_hash = c.text_hash)"""
    total = fetch_one(con, """SELECT count(*) FROM chunks c JOIN documents d USING (doc_key)
                              WHERE d.active""")[0]
    missing = fetch_one(con, f"SELECT count(*) {sql}", [model_id])[0]
    rows = (con.execute(f"SELECT c.chunk_id, d.doc_id {sql} ORDER BY c.chunk_id LIMIT 20",
                        [model_id]).df() if missing else pd.DataFrame(columns=["chunk_id", "doc_id"]))
    return int(total), int(missing), rows


def new_vectors(con, base: Baseline, model_id: str) -> tuple[pd.DataFrame, list[bytes]]:
    """Cached vectors of active chunks that are new since the baseline (all of them when
    the embedding model changed): (chunk_id, doc_id) rows and their raw float32 bytes."""
    same_model = base.exists and base.embedding_model == model_id
    df = con.execute("""
        SELECT c.chunk_id, d.doc_id, e.vector FROM chunks c JOIN documents d USING (doc_key)
        JOIN embedding_cache e ON e.text_hash = c.text_hash AND e.model_id = ?
        WHERE d.active AND (NOT ? OR c.text_hash NOT IN (
            SELECT text_hash FROM kb_version_members WHERE version = ?))
        ORDER BY c.chunk_id""", [model_id, same_model, _version_param(base)]).df()
    blobs = [bytes(v) for v in df.pop("vector")]
    return df, blobs


# The drift check reads at most this many of the published version's vectors (a uniform
# sample): the sample centroid's cosine to the whole version's is about
# 1 - (1 - |c|^2) / (2 n |c|^2) (|c|: the centroid's length, n: the sample), 1 - 2.3e-4 even
# for |c|^2 = 0.1, and reading it costs the same at 100k or 1M chunks. Not fewer: the
# same-size reference draws up to 2,000 rows from this sample without replacement, which
# narrows its spread by (1 - 2000/n), 10% here. (50,000 random rows of a memory-mapped 1M
# version took 3.1 s of a 1M build, mostly page faults; 20,000 read in proportion.)
DRIFT_SAMPLE_ROWS = 20_000


def version_vectors(path: str | Path) -> np.ndarray | None:
    """The published version's vectors the drift check compares with (all of them, or a
    uniform sample of DRIFT_SAMPLE_ROWS), in no particular order; None if empty or missing."""
    from resources.vector_index import version_vectors as stored_vectors

    return stored_vectors(Path(path), ordered=False, max_rows=DRIFT_SAMPLE_ROWS)


def declared_model_dim(model_folder: str | Path) -> int | None:
    """Output dimension a sentence-transformers folder declares, read from its config files
    so that a check never loads the model (~9 s) just to learn it. None if undeclared."""
    folder = Path(model_folder)
    try:
        modules = json.loads((folder / "modules.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    dim = None
    for m in modules:
        kind, sub = m.get("type", ""), folder / m.get("path", "")
        try:
            if kind.endswith("Pooling"):
                cfg = json.loads((sub / "config.json").read_text(encoding="utf-8"))
                modes = sum(bool(v) for k, v in cfg.items()
                            if k.startswith("pooling_mode") and isinstance(v, bool))
                dim = int(cfg["word_embedding_dimension"]) * max(modes, 1)
            elif kind.endswith("Dense"):
                cfg = json.loads((sub / "config.json").read_text(encoding="utf-8"))
                dim = int(cfg["out_features"])
        except (OSError, ValueError, KeyError):
            return None
    return dim


def lost_documents(con, base: Baseline) -> tuple[int, pd.DataFrame]:
    """(documents the baseline published, those of them no longer active by source file)."""
    if not base.exists:
        return 0, pd.DataFrame({"source_path": [], "lost": []})
    published = fetch_one(con, "SELECT count(DISTINCT doc_key) FROM kb_version_members "
                               "WHERE version = ?", [base.version])[0]
    lost = con.execute("""
        WITH pub AS (SELECT DISTINCT doc_key, doc_id FROM kb_version_members WHERE version = ?)
        SELECT coalesce(d.source_path, '(unknown)') AS source_path, count(*) AS lost,
               any_value(p.doc_id) AS example_doc
        FROM pub p LEFT JOIN documents d USING (doc_key)
        WHERE d.doc_key IS NULL OR NOT d.active
        GROUP BY 1 ORDER BY 2 DESC, 1""", [base.version]).df()
    return int(published or 0), lost
