"""The search API under uvicorn in a background thread, for tests and benchmarks."""

from __future__ import annotations

import socket
import threading
import time

from dagster_project.api.server import create_app
from kb_core.paths import Paths


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


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
