"""The one root Definitions: every area exports its definitions and they are wired here."""

from __future__ import annotations

from dagster import (AssetSelection, Definitions, ExecutorDefinition, define_asset_job,
                     in_process_executor, multiprocess_executor)

from checks import ALL_CHECKS
from kb_core import settings
from kb_core.paths import Paths
from kb_assets.defs import KB_ASSETS, inbox_asset, with_freshness
from resources import default_resources
from sensors import build_schedules, build_sensors

KB_GROUPS = ("ingest", "index", "release")

# Refresh the knowledge base: ingest -> chunks -> embeddings -> index (-> release, eval).
kb_job = define_asset_job(
    "kb_job", selection=AssetSelection.groups(*KB_GROUPS),
    description="Refresh the knowledge base from the inbox.", tags={"kb/writer": "true"})
# Only the index chain (no release/eval): what the build benchmarks time.
index_job = define_asset_job(
    "index_job", selection=AssetSelection.groups("ingest", "index"),
    description="Ingest, chunk, embed and publish a KB version (no release or evaluation).",
    tags={"kb/writer": "true"})
# Fine-tuning only, on the KB as it is (`kb finetune`, the nightly schedule).
ft_job = define_asset_job(
    "ft_job", selection=AssetSelection.groups("fine_tune"),
    description="Build the fine-tuning dataset, fine-tune, evaluate and release the assistant.",
    tags={"kb/writer": "true"})
# Everything, fine-tuning included.
all_job = define_asset_job(
    "all_job", selection=AssetSelection.all(),
    description="Refresh the knowledge base and the fine-tuned assistant.",
    tags={"kb/writer": "true"})


def run_executor() -> ExecutorDefinition:
    """KB_DAGSTER_EXECUTOR. in_process (default): all steps of a launched run in one process,
    so torch and the checks' imports load once (~3 s instead of ~10 s per step), and the store
    resource, initialised once per run, holds the KB writer lock for the whole run
    (resources/store.py). multiprocess: a process per step, each taking the lock while it runs;
    a run's steps then serialise on it, and a local `kb build` may run between two of them
    (every step reads the store as it finds it). Either way every KB asset and check is in
    the `kb_writer` pool, which keeps launched runs one at a time across machines."""
    kind = settings.get("KB_DAGSTER_EXECUTOR")
    return multiprocess_executor if kind == "multiprocess" else in_process_executor


def build_definitions(paths: Paths | None = None, **resource_overrides) -> Definitions:
    paths = paths or Paths.from_env()  # pure: `kb init`, `kb build` and `make ui` create the folders
    return Definitions(
        assets=[*with_freshness(KB_ASSETS), inbox_asset(str(paths.inbox))],
        asset_checks=ALL_CHECKS,
        jobs=[kb_job, index_job, ft_job, all_job],
        sensors=build_sensors(),
        schedules=build_schedules(),
        resources=default_resources(paths, **resource_overrides),
        executor=run_executor(),
    )


defs = build_definitions()
