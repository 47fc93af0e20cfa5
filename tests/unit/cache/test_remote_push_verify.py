"""push_entry(verify_remote=True): blobs the registry says it holds are read back and hashed;
a bad one is deleted and uploaded again (``healed``), or reported in ``not_healed`` when the
registry keeps serving bad bytes (attack16 F8: a re-push used to say "already there")."""

from __future__ import annotations

import glob
import os

import pytest
from cachetest_helpers import legacy_archive, random_layer, sha
from harness.registry import LocalRegistry
from remote_fakes import FakeRegistry
from runnerkeep.cache import Store, import_archive
from runnerkeep.cache.remote_layout import RemoteCacheMiss
from runnerkeep.cache.remote_pull import pull_entry
from runnerkeep.cache.remote_push import push_entry
from runnerkeep.remote.credentials import read_credentials
from runnerkeep.remote.errors import RemoteMiss
from runnerkeep.remote.registry import RegistryClient
from runnerkeep.remote.remote_config import remote_settings

BIG = random_layer(3 << 20, "big")
SMALL = random_layer(20_000, "small")


class DeletingRegistry(FakeRegistry):
    """A registry whose blob DELETE removes its copy (what a re-upload then replaces)."""

    def __init__(self) -> None:
        super().__init__()
        self.deleted: list[str] = []

    def delete_blob(self, digest: str) -> None:
        if self.blobs.pop(digest, None) is None:
            raise RemoteMiss(f"blob {digest} unknown", 404, "BLOB_UNKNOWN")
        self.deleted.append(digest)


@pytest.fixture
def source(tmp_path):
    store = Store(str(tmp_path / "src"), key_file=None)
    archive = tmp_path / "in.tar"
    archive.write_bytes(legacy_archive([(["app:1"], [BIG, SMALL])]))
    import_archive(store, "k", str(archive))
    return store


def rot(data: bytes) -> bytes:
    damaged = bytearray(data)
    damaged[1000:1006] = b"ROTTEN"
    return bytes(damaged)


def test_a_blob_rotten_in_the_registry_is_healed_by_a_verifying_push(source, tmp_path):
    registry = DeletingRegistry()
    push_entry(source, "k", registry)
    registry.blobs[sha(BIG)] = rot(BIG)
    registry.uploads.clear()
    result = push_entry(source, "k", registry, verify_remote=True)
    assert result["healed"] == [sha(BIG)] and result["not_healed"] == []
    assert registry.deleted == [sha(BIG)] and registry.uploads == [sha(BIG)]
    assert result["blobs_sent"] == 1 and result["blobs_verified"] == 2  # SMALL and the config
    assert registry.blobs[sha(BIG)] == BIG
    target = Store(str(tmp_path / "dst"), key_file=None)
    assert pull_entry(target, "k", registry)["result"] == "pulled"


def test_a_plain_push_still_trusts_the_registry(source):
    registry = DeletingRegistry()
    push_entry(source, "k", registry)
    registry.blobs[sha(BIG)] = rot(BIG)
    registry.opened.clear()
    result = push_entry(source, "k", registry)
    assert result["blobs_present"] == 3 and result["blobs_sent"] == 0
    assert result["healed"] == [] and result["blobs_verified"] == 0 and registry.opened == []


def test_a_verifying_push_of_good_blobs_sends_none(source):
    registry = DeletingRegistry()
    push_entry(source, "k", registry)
    registry.uploads.clear()
    result = push_entry(source, "k", registry, verify_remote=True)
    assert result["blobs_verified"] == 3 and result["blobs_present"] == 3
    assert registry.uploads == [] and registry.deleted == [] and result["healed"] == []


def test_a_registry_announcing_more_bytes_than_the_blob_has_is_bad(source):
    registry = DeletingRegistry()
    push_entry(source, "k", registry)
    registry.blobs[sha(SMALL)] = SMALL + b"x" * (2 << 20)
    registry.served_sizes[sha(SMALL)] = len(SMALL)  # HEAD says the right size
    registry.blob_size = lambda digest: len(SMALL) if digest == sha(SMALL) else len(BIG)
    result = push_entry(source, "k", registry, verify_remote=True)
    assert sha(SMALL) in result["healed"]


@pytest.fixture(scope="module")
def real():
    with LocalRegistry(tls=True, auth=True) as reg:
        yield reg


def test_the_real_registry_keeps_its_rotten_copy_and_says_so(source, tmp_path, real):
    settings = remote_settings({"remote": real.remote_config("verify/rot", real.push_user)})
    client = RegistryClient(settings, read_credentials(settings.credentials_file))
    push_entry(source, "k", client)
    digest = sha(BIG)[7:]
    pattern = f"{real.storage_dir}/**/blobs/sha256/{digest[:2]}/{digest}/data"
    [path] = glob.glob(pattern, recursive=True)
    with open(path, "r+b") as stored:
        stored.seek(1000)
        stored.write(b"ROTTEN")
    plain = push_entry(source, "k", client)
    assert plain["blobs_sent"] == 0  # HEAD only: the rot goes unseen
    result = push_entry(source, "k", client, verify_remote=True)
    # Distribution keeps a blob's data file on upload: only the cache host can replace it.
    [unhealed] = result["not_healed"]
    assert unhealed["digest"] == sha(BIG) and "cache host" in unhealed["reason"]
    assert result["healed"] == [] and result["blobs_verified"] == 2
    os.unlink(path)  # what the reason tells the operator to do
    again = push_entry(source, "k", client, verify_remote=True)
    assert again["blobs_sent"] == 1  # a vanished blob is absent to HEAD: uploaded as new
    assert again["not_healed"] == []
    target = Store(str(tmp_path / "dst"), key_file=None)
    assert pull_entry(target, "k", client)["result"] == "pulled"


def test_a_rotten_local_blob_is_still_never_pushed(source):
    registry = DeletingRegistry()
    path = source.blob_path(sha(SMALL))
    os.chmod(path, 0o644)
    with open(path, "r+b") as stored:
        stored.write(b"X")
    with pytest.raises(RemoteCacheMiss) as caught:
        push_entry(source, "k", registry, verify_remote=True)
    assert caught.value.corrupt and sha(SMALL) not in registry.blobs
