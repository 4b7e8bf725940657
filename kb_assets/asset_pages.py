"""What the Dagster UI shows an operator about each asset, decided in one place: a
`code_version` per asset (so the UI marks an asset stale after its code changed), owners,
tags, freshness policies on the served KB, table schemas, and the inbox as an external asset
(lineage starts at the folder people drop files into, not at `raw_docs`).

`with_pages(assets)` returns the assets with these attributes applied (via map_asset_specs,
so the decorators stay as they are), `with_freshness` adds the freshness policies when the
definitions are built (they read the environment); row counts and table previews are runtime metadata the
assets emit themselves (`table_preview`, `row_count`)."""

from __future__ import annotations

import hashlib
import inspect
import sys
from datetime import timedelta

from dagster import (AssetSpec, AssetsDefinition, FreshnessPolicy, MetadataValue, TableColumn,
                     TableRecord, TableSchema)

from kb_core import settings

INBOX_KEY = "inbox"
OWNERS = ["team:kb-platform"]
# Who answers for each group in an incident (Dagster owners: an e-mail or `team:<name>`).
OWNERS_BY_GROUP = {
    "ingest": ["team:kb-platform", "team:kb-content"],
    "index": ["team:kb-platform"],
    "release": ["team:kb-platform", "team:kb-quality"],
    "fine_tune": ["team:kb-platform", "team:kb-ml"],
}
# What each group does to the KB, as a filterable tag in the UI's catalog.
LAYER_BY_GROUP = {"ingest": "source", "index": "serving", "release": "registry",
                  "fine_tune": "assistant"}
# The served KB: `faiss_index` publishes what `kb search` reads, `kb_promotion` moves the
# production alias. By default a KB nobody refreshed for a day is worth a warning, two days
# a failure (KB_FRESHNESS_WARN_HOURS / KB_FRESHNESS_FAIL_HOURS, read when the definitions
# are built).
SERVED_KB = ("faiss_index", "kb_promotion")


def _col(name: str, type_: str, description: str) -> TableColumn:
    return TableColumn(name=name, type=type_, description=description)


# The DuckDB tables (resources/store.py) each asset writes: shown on the asset's page.
TABLES = {
    "raw_docs": ("documents", TableSchema(columns=[
        _col("doc_key", "string", "source path + id: the primary key"),
        _col("doc_id", "string", "the document's own id"),
        _col("source_path", "string", "file in the inbox"),
        _col("title", "string", "title"),
        _col("content_hash", "string", "sha256 of the normalised text"),
        _col("active", "bool", "still in the inbox"),
        _col("updated_at", "timestamp", "last change"),
    ])),
    "cleaned_chunks": ("chunks", TableSchema(columns=[
        _col("chunk_id", "int", "stable id (FAISS id)"),
        _col("doc_key", "string", "document"),
        _col("ordinal", "int", "position in the document"),
        _col("text", "string", "PII-masked chunk text"),
        _col("n_tokens", "int", "length in the embedder's tokens"),
        _col("chunker_version", "string", "chunker settings fingerprint"),
    ])),
    "embeddings": ("embedding_cache", TableSchema(columns=[
        _col("model_id", "string", "embedding model"),
        _col("text_hash", "string", "sha256 of the chunk text"),
        _col("vector", "blob", "float32 vector"),
    ])),
    "faiss_index": ("kb_version_members", TableSchema(columns=[
        _col("version", "int", "KB version"),
        _col("chunk_id", "int", "FAISS id"),
        _col("doc_id", "string", "document id"),
        _col("n_tokens", "int", "chunk length"),
    ])),
    "eval_set": ("synthetic_questions", TableSchema(columns=[
        _col("qid", "string", "question id"),
        _col("question", "string", "question text"),
        _col("doc_id", "string", "the document that answers it"),
    ])),
}


def inbox_asset(inbox_path: str | None = None) -> AssetSpec:
    """The inbox folder as an external asset: files appear there outside Dagster."""
    return AssetSpec(
        INBOX_KEY, group_name="ingest", kinds={"file"}, owners=OWNERS_BY_GROUP["ingest"],
        tags={"kb/layer": "source", "kb/external": "true"},
        description="The inbox folder people drop documents into (read by raw_docs, never "
                    "written); changes are picked up by the inbox sensor.",
        metadata={"dagster/uri": MetadataValue.path(inbox_path)} if inbox_path else None)


def code_version_of(assets_def: AssetsDefinition) -> str:
    """A fingerprint of the module that computes the asset: any change to it (the asset or
    the helpers beside it) gives a new code version, and the UI marks the asset stale."""
    fn = assets_def.op.compute_fn
    fn = getattr(fn, "decorated_fn", fn)
    module = sys.modules.get(getattr(fn, "__module__", ""), None)
    try:
        source = inspect.getsource(module) if module else inspect.getsource(fn)
    except (OSError, TypeError):  # no source on disk (frozen): fall back to the name
        source = assets_def.key.to_user_string()
    return hashlib.sha256(source.encode("utf-8")).hexdigest()[:12]


def freshness_policy(environ=None) -> FreshnessPolicy:
    fail = float(settings.get("KB_FRESHNESS_FAIL_HOURS", environ))
    warn = min(float(settings.get("KB_FRESHNESS_WARN_HOURS", environ)), fail)
    return FreshnessPolicy.time_window(fail_window=timedelta(hours=fail),
                                       warn_window=timedelta(hours=warn))


def _page_spec(spec: AssetSpec, code_version: str) -> AssetSpec:
    name, group = spec.key.to_user_string(), spec.group_name or "default"
    extra: dict = {}
    if name in TABLES:
        table, schema = TABLES[name]
        extra["metadata"] = {**(spec.metadata or {}), "dagster/column_schema": schema,
                             "dagster/table_name": f"kb.duckdb.{table}"}
    deps = list(spec.deps)
    if name == "raw_docs" and not any(d.asset_key.to_user_string() == INBOX_KEY for d in deps):
        deps.append(INBOX_KEY)
        extra["deps"] = deps
    return spec.replace_attributes(
        code_version=spec.code_version or code_version,
        owners=list(spec.owners) or OWNERS_BY_GROUP.get(group, OWNERS),
        tags={**(spec.tags or {}), "kb/layer": LAYER_BY_GROUP.get(group, "other")},
        **extra)


def with_pages(assets: list[AssetsDefinition]) -> list[AssetsDefinition]:
    out = []
    for a in assets:
        version = code_version_of(a)
        out.append(a.map_asset_specs(lambda spec, v=version: _page_spec(spec, v)))
    return out


def with_freshness(assets: list[AssetsDefinition], environ=None) -> list[AssetsDefinition]:
    """The served KB's freshness policy, from the environment the definitions are built in."""
    policy = freshness_policy(environ)

    def fresh(spec: AssetSpec) -> AssetSpec:
        if spec.key.to_user_string() in SERVED_KB:
            return spec.replace_attributes(freshness_policy=policy)
        return spec
    return [a.map_asset_specs(fresh) for a in assets]


# -- runtime metadata helpers ---------------------------------------------------------------
def table_preview(rows: list[dict], columns: list[tuple[str, str]], limit: int = 25):
    """A MetadataValue.table (a real table in the UI, not markdown) of the first rows."""
    schema = TableSchema(columns=[TableColumn(name=n, type=t) for n, t in columns])
    names = [n for n, _ in columns]
    records = [TableRecord({n: _cell(r.get(n)) for n in names}) for r in rows[:limit]]
    return MetadataValue.table(records=records, schema=schema)


def _cell(v):
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    return str(v)


def loss_metadata(loss_curve: list) -> dict:
    """The training loss as numbers the UI plots across materializations (first, final,
    best, reduction) plus the whole curve as a table of (step, train_loss)."""
    points = [(int(s), float(v)) for s, v in loss_curve]
    if not points:
        return {}
    losses = [v for _, v in points]
    return {
        "train_loss_first": round(losses[0], 5), "train_loss_final": round(losses[-1], 5),
        "train_loss_min": round(min(losses), 5),
        "train_loss_reduction": round(losses[0] - losses[-1], 5),
        "train_steps": points[-1][0],
        "loss_curve": table_preview([{"step": s, "train_loss": round(v, 5)} for s, v in points],
                                    [("step", "int"), ("train_loss", "float")], limit=500),
    }
