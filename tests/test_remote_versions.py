"""KB versions on shared storage (resources/remote_versions.py), against moto's S3 server and
a plain shared folder: a replica with an empty KB_HOME pulls exactly what the pointer names, a
half-pushed version is invisible, and an unreachable store changes nothing locally."""

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pytest

from kb_core.serving import POINTER_FILE, resolve, write_pointer
from resources import remote_versions as rv
from tests.registry_fixtures import publish_tiny
from tests.serve_thread import free_port
from tests.team_services import object_store


class Home:  # what write_pointer and resolve need
    def __init__(self, home: Path):
        self.home, self.versions = home, home / "versions"


def tree(root: Path) -> dict:
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    with object_store(tmp_path_factory.mktemp("s3")) as store:
        yield store


@pytest.fixture(params=["s3", "file"])
def remote(request, tmp_path, monkeypatch):
    if request.param == "file":
        return rv.RemoteVersions(f"file://{tmp_path / 'shared'}")
    store = request.getfixturevalue("s3")
    for k, v in store.env.items():
        monkeypatch.setenv(k, v)
    return rv.RemoteVersions(f"s3://{store.bucket}/kb-{tmp_path.name}")


def test_names_agree_with_the_version_layout():
    from resources import segments, vector_index

    assert (rv.INFO_FILE, rv.SEGMENTS_DIR, rv.SEG_INFO, rv.TMP_PREFIX) == (
        vector_index.INFO_FILE, segments.SEGMENTS_DIR, segments.SEG_INFO, segments.TMP_PREFIX)


def test_a_replica_pulls_what_the_pointer_names(remote, tmp_path):
    from resources.vector_index import VersionStore

    writer, replica = Home(tmp_path / "writer"), Home(tmp_path / "replica")
    for n in (1, 2):
        publish_tiny(writer.versions, n)
    write_pointer(writer, 1)
    sync = remote.sync_up(writer.home)
    assert sync["pushed_versions"] == [1, 2] and sync["pointer_written"]
    assert remote.remote_numbers() == [1, 2]
    assert remote.sync_up(writer.home)["objects_written"] == 0  # nothing twice

    replica.home.mkdir()
    assert remote.sync_down(replica.home) == 1
    assert resolve(replica).version == 1
    assert VersionStore(root=str(replica.versions)).numbers() == [1]  # only what serves
    seg1 = json.loads((writer.versions / "1" / "version.json").read_text())["segments"]
    assert tree(replica.versions / "1") == tree(writer.versions / "1")
    assert tree(replica.versions / "segments" / seg1[0]) == tree(writer.versions / "segments" / seg1[0])

    write_pointer(writer, 2)  # a promotion on the writer
    rv.RemoteVersions(remote.url, remote.store).push_pointer(writer.home)
    assert remote.sync_down(replica.home) == 2 and resolve(replica).version == 2
    a = VersionStore(root=str(writer.versions)).load(2)
    b = VersionStore(root=str(replica.versions)).load(2)
    assert np.array_equal(a.chunk_ids, b.chunk_ids)
    write_pointer(writer, 1)  # a rollback: no download, the pointer moves back
    remote.push_pointer(writer.home)
    assert remote.sync_down(replica.home) == 1 and resolve(replica).version == 1


def segments_of(versions_root: Path, *numbers: int) -> set[str]:
    return {seg for n in numbers for seg in
            json.loads((versions_root / str(n) / "version.json").read_text())["segments"]}


def test_retention_is_mirrored_on_the_store_and_the_replicas(remote, tmp_path):
    """Versions the writer's retention removed go from the store too (never the one the
    remote pointer names, never with an empty KB_HOME), with the segments nothing else
    names; a replica, on its next switch, drops what the store no longer has except the
    version it served until then."""
    from resources.vector_index import VersionStore

    writer, replica = Home(tmp_path / "writer"), Home(tmp_path / "replica")
    for n in (1, 2, 3):
        publish_tiny(writer.versions, n)
    write_pointer(writer, 1)
    remote.sync_up(writer.home)
    replica.home.mkdir()
    assert remote.sync_down(replica.home) == 1
    write_pointer(writer, 3)
    remote.push_pointer(writer.home)
    assert remote.sync_down(replica.home) == 3
    all_segments = segments_of(writer.versions, 1, 2, 3)
    assert remote.store.names("segments") == all_segments

    # Retention on the writer removed 1 and 2 (and, wrongly here, the served 3), then 4.
    wstore = VersionStore(root=str(writer.versions))
    for n in (1, 2, 3):
        wstore.remove(n)
    publish_tiny(writer.versions, 4)
    sync = remote.sync_up(writer.home)
    assert sync["pushed_versions"] == [4] and sync["removed_versions"] == [1, 2], sync
    assert remote.remote_numbers() == [3, 4]  # the pointer's version stays
    assert set(sync["removed_segments"]) == all_segments - segments_of(replica.versions, 3)
    assert remote.store.names("segments") == (segments_of(replica.versions, 3)
                                               | segments_of(writer.versions, 4))
    assert not remote.store.files("1") and not remote.store.files("2")

    # An empty KB_HOME (a new writer disk) is not a decision to delete.
    assert remote.prune(tmp_path / "empty", {3, 4}) == {"removed_versions": [],
                                                          "removed_segments": []}
    assert remote.remote_numbers() == [3, 4]

    # The replica switches to 4: it drops 1 (gone from the store), keeps 3 (served until now).
    write_pointer(writer, 4)
    remote.push_pointer(writer.home)
    assert remote.sync_down(replica.home) == 4
    assert VersionStore(root=str(replica.versions)).numbers() == [3, 4]
    assert {p.name for p in (replica.versions / "segments").iterdir()} == segments_of(
        replica.versions, 3, 4)
    assert resolve(replica).version == 4


class FailingAfter:
    """A store that fails after `n` writes (the network going away mid-push)."""

    def __init__(self, store, n: int):
        self.store, self.left = store, n

    def put(self, key, data):
        if self.left <= 0:
            raise ConnectionError("connection reset by peer")
        self.left -= 1
        self.store.put(key, data)

    def __getattr__(self, name):
        return getattr(self.store, name)


def test_a_half_pushed_version_is_invisible_and_the_next_push_completes(remote, tmp_path):
    writer, replica = Home(tmp_path / "writer"), Home(tmp_path / "replica")
    publish_tiny(writer.versions, 1)
    flaky = rv.RemoteVersions(remote.url, FailingAfter(remote.store, 3))
    with pytest.raises(rv.RemoteStoreError, match=f"{remote.url}.*upload KB version 1"):
        flaky.sync_up(writer.home)
    assert remote.remote_numbers() == []  # segment files written, version.json not
    replica.home.mkdir()
    assert remote.sync_down(replica.home) is None
    assert not (replica.versions / "1").exists()
    assert remote.sync_up(writer.home)["pushed_versions"] == [1]
    assert remote.sync_down(replica.home) == 1
    assert tree(replica.versions / "1") == tree(writer.versions / "1")


def test_an_unreachable_store_changes_nothing_here(tmp_path, monkeypatch, caplog):
    replica = Home(tmp_path / "replica")
    publish_tiny(replica.versions, 1)
    write_pointer(replica, 1)
    before = tree(replica.home)
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", f"http://127.0.0.1:{free_port()}")
    for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.setenv(k, "testing")
    down = rv.RemoteVersions("s3://kb-team/kb")
    with pytest.raises(rv.RemoteStoreError, match="s3://kb-team/kb: could not read the serving"):
        down.sync_down(replica.home)
    assert tree(replica.home) == before
    # A promotion's or rollback's pointer push that fails is a warning, not an error.
    monkeypatch.setenv("KB_VERSIONS_URL", "s3://kb-team/kb")
    rv.push_pointer(replica.home)
    assert "replicas keep their version until the next push" in caplog.text


@pytest.mark.parametrize("url", ["kb-team/kb", "s3:///kb", "http://x/y", "file://"])
def test_bad_urls_are_refused_by_name(url):
    from kb_core.settings import SettingError

    with pytest.raises(SettingError, match="KB_VERSIONS_URL"):
        rv.open_store(url)
