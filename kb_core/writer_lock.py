"""One KB writer at a time on this machine (a file lock under KB_HOME): a second `kb build`,
sensor run or UI materialization waits here until the first has finished writing."""

from __future__ import annotations

import fcntl
import time
from contextlib import contextmanager
from pathlib import Path

WRITER_LOCK = ".kb-writer.lock"
INSTANCE_LOCK = ".kb-instance.lock"


def writer_lock_path(home: Path) -> Path:
    return home / WRITER_LOCK


@contextmanager
def writer_lock(home: Path, wait_s: float = 3600, announce=print):
    lock = open(writer_lock_path(home), "w")
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
                raise TimeoutError("timed out waiting for the KB writer lock")
            time.sleep(0.2)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


@contextmanager
def instance_init_lock(home: Path):
    """Two first builds at once would both create the Dagster instance's SQLite schema
    ("table secondary_indexes already exists"): instance creation is serialised here."""
    with open(home / INSTANCE_LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
