"""Helpers for the fine-tuning tests (no tests here): small policy inboxes and real
in-process runs of chosen assets (with their checks) on the test's Dagster instance."""

from __future__ import annotations

import json

from dagster import AssetSelection, DagsterInstance, Definitions, define_asset_job

from kb_core.ft_data import DatasetSettings, split_group
from kb_assets.ft_plan import eval_groups
from tests.kbtest import write

KB_CORE = ["raw_docs", "cleaned_chunks", "embeddings", "faiss_index"]
FT_CHAIN = ["ft_dataset", "fine_tuned_model", "ft_eval", "assistant_release"]

TOPICS = {
    "parking": ("Parking Policy", "spaces", "Staff may book one of 40 car spaces through the "
                "FacilityDesk app. Visitors use bays 1 to 4 near reception."),
    "expenses": ("Expense Policy", "receipts", "Submit receipts within 30 days in SpendWise. "
                 "Claims above 500 pounds need director approval."),
    "laptops": ("Laptop Standard", "refresh", "Laptops are replaced every 4 years. Report a lost "
                "laptop to the Service Desk within 24 hours."),
    "travel": ("Travel Policy", "booking", "Book trains and flights through TripLattice at least "
               "14 days ahead. Economy class applies to flights under 6 hours."),
    "security": ("Security Training Policy", "modules", "Complete the 3 annual modules in "
                 "LearnHub by 31 March. New starters finish them within 10 working days."),
    "overtime": ("Overtime Policy", "rates", "Overtime is paid at 1.5 times the hourly rate on "
                 "weekdays and 2 times on public holidays, approved in PeopleHub."),
    "wellbeing": ("Wellbeing Policy", "support", "The employee assistance line is open 24 hours "
                  "a day. Each employee gets 6 free counselling sessions per year."),
    "visitors": ("Visitor Policy", "badges", "Register visitors in GuestBook the day before. "
                 "Visitor badges must be returned at reception by 18:00."),
}


def policy_text(title: str, topic: str, body: str, extra: str = "") -> str:
    return (f"# {title}\n\nOwner: Operations team. Effective 1 May 2025. This policy applies to "
            f"all staff in every office.\n\n## 1. {topic.title()}\n{body}\n\n"
            f"## 2. Questions about {topic}\nAsk the Operations team about {topic} in the "
            f"#ops channel; answers come within 2 working days.{extra}\n")


def write_topics(paths, names) -> dict[str, str]:
    """Write policy documents; returns doc_id -> text."""
    out = {}
    for name in names:
        title, topic, body = TOPICS[name]
        rel = f"{name}/{name}_policy.md"
        out[rel] = policy_text(title, topic, body)
        write(paths, rel, out[rel])
    return out


def train_topic(names, candidates, settings: DatasetSettings = DatasetSettings()) -> str:
    """A topic from `candidates` whose documents land in the training split next to `names`."""
    for c in candidates:
        groups = [split_group(f"{n}/{n}_policy.md") for n in [*names, c]]
        if split_group(f"{c}/{c}_policy.md") not in eval_groups(groups, settings):
            return c
    raise AssertionError("no candidate topic lands in the training split")


def run_assets(paths, names, **resource_overrides):
    """Materialize the named assets (and their checks) in one real in-process run."""
    from checks import ALL_CHECKS
    from kb_assets.defs import KB_ASSETS
    from resources import default_resources

    job = define_asset_job("test_job", selection=AssetSelection.assets(*names))
    defs = Definitions(assets=KB_ASSETS, asset_checks=ALL_CHECKS, jobs=[job],
                       resources=default_resources(paths, **resource_overrides))
    with DagsterInstance.get() as instance:
        return defs.resolve_job_def("test_job").execute_in_process(
            instance=instance, raise_on_error=False)


def step_failures(result) -> dict[str, str]:
    out = {}
    for ev in result.all_events:
        if ev.event_type_value == "STEP_FAILURE":
            err = ev.event_specific_data.error
            out[ev.step_key] = (err.cause.message if err and err.cause else "") + (
                err.message if err else "")
    return out


def check_results(result) -> dict[str, object]:
    return {ev.check_name: ev for ev in result.get_asset_check_evaluations()}


def dataset_rows(store) -> list[tuple]:
    with store.connect(read_only=True) as con:
        return con.execute("SELECT dataset_version, kb_version, content_sha256, n_train, n_eval, "
                           "path, info FROM ft_datasets ORDER BY dataset_version").fetchall()


def dataset_lines(store, version: int) -> list[tuple]:
    """(example_id, split, doc_id) of a dataset version, in file order per split."""
    with store.connect(read_only=True) as con:
        return con.execute("SELECT example_id, split, doc_id FROM ft_dataset_lines WHERE "
                           "dataset_version = ? ORDER BY split, line_no", [version]).fetchall()


def lines_of(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]
