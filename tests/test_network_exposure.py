"""Every server the platform starts binds 127.0.0.1 unless configured otherwise.
(`kb serve`'s listening socket is checked with `ss` in tests/test_serve.py.)"""

import re
import subprocess
import sys
from pathlib import Path

from tests.kbtest import REPO

KB = str(Path(sys.executable).with_name("kb"))


def test_ui_script_binds_loopback():
    script = (REPO / "scripts" / "ui.sh").read_text()
    assert re.search(r"^HOST=127\.0\.0\.1$", script, re.M)
    webserver = [line for line in script.splitlines() if "dagster-webserver" in line and "-h" in line]
    assert webserver and all('"$HOST"' in line for line in webserver)


def test_serve_default_host_is_loopback():
    out = subprocess.run([KB, "serve", "--help"], capture_output=True, text=True).stdout
    assert "default 127.0.0.1" in out
