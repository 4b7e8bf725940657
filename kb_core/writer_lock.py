"""One KB writer at a time on this machine (a file lock under KB_HOME): a second `kb build`,
sensor run or UI materialization waits here until the first has finished writing.

Across machines sharing one Dagster instance (PostgreSQL), runs are serialised by the
`kb_writer` pool instead (kb_assets/writer.py, dagster.yaml in kb_core/paths.py).

Re-entrant within a thread: `kb build` takes the lock, then the run it executes in the same
thread initialises the store resource, which takes it again (resources/store.py); a second
flock on a new file description would wait for itself."""

from __future__ import annotations

import fcntl
import threading
import time
from contextlib import contextmanager
from pathlib import Path

WRITER_LOCK = ".kb-writer.lock"
# The Dagster pool of every KB asset and check: with dagster.yaml's `granularity: run` and
# limit 1, the run queue starts one run holding it at a time, whichever machine queued it.
KB_WRITER_POOL = "kb_writer"
# The host a `kb build` ran on, as a run tag: on an instance several machines share, the
# stale-run reaper (sensors/stale_runs.py) can only judge runs whose processes it can see.
HOST_TAG = "kb/host"
INSTANCE_LOCK = ".kb-instance.lock"

_held = threading.local()  # resolved lock path -> depth, for this thread


def writer_lock_path(home: Path) -> Path:
    return Path(home) / WRITER_LOCK


def holds_writer_lock(home: Path) -> bool:
    """True when this thread already holds the writer lock of `home`."""
    return getattr(_held, "depth", {}).get(str(writer_lock_path(home).resolve()), 0) > 0


@contextmanager
def writer_lock(home: Path, wait_s: float = 3600, announce=print):
    key = str(writer_lock_path(home).resolve())
    depth = _held.__dict__.setdefault("depth", {})
    if depth.get(key, 0):
        depth[key] += 1
        try:
            yield
        finally:
            depth[key] -= 1
        return
    lock = open(key, "w")
    deadline = time.monotonic() + wait_s
    announced = False
    while True:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if not announced:
                announce("another build is writing the knowledge base: waiting for it")
                announced = True
            if time.monotonic() > deadline:
                lock.close()
                raise TimeoutError("timed out waiting for the KB writer lock")
            time.sleep(0.2)
    depth[key] = 1
    try:
        yield
    finally:
        depth[key] = 0
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@contextmanager
def instance_init_lock(home: Path):
    """Two first builds at once would both create the Dagster instance's SQLite schema
    ("table secondary_indexes already exists"): instance creation is serialised here.
    On PostgreSQL (KB_DAGSTER_PG_URL) this serialises one KB_HOME only; machines sharing the
    database race too (DuplicateTable, or UniqueViolation on pg_type), and dagster-postgres
    retries the losers (tests/test_dagster_postgres.py starts three at once)."""
    with open(Path(home) / INSTANCE_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
