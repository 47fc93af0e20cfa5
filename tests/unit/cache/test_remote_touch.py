"""remote_push.touch_key: a key restored from the fleet tier records its use on the registry,
so remote-prune deletes keys least recently pushed OR pulled first (issue 12 Retention,
attack16 F7). Against the real registry (Debian's docker-registry on loopback)."""

from __future__ import annotations

import json
import time

import pytest
from cachetest_helpers import legacy_archive, random_layer
from harness.registry import LocalRegistry
from remote_fakes import FakeRegistry
from runnerkeep.cache import Store, import_archive, verify_store
from runnerkeep.cache.remote_layout import INDEX_TYPES
from runnerkeep.cache.remote_prune import remote_prune
from runnerkeep.cache.remote_pull import pull_entry
from runnerkeep.cache.remote_push import TOUCH_INTERVAL, USED_ANNOTATION, push_entry, touch_key
from runnerkeep.remote.credentials import read_credentials
from runnerkeep.remote.errors import RemoteError, RemoteMiss
from runnerkeep.remote.registry import RegistryClient
from runnerkeep.remote.remote_config import remote_settings

LAYER = random_layer(200_000, "layer")
LATER = TOUCH_INTERVAL + 60  # seconds: past the rate limit


@pytest.fixture(scope="module")
def registry():
    with LocalRegistry(tls=True, auth=True) as reg:
        yield reg


def client_for(reg: LocalRegistry, repository: str) -> RegistryClient:
    settings = remote_settings({"remote": reg.remote_config(repository, reg.push_user)})
    return RegistryClient(settings, read_credentials(settings.credentials_file))


def pushed(tmp_path, client, *keys: str) -> None:
    store = Store(str(tmp_path / "src"), key_file=None)
    for number, key in enumerate(keys):
        archive = tmp_path / f"{key}.tar"
        archive.write_bytes(legacy_archive([([f"app:{number}"], [LAYER])]))
        import_archive(store, key, str(archive))
        push_entry(store, key, client)
        if number + 1 < len(keys):
            time.sleep(1.1)  # push times have a resolution of a second: the next is newer


def index_of(client, key: str) -> dict:
    return json.loads(client.get_manifest(key, INDEX_TYPES).data)


def test_a_touched_key_survives_keep_1_over_an_untouched_newer_one(tmp_path, registry):
    client = client_for(registry, "touch/keep")
    pushed(tmp_path, client, "hot", "cold")
    before = client.get_manifest("hot", INDEX_TYPES).digest
    now = time.time() + LATER
    touched = touch_key(client, "hot", now)
    assert touched["result"] == "touched" and touched["previous_deleted"] is True
    assert touched["previous_digest"] == before != touched["index_digest"]
    with pytest.raises(RemoteMiss):
        client.get_manifest(before, INDEX_TYPES)  # the old index digest is gone
    assert index_of(client, "hot")["annotations"][USED_ANNOTATION] == touched["used"]
    result = remote_prune(client, max_age=None, keep=1, dry_run=False, now=now)
    assert [d["key"] for d in result["deleted"]] == ["cold"]
    assert sorted(client.list_tags()) == ["hot"]
    target = Store(str(tmp_path / "dst"), key_file=None)
    assert pull_entry(target, "hot", client)["result"] == "pulled"


def test_a_recent_use_keeps_a_key_max_age_would_delete(tmp_path, registry):
    client = client_for(registry, "touch/age")
    pushed(tmp_path, client, "old")
    now = time.time() + 10 * TOUCH_INTERVAL
    touch_key(client, "old", now)
    kept = remote_prune(client, max_age=TOUCH_INTERVAL, keep=None, dry_run=True, now=now)
    assert kept["deleted"] == []
    later = remote_prune(client, max_age=TOUCH_INTERVAL, keep=None, dry_run=True, now=now + LATER)
    assert [d["key"] for d in later["deleted"]] == ["old"]


def test_touch_rewrites_the_index_at_most_once_an_hour(tmp_path, registry):
    client = client_for(registry, "touch/rate")
    pushed(tmp_path, client, "k")
    first = client.get_manifest("k", INDEX_TYPES).digest
    fresh = touch_key(client, "k", time.time())  # just pushed: nothing to record
    assert fresh["result"] == "fresh" and fresh["index_digest"] == first
    assert client.get_manifest("k", INDEX_TYPES).digest == first
    now = time.time() + LATER
    assert touch_key(client, "k", now)["result"] == "touched"
    second = client.get_manifest("k", INDEX_TYPES).digest
    assert touch_key(client, "k", now + 60)["result"] == "fresh"
    assert client.get_manifest("k", INDEX_TYPES).digest == second


class _TouchMidPull:
    """The pull's client: right after the pull has read the key's index, another runner
    touches the key (its index is replaced and the old digest deleted)."""

    def __init__(self, client: RegistryClient, other: RegistryClient) -> None:
        self.client, self.other, self.touched = client, other, None

    def __getattr__(self, name: str):
        return getattr(self.client, name)

    def get_manifest(self, reference: str, accept: tuple[str, ...]):
        manifest = self.client.get_manifest(reference, accept)
        if reference == "k" and self.touched is None:
            self.touched = touch_key(self.other, "k", time.time() + LATER)
        return manifest


def test_a_pull_that_read_the_index_before_a_touch_still_succeeds(tmp_path, registry):
    client = client_for(registry, "touch/race")
    pushed(tmp_path, client, "k")
    before = client.get_manifest("k", INDEX_TYPES).digest
    racing = _TouchMidPull(client_for(registry, "touch/race"), client)
    target = Store(str(tmp_path / "dst"), key_file=None)
    result = pull_entry(target, "k", racing)
    assert racing.touched["result"] == "touched" and racing.touched["previous_deleted"]
    assert result["result"] == "pulled" and result["index_digest"] == before
    assert verify_store(target)["ok"] and target.list_keys() == ["k"]


def test_a_refused_delete_of_the_old_index_is_reported(tmp_path):
    fake = FakeRegistry()
    store = Store(str(tmp_path / "src"), key_file=None)
    archive = tmp_path / "k.tar"
    archive.write_bytes(legacy_archive([(["app:1"], [LAYER])]))
    import_archive(store, "k", str(archive))
    push_entry(store, "k", fake)

    def refuse(digest: str) -> None:
        raise RemoteError("delete manifest: 405 UNSUPPORTED", status=405, code="UNSUPPORTED")

    fake.delete_manifest = refuse
    result = touch_key(fake, "k", time.time() + LATER)
    assert result["result"] == "touched" and result["previous_deleted"] is False
    assert "UNSUPPORTED" in result["previous_error"]
    assert USED_ANNOTATION in index_of(fake, "k")["annotations"]


def test_a_foreign_index_under_the_tag_is_not_rewritten(tmp_path):
    fake = FakeRegistry()
    document = {"schemaVersion": 2, "mediaType": INDEX_TYPES[0], "manifests": []}
    digest = fake.put_json("k", INDEX_TYPES[0], document)
    result = touch_key(fake, "k", time.time() + LATER)
    assert result["result"] == "not_runnerkeep" and fake.tags["k"] == digest
