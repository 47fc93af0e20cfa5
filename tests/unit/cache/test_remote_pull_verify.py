"""The fleet tier's pull against a registry that misbehaves (an in-memory one: remote_fakes):
every byte verified before the local commit; anything off is a miss that commits nothing."""

from __future__ import annotations

import errno
import gzip
import json
import os

import pytest
from cachetest_helpers import config_for, legacy_archive, random_layer, sha
from remote_fakes import (
    DOCKER_LIST,
    DOCKER_MANIFEST,
    OCI_INDEX,
    FakeRegistry,
    docker_image,
    gzip_members,
)
from runnerkeep.cache import Store, import_archive, verify_store
from runnerkeep.cache.checks import load_checked_entry
from runnerkeep.cache.remote_layout import RemoteCacheMiss
from runnerkeep.cache.remote_pull import host_architecture, pull_entry
from runnerkeep.cache.remote_push import push_entry
from runnerkeep.errors import CacheMiss
from runnerkeep.remote.errors import RemoteUnavailable

BIG = random_layer(3 << 20, "big")  # several 1 MiB reads
SMALL = random_layer(20_000, "small")


@pytest.fixture
def source(tmp_path):
    """A local store with key 'k': two images, one sharing nothing."""
    store = Store(str(tmp_path / "src"), key_file=None)
    archive = tmp_path / "in.tar"
    archive.write_bytes(legacy_archive([(["app:1"], [BIG, SMALL]), (["tool:2"], [SMALL])]))
    import_archive(store, "k", str(archive))
    return store


@pytest.fixture
def target(tmp_path):
    return Store(str(tmp_path / "dst"), key_file=None)


def assert_nothing_committed(store: Store) -> None:
    assert store.list_keys() == []
    assert store.list_blobs() == {}
    left = os.listdir(store.tmp_dir) if os.path.isdir(store.tmp_dir) else []
    assert [n for n in left if not n.startswith(".")] == []


def test_round_trip_gives_the_same_images_and_a_verified_entry(source, target):
    registry = FakeRegistry()
    pushed = push_entry(source, "k", registry)
    pulled = pull_entry(target, "k", registry)
    src, _ = source.read_entry("k")
    dst, _ = load_checked_entry(target, "k")
    assert dst["images"] == src["images"]
    assert dst["provenance"] == {
        "pulled_from": registry.settings.url,
        "index_digest": pushed["index_digest"],
    }
    assert dst["scope"] == "trusted"
    assert pulled["index_digest"] == pushed["index_digest"]
    assert pulled["blobs_fetched"] == 4 and pulled["blobs_present"] == 0  # SMALL once
    assert pulled["bytes_fetched"] == sum(src_blob for src_blob in source.list_blobs().values())
    assert verify_store(target)["bad_blobs"] == []


def test_pull_fetches_only_what_the_store_lacks(source, target, tmp_path):
    registry = FakeRegistry()
    push_entry(source, "k", registry)
    archive = tmp_path / "small.tar"
    archive.write_bytes(legacy_archive([(["tool:2"], [SMALL])]))
    import_archive(target, "other", str(archive))
    registry.opened.clear()
    pulled = pull_entry(target, "k", registry)
    assert sha(SMALL) not in registry.opened
    assert sha(BIG) in registry.opened
    assert pulled["blobs_present"] == 1  # the small layer
    assert pulled["bytes_fetched"] < len(BIG) + 20_000


def test_a_signed_store_signs_the_pulled_entry(source, tmp_path):
    key_file = tmp_path / "cache.key"
    key_file.write_bytes(os.urandom(32))
    registry = FakeRegistry()
    push_entry(source, "k", registry)
    signed = Store(str(tmp_path / "signed"), key_file=str(key_file))
    pull_entry(signed, "k", registry)
    entry, _ = load_checked_entry(signed, "k")  # checks the MAC
    assert entry["mac"].startswith("hmac-sha256:")


def test_remote_miss_is_a_plain_miss_and_commits_nothing(target):
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "absent", FakeRegistry())
    assert isinstance(caught.value, CacheMiss) and not caught.value.corrupt
    assert "absent" in str(caught.value)
    assert target.list_keys() == []


def _pushed(source) -> FakeRegistry:
    registry = FakeRegistry()
    push_entry(source, "k", registry)
    return registry


def _damage(registry: FakeRegistry, digest: str) -> None:
    data = bytearray(registry.blobs[digest])
    data[len(data) // 2] ^= 0xFF
    registry.blobs[digest] = bytes(data)


def test_a_layer_corrupted_in_the_registry_commits_nothing(source, target):
    registry = _pushed(source)
    _damage(registry, sha(BIG))
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt
    assert sha(BIG) in str(caught.value) and "sha256" in str(caught.value)
    assert_nothing_committed(target)


def test_a_corrupted_config_commits_nothing(source, target):
    registry = _pushed(source)
    entry, _ = source.read_entry("k")
    _damage(registry, entry["images"][0]["config"]["digest"])
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "config" in str(caught.value)
    assert_nothing_committed(target)


def test_an_index_replaced_with_another_keys_is_refused(source, target, tmp_path):
    registry = FakeRegistry()
    archive = tmp_path / "other.tar"
    archive.write_bytes(legacy_archive([(["other:1"], [SMALL])]))
    import_archive(source, "other", str(archive))
    push_entry(source, "k", registry)
    push_entry(source, "other", registry)
    registry.tags["k"] = registry.tags["other"]  # what a confused or hostile pusher leaves
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "another key" in str(caught.value)
    assert_nothing_committed(target)


def test_a_blob_the_manifest_names_but_the_registry_lacks(source, target):
    registry = _pushed(source)
    del registry.blobs[sha(BIG)]
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "lacks a blob" in str(caught.value)
    assert_nothing_committed(target)


def test_a_served_length_other_than_the_descriptor(source, target):
    registry = _pushed(source)
    registry.served_sizes[sha(BIG)] = len(BIG) + 1
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "descriptor says" in str(caught.value)
    assert_nothing_committed(target)


def test_an_answer_that_breaks_off_mid_blob_commits_nothing(source, target):
    registry = _pushed(source)
    registry.break_after[sha(BIG)] = 1 << 20
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert not caught.value.corrupt and "broke off" in str(caught.value)
    assert_nothing_committed(target)


# -- what docker push and skopeo copy put -----------------------------------------------
def _tag(registry: FakeRegistry, tag: str, digest: str) -> None:
    registry.tags[tag] = digest


def test_a_docker_pushed_image_with_gzip_layers(target):
    registry = FakeRegistry()
    digest, _doc, config = docker_image(registry, [BIG, SMALL])
    _tag(registry, "k", digest)
    pulled = pull_entry(target, "k", registry)
    entry, _ = load_checked_entry(target, "k")
    image = entry["images"][0]
    assert image["id"] == sha(config)
    assert [layer["digest"] for layer in image["layers"]] == [sha(BIG), sha(SMALL)]
    assert [layer["size"] for layer in image["layers"]] == [len(BIG), len(SMALL)]
    assert image["tags"] == ["127.0.0.1:5999/fleet/cache:k"]
    assert pulled["images"][0]["tags"] == image["tags"]
    assert verify_store(target)["bad_blobs"] == []
    with open(target.blob_path(sha(BIG)), "rb") as handle:
        assert handle.read() == BIG  # stored uncompressed


def test_multi_member_gzip_layers_are_taken(target):
    registry = FakeRegistry()
    digest, _doc, _config = docker_image(registry, [BIG], compressed=[gzip_members(BIG, members=5)])
    _tag(registry, "k", digest)
    pull_entry(target, "k", registry)
    with open(target.blob_path(sha(BIG)), "rb") as handle:
        assert handle.read() == BIG


def test_a_highly_compressed_layer_is_gunzipped_in_bounded_chunks(target):
    zeros = bytes(40 << 20)  # 40 MiB of zeros: ~40 KiB gzipped
    registry = FakeRegistry()
    digest, _doc, _config = docker_image(registry, [zeros])
    _tag(registry, "k", digest)
    pulled = pull_entry(target, "k", registry)
    assert target.blob_size(sha(zeros)) == len(zeros)
    assert pulled["bytes_fetched"] < 1 << 20


def test_a_gzip_layer_whose_content_is_not_the_diff_id(target):
    registry = FakeRegistry()
    other = random_layer(10_000, "other")
    config = config_for([SMALL])  # says SMALL, the blob gunzips to another layer
    digest, _doc, _config = docker_image(
        registry, [SMALL], compressed=[gzip.compress(other)], config=config
    )
    _tag(registry, "k", digest)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "diff_id" in str(caught.value)
    assert_nothing_committed(target)


def test_a_truncated_gzip_layer(target):
    registry = FakeRegistry()
    digest, _doc, _config = docker_image(registry, [SMALL], compressed=[gzip.compress(SMALL)[:-20]])
    _tag(registry, "k", digest)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "truncated" in str(caught.value)
    assert_nothing_committed(target)


def test_a_gzip_layer_with_garbage_after_it(target):
    registry = FakeRegistry()
    digest, _doc, _config = docker_image(
        registry, [SMALL], compressed=[gzip.compress(SMALL) + b"garbage!" * 4]
    )
    _tag(registry, "k", digest)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "gunzip" in str(caught.value)
    assert_nothing_committed(target)


def test_zstd_layers_are_refused_with_a_clear_miss(target):
    registry = FakeRegistry()
    digest, _doc, _config = docker_image(
        registry, [SMALL], layer_type="application/vnd.oci.image.layer.v1.tar+zstd"
    )
    _tag(registry, "k", digest)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert "zstd" in str(caught.value) and "gzip" in str(caught.value)
    assert_nothing_committed(target)


def test_an_uncompressed_layer_that_is_not_its_diff_id(target):
    registry = FakeRegistry()
    config = config_for([SMALL])
    digest, _doc, _config = docker_image(
        registry,
        [SMALL],
        compressed=[BIG],
        layer_type="application/vnd.docker.image.rootfs.diff.tar",
        config=config,
    )
    _tag(registry, "k", digest)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "diff_id" in str(caught.value)
    assert_nothing_committed(target)


def test_a_config_whose_diff_ids_do_not_match_the_layer_count(target):
    registry = FakeRegistry()
    digest, _doc, _config = docker_image(registry, [SMALL], config=config_for([SMALL, BIG]))
    _tag(registry, "k", digest)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "diff_ids" in str(caught.value)
    assert_nothing_committed(target)


def _platform_list(registry: FakeRegistry, arches: list[str]) -> dict[str, str]:
    """A manifest list as a multi-platform `docker push` / skopeo --all leaves it."""
    by_arch = {}
    entries = []
    for arch in arches:
        layer = random_layer(5_000, arch)
        digest, doc, _config = docker_image(registry, [layer])
        by_arch[arch] = digest
        entries.append(
            {
                "mediaType": DOCKER_MANIFEST,
                "digest": digest,
                "size": len(json.dumps(doc).encode()),
                "platform": {"architecture": arch, "os": "linux"},
            }
        )
    top = {"schemaVersion": 2, "mediaType": DOCKER_LIST, "manifests": entries}
    registry.tags["k"] = registry.put_json("k", DOCKER_LIST, top)
    return by_arch


def test_a_manifest_list_gives_this_hosts_architecture(target):
    registry = FakeRegistry()
    here = host_architecture()
    by_arch = _platform_list(registry, ["s390x", here, "riscv64"] if here != "s390x" else [here])
    registry.opened.clear()
    pull_entry(target, "k", registry)
    entry, _ = target.read_entry("k")
    assert len(entry["images"]) == 1
    _media, data = registry.manifests[by_arch[here]]
    assert entry["images"][0]["id"] == json.loads(data)["config"]["digest"]


def test_a_manifest_list_without_this_hosts_architecture_is_a_miss(target):
    registry = FakeRegistry()
    _platform_list(registry, ["mips64le"])
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert not caught.value.corrupt and host_architecture() in str(caught.value)
    assert_nothing_committed(target)


def test_bounds_on_what_a_registry_serves(target):
    registry = FakeRegistry()
    many = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [
            {"mediaType": DOCKER_MANIFEST, "digest": sha(b"%d" % i), "size": 10} for i in range(65)
        ],
        "annotations": {"io.runnerkeep.key": "k"},
    }
    registry.tags["k"] = registry.put_json("k", OCI_INDEX, many)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "more than 64" in str(caught.value)
    layers = [{"mediaType": DOCKER_MANIFEST, "digest": sha(b"x"), "size": 1}] * 513
    config = {
        "mediaType": "application/vnd.docker.container.image.v1+json",
        "digest": sha(b"c"),
        "size": 1,
    }
    big = {"schemaVersion": 2, "mediaType": DOCKER_MANIFEST, "config": config, "layers": layers}
    registry.tags["k"] = registry.put_json("k2", DOCKER_MANIFEST, big)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "512" in str(caught.value)
    huge_config = dict(config, size=64 << 20)
    registry.tags["k"] = registry.put_json(
        "k3", DOCKER_MANIFEST, dict(big, config=huge_config, layers=[])
    )
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "allowed" in str(caught.value)
    assert_nothing_committed(target)


def test_a_bad_tag_annotation_is_refused(source, target):
    registry = _pushed(source)
    media, data = registry.manifests[registry.tags["k"]]
    bad = data.replace(b'\\"app:1\\"', b'\\"app:1 --rm\\"')
    assert bad != data
    registry.tags["k"] = registry.put_manifest("k", media, bad)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "bad tag" in str(caught.value)
    assert_nothing_committed(target)


# -- the repair --------------------------------------------------------------------------
def test_a_quarantined_blob_is_fetched_again_and_reported_repaired(source, target):
    registry = _pushed(source)
    pull_entry(target, "k", registry)
    path = target.blob_path(sha(BIG))
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.seek(100)
        handle.write(b"rot")
    report = verify_store(target, repair=True)  # quarantines the blob and the entry
    assert report["bad_blobs"] and not target.has_blob(sha(BIG))
    registry.opened.clear()
    pulled = pull_entry(target, "k", registry)
    assert pulled["repaired"] == [sha(BIG)]
    assert registry.opened == [sha(BIG)]  # only the lost blob travelled
    assert verify_store(target)["bad_blobs"] == []
    load_checked_entry(target, "k")


def test_a_stored_blob_of_the_wrong_size_is_replaced(source, target):
    registry = _pushed(source)
    pull_entry(target, "k", registry)
    path = target.blob_path(sha(BIG))
    os.chmod(path, 0o644)
    with open(path, "ab") as handle:
        handle.write(b"grown")
    pulled = pull_entry(target, "k", registry)
    assert pulled["repaired"] == [sha(BIG)]
    assert target.blob_size(sha(BIG)) == len(BIG)
    assert verify_store(target)["bad_blobs"] == []


def test_a_damaged_stored_config_is_replaced(source, target):
    registry = _pushed(source)
    pull_entry(target, "k", registry)
    entry, _ = target.read_entry("k")
    config = entry["images"][0]["config"]["digest"]
    path = target.blob_path(config)
    os.chmod(path, 0o644)
    with open(path, "r+b") as handle:
        handle.write(b"[")
    pulled = pull_entry(target, "k", registry)
    assert config in pulled["repaired"]
    load_checked_entry(target, "k")


def test_an_uncompressed_blob_under_a_gzip_media_type(target):
    """`docker push` of an image pulled with uncompressed layers mounts them as they are,
    under the gzip media type; docker's pull takes them (it sniffs the magic), so do we."""
    registry = FakeRegistry()
    digest, _doc, _config = docker_image(registry, [BIG], compressed=[BIG])
    _tag(registry, "k", digest)
    pull_entry(target, "k", registry)
    assert target.blob_size(sha(BIG)) == len(BIG)


def test_an_uncompressed_blob_under_a_gzip_type_must_be_its_diff_id(target):
    registry = FakeRegistry()
    digest, _doc, _config = docker_image(
        registry, [SMALL], compressed=[BIG], config=config_for([SMALL])
    )
    _tag(registry, "k", digest)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert caught.value.corrupt and "diff_id" in str(caught.value)
    assert_nothing_committed(target)


def test_no_space_while_pulling_is_a_miss_that_commits_nothing(source, target, monkeypatch):
    registry = _pushed(source)
    from runnerkeep.cache import remote_pull

    def full(fd, view):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(remote_pull, "write_all", full)
    with pytest.raises(RemoteCacheMiss) as caught:
        pull_entry(target, "k", registry)
    assert "no space left" in str(caught.value) and not caught.value.corrupt
    assert_nothing_committed(target)


def test_a_registry_that_goes_away_mid_blob_commits_nothing(source, target, monkeypatch):
    """The client's own error (a dropped connection, a restart) propagates for the front door
    to turn into a miss; the temp blobs go with it."""
    registry = _pushed(source)
    real_open = registry.open_blob

    def dropping(digest):
        reader = real_open(digest)
        if digest == sha(BIG):

            def gone(buffer):
                raise RemoteUnavailable("GET blob: the connection dropped", None, None)

            reader.readinto = gone
        return reader

    monkeypatch.setattr(registry, "open_blob", dropping)
    with pytest.raises(RemoteUnavailable):
        pull_entry(target, "k", registry)
    assert_nothing_committed(target)
