"""The search API under uvicorn in a background thread, for tests and benchmarks."""

from __future__ import annotations

import fcntl
import json
import socket
import tempfile
import threading
import time
from pathlib import Path

from dagster_project.api.server import create_app
from kb_core.paths import Paths


# Ports handed out by free_port in any test process of this machine, with when: the kernel
# may give the same free port to two xdist workers before either binds it, and a server that
# then loses the race leaves its test talking to the other worker's server (this happened in
# CI: the cluster test queried another test's MLflow server).
_HANDED_OUT = Path(tempfile.gettempdir()) / "kb-test-ports.json"
_HANDED_OUT_TTL_S = 3600


def free_port(host: str = "127.0.0.1") -> int:
    """A port free now and not handed to another test process within the last hour."""
    with open(_HANDED_OUT, "a+", encoding="utf-8") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        try:
            recent = {int(k): t for k, t in json.loads(f.read() or "{}").items()
                      if time.time() - t < _HANDED_OUT_TTL_S}
        except ValueError:
            recent = {}
        for _ in range(100):
            with socket.socket() as s:
                s.bind((host, 0))
                port = s.getsockname()[1]
            if port not in recent:
                break
        recent[port] = time.time()
        f.seek(0)
        f.truncate()
        f.write(json.dumps(recent))
        return port


class ServerThread:
    """The app under uvicorn in a background thread (tests, benchmarks): `with
    ServerThread(paths) as url:` yields http://127.0.0.1:<port> once it answers."""

    def __init__(self, paths: Paths, port: int | None = None, poll_s: float = 0.5) -> None:
        import uvicorn

        self.port = port or free_port()
        self.app = create_app(paths, poll_s=poll_s)
        self.server = uvicorn.Server(uvicorn.Config(self.app, host="127.0.0.1", port=self.port,
                                                    log_level="warning", access_log=False))
        self.thread = threading.Thread(target=self.server.run, name="kb-serve", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> str:
        self.thread.start()
        deadline = time.monotonic() + 120
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("kb serve did not start")
            time.sleep(0.05)
        return self.url

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=15)
