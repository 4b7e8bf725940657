"""What changed between two KB versions, from their recorded members, sources, settings
and evaluations (kb_version_members / kb_version_sources / kb_versions / eval_results)."""

from __future__ import annotations

from resources.lineage.query import KB_MODEL, Lineage, kb_version_row, loads

# ---------------------------------------------------------------------------- diff
def doc_changes(lin: Lineage, a: int, b: int) -> list[dict]:
    """Per-document changes from version a to b: added / changed / removed / rechunked
    (same content, different chunks: a chunker or normaliser change)."""
    return lin.rows("""
        WITH v AS (
            SELECT version, doc_key, any_value(doc_id) AS doc_id,
                   any_value(doc_content_hash) AS h, count(*) AS n_chunks,
                   -- order-free fingerprint of the chunk set (cheap at a million rows)
                   bit_xor(hash(text_hash)) AS sig
            FROM kb_version_members WHERE version IN (?, ?) GROUP BY version, doc_key),
        a AS (SELECT * FROM v WHERE version = ?), b AS (SELECT * FROM v WHERE version = ?),
        paths AS (SELECT doc_key, any_value(source_path) AS source_path FROM (
            SELECT doc_key, source_path FROM documents
            UNION ALL SELECT doc_key, source_path FROM document_events) GROUP BY doc_key),
        d AS (
            SELECT coalesce(a.doc_key, b.doc_key) AS doc_key,
                   coalesce(b.doc_id, a.doc_id) AS doc_id,
                   a.h AS hash_before, b.h AS hash_after,
                   a.n_chunks AS chunks_before, b.n_chunks AS chunks_after,
                   CASE WHEN a.doc_key IS NULL THEN 'added'
                        WHEN b.doc_key IS NULL THEN 'removed'
                        WHEN a.h <> b.h THEN 'changed'
                        WHEN a.sig <> b.sig OR a.n_chunks <> b.n_chunks THEN 'rechunked'
                        ELSE 'unchanged' END AS change
            FROM a FULL OUTER JOIN b ON a.doc_key = b.doc_key)
        SELECT d.change, d.doc_id, d.doc_key, coalesce(p.source_path, d.doc_key) AS source_path,
               d.hash_before, d.hash_after, d.chunks_before, d.chunks_after
        FROM d LEFT JOIN paths p USING (doc_key)
        WHERE d.change <> 'unchanged' ORDER BY d.change, d.doc_key""",
        [a, b, a, b], needs=("kb_version_members", "documents", "document_events"))


def chunk_stats(lin: Lineage, n: int) -> dict:
    row = lin.one("""
        SELECT count(*) AS chunks, count(DISTINCT doc_key) AS docs, sum(n_tokens) AS tokens,
               round(avg(n_tokens), 1) AS mean, median(n_tokens) AS median,
               quantile_disc(n_tokens, 0.1) AS p10, quantile_disc(n_tokens, 0.9) AS p90,
               min(n_tokens) AS min, max(n_tokens) AS max
        FROM kb_version_members WHERE version = ?""", [n], needs=("kb_version_members",))
    return {k: (float(v) if k in ("mean", "median") and v is not None else v)
            for k, v in (row or {}).items()}


def source_changes(lin: Lineage, a: int, b: int) -> list[dict]:
    return lin.rows("""
        WITH a AS (SELECT path, sha256, n_docs FROM kb_version_sources WHERE version = ?),
             b AS (SELECT path, sha256, n_docs FROM kb_version_sources WHERE version = ?)
        SELECT CASE WHEN a.path IS NULL THEN 'added' WHEN b.path IS NULL THEN 'removed'
                    ELSE 'changed' END AS change,
               coalesce(a.path, b.path) AS path, a.sha256 AS sha256_before,
               b.sha256 AS sha256_after, a.n_docs AS docs_before, b.n_docs AS docs_after
        FROM a FULL OUTER JOIN b ON a.path = b.path
        WHERE a.path IS NULL OR b.path IS NULL OR a.sha256 <> b.sha256
        ORDER BY change, path""", [a, b], needs=("kb_version_sources",))


def settings_of(v: dict) -> dict:
    """The build settings that change what a version contains, flattened for comparison."""
    info = v.get("info") or {}
    out = {f"chunker.{k}": val for k, val in (v.get("chunker") or {}).items() if k != "version"}
    out.update({"embedding_model": v.get("embedding_model"), "dim": v.get("dim"),
                "lexical": info.get("lexical"), "code_version": v.get("code_version")})
    return out


def latest_eval(lin: Lineage, model: str, version: int) -> dict | None:
    row = lin.one("SELECT * FROM eval_results WHERE model_name = ? AND version = ? "
                  "ORDER BY created_at DESC LIMIT 1", [model, version], needs=("eval_results",))
    if row:
        row["metrics"] = loads(row.get("metrics"), {})
        row["details"] = loads(row.get("details"), {})
    return row


def diff_versions(lin: Lineage, a: int, b: int) -> dict:
    va, vb = kb_version_row(lin, a), kb_version_row(lin, b)
    sa, sb = settings_of(va), settings_of(vb)
    settings = [{"setting": k, "before": sa.get(k), "after": sb.get(k),
                 "changed": sa.get(k) != sb.get(k)} for k in sorted(set(sa) | set(sb))]
    docs = doc_changes(lin, a, b)
    counts = {c: sum(1 for d in docs if d["change"] == c)
              for c in ("added", "changed", "removed", "rechunked")}
    shared = lin.one("""SELECT count(*) AS n FROM (
        SELECT text_hash FROM kb_version_members WHERE version = ?
        INTERSECT SELECT text_hash FROM kb_version_members WHERE version = ?)""", [a, b],
        needs=("kb_version_members",))
    ea, eb = latest_eval(lin, KB_MODEL, a), latest_eval(lin, KB_MODEL, b)
    ma, mb = (ea or {}).get("metrics") or {}, (eb or {}).get("metrics") or {}
    metrics = [{"metric": k, "before": ma.get(k), "after": mb.get(k),
                "delta": _delta(ma.get(k), mb.get(k))} for k in sorted(set(ma) | set(mb))]
    return {"kind": "diff", "a": a, "b": b,
            "versions": {str(a): _version_brief(va), str(b): _version_brief(vb)},
            "settings": settings, "settings_changed": [s["setting"] for s in settings
                                                         if s["changed"]],
            "documents": counts | {"unchanged": max(0, (vb["n_docs"] or 0) - counts["added"]
                                                     - counts["changed"] - counts["rechunked"])},
            "document_changes": docs,
            "sources": source_changes(lin, a, b),
            "chunk_stats": {str(a): chunk_stats(lin, a), str(b): chunk_stats(lin, b)},
            "chunks_shared": (shared or {}).get("n", 0),
            "eval_metrics": metrics}


def _delta(x, y):
    if isinstance(x, (int, float)) and isinstance(y, (int, float)) \
            and not isinstance(x, bool) and not isinstance(y, bool):
        return round(y - x, 6)
    return None


def _version_brief(v: dict) -> dict:
    return {"version": v["version"], "created_at": v["created_at"], "run_id": v["run_id"],
            "code_version": v["code_version"], "n_docs": v["n_docs"], "n_chunks": v["n_chunks"],
            "chunker_version": (v.get("chunker") or {}).get("version")}
