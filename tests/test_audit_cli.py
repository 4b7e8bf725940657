"""`kb audit` on the command line: answers over the hand-written incident lineage of
test_audit, one-line errors with exit code 2 for bad input, and waiting for (or giving up
on) a build holding the DuckDB file."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from dagster_project.cli import main
from tests.kbtest import REPO
from tests.test_audit import lineage  # noqa: F401 - the seeded lineage fixture


# ---------------------------------------------------------------------------- CLI
def test_cli_answers(lineage, capsys):
    assert main(["audit", "at", "2026-11-22T08:30:00+08:00", "--no-runs"]) == 0
    out = capsys.readouterr().out
    assert "What was live at 2026-11-22 00:30:00 UTC" in out and "| kb | v2 |" in out
    assert main(["audit", "version", "v2", "--format", "json", "--no-runs"]) == 0
    assert json.loads(capsys.readouterr().out)["version"] == 2
    assert main(["audit", "diff", "1", "3", "--no-runs"]) == 0
    assert "Changes from KB v1 to v3" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["audit", "version", "99"], "KB version 99 does not exist (known versions: 1..3)"),
    (["audit", "version", "two"], "'two' is not a KB version number"),
    (["audit", "diff", "1", "42"], "KB version 42 does not exist"),
    (["audit", "at", "2025-01-01 00:00"], "nothing was live at 2025-01-01 00:00:00 UTC"),
    (["audit", "at", "last tuesday"], "cannot read time 'last tuesday'"),
    (["audit", "doc", "legal/never.md"], "document 'legal/never.md' was never seen"),
])
def test_cli_bad_input(lineage, capsys, argv, message):
    assert main(argv + ["--no-runs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kb audit: ") and message in err and len(err.splitlines()) == 1


def test_cli_without_a_database(kb_paths, capsys):
    assert main(["audit", "version", "1"]) == 2
    assert "no KB database at" in capsys.readouterr().err
    assert not kb_paths.db.exists()  # an audit never creates the database


HOLD = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("locked", flush=True)
sys.stdin.readline()  # hold the write lock until the test says so
con.close()
"""


def test_cli_waits_for_a_build_holding_the_database(lineage, kb_paths):
    lineage.con.close()
    env = {"KB_HOME": str(kb_paths.home), "PATH": "/usr/bin:/bin"}
    cmd = [str(Path(sys.executable).parent / "kb"), "audit", "version", "2", "--no-runs"]
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(kb_paths.db)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        # While a writer holds the file, a short timeout gives a clear one-line error...
        quick = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                               env={**env, "KB_AUDIT_LOCK_TIMEOUT_S": "0.3"})
        assert quick.returncode == 2 and "Traceback" not in quick.stderr
        assert "held its write lock for over 0.3s" in quick.stderr
        assert len(quick.stderr.strip().splitlines()) == 1
        # ...and the default waits for the lock, then answers.
        waiting = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   text=True, cwd=REPO, env=env)
        time.sleep(4)
        assert waiting.poll() is None  # still waiting for the writer
        holder.stdin.write("release\n")
        holder.stdin.flush()
        out, err = waiting.communicate(timeout=60)
        assert waiting.returncode == 0, err
        assert "## KB version 2" in out
    finally:
        if holder.poll() is None:
            holder.stdin.close()
        holder.wait(timeout=30)
