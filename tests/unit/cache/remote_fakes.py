"""An in-memory registry with the RegistryClient's interface (docs: notes' issue 12 contract),
for the fleet tier's unit tests that need a registry to misbehave in ways a real one will not
(a digest that lies, a stream that breaks off, a body of the wrong size)."""

from __future__ import annotations

import gzip
import hashlib
import json
from dataclasses import dataclass
from typing import Any, Callable

from cachetest_helpers import config_for, legacy_archive, sha
from runnerkeep.remote.errors import RemoteDataError, RemoteMiss

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
DOCKER_GZIP = "application/vnd.docker.image.rootfs.diff.tar.gzip"


@dataclass(frozen=True)
class FakeSettings:
    url: str = "http://127.0.0.1:5999/fleet/cache"
    scheme: str = "http"
    host: str = "127.0.0.1"
    port: int = 5999
    repository: str = "fleet/cache"
    timeout: float = 5.0


@dataclass
class FakeManifest:
    media_type: str
    data: bytes
    digest: str


class FakeReader:
    """A blob being served: ``fail_after`` bytes, then a broken connection."""

    def __init__(self, data: bytes, size: int | None, fail_after: int | None) -> None:
        self.data = data
        self.size = size
        self.pos = 0
        self.fail_after = fail_after
        self.closed = False

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if self.fail_after is not None and self.pos >= self.fail_after:
            raise ConnectionResetError(104, "Connection reset by peer")
        chunk = self.data[self.pos : self.pos + len(view)]
        view[: len(chunk)] = chunk
        self.pos += len(chunk)
        return len(chunk)

    def read(self, size: int = -1) -> bytes:
        buffer = bytearray(len(self.data) if size < 0 else size)
        return bytes(buffer[: self.readinto(buffer)])

    def close(self) -> None:
        self.closed = True

    def __enter__(self) -> FakeReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class FakeRegistry:
    """Blobs, manifests (by digest, with the media type they were put with) and tags."""

    def __init__(self) -> None:
        self.settings = FakeSettings()
        self.blobs: dict[str, bytes] = {}
        self.manifests: dict[str, tuple[str, bytes]] = {}
        self.tags: dict[str, str] = {}
        self.bytes_sent = 0
        self.bytes_received = 0
        self.served_sizes: dict[str, int] = {}  # digest -> a Content-Length that lies
        self.break_after: dict[str, int] = {}  # digest -> bytes served before the reset
        self.opened: list[str] = []
        self.uploads: list[str] = []
        self.deleted: list[str] = []
        self.on_upload: Callable[[str], None] | None = None

    # -- the client's interface -------------------------------------------------------
    def check(self) -> None:
        return None

    def blob_size(self, digest: str) -> int | None:
        data = self.blobs.get(digest)
        return None if data is None else len(data)

    def open_blob(self, digest: str) -> FakeReader:
        if digest not in self.blobs:
            raise RemoteMiss(f"blob {digest} unknown (404 BLOB_UNKNOWN)", 404, "BLOB_UNKNOWN")
        self.opened.append(digest)
        data = self.blobs[digest]
        self.bytes_received += len(data)
        size = self.served_sizes.get(digest, len(data))
        return FakeReader(data, size, self.break_after.get(digest))

    def upload_blob(self, digest: str, reader: Any, size: int, progress: Any = None) -> None:
        buffer = bytearray(1 << 20)
        got = bytearray()
        while len(got) < size:
            count = reader.readinto(memoryview(buffer)[: size - len(got)])
            if not count:
                break
            got += buffer[:count]
        self.bytes_sent += len(got)
        if sha(bytes(got)) != digest:
            raise RemoteDataError("DIGEST_INVALID", 400, "DIGEST_INVALID")
        self.blobs[digest] = bytes(got)
        self.uploads.append(digest)

    def get_manifest(self, reference: str, accept: tuple[str, ...]) -> FakeManifest:
        digest = self.tags.get(reference, reference)
        if digest not in self.manifests:
            raise RemoteMiss(f"manifest {reference} unknown", 404, "MANIFEST_UNKNOWN")
        media, data = self.manifests[digest]
        if reference.startswith("sha256:") and sha(data) != reference:
            raise RemoteDataError(f"manifest {reference}: digest mismatch")
        self.bytes_received += len(data)
        return FakeManifest(media, data, sha(data))

    def put_manifest(self, reference: str, media_type: str, data: bytes) -> str:
        self.bytes_sent += len(data)
        digest = sha(data)
        if reference.startswith("sha256:") and reference != digest:
            raise RemoteDataError("DIGEST_INVALID")
        self.manifests[digest] = (media_type, data)
        if not reference.startswith("sha256:"):
            self.tags[reference] = digest
        return digest

    def list_tags(self) -> list[str]:
        return sorted(self.tags)

    def delete_manifest(self, digest: str) -> None:
        if digest not in self.manifests:
            raise RemoteMiss(f"manifest {digest} unknown", 404, "MANIFEST_UNKNOWN")
        del self.manifests[digest]
        self.tags = {t: d for t, d in self.tags.items() if d != digest}
        self.deleted.append(digest)

    # -- planting what docker or skopeo would push -------------------------------------
    def put_blob(self, data: bytes) -> str:
        self.blobs[sha(data)] = data
        return sha(data)

    def put_json(self, reference: str, media_type: str, document: dict[str, Any]) -> str:
        return self.put_manifest(reference, media_type, json.dumps(document).encode())


def gzip_members(data: bytes, members: int = 1) -> bytes:
    """``data`` gzipped, split into ``members`` gzip members (Go's reader takes them all)."""
    step = max(1, -(-len(data) // members))
    return b"".join(gzip.compress(data[i : i + step], mtime=0) for i in range(0, len(data), step))


def docker_image(
    registry: FakeRegistry,
    layers: list[bytes],
    *,
    compressed: list[bytes] | None = None,
    layer_type: str = DOCKER_GZIP,
    config: bytes | None = None,
) -> tuple[str, dict[str, Any], bytes]:
    """Put what `docker push` puts (gzip layers, schema2 manifest) without a tag: (manifest
    digest, its document, its config)."""
    config = config if config is not None else config_for(layers, "docker")
    compressed = compressed if compressed is not None else [gzip_members(x) for x in layers]
    registry.put_blob(config)
    for blob in compressed:
        registry.put_blob(blob)
    document = {
        "schemaVersion": 2,
        "mediaType": DOCKER_MANIFEST,
        "config": {"mediaType": DOCKER_CONFIG, "size": len(config), "digest": sha(config)},
        "layers": [
            {"mediaType": layer_type, "size": len(blob), "digest": sha(blob)} for blob in compressed
        ],
    }
    digest = registry.put_json(sha(json.dumps(document).encode()), DOCKER_MANIFEST, document)
    return digest, document, config


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def registry_with_key(work: Any, images: list[tuple[list[str], list[bytes]]], key: str = "k"):
    """A FakeRegistry holding ``key``, pushed by runnerkeep from an entry of ``images`` (tags,
    layers) imported into a store under the directory ``work`` (a pathlib.Path)."""
    from runnerkeep.cache import Store, import_archive
    from runnerkeep.cache.remote_push import push_entry

    source = Store(str(work / "src"), key_file=None)
    archive = work / "app.tar"
    archive.write_bytes(legacy_archive(images))
    import_archive(source, key, str(archive))
    fake = FakeRegistry()
    push_entry(source, key, fake)
    return fake
