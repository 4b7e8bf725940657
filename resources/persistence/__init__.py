"""One home for persistence: the schema (schema.py), its migrations (migrations.py), the
named-column writer (writer.py) and every write the platform makes (records.py,
documents.py, versions.py). `resources.store.KBStore` opens the file and migrates it."""

from resources.persistence.documents import (deactivate_documents, forget_source_files,
                                             quarantine, record_document_events,
                                             replace_chunks, replace_documents,
                                             replace_eval_questions, resolve_quarantine,
                                             retire_eval_questions, touch_source_file,
                                             upsert_source_files)
from resources.persistence.migrations import LATEST as SCHEMA_VERSION
from resources.persistence.migrations import applied_version, migrate
from resources.persistence.records import (attach_check_results_version, mirror_registry_version,
                                           record_alias_move, record_check_result,
                                           record_check_results, record_eval_result,
                                           set_registry_status)
from resources.persistence.schema import TABLES, UnknownColumnError, check_columns
from resources.persistence.versions import (cache_embeddings, register_ft_dataset,
                                            register_kb_version)
from resources.persistence.writer import (delete, delete_in, insert, insert_frame, insert_sql,
                                          registered, values_in)

__all__ = [
    "SCHEMA_VERSION", "TABLES", "UnknownColumnError", "applied_version",
    "attach_check_results_version", "cache_embeddings", "check_columns", "deactivate_documents",
    "delete", "delete_in", "forget_source_files", "insert", "insert_frame", "insert_sql",
    "migrate", "mirror_registry_version", "quarantine", "record_alias_move",
    "record_check_result", "record_check_results", "record_document_events",
    "record_eval_result", "register_ft_dataset", "register_kb_version", "registered",
    "replace_chunks", "replace_documents", "replace_eval_questions", "resolve_quarantine",
    "retire_eval_questions", "set_registry_status", "touch_source_file", "upsert_source_files",
    "values_in",
]
