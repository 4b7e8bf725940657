"""The KB store schema exactly as `resources/store.py` ran it before schema versions (commit
ea3b400): a file written by that code is schema version 1. Do not edit: migrations are
tested against it."""

SCHEMA_V1 = """
CREATE TABLE IF NOT EXISTS source_files (
    path TEXT PRIMARY KEY, size BIGINT, mtime_ns BIGINT, sha256 TEXT,
    n_docs INTEGER, n_problems INTEGER, first_seen_at TIMESTAMP, updated_at TIMESTAMP,
    updated_run_id TEXT);
CREATE TABLE IF NOT EXISTS documents (
    doc_key TEXT PRIMARY KEY, doc_id TEXT, source_path TEXT, line INTEGER, title TEXT,
    text TEXT, content_hash TEXT, file_sha256 TEXT, metadata JSON, flags TEXT[],
    active BOOLEAN, first_seen_at TIMESTAMP, updated_at TIMESTAMP, updated_run_id TEXT);
CREATE TABLE IF NOT EXISTS document_events (
    run_id TEXT, event_at TIMESTAMP, doc_key TEXT, doc_id TEXT, source_path TEXT, event TEXT,
    content_hash TEXT, file_sha256 TEXT);
CREATE TABLE IF NOT EXISTS quarantine (
    run_id TEXT, event_at TIMESTAMP, source_path TEXT, line INTEGER, reason TEXT,
    file_sha256 TEXT, active BOOLEAN, resolved_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS chunks (
    chunk_id BIGINT PRIMARY KEY, doc_key TEXT, ordinal INTEGER, text TEXT, text_hash TEXT,
    n_tokens INTEGER, doc_content_hash TEXT, chunker_version TEXT, pii_masked INTEGER,
    created_run_id TEXT);
CREATE TABLE IF NOT EXISTS doc_chunk_state (
    doc_key TEXT PRIMARY KEY, content_hash TEXT, chunker_version TEXT, n_chunks INTEGER);
-- Added by issue 16 (PII masked per document); ALTER migrates an existing KB_HOME.
ALTER TABLE doc_chunk_state ADD COLUMN IF NOT EXISTS pii_counts JSON;
CREATE TABLE IF NOT EXISTS embedding_cache (
    model_id TEXT, text_hash TEXT, vector BLOB, created_at TIMESTAMP,
    PRIMARY KEY (model_id, text_hash));
CREATE TABLE IF NOT EXISTS kb_versions (
    version INTEGER PRIMARY KEY, created_at TIMESTAMP, run_id TEXT, path TEXT,
    fingerprint TEXT, n_docs INTEGER, n_chunks INTEGER, embedding_model TEXT, dim INTEGER,
    chunker JSON, index_sha256 TEXT, manifest_sha256 TEXT, source_manifest_sha256 TEXT,
    code_version TEXT, info JSON);
CREATE TABLE IF NOT EXISTS kb_version_members (
    version INTEGER, chunk_id BIGINT, doc_key TEXT, doc_id TEXT, doc_content_hash TEXT,
    text_hash TEXT, n_tokens INTEGER);
CREATE TABLE IF NOT EXISTS kb_version_sources (
    version INTEGER, path TEXT, sha256 TEXT, n_docs INTEGER);
-- Registry mirror, so audits answer without importing MLflow. kb: version = KB version.
CREATE TABLE IF NOT EXISTS registry_versions (
    model_name TEXT, version INTEGER, mlflow_version INTEGER, run_id TEXT,
    created_at TIMESTAMP, status TEXT, tags JSON, PRIMARY KEY (model_name, version));
CREATE TABLE IF NOT EXISTS eval_results (
    model_name TEXT, version INTEGER, run_id TEXT, created_at TIMESTAMP, metrics JSON,
    passed BOOLEAN, details JSON);
CREATE TABLE IF NOT EXISTS check_results (
    run_id TEXT, event_at TIMESTAMP, asset TEXT, check_name TEXT, passed BOOLEAN,
    severity TEXT, blocking BOOLEAN, description TEXT, kb_version INTEGER, metadata JSON);
CREATE TABLE IF NOT EXISTS ft_datasets (
    dataset_version INTEGER PRIMARY KEY, created_at TIMESTAMP, run_id TEXT, kb_version INTEGER,
    content_sha256 TEXT, n_train INTEGER, n_eval INTEGER, path TEXT, info JSON);
CREATE TABLE IF NOT EXISTS ft_dataset_lines (
    dataset_version INTEGER, split TEXT, line_no INTEGER, example_id TEXT, doc_key TEXT,
    doc_id TEXT, doc_content_hash TEXT);
-- What a KB version indexes: active documents, each distinct content once. A copy (same
-- content hash) stays an active, resolvable document; the copy with the smallest doc_key
-- carries the chunks, and the version records which ids it stands for.
CREATE VIEW IF NOT EXISTS indexed_documents AS
    SELECT doc_key, doc_id, source_path, line, title, content_hash FROM documents
    WHERE active AND doc_key IN (
        SELECT min(doc_key) FROM documents WHERE active GROUP BY content_hash);
-- The KB's evaluation questions when the user has no golden set: made from its own
-- documents (kb_assets/eval_set.py), one row per question, kept while its document is.
CREATE TABLE IF NOT EXISTS eval_questions (
    qid TEXT PRIMARY KEY, doc_key TEXT, doc_id TEXT, content_hash TEXT, question TEXT,
    answer TEXT, source_chunk_id BIGINT, generator TEXT, created_at TIMESTAMP,
    created_run_id TEXT, active BOOLEAN, retired_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS alias_history (
    model_name TEXT, alias TEXT, from_version INTEGER, to_version INTEGER, actor TEXT,
    reason TEXT, event_at TIMESTAMP, forced BOOLEAN DEFAULT FALSE, run_id TEXT);
"""
