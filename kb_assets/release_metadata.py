"""The audit's facts as Dagster asset metadata, so the UI shows on a KB version's release
materialization what `kb audit version N` prints: the run that built it, its MLflow model
version and run, and what changed from the previous version."""

from __future__ import annotations

from resources.lineage.diff import diff_versions
from kb_core.markdown import short, table
from resources.lineage.query import KB_MODEL, Lineage, kb_version_row, registry_row


def md_changes_brief(d: dict, limit: int = 20) -> str:
    """A short 'what changed' for asset metadata (the full diff: `kb audit diff A B`)."""
    c = d["documents"]
    changed = [s for s in d["settings"] if s["changed"]]
    out = [f"**v{d['a']} → v{d['b']}:** {c['added']} added, {c['changed']} changed, "
           f"{c['removed']} removed, {c['rechunked']} re-chunked documents.",
           "", "**Settings changed:** " + (", ".join(
               f"{s['setting']} {s['before']} → {s['after']}" for s in changed) or "none"), ""]
    listed = [x for x in d["document_changes"] if x["change"] != "rechunked"]
    if listed:
        out += [table([(x["change"], x["doc_id"], x["source_path"], short(x["hash_after"]
                                                                          or x["hash_before"]))
                       for x in listed], ["change", "doc_id", "source", "content hash"],
                      limit=limit), ""]
    sa, sb = d["chunk_stats"][str(d["a"])], d["chunk_stats"][str(d["b"])]
    out.append(table([(f"v{d['a']}", sa.get("chunks"), sa.get("mean"), sa.get("median")),
                      (f"v{d['b']}", sb.get("chunks"), sb.get("mean"), sb.get("median"))],
                     ["version", "chunks", "mean tokens", "median tokens"]))
    return "\n".join(out)


def release_metadata(store, version: int) -> dict:
    """Metadata entries for the materialization that registers KB `version` in MLflow:
    `built_by_run_id` (Dagster run that built it), `mlflow_model_uri`, `mlflow_run_id`,
    `audit_command` and `changes_since_previous` (markdown). Never raises: a release must not
    fail over its summary (the entry `audit_error` says what went wrong)."""
    from dagster import MetadataValue

    try:
        with store.connect(read_only=True) as con:
            lin = Lineage(con)
            v = kb_version_row(lin, version)
            reg = registry_row(lin, KB_MODEL, version) or {}
            prev = lin.one("SELECT max(version) AS p FROM kb_versions WHERE version < ?",
                           [version])["p"]
            diff = diff_versions(lin, prev, version) if prev is not None else None
    except Exception as exc:  # noqa: BLE001 - see docstring
        return {"audit_error": str(exc).splitlines()[0][:300] if str(exc) else repr(exc)}
    out = {"built_by_run_id": v["run_id"],
           "audit_command": f"kb audit version {version}"}
    if reg:
        out["mlflow_model_uri"] = f"models:/{KB_MODEL}/{reg['mlflow_version']}"
        out["mlflow_run_id"] = reg.get("run_id") or ""
    out["changes_since_previous"] = MetadataValue.md(
        md_changes_brief(diff) if diff else "First KB version: nothing to compare with.")
    return out
