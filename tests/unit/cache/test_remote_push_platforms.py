"""One key for a fleet of several architectures: a push keeps the images of the other
platforms the key's index already lists (another architecture's runner pushed them) and
replaces its own platform's; a pull takes its own platform's. Against remote_fakes' in-memory
registry; the platform of the first push is made arm64 by patching what push reads from the
config (this machine's engine builds amd64 only)."""

from __future__ import annotations

import json

import pytest
from cachetest_helpers import legacy_archive, random_layer
from remote_fakes import FakeRegistry
from runnerkeep.cache import Store, import_archive, remote_push
from runnerkeep.cache.remote_layout import KEY_ANNOTATION, OCI_INDEX, OCI_MANIFEST, canonical
from runnerkeep.cache.remote_pull import pull_entry
from runnerkeep.cache.remote_push import push_entry

LAYER = random_layer(50_000, "platforms")
ARM = {"architecture": "arm64", "os": "linux", "variant": "v8"}


@pytest.fixture
def source(tmp_path):
    store = Store(str(tmp_path / "src"), key_file=None)
    archive = tmp_path / "in.tar"
    archive.write_bytes(legacy_archive([(["app:1"], [LAYER])]))
    import_archive(store, "k", str(archive))
    return store


def index(registry: FakeRegistry, tag: str = "k") -> dict:
    return json.loads(registry.manifests[registry.tags[tag]][1])


def platforms(registry: FakeRegistry) -> list[str]:
    return sorted(m["platform"]["architecture"] for m in index(registry)["manifests"])


def push_as_arm(source: Store, registry: FakeRegistry, monkeypatch) -> str:
    with monkeypatch.context() as patch:
        patch.setattr(remote_push, "_platform", lambda config: dict(ARM))
        push_entry(source, "k", registry)
    [arm] = index(registry)["manifests"]
    return arm["digest"]


def test_a_push_keeps_the_other_platforms_images_of_the_key(source, monkeypatch):
    registry = FakeRegistry()
    arm = push_as_arm(source, registry, monkeypatch)
    result = push_entry(source, "k", registry)
    assert platforms(registry) == ["amd64", "arm64"]
    assert result["platforms_kept"] == [arm]
    assert index(registry)["annotations"][KEY_ANNOTATION] == "k"


def test_a_second_push_of_the_same_platform_replaces_its_images_only(source, monkeypatch):
    registry = FakeRegistry()
    push_as_arm(source, registry, monkeypatch)
    push_entry(source, "k", registry)
    again = push_entry(source, "k", registry)
    assert platforms(registry) == ["amd64", "arm64"]  # not amd64 twice
    assert len(again["platforms_kept"]) == 1


def test_a_pull_takes_this_hosts_platform_from_a_mixed_index(source, tmp_path, monkeypatch):
    registry = FakeRegistry()
    push_as_arm(source, registry, monkeypatch)
    push_entry(source, "k", registry)
    target = Store(str(tmp_path / "dst"), key_file=None)
    pulled = pull_entry(target, "k", registry)
    assert pulled["result"] == "pulled"
    entry, _ = target.read_entry("k")
    assert [image["tags"] for image in entry["images"]] == [["app:1"]]


def test_only_runnerkeeps_index_of_this_key_is_merged(source):
    registry = FakeRegistry()
    foreign = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": OCI_MANIFEST, "digest": "sha256:" + "a" * 64, "size": 10, "platform": ARM}
        ],
        "annotations": {KEY_ANNOTATION: "another-key"},
    }
    registry.put_manifest("k", OCI_INDEX, canonical(foreign))
    result = push_entry(source, "k", registry)
    assert result["platforms_kept"] == [] and platforms(registry) == ["amd64"]


def test_malformed_descriptors_of_other_platforms_are_dropped(source, monkeypatch):
    registry = FakeRegistry()
    push_as_arm(source, registry, monkeypatch)
    document = index(registry)
    good = document["manifests"][0]
    document["manifests"] += [
        "not an object",
        {**good, "digest": "sha256:short", "platform": {"architecture": "s390x", "os": "linux"}},
        {**good, "size": -1, "platform": {"architecture": "ppc64le", "os": "linux"}},
        {**good, "mediaType": OCI_INDEX, "platform": {"architecture": "riscv64", "os": "linux"}},
        {**good, "platform": {"architecture": 7, "os": "linux"}},
    ]
    registry.put_manifest("k", OCI_INDEX, canonical(document))
    result = push_entry(source, "k", registry)
    assert result["platforms_kept"] == [good["digest"]]
    assert platforms(registry) == ["amd64", "arm64"]
