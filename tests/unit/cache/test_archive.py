"""The streaming parser and its checks, on archives built in Python (no Docker)."""

from __future__ import annotations

import io
import json

import pytest
from cachetest_helpers import legacy_archive, oci_archive, random_layer, sha, write_tar
from runnerkeep.cache.archive_layout import analyze, familiar_ref
from runnerkeep.cache.store import Store
from runnerkeep.cache.tar_reader import SMALL_MEMBER, ArchiveError, read_archive_stream


@pytest.fixture
def store(tmp_path):
    s = Store(str(tmp_path / "store"))
    s.ensure()
    return s


def parse(store, data: bytes, candidates=None):
    with store.temp_area() as area:
        stats = read_archive_stream(io.BytesIO(data), store, area, candidates)
        return analyze(stats), stats


BIG = random_layer(SMALL_MEMBER + 300_000)  # goes through the temp-file path
SMALL1 = random_layer(10_000, "a")
SMALL2 = random_layer(20_000, "b")


def test_legacy_archive_parsed_and_checked(store):
    data = legacy_archive([(["app:1"], [SMALL1, BIG, SMALL2])])
    parsed, stats = parse(store, data)
    assert parsed.format == "docker-archive"
    (image,) = parsed.images
    assert image["tags"] == ["app:1"]
    assert [layer["digest"] for layer in image["layers"]] == [sha(SMALL1), sha(BIG), sha(SMALL2)]
    assert stats.bytes_read == len(data)
    assert stats.bytes_written == len(BIG)  # only the big member was written to temp
    assert parsed.blobs[sha(BIG)].temp_path


def test_shared_layer_emitted_as_symlink_is_resolved(store):
    data = legacy_archive([(["a:1"], [SMALL1, SMALL2]), (["b:1"], [SMALL1, BIG])])
    parsed, _ = parse(store, data)
    assert {tuple(i["tags"]) for i in parsed.images} == {("a:1",), ("b:1",)}
    assert len(parsed.blobs) == 2 + 3  # two configs, three distinct layers


def test_manifest_is_read_even_when_last(store):
    data = legacy_archive([(["a:1"], [SMALL1])])
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        names = tar.getnames()
    assert names[-2] == "manifest.json"
    parse(store, data)


def test_oci_archive_parsed(store):
    data = oci_archive([("app:2", [SMALL1, BIG])])
    parsed, _ = parse(store, data)
    assert parsed.format == "oci"
    (image,) = parsed.images
    assert image["tags"] == ["app:2"]
    assert len(image["manifests"]) == 1
    assert image["layers"][1]["digest"] == sha(BIG)


@pytest.mark.parametrize("cut", [0, 100, 512, 1024, 5000, 30_000, -2000, -1100, -600])
def test_truncated_stream_is_an_error(store, cut):
    data = legacy_archive([(["a:1"], [SMALL1, SMALL2])])
    with pytest.raises(ArchiveError):
        parse(store, data[:cut])


def test_truncated_at_every_block_boundary_before_the_end_marker_fails(store):
    import tarfile

    data = legacy_archive([(["a:1"], [SMALL1])])
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + (last.size + 511) // 512 * 512  # where the end marker starts
    for cut in range(0, end + 1, 512):
        with pytest.raises(ArchiveError):
            parse(store, data[:cut])


def test_layer_not_matching_diff_id_is_refused(store):
    data = legacy_archive([(["a:1"], [SMALL1])])
    bad = bytearray(data)
    pos = data.index(SMALL1[2048:2100])
    bad[pos] ^= 1
    with pytest.raises(ArchiveError, match="the config says"):
        parse(store, bytes(bad))


def test_oci_blob_not_matching_its_name_is_refused(store):
    data = oci_archive([("app:2", [SMALL1])])
    bad = bytearray(data)
    pos = data.index(SMALL1[3000:3050])
    bad[pos] ^= 0x10
    with pytest.raises(ArchiveError, match="does not match its name"):
        parse(store, bytes(bad))


def test_missing_member_is_refused(store):
    manifest = [{"Config": "c.json", "RepoTags": ["a:1"], "Layers": ["x/layer.tar"]}]
    config = json.dumps({"rootfs": {"diff_ids": [sha(SMALL1)]}}).encode()
    data = write_tar([("c.json", config), ("manifest.json", json.dumps(manifest).encode())])
    with pytest.raises(ArchiveError, match="missing member"):
        parse(store, data)


def test_no_manifest_is_refused(store):
    with pytest.raises(ArchiveError, match=r"neither manifest\.json nor index\.json"):
        parse(store, write_tar([("x", b"hello")]))


def test_corrupt_header_checksum_is_refused(store):
    data = bytearray(legacy_archive([(["a:1"], [SMALL1])]))
    data[10] ^= 0x01  # inside the first header's name
    with pytest.raises(ArchiveError, match="checksum"):
        parse(store, bytes(data))


def test_long_names_via_pax(store):
    long = "d" * 150 + "/layer.tar"
    config = json.dumps({"rootfs": {"diff_ids": [sha(SMALL1)]}}).encode()
    manifest = [{"Config": "c.json", "RepoTags": ["a:1"], "Layers": [long]}]
    data = write_tar(
        [(long, SMALL1), ("c.json", config), ("manifest.json", json.dumps(manifest).encode())]
    )
    parsed, _ = parse(store, data)
    assert parsed.images[0]["layers"][0]["digest"] == sha(SMALL1)


def test_stored_blob_is_hashed_not_written(store, tmp_path):
    data = oci_archive([("app:2", [BIG])])
    with store.temp_area() as area:
        path = area + "/x"
        with open(path, "wb") as handle:
            handle.write(BIG)
        store.commit_blob_file(path, sha(BIG))
    parsed, stats = parse(store, data)
    assert stats.bytes_written == 0
    assert parsed.blobs[sha(BIG)].reused


def test_wrong_size_guess_marks_lost_for_a_second_read(store):
    other = random_layer(1000)  # a stored blob that merely claims BIG's size
    data = legacy_archive([(["a:1"], [BIG])])
    candidates = {len(BIG): {sha(other)}}
    parsed, stats = parse(store, data, candidates)
    assert stats.bytes_written == 0
    assert parsed.lost_needed


def test_familiar_ref():
    assert familiar_ref("foo") == "foo:latest"
    assert familiar_ref("docker.io/library/foo:1") == "foo:1"
    assert familiar_ref("localhost:5000/x/y") == "localhost:5000/x/y:latest"
    assert familiar_ref("ghcr.io/o/r:t") == "ghcr.io/o/r:t"
