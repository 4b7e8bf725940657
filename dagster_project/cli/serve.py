"""`kb serve`: the HTTP search API on 127.0.0.1, following the production alias."""

from __future__ import annotations

import json

from kb_core.home import describe
from kb_core.paths import Paths


def register(sub) -> None:
    p = sub.add_parser("serve", help="HTTP search API (/search, /healthz, /version, /metrics) "
                                     "that follows the production KB version")
    p.add_argument("--host", default="127.0.0.1", help="bind address (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8000, help="port (default 8000)")
    p.add_argument("--poll", type=float, default=0.5,
                   help="seconds between checks of the serving pointer (default 0.5)")
    p.add_argument("--json", action="store_true",
                   help="print the startup line as a JSON object {url, version, source}")
    p.set_defaults(func=cmd_serve)


def pull_shared_version(paths: Paths) -> str | None:
    """With KB_VERSIONS_URL, pull the version the shared pointer names before starting (a
    replica may start on an empty KB_HOME); returns what went wrong, or None."""
    from resources.remote_versions import RemoteStoreError, from_settings

    remote = from_settings()
    if remote is None:
        return None
    paths.home.mkdir(parents=True, exist_ok=True)
    try:
        if remote.sync_down(paths.home) is None:
            return f"KB_VERSIONS_URL {remote.url} holds no KB version yet"
    except RemoteStoreError as exc:
        return str(exc)
    return None


def cmd_serve(args) -> int:
    import logging
    import signal
    import socket

    # nohup, background jobs and some test runners hand SIGTERM/SIGINT down as ignored; a
    # server must stop when told to, also before uvicorn installs its own handlers (a
    # SIGTERM in that window was lost and the server ran on).
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)

    import uvicorn

    from dagster_project.api.server import create_app
    from kb_core.errors import CLIError, UsageError
    from kb_core.serving import resolve

    paths = Paths.from_env()
    remote_problem = pull_shared_version(paths)
    serving = resolve(paths)
    if serving.version is None:
        if remote_problem:
            raise CLIError(f"no KB version here ({paths.versions}) and {remote_problem}")
        raise CLIError(f"no KB version under {paths.versions}: run `kb build` first "
                       f"({describe(paths.home)})")
    if not 0 < args.port < 65536:
        raise UsageError(f"--port {args.port} is not a TCP port")
    with socket.socket() as s:  # a clear message instead of uvicorn's traceback
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((args.host, args.port))
        except OSError as exc:
            raise CLIError(f"cannot listen on {args.host}:{args.port}: {exc.strerror}") from None
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    url = f"http://{args.host}:{args.port}"
    if args.json:
        print(json.dumps({"url": url, "version": serving.version, "source": serving.source,
                          "kb_home": str(paths.home)}), flush=True)
    else:
        print(f"kb serve: KB version {serving.version} ({serving.source}) on "
              f"{url}  (/search?q=...&k=5, /healthz, /version, /metrics)", flush=True)
    uvicorn.run(create_app(paths, poll_s=args.poll), host=args.host, port=args.port,
                log_level="warning", access_log=False, workers=1)
    return 0
