"""RegistryClient against a real CNCF Distribution 2.8 (Debian's docker-registry) on loopback:
blobs, monolithic and chunked uploads, manifests by tag and digest, tag pagination, deletes,
the error codes Distribution really sends, keep-alive across a restart, and the counters."""

from __future__ import annotations

import hashlib
import io
import json
import os

import pytest
from harness.registry import LocalRegistry
from remote_helpers import REPO, blob, client_for
from runnerkeep.errors import ConfigError
from runnerkeep.remote import (
    RemoteDataError,
    RemoteError,
    RemoteMiss,
    RemoteReadOnly,
)

INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


@pytest.fixture(scope="module")
def client(plain_registry):
    with client_for(plain_registry) as c:
        yield c


def index_doc(key: str) -> bytes:
    doc = {"schemaVersion": 2, "mediaType": INDEX, "manifests": [], "annotations": {"k": key}}
    return json.dumps(doc, sort_keys=True).encode()


def manifest_with(client, data: bytes) -> tuple[bytes, str]:
    """An OCI image manifest whose config is ``data`` (uploaded first)."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    client.upload_blob(digest, io.BytesIO(data), len(data))
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": digest,
            "size": len(data),
        },
        "layers": [],
    }
    return json.dumps(doc).encode(), digest


# --- blobs ------------------------------------------------------------------------------------


def test_check_answers(client):
    client.check()


def test_blob_round_trip_monolithic(client):
    data, digest = blob(3 * 1024 * 1024 + 17)
    assert client.blob_size(digest) is None
    seen = []
    client.upload_blob(digest, io.BytesIO(data), len(data), progress=seen.append)
    assert seen[-1] == len(data) and seen == sorted(seen)
    assert client.blob_size(digest) == len(data)
    with client.open_blob(digest) as stream:
        assert stream.size == len(data)
        assert stream.read() == data


def test_blob_readinto_streams_in_pieces(client):
    data, digest = blob(2 * 1024 * 1024 + 5)
    client.upload_blob(digest, io.BytesIO(data), len(data))
    buffer = bytearray(300_000)
    got = bytearray()
    with client.open_blob(digest) as stream:
        while True:
            count = stream.readinto(buffer)
            if not count:
                break
            assert count <= len(buffer)
            got += buffer[:count]
        assert stream.received == len(data)
    assert bytes(got) == data


@pytest.mark.parametrize("chunk", [1, 30_000, 99_999, 100_000, 1_000_000])
def test_chunked_upload(client, chunk):
    data, digest = blob(100_000 if chunk > 1 else 7)
    seen = []
    client.upload_blob(digest, io.BytesIO(data), len(data), progress=seen.append, chunk_size=chunk)
    assert seen[-1] == len(data)
    with client.open_blob(digest) as stream:
        assert stream.read() == data


def test_an_empty_blob(client):
    data, digest = b"", "sha256:" + hashlib.sha256(b"").hexdigest()
    client.upload_blob(digest, io.BytesIO(data), 0)
    assert client.blob_size(digest) == 0
    with client.open_blob(digest) as stream:
        assert stream.size == 0 and stream.read() == b""


def test_an_absent_blob_is_a_miss(client):
    _data, digest = blob(10)
    with pytest.raises(RemoteMiss, match="BLOB_UNKNOWN") as caught:
        client.open_blob(digest)
    assert caught.value.status == 404 and caught.value.code == "BLOB_UNKNOWN"
    assert caught.value.exit_code == 3


def test_bytes_that_do_not_match_the_digest_are_refused_by_the_registry(client):
    data, _digest = blob(1000)
    _other, wrong = blob(1000)
    with pytest.raises(RemoteError) as caught:
        client.upload_blob(wrong, io.BytesIO(data), len(data))
    assert caught.value.code == "DIGEST_INVALID" and caught.value.status == 400
    assert client.blob_size(wrong) is None


def test_a_reader_that_ends_early_is_an_error_and_the_client_goes_on(client):
    data, digest = blob(5000)
    with pytest.raises(RemoteError, match="ended after 3000 of 5000 bytes"):
        client.upload_blob(digest, io.BytesIO(data[:3000]), len(data))
    client.upload_blob(digest, io.BytesIO(data), len(data))
    assert client.blob_size(digest) == 5000


@pytest.mark.parametrize(
    "bad", ["sha256:abc", "sha512:" + "a" * 128, "../../x", 5, "SHA256:" + "a" * 64]
)
def test_bad_digests_are_refused_before_any_request(client, bad):
    before = client.bytes_sent, client.bytes_received
    with pytest.raises(RemoteDataError, match="not a sha256 digest"):
        client.blob_size(bad)
    with pytest.raises(RemoteDataError):
        client.open_blob(bad)
    assert (client.bytes_sent, client.bytes_received) == before


def test_a_blob_not_read_to_its_end_does_not_spoil_the_next_call(client):
    data, digest = blob(4 * 1024 * 1024)
    client.upload_blob(digest, io.BytesIO(data), len(data))
    with client.open_blob(digest) as stream:
        assert stream.read(10) == data[:10]
    assert client.blob_size(digest) == len(data)
    with client.open_blob(digest) as stream:
        assert stream.read() == data


def test_calls_during_an_open_stream_use_another_connection(client):
    data, digest = blob(2 * 1024 * 1024)
    client.upload_blob(digest, io.BytesIO(data), len(data))
    with client.open_blob(digest) as stream:
        first = stream.read(1000)
        assert client.blob_size(digest) == len(data)
        assert first + stream.read() == data


def test_the_connection_is_kept_alive(client, monkeypatch):
    from runnerkeep.remote import registry

    opened = []
    real = registry.open_connection
    monkeypatch.setattr(
        registry, "open_connection", lambda *a, **k: opened.append(1) or real(*a, **k)
    )
    client.check()
    _data, digest = blob(10)
    for _ in range(5):
        assert client.blob_size(digest) is None
    client.check()
    assert len(opened) <= 1


# --- manifests and tags -----------------------------------------------------------------------


def test_manifest_by_tag_and_by_digest(client):
    body, _config = manifest_with(client, b'{"architecture":"amd64","os":"linux"}')
    digest = client.put_manifest("key-1", OCI_MANIFEST, body)
    assert digest == "sha256:" + hashlib.sha256(body).hexdigest()
    by_tag = client.get_manifest("key-1", (OCI_MANIFEST,))
    by_digest = client.get_manifest(digest, (OCI_MANIFEST,))
    assert by_tag == by_digest
    assert by_tag.media_type == OCI_MANIFEST and by_tag.data == body and by_tag.digest == digest


def test_an_index_by_tag(client):
    data = index_doc("key-index")
    digest = client.put_manifest("key-index", INDEX, data)
    got = client.get_manifest("key-index", (INDEX, OCI_MANIFEST))
    assert (got.media_type, got.data, got.digest) == (INDEX, data, digest)


def test_put_by_digest(client):
    data = index_doc("by-digest")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert client.put_manifest(digest, INDEX, data) == digest
    assert client.get_manifest(digest, (INDEX,)).data == data
    with pytest.raises(ValueError, match="hashes to"):
        client.put_manifest(digest, INDEX, data + b" ")


def test_an_absent_manifest_is_a_miss(client):
    with pytest.raises(RemoteMiss) as caught:
        client.get_manifest("no-such-key", (INDEX,))
    assert caught.value.code == "MANIFEST_UNKNOWN"


def test_an_unknown_repository_is_a_miss_and_has_no_tags(plain_registry):
    with client_for(plain_registry, repo="never/pushed") as other:
        with pytest.raises(RemoteMiss) as caught:
            other.get_manifest("k", (INDEX,))
        assert caught.value.code in ("NAME_UNKNOWN", "MANIFEST_UNKNOWN")
        assert other.list_tags() == []


def test_a_manifest_whose_blobs_are_absent_is_refused(client):
    _data, absent = blob(50)
    doc = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": absent,
            "size": 50,
        },
        "layers": [],
    }
    with pytest.raises(RemoteError) as caught:
        client.put_manifest("dangling", OCI_MANIFEST, json.dumps(doc).encode())
    assert caught.value.code == "MANIFEST_BLOB_UNKNOWN"


@pytest.mark.parametrize("tag", ["-lead", ".lead", "a" * 129, "has space", "a/b", ""])
def test_bad_tags_are_config_errors(client, tag):
    with pytest.raises(ConfigError, match="not a registry tag"):
        client.get_manifest(tag, (INDEX,))


def test_list_tags_follows_pagination(plain_registry):
    with client_for(plain_registry, repo="paged/tags") as paged:
        names = [f"k{i:02d}" for i in range(7)]
        for name in names:
            paged.put_manifest(name, INDEX, index_doc(name))
        assert sorted(paged.list_tags()) == names
        assert sorted(paged.list_tags(page_size=2)) == names
        assert sorted(paged.list_tags(page_size=1)) == names


def test_delete_removes_the_manifest_and_its_tag(client):
    data = index_doc("to-delete")
    digest = client.put_manifest("to-delete", INDEX, data)
    assert "to-delete" in client.list_tags()
    client.delete_manifest(digest)
    assert "to-delete" not in client.list_tags()
    with pytest.raises(RemoteMiss):
        client.get_manifest(digest, (INDEX,))
    with pytest.raises(RemoteMiss):
        client.delete_manifest(digest)


def test_a_manifest_changed_inside_the_registry_is_caught_by_digest(plain_registry):
    """A registry serves what its storage holds: rot in a stored manifest is bad data when
    the manifest is fetched by digest, whatever the registry says."""
    with client_for(plain_registry, repo="rot/manifest") as rot:
        data = index_doc("rot")
        digest = rot.put_manifest("rot", INDEX, data)
        hexd = digest.split(":")[1]
        path = os.path.join(
            plain_registry.storage_dir, "docker/registry/v2/blobs/sha256", hexd[:2], hexd, "data"
        )
        with open(path, "rb") as handle:
            stored = handle.read()
        with open(path, "wb") as handle:
            handle.write(stored.replace(b'"rot"', b'"tor"'))  # still JSON, other bytes
        with pytest.raises(RemoteDataError, match="the bytes served hash to"):
            rot.get_manifest(digest, (INDEX,))
        # By tag the registry still names the digest it stored: the header check catches it.
        with pytest.raises(RemoteDataError, match=f"the registry names digest {digest}"):
            rot.get_manifest("rot", (INDEX,))


def test_counters_count_bytes(plain_registry):
    with client_for(plain_registry) as fresh:
        data, digest = blob(100_000)
        fresh.upload_blob(digest, io.BytesIO(data), len(data))
        assert fresh.bytes_sent >= len(data)
        with fresh.open_blob(digest) as stream:
            stream.read()
        assert fresh.bytes_received >= len(data)


# --- registry configurations ---------------------------------------------------------------


def test_absolute_upload_locations_work_too(auth_registry):
    with client_for(auth_registry, auth_registry.push_user) as c:
        data, digest = blob(70_000)
        c.upload_blob(digest, io.BytesIO(data), len(data))
        data2, digest2 = blob(70_000)
        c.upload_blob(digest2, io.BytesIO(data2), len(data2), chunk_size=25_000)
        assert c.blob_size(digest) == c.blob_size(digest2) == 70_000


def test_deletes_disabled_is_a_clear_error():
    with LocalRegistry(delete=False) as reg, client_for(reg) as c:
        digest = c.put_manifest("k", INDEX, index_doc("k"))
        with pytest.raises(RemoteError, match=r"storage.delete.enabled: true") as caught:
            c.delete_manifest(digest)
        assert caught.value.status == 405 and caught.value.code == "UNSUPPORTED"
        assert not isinstance(caught.value, RemoteMiss)


def test_read_only_mode_refuses_writes_and_serves_reads(plain_registry, client):
    data, digest = blob(1234)
    client.upload_blob(digest, io.BytesIO(data), len(data))
    tag_digest = client.put_manifest("ro-key", INDEX, index_doc("ro-key"))
    ro = LocalRegistry(read_only=True, storage=plain_registry.storage_dir)
    with ro, client_for(ro) as c:
        new_data, new_digest = blob(10)
        with pytest.raises(RemoteReadOnly, match="read-only mode") as caught:
            c.upload_blob(new_digest, io.BytesIO(new_data), 10)
        assert caught.value.status == 405
        with pytest.raises(RemoteReadOnly):
            c.put_manifest("other", INDEX, index_doc("other"))
        with pytest.raises(RemoteReadOnly):
            c.delete_manifest(tag_digest)
        with c.open_blob(digest) as stream:
            assert stream.read() == data
        assert c.get_manifest("ro-key", (INDEX,)).digest == tag_digest


def test_a_restarted_registry_is_reached_again_on_a_new_connection():
    with LocalRegistry() as reg, client_for(reg) as c:
        data, digest = blob(10_000)
        c.upload_blob(digest, io.BytesIO(data), len(data))
        reg.restart()
        assert c.blob_size(digest) == 10_000
        data2, digest2 = blob(10_000)
        c.upload_blob(digest2, io.BytesIO(data2), len(data2))
        with c.open_blob(digest2) as stream:
            assert stream.read() == data2


def test_repr_and_messages_name_the_registry(client, plain_registry):
    assert repr(client) == f"RegistryClient('{plain_registry.remote_url(REPO)}', user=None)"
    with pytest.raises(RemoteMiss) as caught:
        client.get_manifest("absent-key", (INDEX,))
    assert str(caught.value).startswith(
        f"{plain_registry.remote_url(REPO)}: GET manifest absent-key: "
    )
