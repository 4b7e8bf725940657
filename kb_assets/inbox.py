"""Inbox scanning and change detection. Pure apart from reading the file system: the
inbox is only ever read, never modified."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

# Editors and copy tools write these while a file is incomplete.
PARTIAL_SUFFIXES = (".part", ".tmp", ".crdownload", ".partial", ".swp", "~")


@dataclass(frozen=True)
class FileStat:
    rel: str
    size: int
    mtime_ns: int
    is_symlink: bool = False


def scan_inbox(inbox: Path) -> dict[str, FileStat]:
    """Every candidate file below `inbox`, keyed by its inbox-relative POSIX path.
    Hidden and partial files are skipped; symlinks are reported, never followed."""
    found: dict[str, FileStat] = {}
    if not inbox.exists():
        return found
    stack = [inbox]
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except OSError:
            continue
        for entry in entries:
            name = entry.name
            if name.startswith(".") or name.endswith(PARTIAL_SUFFIXES):
                continue
            rel = Path(entry.path).relative_to(inbox).as_posix()
            if entry.is_symlink():
                st = entry.stat(follow_symlinks=False)
                found[rel] = FileStat(rel, st.st_size, st.st_mtime_ns, True)
            elif entry.is_dir(follow_symlinks=False):
                stack.append(Path(entry.path))
            elif entry.is_file(follow_symlinks=False):
                st = entry.stat(follow_symlinks=False)
                found[rel] = FileStat(rel, st.st_size, st.st_mtime_ns)
    return found


def read_and_hash(inbox: Path, stat: FileStat) -> tuple[bytes | None, str]:
    """File bytes and their sha256; a symlink is hashed by its target and never read."""
    path = inbox / stat.rel
    if stat.is_symlink:
        return None, "symlink:" + hashlib.sha256(os.readlink(path).encode()).hexdigest()
    data = path.read_bytes()
    return data, hashlib.sha256(data).hexdigest()


@dataclass
class InboxDelta:
    new: list[str]
    modified: list[str]     # size/mtime differ; content hash decides if it really changed
    removed: list[str]
    unchanged: list[str]    # size and mtime equal: not re-read


def diff_inbox(files: dict[str, FileStat],
               known: dict[str, tuple[int, int]]) -> InboxDelta:
    """Compare a scan with the recorded (size, mtime_ns) of each known file."""
    new, modified, unchanged = [], [], []
    for rel, st in files.items():
        prev = known.get(rel)
        if prev is None:
            new.append(rel)
        elif prev != (st.size, st.mtime_ns):
            modified.append(rel)
        else:
            unchanged.append(rel)
    removed = sorted(set(known) - set(files))
    return InboxDelta(sorted(new), sorted(modified), removed, unchanged)
