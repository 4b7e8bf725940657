"""KB versions on shared storage (KB_VERSIONS_URL: s3://bucket/prefix or file:///shared/dir),
so that `kb serve` replicas on any machine follow the writer without its disk, DuckDB or MLflow.

The remote layout mirrors `$KB_HOME/versions`: `segments/<id>/...` (immutable), `<n>/...` for
version n, and `serving.json` (the serving pointer) at the top. Readers see a version whole or
not at all: its segments are uploaded first, then its files, and its `version.json` last; a
version counts only once that object exists. The writer pushes after each publish (and catches
up on anything an earlier push missed); every serving-pointer move pushes the pointer. A
replica pulls the version the remote pointer names into its own `versions/` (temporary names,
then renames, as a local publish) and rewrites its local pointer, which `kb serve` follows."""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from pathlib import Path
from urllib.parse import urlsplit

from kb_core import settings
from kb_core.serving import POINTER_FILE, version_numbers

# The on-disk names of resources/segments.py and vector_index.py, repeated so that a rollback's
# pointer push (kb rollback switches serving before heavy imports) loads no FAISS or pandas;
# tests/test_remote_versions.py checks they agree.
INFO_FILE = "version.json"  # the commit object of a remote version
SEGMENTS_DIR, SEG_INFO, TMP_PREFIX = "segments", "segment.json", ".tmp-"


class RemoteStoreError(RuntimeError):
    """The shared version store could not be read or written (message names the URL)."""


class LocalDirStore:
    """A folder every machine mounts (file:///...)."""

    def __init__(self, root: Path):
        self.root = root

    def get(self, key: str) -> bytes | None:
        try:
            return (self.root / key).read_bytes()
        except FileNotFoundError:
            return None

    def put(self, key: str, data: bytes) -> None:
        target = self.root / key
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f"{TMP_PREFIX}{target.name}-{uuid.uuid4().hex[:8]}")
        tmp.write_bytes(data)
        os.replace(tmp, target)  # a reader never sees half an object

    def delete(self, keys: list[str]) -> None:
        for key in keys:
            (self.root / key).unlink(missing_ok=True)
        for parent in sorted({(self.root / k).parent for k in keys}, key=lambda d: -len(d.parts)):
            while parent != self.root and parent.is_dir() and not any(parent.iterdir()):
                parent.rmdir()
                parent = parent.parent

    def names(self, prefix: str) -> set[str]:
        """Immediate children of `prefix` (folder-like)."""
        d = self.root / prefix
        return {p.name for p in d.iterdir()} if d.is_dir() else set()

    def files(self, prefix: str) -> list[str]:
        """Every object under `prefix`, relative to it."""
        d = self.root / prefix
        return sorted(p.relative_to(d).as_posix() for p in d.rglob("*")
                      if p.is_file() and not p.name.startswith(TMP_PREFIX))


class S3Store:
    """An S3-compatible bucket (AWS, MinIO, moto). boto3 reads credentials and the endpoint
    (AWS_ENDPOINT_URL_S3) from the environment, as every AWS tool does."""

    def __init__(self, bucket: str, prefix: str):
        import boto3
        from botocore.config import Config

        self.bucket, self.prefix = bucket, prefix.strip("/")
        # Fail fast: a replica must keep serving, not hang, when the store is away.
        self.client = boto3.client("s3", config=Config(
            connect_timeout=5, read_timeout=30, retries={"max_attempts": 2}))

    def _key(self, key: str) -> str:
        return "/".join(p for p in (self.prefix, key) if p)

    def _folder(self, prefix: str) -> str:
        key = self._key(prefix.strip("/"))
        return f"{key}/" if key else ""

    def get(self, key: str) -> bytes | None:
        try:
            return self.client.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()
        except self.client.exceptions.NoSuchKey:
            return None

    def put(self, key: str, data: bytes) -> None:
        self.client.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)

    def delete(self, keys: list[str]) -> None:
        for i in range(0, len(keys), 1000):  # DeleteObjects takes up to 1,000 keys
            self.client.delete_objects(Bucket=self.bucket, Delete={
                "Objects": [{"Key": self._key(k)} for k in keys[i:i + 1000]], "Quiet": True})

    def names(self, prefix: str) -> set[str]:
        base = self._folder(prefix)
        out = set()
        for page in self.client.get_paginator("list_objects_v2").paginate(
                Bucket=self.bucket, Prefix=base, Delimiter="/"):
            out |= {p["Prefix"][len(base):].rstrip("/") for p in page.get("CommonPrefixes", [])}
            out |= {o["Key"][len(base):] for o in page.get("Contents", [])}
        return out

    def files(self, prefix: str) -> list[str]:
        base = self._folder(prefix)
        return sorted(o["Key"][len(base):]
                      for page in self.client.get_paginator("list_objects_v2").paginate(
                          Bucket=self.bucket, Prefix=base)
                      for o in page.get("Contents", []))


class RemoteVersions:
    """Push and pull KB versions and the serving pointer (see the module docstring)."""

    def __init__(self, url: str, store=None):
        self.url = url
        self.store = store or open_store(url)

    # -- helpers -------------------------------------------------------------------------
    def _guard(self, what: str, fn, *args):
        try:
            return fn(*args)
        except RemoteStoreError:
            raise
        except Exception as exc:  # botocore's, OSError: one line naming the store
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
            raise RemoteStoreError(f"KB_VERSIONS_URL {self.url}: could not {what}: "
                                   f"{first}") from None

    def remote_numbers(self) -> list[int]:
        """Complete remote versions (their version.json exists)."""
        def scan():
            return sorted(int(n) for n in self.store.names("") if n.isdigit()
                          and self.store.get(f"{n}/{INFO_FILE}") is not None)
        return self._guard("list versions", scan)

    def remote_pointer(self) -> dict | None:
        raw = self._guard("read the serving pointer", self.store.get, POINTER_FILE)
        return json.loads(raw) if raw else None

    # -- writer side -----------------------------------------------------------------------
    def push_version(self, versions_root: Path, number: int) -> int:
        """Upload version `number` (segments, files, version.json last); returns the number
        of objects written. A version already complete remotely is left as is."""
        def push() -> int:
            if self.store.get(f"{number}/{INFO_FILE}") is not None:
                return 0
            vdir = versions_root / str(number)
            info = json.loads((vdir / INFO_FILE).read_text(encoding="utf-8"))
            written = 0
            for seg in info.get("segments", []):
                if self.store.get(f"{SEGMENTS_DIR}/{seg}/{SEG_INFO}") is not None:
                    continue  # immutable: already there
                sdir = versions_root / SEGMENTS_DIR / seg
                for f in sorted(p for p in sdir.iterdir() if p.name != SEG_INFO):
                    self.store.put(f"{SEGMENTS_DIR}/{seg}/{f.name}", f.read_bytes())
                    written += 1
                self.store.put(f"{SEGMENTS_DIR}/{seg}/{SEG_INFO}", (sdir / SEG_INFO).read_bytes())
                written += 1
            for f in sorted(p for p in vdir.rglob("*") if p.is_file() and p.name != INFO_FILE):
                self.store.put(f"{number}/{f.relative_to(vdir).as_posix()}", f.read_bytes())
                written += 1
            self.store.put(f"{number}/{INFO_FILE}", (vdir / INFO_FILE).read_bytes())
            return written + 1
        return self._guard(f"upload KB version {number}", push)

    def push_pointer(self, kb_home: Path) -> bool:
        """Upload the local serving pointer when it differs; True when written."""
        local = Path(kb_home) / POINTER_FILE
        if not local.exists():
            return False
        data = local.read_bytes()
        current = self._guard("read the serving pointer", self.store.get, POINTER_FILE)
        if current is not None and json.loads(current) == json.loads(data):
            return False
        self._guard("write the serving pointer", self.store.put, POINTER_FILE, data)
        return True

    def sync_up(self, kb_home: Path) -> dict:
        """Push every complete local version the store lacks, then the pointer; then remove
        the remote copies of versions this machine's retention removed."""
        versions_root = Path(kb_home) / "versions"
        remote = set(self.remote_numbers())
        pushed = [n for n in version_numbers(versions_root) if n not in remote]
        objects = sum(self.push_version(versions_root, n) for n in pushed)
        pointer_written = self.push_pointer(kb_home)
        pruned = self.prune(versions_root, remote | set(pushed))
        return {"pushed_versions": pushed, "objects_written": objects,
                "pointer_written": pointer_written, **pruned}

    def prune(self, versions_root: Path, remote: set[int]) -> dict:
        """Retention, mirrored: a remote version older than the newest local one that is no
        longer here (retention removed its files) and that the remote pointer does not name
        goes, its version.json first (so it is gone for readers before any file is); then
        the segments no remaining version names. With no local version nothing is removed
        (an empty KB_HOME is not a decision to delete)."""
        local = set(version_numbers(versions_root))
        if not local:
            return {"removed_versions": [], "removed_segments": []}
        pointer = self.remote_pointer()
        serving = int(pointer["version"]) if pointer else None
        gone = sorted(n for n in remote if n not in local and n < max(local) and n != serving)

        def remove() -> dict:
            for n in gone:
                self.store.delete([f"{n}/{INFO_FILE}"])
                self.store.delete([f"{n}/{k}" for k in self.store.files(str(n))])
            kept: set[str] = set()
            for n in remote - set(gone):
                raw = ((versions_root / str(n) / INFO_FILE).read_bytes() if n in local
                       else self.store.get(f"{n}/{INFO_FILE}"))
                kept |= set(json.loads(raw).get("segments", [])) if raw else set()
            orphans = sorted(self.store.names(SEGMENTS_DIR) - kept) if gone else []
            for seg in orphans:  # segment.json first: a half-removed segment is not one
                self.store.delete([f"{SEGMENTS_DIR}/{seg}/{SEG_INFO}"])
                self.store.delete([f"{SEGMENTS_DIR}/{seg}/{k}"
                                   for k in self.store.files(f"{SEGMENTS_DIR}/{seg}")])
            return {"removed_versions": gone, "removed_segments": orphans}
        return self._guard("remove versions retention let go", remove)

    # -- replica side ------------------------------------------------------------------------
    def pull_version(self, versions_root: Path, number: int) -> bool:
        """Download version `number` and the segments it names that are not here yet, under
        temporary names renamed into place; False when it is already here."""
        if number in version_numbers(versions_root):
            return False

        def pull() -> bool:
            raw_info = self.store.get(f"{number}/{INFO_FILE}")
            if raw_info is None:
                raise RemoteStoreError(f"KB_VERSIONS_URL {self.url}: KB version {number} is "
                                       "not (completely) published there")
            info = json.loads(raw_info)
            seg_root = versions_root / SEGMENTS_DIR
            seg_root.mkdir(parents=True, exist_ok=True)
            for seg in info.get("segments", []):
                if (seg_root / seg / SEG_INFO).exists():
                    continue
                self._download_dir(f"{SEGMENTS_DIR}/{seg}", seg_root, seg)
            self._download_dir(str(number), versions_root, str(number), raw_info)
            return True
        return self._guard(f"download KB version {number}", pull)

    def _download_dir(self, prefix: str, parent: Path, name: str,
                      info_bytes: bytes | None = None) -> None:
        tmp = parent / f"{TMP_PREFIX}{name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            for key in self.store.files(prefix):
                data = self.store.get(f"{prefix}/{key}")
                if data is None:
                    raise RemoteStoreError(f"KB_VERSIONS_URL {self.url}: {prefix}/{key} vanished")
                (tmp / key).parent.mkdir(parents=True, exist_ok=True)
                (tmp / key).write_bytes(data)
            if info_bytes is not None:
                (tmp / INFO_FILE).write_bytes(info_bytes)
            from resources.segments import fsync_dir, fsync_tree

            fsync_tree(tmp)
            os.rename(tmp, parent / name)
            fsync_dir(parent)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def sync_down(self, kb_home: Path) -> int | None:
        """Make the local pointer say what the remote one says, pulling that version first
        (nothing promoted yet: the latest remote version). Returns the version, or None when
        the store holds none."""
        from kb_core.serving import write_pointer

        pointer = self.remote_pointer()
        if pointer is not None:
            number = int(pointer["version"])
        else:
            numbers = self.remote_numbers()
            if not numbers:
                return None
            number = numbers[-1]
        self.pull_version(Path(kb_home) / "versions", number)
        if pointer is not None:
            local = Path(kb_home) / POINTER_FILE
            current = json.loads(local.read_text("utf-8")) if local.exists() else None
            if current != pointer:
                write_pointer(_Home(Path(kb_home)), number,
                              **{k: v for k, v in pointer.items() if k != "version"})
                keep = {number} | ({int(current["version"])} if current else set())
                try:
                    self.prune_replica(Path(kb_home) / "versions", keep)
                except RemoteStoreError as exc:  # the switch happened; pruning waits
                    logging.getLogger("kb.remote").warning(f"{exc}; old versions stay here")
        return number

    def prune_replica(self, versions_root: Path, keep: set[int]) -> list[int]:
        """On a switch, a replica drops the local versions the store no longer has, except
        `keep` (the new one and the one it served until now, which requests may still be
        reading): its disk follows the writer's retention."""
        remote = set(self.remote_numbers())
        gone = [n for n in version_numbers(versions_root) if n not in remote and n not in keep]
        if gone:
            from resources.vector_index import VersionStore

            store = VersionStore(root=str(versions_root))
            for n in gone:
                store.remove(n)
        return gone


class _Home:  # write_pointer needs only `.home`
    def __init__(self, home: Path):
        self.home = home


def open_store(url: str):
    parts = urlsplit(url)
    if parts.scheme == "s3" and parts.netloc:
        return S3Store(parts.netloc, parts.path)
    if parts.scheme == "file" and parts.path:
        root = Path(parts.path)
        root.mkdir(parents=True, exist_ok=True)
        return LocalDirStore(root)
    raise settings.SettingError(f"KB_VERSIONS_URL={url!r}: expected s3://bucket/prefix or "
                                "file:///absolute/folder")


def from_settings(environ=None) -> RemoteVersions | None:
    """The configured remote store, or None (the single-machine default)."""
    url = str(settings.get("KB_VERSIONS_URL", environ) or "")
    return RemoteVersions(url) if url else None


def push_pointer(kb_home: Path) -> None:
    """With KB_VERSIONS_URL, replicas follow the pointer there. A failed push is a warning,
    not a failed promotion or rollback: this machine serves the new version, and the
    writer's next run pushes the pointer again."""
    remote = from_settings()
    if remote is None:
        return
    try:
        remote.push_pointer(kb_home)
    except RemoteStoreError as exc:
        logging.getLogger("kb.remote").warning(f"{exc}; replicas keep their version until the "
                                               "next push")
