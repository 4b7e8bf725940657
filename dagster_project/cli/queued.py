"""`kb build` on a team deployment (KB_BUILD_MODE=queue). The run is submitted to the team's
Dagster through its webserver's GraphQL API (KB_DAGSTER_URL), exactly as the UI would, so it
queues on the `kb_writer` pool with the sensor's, the schedule's and other machines' runs and
executes where the daemon launches it: on the writer's KB_HOME, not this machine's. This
command follows the run and prints the summary a local build prints, read from the shared
Dagster instance (KB_DAGSTER_PG_URL)."""

from __future__ import annotations

import sys
import time
from urllib.parse import urlsplit

from kb_core import settings
from kb_core.errors import CLIError

FINISHED = ("SUCCESS", "FAILURE", "CANCELED")


class QueueError(CLIError):
    """The team's Dagster could not take or report the run."""


class RunRecordResult:
    """What summarize() and summary_json() read from an in-process result, rebuilt from a
    finished run's records in the instance."""

    def __init__(self, run_id: str, success: bool, job_def, events: list):
        self.run_id, self.success, self.job_def, self.all_events = run_id, success, job_def, events

    def get_asset_materialization_events(self) -> list:
        return [e for e in self.all_events if e.event_type_value == "ASSET_MATERIALIZATION"]

    def get_asset_check_evaluations(self) -> list:
        return [e.event_specific_data for e in self.all_events
                if e.event_type_value == "ASSET_CHECK_EVALUATION"]


def graphql_client():
    from dagster_graphql import DagsterGraphQLClient

    url = urlsplit(str(settings.get("KB_DAGSTER_URL")))
    if url.scheme not in ("http", "https") or not url.hostname:
        raise settings.SettingError(f"KB_DAGSTER_URL={url.geturl()!r}: expected http(s)://host:port")
    port = url.port or (443 if url.scheme == "https" else 80)
    return DagsterGraphQLClient(url.hostname, port_number=port, use_https=url.scheme == "https",
                                timeout=30)


def submit(job_name: str, tags: dict) -> str:
    import httpx
    from dagster_graphql import DagsterGraphQLClientError

    where = str(settings.get("KB_DAGSTER_URL")).rstrip("/")
    client = graphql_client()
    try:  # the GraphQL client reports a refused connection as a failed query: ask first
        httpx.get(f"{where}/server_info", timeout=10).raise_for_status()
    except httpx.HTTPError as exc:
        raise QueueError(f"KB_BUILD_MODE=queue: the Dagster webserver at {where} is unreachable "
                         f"({type(exc).__name__}); start it, or unset KB_BUILD_MODE to build "
                         "on this machine") from None
    try:
        return client.submit_job_execution(job_name, tags=tags)
    except DagsterGraphQLClientError as exc:
        detail = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise QueueError(f"KB_BUILD_MODE=queue: the Dagster at {where} did not take "
                         f"{job_name}: {detail}") from None


def follow(run_id: str, announce, poll_s: float = 1.0, timeout_s: float = 6 * 3600) -> str:
    """Poll the run's status until it finishes; announce each new status once."""
    client, seen = graphql_client(), None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            status = client.get_run_status(run_id).value
        except Exception as exc:  # a webserver restart: keep following
            status = f"unknown ({type(exc).__name__})"
        if status != seen:
            announce(f"run {run_id}: {status.lower()}"
                     + (" (waiting for the kb_writer pool or a free run slot)"
                        if status == "QUEUED" else ""))
            seen = status
        if status in FINISHED:
            return status
        time.sleep(poll_s)
    raise QueueError(f"run {run_id} did not finish within {timeout_s / 3600:.1f} h; it goes on "
                     f"in the team's Dagster ({settings.get('KB_DAGSTER_URL')})")


def run_queued(job_name: str, tags: dict, announce=lambda msg: print(msg, file=sys.stderr)):
    """Submit, follow, and return a RunRecordResult read from the shared instance."""
    from resources.dagster_instance import open_instance

    from dagster_project.definitions import build_definitions

    run_id = submit(job_name, tags)
    announce(f"run {run_id} of {job_name} submitted to {settings.get('KB_DAGSTER_URL')}")
    status = follow(run_id, announce)
    with open_instance() as instance:
        if instance.get_run_by_id(run_id) is None:
            raise QueueError(f"run {run_id} finished ({status}) but this machine's Dagster "
                             "instance does not hold it: set KB_DAGSTER_PG_URL to the team's "
                             "PostgreSQL to read its events")
        events = [e.dagster_event for e in instance.all_logs(run_id) if e.is_dagster_event]
    job_def = build_definitions().resolve_job_def(job_name)
    return RunRecordResult(run_id, status == "SUCCESS", job_def, events)
