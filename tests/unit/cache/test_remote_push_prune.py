"""The fleet tier's push (entry -> OCI index) and remote-prune, against an in-memory registry
(remote_fakes): the layout pushed, only absent blobs travelling, a rotten local blob never
pushed, and prune touching runnerkeep's keys only."""

from __future__ import annotations

import json
import os
import time
import types

import pytest
from cachetest_helpers import legacy_archive, random_layer, sha
from remote_fakes import DOCKER_MANIFEST, OCI_INDEX, FakeRegistry, docker_image
from runnerkeep.cache import Store, import_archive, remote_push
from runnerkeep.cache.remote_layout import RemoteCacheMiss, parse_rfc3339
from runnerkeep.cache.remote_prune import remote_prune
from runnerkeep.cache.remote_push import PushRefused, push_entry
from runnerkeep.errors import ConfigError

BIG = random_layer(2 << 20, "big")
SMALL = random_layer(20_000, "small")


@pytest.fixture
def source(tmp_path):
    store = Store(str(tmp_path / "src"), key_file=None)
    archive = tmp_path / "in.tar"
    archive.write_bytes(legacy_archive([(["app:1", "app:latest"], [BIG, SMALL]), ([], [SMALL])]))
    import_archive(store, "k", str(archive))
    return store


def _index(registry: FakeRegistry, tag: str) -> dict:
    media, data = registry.manifests[registry.tags[tag]]
    assert media == OCI_INDEX
    return json.loads(data)


def test_the_pushed_layout(source):
    registry = FakeRegistry()
    before = time.time()
    result = push_entry(source, "k", registry, provenance={"host": "rk-1", "commit": "abc123"})
    entry, _ = source.read_entry("k")
    index = _index(registry, "k")
    assert result["index_digest"] == registry.tags["k"]
    assert index["mediaType"] == OCI_INDEX and index["schemaVersion"] == 2
    notes = index["annotations"]
    assert notes["io.runnerkeep.key"] == "k"
    assert notes["io.runnerkeep.provenance.host"] == "rk-1"
    assert notes["io.runnerkeep.provenance.commit"] == "abc123"
    assert "io.runnerkeep.provenance.job" not in notes
    assert before - 1 <= parse_rfc3339(notes["io.runnerkeep.pushed"]) <= time.time()
    assert len(index["manifests"]) == 2
    for described, image in zip(index["manifests"], entry["images"]):
        assert described["platform"] == {"architecture": "amd64", "os": "linux"}
        assert json.loads(described["annotations"]["io.runnerkeep.tags"]) == sorted(image["tags"])
        media, data = registry.manifests[described["digest"]]
        manifest = json.loads(data)
        assert media == described["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
        # The config is the stored one: the image ID does not change.
        assert manifest["config"]["digest"] == image["id"]
        assert manifest["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
        assert [(x["digest"], x["size"], x["mediaType"]) for x in manifest["layers"]] == [
            (x["diff_id"], x["size"], "application/vnd.oci.image.layer.v1.tar")
            for x in image["layers"]
        ]
    assert set(registry.blobs) == set(source.list_blobs())
    assert result["blobs_sent"] == 4 and result["blobs_present"] == 0
    assert result["manifests"] == [m["digest"] for m in index["manifests"]]


def test_a_second_push_sends_only_the_index_and_manifests(source):
    registry = FakeRegistry()
    first = push_entry(source, "k", registry)
    registry.uploads.clear()
    again = push_entry(source, "k", registry)
    assert registry.uploads == []
    assert again["blobs_sent"] == 0 and again["blobs_present"] == 4
    assert again["blob_bytes_sent"] == 0
    assert again["bytes_sent"] < 4096 < first["bytes_sent"]
    assert again["manifests"] == first["manifests"]  # same bytes, same digests


def test_two_keys_of_the_same_images_are_two_index_digests(source, tmp_path):
    registry = FakeRegistry()
    archive = tmp_path / "again.tar"
    archive.write_bytes(legacy_archive([(["app:1", "app:latest"], [BIG, SMALL]), ([], [SMALL])]))
    import_archive(source, "k2", str(archive))
    push_entry(source, "k", registry)
    push_entry(source, "k2", registry)
    assert registry.tags["k"] != registry.tags["k2"]


def test_a_rotten_local_blob_is_never_pushed_and_is_quarantined(source):
    path = source.blob_path(sha(BIG))
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(len(BIG) - 10)  # the damage sits in the last buffer
        handle.write(b"X")
    registry = FakeRegistry()
    with pytest.raises(RemoteCacheMiss) as caught:
        push_entry(source, "k", registry)
    assert caught.value.corrupt and "quarantined" in str(caught.value)
    assert sha(BIG) not in registry.blobs
    assert registry.tags == {}
    assert not source.has_blob(sha(BIG)) and sha(BIG) in source.quarantined_blobs()
    assert source.list_keys() == []  # the entry is quarantined with it


def test_no_local_entry_is_a_plain_miss(source):
    with pytest.raises(RemoteCacheMiss) as caught:
        push_entry(source, "nothing", FakeRegistry())
    assert not caught.value.corrupt


def test_an_untrusted_scope_never_pushes(source):
    registry = FakeRegistry()
    with pytest.raises(PushRefused):
        push_entry(source, "k", registry, scope="pr-7-1a2b3c4d")
    assert registry.blobs == {} and registry.tags == {}


# -- remote-prune ---------------------------------------------------------------------------
def _keys_pushed_at(source, registry: FakeRegistry, times: dict[str, float], monkeypatch) -> None:
    for key, when in times.items():
        if key != "k":
            archive = source.root + f"-{key}.tar"
            with open(archive, "wb") as handle:
                handle.write(legacy_archive([([f"{key}:1"], [SMALL])]))
            import_archive(source, key, archive)
        clock = types.SimpleNamespace(time=lambda when=when: when, monotonic=time.monotonic)
        monkeypatch.setattr(remote_push, "time", clock)
        push_entry(source, key, registry)


def test_prune_keeps_the_newest_and_deletes_oldest_first(source, monkeypatch):
    registry = FakeRegistry()
    now = 1_800_000_000.0
    _keys_pushed_at(
        source,
        registry,
        {"k": now - 500, "old": now - 900, "mid": now - 300, "new": now},
        monkeypatch,
    )
    result = remote_prune(registry, max_age=None, keep=2, dry_run=False, now=now)
    assert [d["key"] for d in result["deleted"]] == ["old", "k"]
    assert sorted(registry.tags) == ["mid", "new"]
    assert result["kept"] == 2


def test_prune_by_age_and_dry_run(source, monkeypatch):
    registry = FakeRegistry()
    now = 1_800_000_000.0
    _keys_pushed_at(source, registry, {"k": now - 500, "old": now - 9000, "new": now}, monkeypatch)
    planned = remote_prune(registry, max_age=3600, keep=None, dry_run=True, now=now)
    assert [d["key"] for d in planned["deleted"]] == ["old"] and planned["dry_run"]
    assert registry.deleted == [] and "old" in registry.tags  # a dry run deletes nothing
    done = remote_prune(registry, max_age=3600, keep=None, dry_run=False, now=now)
    assert [d["key"] for d in done["deleted"]] == ["old"]
    assert sorted(registry.tags) == ["k", "new"]


def test_prune_never_deletes_foreign_tags(source, monkeypatch):
    registry = FakeRegistry()
    now = 1_800_000_000.0
    _keys_pushed_at(source, registry, {"k": now - 900}, monkeypatch)
    digest, _doc, _config = docker_image(registry, [SMALL])
    registry.tags["docker-pushed"] = digest  # a docker push: no index, no annotation
    foreign_index = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": []}
    registry.tags["plain-index"] = registry.put_json("plain-index", OCI_INDEX, foreign_index)
    registry.tags["latest"] = registry.tags["k"]  # someone tagged our index: it must stay
    registry.tags["copy-of-k"] = registry.put_manifest("copy-of-k", OCI_INDEX, b"{}")
    result = remote_prune(registry, max_age=0, keep=0, dry_run=False, now=now)
    assert result["deleted"] == []
    assert [s["key"] for s in result["shared"]] == ["k"]
    assert result["foreign_tags"] == 4
    assert sorted(registry.tags) == ["copy-of-k", "docker-pushed", "k", "latest", "plain-index"]
    assert registry.manifests[digest][0] == DOCKER_MANIFEST


def test_prune_needs_a_rule():
    with pytest.raises(ConfigError):
        remote_prune(FakeRegistry(), max_age=None, keep=None, dry_run=True, now=0.0)
    with pytest.raises(ConfigError):
        remote_prune(FakeRegistry(), max_age=None, keep=-1, dry_run=True, now=0.0)


def test_prune_deletes_the_image_manifests_only_pruned_indexes_list(source, monkeypatch):
    registry = FakeRegistry()
    now = 1_800_000_000.0
    archive = source.root + "-same.tar"
    with open(archive, "wb") as handle:  # the same images under a second key
        handle.write(legacy_archive([(["app:1", "app:latest"], [BIG, SMALL]), ([], [SMALL])]))
    import_archive(source, "same", archive)
    _keys_pushed_at(source, registry, {"k": now - 900, "other": now - 800}, monkeypatch)
    clock = types.SimpleNamespace(time=lambda: now, monotonic=time.monotonic)
    monkeypatch.setattr(remote_push, "time", clock)
    push_entry(source, "same", registry)
    shared = set(_index(registry, "k")["manifests"][i]["digest"] for i in range(2))
    own = {m["digest"] for m in _index(registry, "other")["manifests"]}
    first = remote_prune(registry, max_age=None, keep=1, dry_run=False, now=now)
    assert [d["key"] for d in first["deleted"]] == ["k", "other"]
    assert first["manifests_deleted"] == sorted(own)  # "same" still lists k's manifests
    assert shared <= set(registry.manifests) and not own & set(registry.manifests)
    last = remote_prune(registry, max_age=None, keep=0, dry_run=True, now=now)
    assert last["manifests_deleted"] == sorted(shared)
    assert shared <= set(registry.manifests)  # a dry run deletes nothing
    remote_prune(registry, max_age=None, keep=0, dry_run=False, now=now)
    assert registry.manifests == {} and registry.tags == {}


def test_prune_keeps_image_manifests_a_foreign_index_lists(source, monkeypatch):
    registry = FakeRegistry()
    now = 1_800_000_000.0
    _keys_pushed_at(source, registry, {"k": now - 900}, monkeypatch)
    listed = _index(registry, "k")["manifests"]
    foreign = {"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": listed[:1]}
    registry.tags["multi"] = registry.put_json("multi", OCI_INDEX, foreign)
    result = remote_prune(registry, max_age=0, keep=None, dry_run=False, now=now)
    assert [d["key"] for d in result["deleted"]] == ["k"]
    assert result["manifests_deleted"] == [listed[1]["digest"]]
    assert listed[0]["digest"] in registry.manifests
