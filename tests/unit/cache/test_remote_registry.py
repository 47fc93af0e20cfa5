"""The fleet tier against a real registry (Debian's docker-registry on loopback, through the
real RegistryClient): push, pull, repair and prune, and what a registry with damaged storage
or a swapped manifest makes of a pull (a miss that commits nothing). No Docker needed."""

from __future__ import annotations

import json
import os
import time
import types

import pytest
from cachetest_helpers import legacy_archive, random_layer, sha
from harness.registry import LocalRegistry
from runnerkeep.cache import Store, import_archive, remote_push, verify_store
from runnerkeep.cache.checks import load_checked_entry
from runnerkeep.cache.remote_layout import OCI_INDEX, OCI_MANIFEST, RemoteCacheMiss
from runnerkeep.cache.remote_prune import remote_prune
from runnerkeep.cache.remote_pull import pull_entry
from runnerkeep.cache.remote_push import push_entry
from runnerkeep.remote.credentials import read_credentials
from runnerkeep.remote.errors import RemoteMiss
from runnerkeep.remote.registry import RegistryClient
from runnerkeep.remote.remote_config import remote_settings

BIG = random_layer(5 << 20, "big")
SMALL = random_layer(30_000, "small")


@pytest.fixture(scope="module")
def registry():
    with LocalRegistry(tls=True, auth=True) as reg:
        yield reg


def client_for(reg: LocalRegistry, repository: str) -> RegistryClient:
    user = reg.push_user if reg.auth else None
    settings = remote_settings({"remote": reg.remote_config(repository, user)})
    credentials = read_credentials(settings.credentials_file) if user else None
    return RegistryClient(settings, credentials)


@pytest.fixture
def source(tmp_path):
    store = Store(str(tmp_path / "src"), key_file=None)
    archive = tmp_path / "in.tar"
    archive.write_bytes(legacy_archive([(["app:1"], [BIG, SMALL])]))
    import_archive(store, "k", str(archive))
    return store


@pytest.fixture
def target(tmp_path):
    return Store(str(tmp_path / "dst"), key_file=None)


def assert_nothing_committed(store: Store) -> None:
    assert store.list_keys() == []
    assert store.list_blobs() == {}
    left = os.listdir(store.tmp_dir) if os.path.isdir(store.tmp_dir) else []
    assert [name for name in left if not name.startswith(".")] == []


def test_push_then_pull_over_tls_with_credentials(registry, source, target):
    with client_for(registry, "unit/round-trip") as client:
        pushed = push_entry(source, "k", client)
    assert pushed["blobs_sent"] == 3
    with client_for(registry, "unit/round-trip") as client:
        pulled = pull_entry(target, "k", client)
    assert pulled["index_digest"] == pushed["index_digest"]
    src, _ = source.read_entry("k")
    dst, _ = load_checked_entry(target, "k")
    assert dst["images"] == src["images"]
    assert verify_store(target)["ok"]


def test_a_second_push_sends_only_the_index_and_manifests(registry, source):
    with client_for(registry, "unit/again") as client:
        first = push_entry(source, "k", client)
        again = push_entry(source, "k", client)
    assert again["blobs_sent"] == 0 and again["blobs_present"] == 3
    assert 0 < again["bytes_sent"] < 4096 < len(BIG) < first["bytes_sent"]


def _registry_blob_file(reg: LocalRegistry, digest: str) -> str:
    hexdigest = digest.split(":", 1)[1]
    blobs = os.path.join(reg.storage_dir, "docker/registry/v2/blobs/sha256")
    path = os.path.join(blobs, hexdigest[:2], hexdigest, "data")
    assert os.path.isfile(path), path
    return path


def test_a_blob_corrupted_in_the_registrys_storage_commits_nothing(tmp_path, target):
    # Its own layer: the registry stores a blob once for all repositories.
    layer = random_layer(2 << 20, "rotting")
    store = Store(str(tmp_path / "own"), key_file=None)
    archive = tmp_path / "own.tar"
    archive.write_bytes(legacy_archive([(["rot:1"], [layer])]))
    import_archive(store, "k", str(archive))
    with LocalRegistry() as reg:
        with client_for(reg, "unit/rot") as client:
            push_entry(store, "k", client)
        path = _registry_blob_file(reg, sha(layer))
        with open(path, "r+b") as handle:
            handle.seek(1 << 20)
            handle.write(b"rot")
        with client_for(reg, "unit/rot") as client, pytest.raises(RemoteCacheMiss) as caught:
            pull_entry(target, "k", client)
    assert caught.value.corrupt and sha(layer) in str(caught.value)
    assert_nothing_committed(target)


def test_a_manifest_replaced_with_another_keys(registry, source, target, tmp_path):
    archive = tmp_path / "other.tar"
    archive.write_bytes(legacy_archive([(["other:1"], [SMALL])]))
    import_archive(source, "other", str(archive))
    with client_for(registry, "unit/swap") as client:
        push_entry(source, "k", client)
        other = push_entry(source, "other", client)
        data = client.get_manifest(other["index_digest"], (OCI_INDEX,)).data
        client.put_manifest("k", OCI_INDEX, data)
        with pytest.raises(RemoteCacheMiss) as caught:
            pull_entry(target, "k", client)
    assert caught.value.corrupt and "another key" in str(caught.value)
    assert_nothing_committed(target)


def test_a_rotten_local_blob_never_reaches_the_registry(registry, source):
    path = source.blob_path(sha(BIG))
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(len(BIG) - 3)
        handle.write(b"!")
    with client_for(registry, "unit/rotten") as client:
        with pytest.raises(RemoteCacheMiss) as caught:
            push_entry(source, "k", client)
        assert client.blob_size(sha(BIG)) is None
        assert client.list_tags() == []
    assert caught.value.corrupt
    assert sha(BIG) in source.quarantined_blobs()


def test_repair_fetches_only_the_quarantined_blob(registry, source, target):
    with client_for(registry, "unit/repair") as client:
        push_entry(source, "k", client)
        pull_entry(target, "k", client)
        path = target.blob_path(sha(BIG))
        os.chmod(path, 0o644)
        with open(path, "r+b") as handle:
            handle.write(b"rot")
        verify_store(target, repair=True)
        assert not target.has_blob(sha(BIG))
        before = client.bytes_received
        pulled = pull_entry(target, "k", client)
        received = client.bytes_received - before
    assert pulled["repaired"] == [sha(BIG)]
    assert len(BIG) <= received < len(BIG) + 64 * 1024
    assert verify_store(target)["ok"]


def test_prune_deletes_runnerkeep_keys_and_leaves_foreign_tags(registry, source, monkeypatch):
    long_ago = types.SimpleNamespace(time=lambda: 1_000_000.0, monotonic=time.monotonic)
    monkeypatch.setattr(remote_push, "time", long_ago)
    with client_for(registry, "unit/prune") as client:
        push_entry(source, "k", client)
        index = client.get_manifest("k", (OCI_INDEX,))
        manifest = json.loads(index.data)["manifests"][0]
        # An image manifest under a tag of its own: what docker push or skopeo leave.
        data = client.get_manifest(manifest["digest"], (manifest["mediaType"],)).data
        client.put_manifest("from-docker", manifest["mediaType"], data)
        planned = remote_prune(client, max_age=3600, keep=None, dry_run=True, now=time.time())
        assert [d["key"] for d in planned["deleted"]] == ["k"]
        assert sorted(client.list_tags()) == ["from-docker", "k"]
        done = remote_prune(client, max_age=3600, keep=None, dry_run=False, now=time.time())
        assert [d["key"] for d in done["deleted"]] == ["k"] and done["foreign_tags"] == 1
        assert client.list_tags() == ["from-docker"]
        assert client.get_manifest(manifest["digest"], (manifest["mediaType"],)).data == data


def test_prune_deletes_the_keys_image_manifests_on_the_registry(registry, source):
    with client_for(registry, "unit/prune-manifests") as client:
        pushed = push_entry(source, "k", client)
        result = remote_prune(client, max_age=None, keep=0, dry_run=False, now=time.time())
        assert result["manifests_deleted"] == pushed["manifests"]
        assert client.list_tags() == []
        for digest in [pushed["index_digest"], *pushed["manifests"]]:
            with pytest.raises(RemoteMiss):
                client.get_manifest(digest, (OCI_INDEX, OCI_MANIFEST))
