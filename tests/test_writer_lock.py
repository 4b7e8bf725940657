"""The KB writer lock: re-entrant in its thread (`kb build` holds it, then the run's store
resource takes it again), exclusive across threads and processes, and held by a Dagster run
from its first step to its last through the store resource."""

import subprocess
import sys
import threading

import pytest
from dagster import DagsterInstance, asset, materialize

from kb_core.writer_lock import holds_writer_lock, writer_lock
from resources.store import KBStore


def try_lock_elsewhere(home) -> bool:
    """Whether another thread can take the lock right now (no waiting)."""
    got = []

    def attempt():
        try:
            with writer_lock(home, wait_s=0, announce=lambda _m: None):
                got.append(True)
        except TimeoutError:
            got.append(False)
    t = threading.Thread(target=attempt)
    t.start()
    t.join(10)
    return got == [True]


def test_reentrant_in_its_thread_exclusive_elsewhere(tmp_path):
    assert not holds_writer_lock(tmp_path)
    with writer_lock(tmp_path):
        with writer_lock(tmp_path, wait_s=0):  # would time out if it were not re-entrant
            assert holds_writer_lock(tmp_path)
        assert holds_writer_lock(tmp_path)  # the inner exit did not release it
        assert not try_lock_elsewhere(tmp_path)
        other = subprocess.run(
            [sys.executable, "-c", "import sys; from kb_core.writer_lock import writer_lock\n"
             "try:\n with writer_lock(sys.argv[1], wait_s=0, announce=lambda m: None): pass\n"
             "except TimeoutError: sys.exit(3)", str(tmp_path)], timeout=60)
        assert other.returncode == 3
    assert not holds_writer_lock(tmp_path)
    assert try_lock_elsewhere(tmp_path)


def test_timeout_says_so_and_releases_nothing(tmp_path):
    with writer_lock(tmp_path):
        def attempt():
            with pytest.raises(TimeoutError, match="writer lock"):
                with writer_lock(tmp_path, wait_s=0.3, announce=lambda _m: None):
                    pass
        t = threading.Thread(target=attempt)
        t.start()
        t.join(10)
        assert holds_writer_lock(tmp_path)


@pytest.mark.parametrize("lock_home, held", [(True, True), (False, False)])
def test_a_run_holds_the_lock_through_the_store_resource(tmp_path, lock_home, held):
    seen = {}

    @asset
    def first(store: KBStore):
        seen["first"] = (holds_writer_lock(tmp_path), try_lock_elsewhere(tmp_path))

    @asset(deps=[first])
    def second():  # no store of its own: the run's resources are initialised once
        seen["second"] = (holds_writer_lock(tmp_path), try_lock_elsewhere(tmp_path))

    store = KBStore(db_path=str(tmp_path / "kb.duckdb"),
                    writer_lock_home=str(tmp_path) if lock_home else "")
    instance = DagsterInstance.ephemeral()
    result = materialize([first, second], resources={"store": store}, instance=instance)
    assert result.success
    assert seen == {"first": (held, not held), "second": (held, not held)}
    assert try_lock_elsewhere(tmp_path)  # released when the run ended
    if held:
        logs = [e.message for e in instance.all_logs(result.run_id) if e.message]
        assert any("Holding the KB writer lock" in m for m in logs), logs
