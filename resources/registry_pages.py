"""What the MLflow UI shows a reviewer about a model version: a description saying what
changed (documents added/changed/removed), params (chunker and embedder settings), metrics
logged to the *logged model* and linked to the evaluation dataset (the MLflow 3 model page
shows them), the per-question results as a table artifact, a `validation_status` tag, the
Dagster run id and a link to it; plus the pieces that make a logged model self-contained
(the project's code as `code_paths`, pinned requirements).

Everything here adds to what resources/registry.py registers; nothing renames its tags.

    publish_kb_page(registry, store, 3, info, dagster_run_id)      # after kb_release registers
    log_evaluation(registry, store, "kb", 3, metrics, frame, name, digest, source, per_question)
    tag_version(registry, store, "kb", 3, {"validation_status": "passed"})
"""

from __future__ import annotations

from kb_core import settings

from .registry import Registry, RegistryError, _mirror_row
from .store import KBStore

VALIDATION_TAG = "validation_status"  # pending | passed | rejected
MAX_LISTED_DOCS = 25


# -- pure helpers ---------------------------------------------------------------------------
def dagster_base_url() -> str:
    """Where the operator's Dagster UI is (KB_DAGSTER_URL)."""
    return str(settings.get("KB_DAGSTER_URL")).rstrip("/")


def dagster_run_url(run_id: str | None) -> str:
    return f"{dagster_base_url()}/runs/{run_id}" if run_id else ""


def version_changes(store: KBStore, version: int) -> dict:
    """Documents added, changed and removed in KB `version` against the version before it
    (compared by document id and content hash in kb_version_members)."""
    with store.connect(read_only=True) as con:
        prev = con.execute("SELECT max(version) FROM kb_versions WHERE version < ?",
                           [version]).fetchone()[0]
        rows = con.execute("SELECT DISTINCT version, doc_id, doc_content_hash "
                           "FROM kb_version_members WHERE version IN (?, ?)",
                           [version, prev if prev is not None else -1]).fetchall()
    now: dict[str, set] = {}
    before: dict[str, set] = {}
    for v, doc_id, h in rows:
        (now if v == version else before).setdefault(doc_id, set()).add(h)
    return {"previous_version": prev,
            "added": sorted(set(now) - set(before)),
            "removed": sorted(set(before) - set(now)),
            "changed": sorted(d for d in set(now) & set(before) if now[d] != before[d]),
            "n_docs": len(now)}


def _doc_list(label: str, docs: list[str]) -> str:
    if not docs:
        return ""
    shown = ", ".join(f"`{d}`" for d in docs[:MAX_LISTED_DOCS])
    more = f" and {len(docs) - MAX_LISTED_DOCS} more" if len(docs) > MAX_LISTED_DOCS else ""
    return f"\n- **{label}** ({len(docs)}): {shown}{more}"


def kb_description(version: int, changes: dict, info: dict, run_id: str | None) -> str:
    """The model version's description (markdown): what changed and how it was built."""
    prev = changes["previous_version"]
    head = (f"KB version {version}: {changes['n_docs']} documents, {info.get('n_chunks')} chunks. "
            + (f"Against KB version {prev}: {len(changes['added'])} added, "
               f"{len(changes['changed'])} changed, {len(changes['removed'])} removed."
               if prev is not None else "The first KB version."))
    chunker = info.get("chunker") or {}
    lines = [head + _doc_list("Added", changes["added"]) + _doc_list("Changed", changes["changed"])
             + _doc_list("Removed", changes["removed"]),
             f"Embedder `{info.get('embedding_model')}` ({info.get('dim')} dims); chunker "
             f"`{chunker.get('version')}` (size {chunker.get('size')}, overlap "
             f"{chunker.get('overlap')}).",
             "Validation: tag `validation_status` (pending, then passed or rejected by "
             "`retrieval_eval`'s gate)."]
    if run_id:
        lines.append(f"Built by Dagster run [{run_id[:8]}]({dagster_run_url(run_id)}).")
    return "\n\n".join(lines)


def kb_params(info: dict) -> dict[str, str]:
    """Chunker and embedder settings as MLflow params (compared across versions in the UI)."""
    chunker = info.get("chunker") or {}
    params = {f"chunker.{k}": v for k, v in chunker.items() if not isinstance(v, (dict, list))}
    params.update({"embedding.model": info.get("embedding_model"),
                   "embedding.dim": info.get("dim"), "index.lexical": info.get("lexical"),
                   "code_version": info.get("code_version")})
    return {k: str(v)[:500] for k, v in params.items() if v is not None}


def per_question_frame(per_query: list[dict]):
    """One row per evaluation question: its rank of the first relevant document (0 = miss)."""
    import pandas as pd

    rows = [{"qid": q.get("qid"), "question": q.get("question"),
             "expected": ",".join(q.get("expected") or []), "top_doc": q.get("top_doc"),
             "first_relevant_rank": int(q.get("first_relevant_rank") or 0),
             "hit_at_3": 0 < int(q.get("first_relevant_rank") or 0) <= 3,
             "n_hits": q.get("n_hits")} for q in per_query]
    return pd.DataFrame(rows, columns=["qid", "question", "expected", "top_doc",
                                       "first_relevant_rank", "hit_at_3", "n_hits"])


# -- MLflow writes (through the Registry's client) --------------------------------------------
def _version_row(store: KBStore, model_name: str, version_key: int) -> dict:
    row = _mirror_row(store, model_name, version_key)
    if row is None:
        raise RegistryError(f"{model_name} version {version_key} is not registered")
    return row


def model_id_of(registry: Registry, store: KBStore, model_name: str, version_key: int):
    row = _version_row(store, model_name, version_key)
    mv = registry._call("read a model version", registry.client().get_model_version,
                        model_name, str(row["mlflow_version"]))
    return logged_model_id(mv)


def logged_model_id(mv) -> str | None:
    """The logged model behind a model version. The sqlite registry does not keep
    `model_id`; the source URI `models:/m-<id>` names it (what the MLflow UI follows too)."""
    if getattr(mv, "model_id", None):
        return mv.model_id
    source = mv.source or ""
    if source.startswith("models:/m-") and "/" not in source[len("models:/"):]:
        return source[len("models:/"):]
    return None


def tag_version(registry: Registry, store: KBStore, model_name: str, version_key: int,
                tags: dict) -> None:
    row = _version_row(store, model_name, version_key)
    client = registry.client()
    for k, v in tags.items():
        registry._call(f"tag {model_name} version {version_key}", client.set_model_version_tag,
                       model_name, str(row["mlflow_version"]), k, str(v))


def describe_version(registry: Registry, store: KBStore, model_name: str, version_key: int,
                     description: str) -> None:
    row = _version_row(store, model_name, version_key)
    registry._call("set the version description", registry.client().update_model_version,
                   model_name, str(row["mlflow_version"]), description=description)


def log_params(registry: Registry, store: KBStore, model_name: str, version_key: int,
               params: dict[str, str]) -> None:
    """Params on the version's run and on its logged model (the model page shows those)."""
    row = _version_row(store, model_name, version_key)
    client = registry.client()

    def log():
        from mlflow.entities import Param

        existing = client.get_run(row["run_id"]).data.params
        new = [Param(k, v) for k, v in params.items() if k not in existing]
        if new:
            client.log_batch(row["run_id"], params=new)
        model_id = model_id_of(registry, store, model_name, version_key)
        if model_id:
            client.log_model_params(model_id, params)
    registry._call("log params", log)


def log_evaluation(registry: Registry, store: KBStore, model_name: str, version_key: int,
                   metrics: dict, dataset_name: str | None, dataset_digest: str | None,
                   per_question=None, step: int = 0,
                   table_path: str = "eval/per_question.json") -> None:
    """Metrics on the logged model, linked to the evaluation dataset already logged as the
    run's input (Registry.log_eval_dataset uses the same name and digest), and the
    per-question results as a table artifact of the run."""
    row = _version_row(store, model_name, version_key)
    client = registry.client()
    model_id = model_id_of(registry, store, model_name, version_key)

    def log():
        for k, v in metrics.items():
            client.log_metric(row["run_id"], k, float(v), step=step, model_id=model_id,
                              dataset_name=dataset_name,
                              dataset_digest=dataset_digest[:36] if dataset_digest else None)
        if per_question is not None:
            client.log_table(row["run_id"], per_question, table_path)
    registry._call("log the evaluation", log)


def link_logged_model(registry: Registry, store: KBStore, model_name: str,
                      version_key: int) -> None:
    """Tag the logged model with its registered version (`mlflow.modelVersions`, what
    mlflow.register_model writes), so the model page links back to the version."""
    import json

    row = _version_row(store, model_name, version_key)
    client = registry.client()
    model_id = model_id_of(registry, store, model_name, version_key)
    if not model_id:
        return

    def link():
        entry = {"name": model_name, "version": str(row["mlflow_version"])}
        current = json.loads(client.get_logged_model(model_id).tags.get(
            "mlflow.modelVersions") or "[]")
        if entry not in current:
            client.set_logged_model_tags(model_id, {
                "mlflow.modelVersions": json.dumps(current + [entry])})
    registry._call("link the logged model to its version", link)


def log_loss_curve(registry: Registry, store: KBStore, model_name: str, version_key: int,
                   loss_curve: list) -> None:
    """The training loss per step on the run and the logged model: MLflow plots it."""
    row = _version_row(store, model_name, version_key)
    client = registry.client()
    model_id = model_id_of(registry, store, model_name, version_key)

    def log():
        for s, v in loss_curve:
            client.log_metric(row["run_id"], "train_loss", float(v), step=int(s),
                              model_id=model_id)
    registry._call("log the loss curve", log)


def publish_kb_page(registry: Registry, store: KBStore, version: int, info: dict,
                    run_id: str | None) -> dict:
    """Description, params and tags of a freshly registered KB version; returns the changes."""
    changes = version_changes(store, version)
    describe_version(registry, store, "kb", version, kb_description(version, changes, info, run_id))
    log_params(registry, store, "kb", version, kb_params(info))
    link_logged_model(registry, store, "kb", version)
    tag_version(registry, store, "kb", version, {
        VALIDATION_TAG: "pending", "dagster_run_url": dagster_run_url(run_id),
        "documents_added": len(changes["added"]), "documents_changed": len(changes["changed"]),
        "documents_removed": len(changes["removed"])})
    ensure_model_description(registry, "kb", "The knowledge base: one version per published "
                             "FAISS + BM25 index. Alias `production` is what `kb search` and "
                             "`kb serve` answer from; `staging` is the newest candidate.")
    return changes


def ensure_model_description(registry: Registry, model_name: str, text: str) -> None:
    client = registry.client()
    rm = registry._call("read the registered model", client.get_registered_model, model_name)
    if not (rm.description or "").strip():
        registry._call("describe the registered model", client.update_registered_model,
                       model_name, description=text)


def assistant_description(version: int, tags: dict, run_id: str | None) -> str:
    lines = [f"kb-assistant version {version}: {tags.get('provider')} fine-tune of "
             f"`{tags.get('base_model')}` on dataset version {tags.get('dataset_version')} "
             f"(KB version {tags.get('kb_version')}), {tags.get('training_mode')} training"
             + (f" from version {tags['parent_version']}" if tags.get("parent_version") else "")
             + ".",
             "The adapter and the assistant card are artifacts of this model (`adapter`, "
             "`assistant`); the model loads anywhere its requirements are installed.",
             "Validation: tag `validation_status` (pending, then passed or rejected by "
             "`ft_eval`'s gate)."]
    if run_id:
        lines.append(f"Trained by Dagster run [{run_id[:8]}]({dagster_run_url(run_id)}).")
    return "\n\n".join(lines)


def publish_assistant_page(registry: Registry, store: KBStore, version: int, tags: dict,
                           params: dict, loss_curve: list, run_id: str | None) -> None:
    row = _version_row(store, "kb-assistant", version)
    describe_version(registry, store, "kb-assistant", version,
                     assistant_description(version, tags, run_id))
    log_params(registry, store, "kb-assistant", version,
               {k: str(v)[:500] for k, v in params.items()})
    link_logged_model(registry, store, "kb-assistant", version)
    portable = {VALIDATION_TAG: "pending", "dagster_run_url": dagster_run_url(run_id)}
    if tags.get("provider") == "local":
        # `model_ref` is the adapter folder relative to $KB_HOME/ft (the CLI and incremental
        # training read it); this is the reference that works on any machine with registry
        # access.
        portable["model_uri"] = f"models:/kb-assistant/{row['mlflow_version']}"
        portable["adapter_artifact"] = "artifacts/adapter"  # inside the logged model
    tag_version(registry, store, "kb-assistant", version, portable)
    if loss_curve:
        log_loss_curve(registry, store, "kb-assistant", version, loss_curve)


def validation_status(passed: bool) -> str:
    return "passed" if passed else "rejected"


def tag_validation(registry: Registry, store: KBStore, model_name: str, version_key: int,
                   passed: bool) -> None:
    """The gate's verdict as the version's `validation_status` tag."""
    tag_version(registry, store, model_name, version_key,
                {VALIDATION_TAG: validation_status(passed)})


__all__ = ["publish_kb_page", "publish_assistant_page", "log_evaluation", "tag_version",
           "describe_version", "log_params", "version_changes", "kb_description", "kb_params",
           "per_question_frame", "dagster_run_url",
           "validation_status", "tag_validation", "VALIDATION_TAG"]
