"""Every server the platform starts binds 127.0.0.1 unless configured otherwise."""

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from dagster_project.serve import free_port
from tests.kbtest import REPO, run_job, write

KB = str(Path(sys.executable).with_name("kb"))


def listening_addresses(pid: int) -> set[str]:
    procs = [psutil.Process(pid), *psutil.Process(pid).children(recursive=True)]
    return {c.laddr.ip for p in procs for c in p.net_connections(kind="inet")
            if c.status == psutil.CONN_LISTEN}


@pytest.mark.slow
def test_kb_serve_listens_on_loopback_only(kb_paths):
    write(kb_paths, "a.md", "# Parking\n\nVisitors park on level B2.")
    assert run_job(kb_paths, "index_job").success
    port = free_port()
    env = {**os.environ, "KB_HOME": str(kb_paths.home)}
    env.pop("DAGSTER_HOME", None)
    proc = subprocess.Popen([KB, "serve", "--port", str(port)], env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None
            time.sleep(0.3)
        assert listening_addresses(proc.pid) == {"127.0.0.1"}
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_ui_script_binds_loopback():
    script = (REPO / "scripts" / "ui.sh").read_text()
    assert re.search(r"^HOST=127\.0\.0\.1$", script, re.M)
    webserver = [line for line in script.splitlines() if "dagster-webserver" in line and "-h" in line]
    assert webserver and all('"$HOST"' in line for line in webserver)


def test_serve_default_host_is_loopback():
    out = subprocess.run([KB, "serve", "--help"], capture_output=True, text=True).stdout
    assert "default 127.0.0.1" in out
