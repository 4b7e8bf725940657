"""What the inbox sensor decides, as plain functions (no Dagster here, tested directly).

The cursor is the last *stable* view of the inbox: per file (size, mtime_ns, sha256), the
files still settling, and the hash of the state the last run was requested for. A run is
requested only when the stable state differs from that last requested state, so a touched
but unchanged file, a restart with the same cursor, or a change undone before it settled
never starts a run."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from kb_assets.inbox import FileStat, diff_inbox, read_and_hash, scan_inbox

CURSOR_VERSION = 1


@dataclass(frozen=True)
class Entry:
    size: int
    mtime_ns: int
    sha: str


@dataclass(frozen=True)
class Pending:
    size: int
    mtime_ns: int
    since: float  # wall-clock seconds when the file was first seen settling


def state_hash(files: dict[str, Entry]) -> str:
    """Identity of an inbox state: its paths and their content hashes (not stat data)."""
    h = hashlib.sha256()
    for rel in sorted(files):
        h.update(f"{rel}\0{files[rel].sha}\n".encode())
    return h.hexdigest()


EMPTY_STATE = state_hash({})


@dataclass
class InboxCursor:
    files: dict[str, Entry] = field(default_factory=dict)
    pending: dict[str, Pending] = field(default_factory=dict)
    # State hash of the last run request. A fresh cursor counts the empty inbox as done:
    # an empty inbox starts no run, anything in it does.
    requested: str = EMPTY_STATE
    generation: int = 0   # number of run requests so far (part of the run key)

    def dumps(self) -> str:
        return json.dumps({
            "v": CURSOR_VERSION, "generation": self.generation, "requested": self.requested,
            "files": {r: [e.size, e.mtime_ns, e.sha] for r, e in sorted(self.files.items())},
            "pending": {r: [p.size, p.mtime_ns, p.since] for r, p in sorted(self.pending.items())},
        }, separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | None) -> "InboxCursor":
        """An empty or unreadable cursor starts fresh: the first evaluation then requests
        one run for whatever the inbox holds (the assets skip what they already have)."""
        if not text:
            return cls()
        try:
            raw = json.loads(text)
            if raw.get("v") != CURSOR_VERSION:
                return cls()
            return cls(
                files={r: Entry(int(s), int(m), str(h)) for r, (s, m, h) in raw["files"].items()},
                pending={r: Pending(int(s), int(m), float(t))
                         for r, (s, m, t) in raw["pending"].items()},
                requested=str(raw["requested"]), generation=int(raw["generation"]))
        except (ValueError, KeyError, TypeError, AttributeError):
            return cls()


@dataclass
class Evaluation:
    cursor: InboxCursor
    added: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    touched: list[str] = field(default_factory=list)    # stat changed, bytes did not
    settling: list[str] = field(default_factory=list)   # still being written: not acted upon
    blocking: list[str] = field(default_factory=list)   # settling files that hold the run back
    settle_wait_s: float = 0.0  # until every blocking file is settle_s old, if none changes
    run_key: str | None = None
    state: str = ""

    def summary(self) -> str:
        return (f"+{len(self.added)} added, ~{len(self.changed)} changed, "
                f"-{len(self.removed)} removed, {len(self.touched)} touched only, "
                f"{len(self.settling)} settling")

    def skip_reason(self) -> str:
        if self.blocking:
            names = ", ".join(self.blocking[:5]) + (" …" if len(self.blocking) > 5 else "")
            return f"waiting for {len(self.blocking)} file(s) to stop changing: {names}"
        if self.touched:
            return (f"{len(self.touched)} file(s) touched but their content is unchanged; "
                    f"inbox state {self.state[:12]} already requested")
        return f"inbox unchanged ({len(self.cursor.files)} files, state {self.state[:12]})"


def is_settled(st: FileStat, seen: Pending | None, now: float, settle_s: float) -> bool:
    """A file has stopped changing when its size and mtime are what the previous
    evaluation saw, or when it has not been written for `settle_s` seconds."""
    if seen is not None and (seen.size, seen.mtime_ns) == (st.size, st.mtime_ns):
        return True
    return now - st.mtime_ns / 1e9 >= settle_s


def evaluate_inbox(inbox: Path, cursor: InboxCursor, now: float, settle_s: float = 5.0,
                   max_wait_s: float = 600.0) -> Evaluation:
    """Compare the inbox with the cursor; decide whether to request one run.

    Files still being written are left out of the stable state and, for up to
    `max_wait_s`, hold the run back: the run ingests whatever is in the inbox when it
    starts, so starting it beside a half-copied file would ingest half a file."""
    scan = scan_inbox(inbox)
    known = {rel: (e.size, e.mtime_ns) for rel, e in cursor.files.items()}
    delta = diff_inbox(scan, known)
    files = {rel: e for rel, e in cursor.files.items() if rel in scan}
    ev = Evaluation(cursor=cursor, removed=list(delta.removed))
    pending: dict[str, Pending] = {}

    for rel in delta.new + delta.modified:
        st = scan[rel]
        seen = cursor.pending.get(rel)
        if not is_settled(st, seen, now, settle_s):
            since = seen.since if seen is not None else now
            pending[rel] = Pending(st.size, st.mtime_ns, since)
            ev.settling.append(rel)
            if now - since < max_wait_s:
                ev.blocking.append(rel)
                remaining = settle_s - (now - st.mtime_ns / 1e9)
                ev.settle_wait_s = max(ev.settle_wait_s, min(settle_s, remaining))
            continue
        try:
            _, sha = read_and_hash(inbox, st)
            after = scan_inbox_entry(inbox, rel)
        except OSError:  # vanished while we looked: the next evaluation sees what is left
            files.pop(rel, None)
            continue
        if after != (st.size, st.mtime_ns):  # written to while we read it: not settled
            since = seen.since if seen is not None else now
            pending[rel] = Pending(after[0], after[1], since)
            ev.settling.append(rel)
            ev.blocking.append(rel)
            ev.settle_wait_s = settle_s
            continue
        old = cursor.files.get(rel)
        if old is not None and old.sha == sha:
            ev.touched.append(rel)
        elif old is not None:
            ev.changed.append(rel)
        else:
            ev.added.append(rel)
        files[rel] = Entry(st.size, st.mtime_ns, sha)

    ev.state = state_hash(files)
    want_run = ev.state != cursor.requested and not ev.blocking
    generation = cursor.generation + 1 if want_run else cursor.generation
    ev.cursor = InboxCursor(files=files, pending=pending,
                            requested=ev.state if want_run else cursor.requested,
                            generation=generation)
    if want_run:
        # The generation makes a return to an earlier state (a file removed, then put back)
        # a new run; the state hash with it makes a re-evaluation from the same cursor
        # (the daemon died before saving it) produce the same key, which Dagster dedupes.
        ev.run_key = f"inbox-{generation}-{ev.state[:16]}"
    return ev


def scan_inbox_entry(inbox: Path, rel: str) -> tuple[int, int]:
    """(size, mtime_ns) of one inbox file, without following a symlink."""
    st = (inbox / rel).lstat()
    return st.st_size, st.st_mtime_ns
