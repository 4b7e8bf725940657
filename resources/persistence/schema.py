"""The KB store's schema: every table defined once, in one place. Migrations
(`migrations.py`) create and change tables from these definitions; the writer
(`writer.py`) checks column names against them."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Table:
    name: str
    columns: tuple[tuple[str, str], ...]  # (column, DuckDB type and column constraint)
    constraints: tuple[str, ...] = ()      # table constraints, e.g. a composite primary key
    doc: str = ""

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c for c, _ in self.columns)

    def ddl(self) -> str:
        parts = [f"{c} {t}" for c, t in self.columns] + list(self.constraints)
        return f"CREATE TABLE IF NOT EXISTS {self.name} ({', '.join(parts)})"


TABLES: dict[str, Table] = {t.name: t for t in [
    Table("source_files", (
        ("path", "TEXT PRIMARY KEY"), ("size", "BIGINT"), ("mtime_ns", "BIGINT"),
        ("sha256", "TEXT"), ("n_docs", "INTEGER"), ("n_problems", "INTEGER"),
        ("first_seen_at", "TIMESTAMP"), ("updated_at", "TIMESTAMP"), ("updated_run_id", "TEXT")),
        doc="Each inbox file as last read: what the next ingest compares against."),
    Table("documents", (
        ("doc_key", "TEXT PRIMARY KEY"), ("doc_id", "TEXT"), ("source_path", "TEXT"),
        ("line", "INTEGER"), ("title", "TEXT"), ("text", "TEXT"), ("content_hash", "TEXT"),
        ("file_sha256", "TEXT"), ("metadata", "JSON"), ("flags", "TEXT[]"),
        ("active", "BOOLEAN"), ("first_seen_at", "TIMESTAMP"), ("updated_at", "TIMESTAMP"),
        ("updated_run_id", "TEXT")),
        doc="Every document ever ingested; removed ones stay, inactive."),
    Table("document_events", (
        ("run_id", "TEXT"), ("event_at", "TIMESTAMP"), ("doc_key", "TEXT"), ("doc_id", "TEXT"),
        ("source_path", "TEXT"), ("event", "TEXT"), ("content_hash", "TEXT"),
        ("file_sha256", "TEXT")),
        doc="Append-only: added / changed / removed, per run."),
    Table("quarantine", (
        ("run_id", "TEXT"), ("event_at", "TIMESTAMP"), ("source_path", "TEXT"),
        ("line", "INTEGER"), ("reason", "TEXT"), ("file_sha256", "TEXT"), ("active", "BOOLEAN"),
        ("resolved_at", "TIMESTAMP")),
        doc="Input the platform refused, and why; resolved when the file is read again."),
    Table("chunks", (
        ("chunk_id", "BIGINT PRIMARY KEY"), ("doc_key", "TEXT"), ("ordinal", "INTEGER"),
        ("text", "TEXT"), ("text_hash", "TEXT"), ("n_tokens", "INTEGER"),
        ("doc_content_hash", "TEXT"), ("chunker_version", "TEXT"), ("pii_masked", "INTEGER"),
        ("created_run_id", "TEXT"))),
    Table("doc_chunk_state", (
        ("doc_key", "TEXT PRIMARY KEY"), ("content_hash", "TEXT"), ("chunker_version", "TEXT"),
        ("n_chunks", "INTEGER"),
        ("pii_counts", "JSON")),  # added by issue 16: migration 1 adds it to an older file
        doc="What each document was last chunked from, so unchanged ones are skipped."),
    Table("embedding_cache", (
        ("model_id", "TEXT"), ("text_hash", "TEXT"), ("vector", "BLOB"),
        ("created_at", "TIMESTAMP")),
        constraints=("PRIMARY KEY (model_id, text_hash)",)),
    Table("kb_versions", (
        ("version", "INTEGER PRIMARY KEY"), ("created_at", "TIMESTAMP"), ("run_id", "TEXT"),
        ("path", "TEXT"), ("fingerprint", "TEXT"), ("n_docs", "INTEGER"),
        ("n_chunks", "INTEGER"), ("embedding_model", "TEXT"), ("dim", "INTEGER"),
        ("chunker", "JSON"), ("index_sha256", "TEXT"), ("manifest_sha256", "TEXT"),
        ("source_manifest_sha256", "TEXT"), ("code_version", "TEXT"), ("info", "JSON"))),
    Table("kb_version_members", (
        ("version", "INTEGER"), ("chunk_id", "BIGINT"), ("doc_key", "TEXT"), ("doc_id", "TEXT"),
        ("doc_content_hash", "TEXT"), ("text_hash", "TEXT"), ("n_tokens", "INTEGER")),
        doc="Row-level lineage: which chunk of which document each KB version indexes."),
    Table("kb_version_sources", (
        ("version", "INTEGER"), ("path", "TEXT"), ("sha256", "TEXT"), ("n_docs", "INTEGER"))),
    Table("registry_versions", (
        ("model_name", "TEXT"), ("version", "INTEGER"), ("mlflow_version", "INTEGER"),
        ("run_id", "TEXT"), ("created_at", "TIMESTAMP"), ("status", "TEXT"), ("tags", "JSON")),
        constraints=("PRIMARY KEY (model_name, version)",),
        doc="Registry mirror, so audits answer without importing MLflow. "
            "kb: version = KB version."),
    Table("eval_results", (
        ("model_name", "TEXT"), ("version", "INTEGER"), ("run_id", "TEXT"),
        ("created_at", "TIMESTAMP"), ("metrics", "JSON"), ("passed", "BOOLEAN"),
        ("details", "JSON"))),
    Table("check_results", (
        ("run_id", "TEXT"), ("event_at", "TIMESTAMP"), ("asset", "TEXT"), ("check_name", "TEXT"),
        ("passed", "BOOLEAN"), ("severity", "TEXT"), ("blocking", "BOOLEAN"),
        ("description", "TEXT"), ("kb_version", "INTEGER"), ("metadata", "JSON"))),
    Table("ft_datasets", (
        ("dataset_version", "INTEGER PRIMARY KEY"), ("created_at", "TIMESTAMP"),
        ("run_id", "TEXT"), ("kb_version", "INTEGER"), ("content_sha256", "TEXT"),
        ("n_train", "INTEGER"), ("n_eval", "INTEGER"), ("path", "TEXT"), ("info", "JSON"))),
    Table("ft_dataset_lines", (
        ("dataset_version", "INTEGER"), ("split", "TEXT"), ("line_no", "INTEGER"),
        ("example_id", "TEXT"), ("doc_key", "TEXT"), ("doc_id", "TEXT"),
        ("doc_content_hash", "TEXT"))),
    Table("eval_questions", (
        ("qid", "TEXT PRIMARY KEY"), ("doc_key", "TEXT"), ("doc_id", "TEXT"),
        ("content_hash", "TEXT"), ("question", "TEXT"), ("answer", "TEXT"),
        ("source_chunk_id", "BIGINT"), ("generator", "TEXT"), ("created_at", "TIMESTAMP"),
        ("created_run_id", "TEXT"), ("active", "BOOLEAN"), ("retired_at", "TIMESTAMP")),
        doc="The KB's evaluation questions when the user has no golden set: made from its "
            "own documents (kb_assets/eval_set.py), kept while their document is."),
    Table("alias_history", (
        ("model_name", "TEXT"), ("alias", "TEXT"), ("from_version", "INTEGER"),
        ("to_version", "INTEGER"), ("actor", "TEXT"), ("reason", "TEXT"),
        ("event_at", "TIMESTAMP"), ("forced", "BOOLEAN DEFAULT FALSE"), ("run_id", "TEXT"))),
    Table("schema_version", (
        ("version", "INTEGER PRIMARY KEY"), ("applied_at", "TIMESTAMP"),
        ("description", "TEXT")),
        doc="One row per migration applied to this file (migrations.py)."),
]}

# What a KB version indexes: active documents, each distinct content once. A copy (same
# content hash) stays an active, resolvable document; the copy with the smallest doc_key
# carries the chunks, and the version records which ids it stands for.
INDEXED_DOCUMENTS_VIEW = """
CREATE VIEW IF NOT EXISTS indexed_documents AS
    SELECT doc_key, doc_id, source_path, line, title, content_hash FROM documents
    WHERE active AND doc_key IN (
        SELECT min(doc_key) FROM documents WHERE active GROUP BY content_hash)"""


class UnknownColumnError(ValueError):
    """A write named a table or column the schema does not have."""


def check_columns(table: str, columns) -> tuple[str, ...]:
    """The columns, validated against the schema; a clear error names table and column."""
    if table not in TABLES:
        raise UnknownColumnError(f"no table {table!r} in the KB schema "
                                 f"(tables: {', '.join(sorted(TABLES))})")
    known = TABLES[table].column_names
    columns = tuple(columns)
    for c in columns:
        if c not in known:
            raise UnknownColumnError(f"table {table!r} has no column {c!r} "
                                     f"(columns: {', '.join(known)})")
    if len(set(columns)) != len(columns):
        raise UnknownColumnError(f"table {table!r}: a column is named twice in {columns}")
    return columns
