"""One home for persistence: the schema (schema.py), its migrations (migrations.py), the
named-column writer (writer.py) and every write the platform makes (records.py,
documents.py, versions.py). `resources.store.KBStore` opens the file and migrates it."""

from resources.persistence.migrations import LATEST as SCHEMA_VERSION
from resources.persistence.migrations import applied_version, migrate
from resources.persistence.records import (attach_check_results_version, mirror_registry_version,
                                           record_alias_move, record_check_result,
                                           record_check_results, record_eval_result,
                                           set_registry_status)
from resources.persistence.schema import TABLES, UnknownColumnError, check_columns
from resources.persistence.writer import delete, delete_in, insert, insert_frame, insert_sql

__all__ = [
    "SCHEMA_VERSION", "TABLES", "UnknownColumnError", "applied_version",
    "attach_check_results_version", "check_columns", "delete", "delete_in", "insert",
    "insert_frame", "insert_sql", "migrate", "mirror_registry_version", "record_alias_move",
    "record_check_result", "record_check_results", "record_eval_result", "set_registry_status",
]
