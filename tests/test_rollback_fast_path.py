"""`kb rollback` switches serving before it imports MLflow or Dagster (issue 13): the decision
reads the serving pointer and the DuckDB mirror only, then the pointer moves, then the alias
and its record follow; a failure to record switches serving back. Real sqlite MLflow, real
DuckDB, the real CLI in a fresh interpreter (so the import check means something)."""

import json
import socket
import subprocess
import sys

import pytest

from dagster_project.cli import main
from kb_core.serving import resolve
from resources.registry import alias_history
from tests.registry_fixtures import open_registry, publish_tiny
from tests.test_registry import _register

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]

# Runs `kb rollback` in a new interpreter; when the CLI first asks for MLflow/Dagster
# (`_context`), print what was imported by then and which version the pointer names.
PROBE = """
import json, sys
import dagster_project.cli.registry as reg
from kb_core.paths import Paths
from kb_core.serving import resolve
real = reg._context
def probe():
    print(json.dumps({"dagster": "dagster" in sys.modules, "mlflow": "mlflow" in sys.modules,
                      "pointer": resolve(Paths.from_env()).version}), file=sys.stderr)
    return real()
reg._context = probe
from dagster_project.cli import main
sys.exit(main(["rollback", "--reason", "probe"]))
"""


@pytest.fixture
def two_promoted(kb_paths):
    paths, store, registry = open_registry(kb_paths)
    for n in (1, 2, 3):
        publish_tiny(paths.versions, n)  # a rollback refuses a version without its files
        _register(paths, store, registry, "kb", n)
        registry.set_status(store, "kb", n, "passed" if n < 3 else "rejected")
    registry.move_alias(store, "kb", "production", 1, "a@h", "first")
    registry.move_alias(store, "kb", "production", 2, "a@h", "second")
    assert resolve(paths).version == 2
    return paths, store, registry


def test_serving_switches_before_mlflow_or_dagster_is_imported(two_promoted):
    paths, store, registry = two_promoted
    r = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                       cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr
    seen = json.loads(next(line for line in r.stderr.splitlines() if line.startswith("{")))
    assert seen == {"dagster": False, "mlflow": False, "pointer": 1}
    # ... and then the record follows: MLflow alias and alias_history.
    assert registry.get_alias("kb", "production") == 1 and resolve(paths).version == 1
    last = alias_history(store, "kb")[-1]
    assert (last["from_version"], last["to_version"], last["reason"]) == (2, 1, "rollback: probe")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_failed_recording_switches_serving_back(two_promoted, monkeypatch, capsys):
    paths, store, registry = two_promoted
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{_closed_port()}")
    assert main(["rollback"]) == 2
    assert "is unreachable" in capsys.readouterr().err
    assert resolve(paths).version == 2
    assert [m["to_version"] for m in alias_history(store, "kb")] == [1, 2]


@pytest.mark.parametrize("argv, message", [
    (["rollback", "--to", "3"], "KB version 3 failed its evaluation gate: refused"),
    (["rollback", "--to", "7"], "KB version 7 does not exist (registered: [1, 2, 3])"),
    (["rollback", "--to", "2"], "KB version 2 is already production"),
])
def test_refused_rollbacks_leave_serving_alone(two_promoted, capsys, argv, message):
    paths, store, registry = two_promoted
    assert main(argv) == 2
    assert message in capsys.readouterr().err
    assert resolve(paths).version == 2 and registry.get_alias("kb", "production") == 2


def test_rollback_to_a_version_whose_files_are_gone_is_refused(two_promoted, capsys):
    """Retention removed version 1's files (lineage stays): serving must not point at it."""
    from resources.vector_index import VersionStore

    paths, store, registry = two_promoted
    VersionStore(root=str(paths.versions)).remove(1)
    assert main(["rollback", "--to", "1"]) == 2
    err = capsys.readouterr().err
    assert "KB version 1 has no files under" in err and "retention" in err
    assert resolve(paths).version == 2 and registry.get_alias("kb", "production") == 2
