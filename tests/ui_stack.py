"""Start and stop `scripts/ui.sh` (dagster-webserver + dagster-daemon) for a KB_HOME on a
free loopback port: used by the daemon end-to-end test, the browser test and the freshness
benchmark."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

from tests.serve_thread import free_port
from tests.team_services import listens

REPO = Path(__file__).resolve().parents[1]


def processes() -> dict[int, tuple[int, int, str]]:
    """pid -> (ppid, pgid, state) of every process, from /proc."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()
        out[int(entry.name)] = (int(fields[1]), int(fields[2]), fields[0])
    return out


def descendants(pid: int) -> set[int]:
    procs = processes()
    found, frontier = set(), {pid}
    while frontier:
        frontier = {p for p, (ppid, _, _) in procs.items() if ppid in frontier} - found
        found |= frontier
    return found


class UIStack:
    def __init__(self, kb_home: Path, log_path: Path, port: int | None = None, **env: str):
        self.kb_home = Path(kb_home)
        self.port = port or free_port()
        self.log_path = Path(log_path)
        # ui.sh uses the virtualenv running this process (a worktree or CI may have no ./.venv).
        self.env = {**os.environ, "KB_HOME": str(kb_home), "KB_UI_PORT": str(self.port),
                    "VENV": str(Path(sys.executable).parent.parent), **env}
        for var in ("DAGSTER_HOME", "KB_INBOX", "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI"):
            if var not in env:
                self.env.pop(var, None)
        self.proc: subprocess.Popen | None = None
        self.tree: set[int] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def start(self, timeout: float = 120, wait_for_sensor: bool = True) -> "UIStack":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.log_path.open("wb") as log:
            # Own process group: the test can check that nothing of it survives a stop.
            self.proc = subprocess.Popen(["bash", "scripts/ui.sh"], cwd=REPO, env=self.env,
                                         stdout=log, stderr=subprocess.STDOUT,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"scripts/ui.sh exited early:\n{self.log()[-3000:]}")
            try:
                if httpx.get(f"{self.url}/server_info", timeout=2).status_code == 200 and listens(
                        self.proc, self.url) and (
                        not wait_for_sensor
                        or "Checking for new runs for sensor: inbox_sensor" in self.log()):
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.5)
        raise TimeoutError(f"UI/daemon not ready after {timeout}s:\n{self.log()[-3000:]}")

    def graphql(self, query: str, variables: dict | None = None) -> dict:
        r = httpx.post(f"{self.url}/graphql", json={"query": query, "variables": variables or {}},
                       timeout=30)
        r.raise_for_status()
        body = r.json()
        if body.get("errors"):
            raise RuntimeError(f"GraphQL errors: {body['errors']}")
        return body["data"]

    def location(self) -> str:
        """The name of the one code location the webserver loaded."""
        loc = self.graphql("{ repositoriesOrError { ... on RepositoryConnection { nodes {"
                           " location { name } } } } }")
        return loc["repositoriesOrError"]["nodes"][0]["location"]["name"]

    def materialize(self, assets: list[str], tags: dict[str, str]) -> str:
        """Launch a "Materialize" of `assets` through the webserver's GraphQL API, as the UI's
        button does (Dagster's implicit asset job of the code location); the run id."""
        from dagster_graphql import DagsterGraphQLClient

        client = DagsterGraphQLClient("127.0.0.1", port_number=self.port)
        return client.submit_job_execution(
            "__ASSET_JOB", repository_location_name=self.location(),
            repository_name="__repository__", tags=tags, asset_selection=assets)

    def stop(self, timeout: float = 45) -> list[str]:
        """SIGTERM to ui.sh (what a service manager does); returns processes of the stack
        still alive afterwards (should be none)."""
        if self.proc is None:
            return []
        pid = self.proc.pid
        self.tree = descendants(pid) | {pid}
        if self.proc.poll() is None:
            os.kill(pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                pass
        deadline = time.monotonic() + 5  # init reaps reparented zombies asynchronously
        while True:
            left = {p: info for p, info in processes().items()
                    if (p in self.tree or info[1] == pid) and info[2] != "Z"}
            if not left or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        leftovers = []
        for p in left:
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ").decode()[:160]
            except OSError:
                continue
            leftovers.append(f"{p}: {cmd}")
            os.kill(p, signal.SIGKILL)  # do not leave our own strays on a shared machine
        self.proc = None
        return leftovers

    def __enter__(self) -> "UIStack":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
