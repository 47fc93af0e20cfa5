"""``cache push``: a local entry into the fleet tier as an OCI image index tagged with its key.

The entry is checked as a restore checks it, and each blob is hashed in the same read that
sends it: a blob that rotted on disk is never pushed (the last bytes are held back, so the
registry never completes the upload) and it is quarantined. Blobs the registry already holds
(HEAD) do not travel; the image manifests (by digest) and then the index (the tag, the commit
point on the registry's side) always do.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import time
from typing import Any, Callable

from ..errors import CacheMiss, LockHeldError, RunnerkeepError
from ..remote.errors import RemoteDataError, RemoteError, RemoteMiss
from .checks import load_checked_entry, quarantine_for
from .remote_layout import (
    GZIP_LAYER_TYPES,
    INDEX_TYPES,
    KEY_ANNOTATION,
    MANIFEST_TYPES,
    MAX_IMAGES,
    OCI_CONFIG,
    OCI_INDEX,
    OCI_LAYER,
    OCI_LAYER_GZIP,
    OCI_MANIFEST,
    PUSHED_ANNOTATION,
    TAGS_ANNOTATION,
    BadRemoteData,
    RemoteCacheMiss,
    canonical,
    descriptor,
    index_key,
    index_pushed,
    parse_json_object,
    parse_rfc3339,
    provenance_annotations,
    rfc3339,
)
from .store import (
    MAX_CONFIG_BYTES,
    TRUSTED,
    CorruptBlob,
    CorruptEntry,
    Store,
    as_store,
    entry_name,
    read_regular,
    validate_key,
)

# When a runner that may push last restored the key from the fleet tier (RFC 3339 UTC), so
# remote-prune deletes keys least recently pushed OR pulled first (issue 12, Retention).
USED_ANNOTATION = "io.runnerkeep.used"
# A key's index is rewritten at most once per this many seconds: a fleet restoring one key all
# day costs one PUT (and one old index to delete) an hour, not one per job.
TOUCH_INTERVAL = 3600.0
READ_BACK_BUFFER = 1 << 20  # bytes per read when verifying a blob the registry holds


class PushRefused(RunnerkeepError):
    """The entry cannot go to the fleet tier (an untrusted scope, a layer type it cannot hold)."""


def push_entry(
    store: str | Store,
    key: str,
    client: Any,
    *,
    scope: str = TRUSTED,
    provenance: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    verify_remote: bool = False,
) -> dict[str, Any]:
    """Push the local entry of ``key`` to the registry ``client`` talks to. Returns {key,
    index_digest, blobs_sent, bytes_sent, blobs_present, manifests, remote, duration,
    blobs_verified, healed, not_healed}. ``verify_remote``: a blob the registry says it holds
    is read back and hashed; a bad one is deleted and uploaded again (``healed``), or listed in
    ``not_healed`` with the reason when the registry still serves bad bytes after that.
    RemoteCacheMiss when there is no usable local entry (``corrupt``: it or a blob was bad, and
    is quarantined now); PushRefused for an untrusted scope; the client's RemoteError
    subclasses when the registry fails or refuses."""
    validate_key(key)
    if scope != TRUSTED:
        # Only the trusted scope's entries are the fleet's: a fork's pull request never pushes.
        raise PushRefused(f"an entry of the untrusted scope {scope!r} is never pushed")
    start = time.monotonic()
    store = as_store(store)
    name = entry_name(key, scope)
    if not store.exists():
        raise RemoteCacheMiss(f"no cache at {store.root}: nothing to push for key '{key}'")
    try:
        with store.store_lock():
            entry = _checked_entry(store, name)
            pusher = _Pusher(store, client, progress, verify_remote)
            try:
                manifests = pusher.push_images(entry)
            except CorruptBlob as exc:
                quarantine_for(store, name, exc)
                raise RemoteCacheMiss(
                    f"cache entry '{name}' not pushed, quarantined: {exc}", corrupt=True
                ) from None
            kept = other_platforms(client, key, manifests)
            index = build_index(key, manifests + kept, _provenance(entry, provenance), time.time())
            index_digest = client.put_manifest(key, OCI_INDEX, index)
    except LockHeldError as exc:
        raise RemoteCacheMiss(f"cannot push key '{key}': {exc}") from None
    return {
        "key": key,
        "result": "pushed",
        "index_digest": index_digest,
        "blobs_sent": pusher.blobs_sent,
        "blobs_present": pusher.blobs_present,
        # The bodies sent: blobs, image manifests and the index.
        "bytes_sent": pusher.blob_bytes_sent + pusher.manifest_bytes_sent + len(index),
        "blob_bytes_sent": pusher.blob_bytes_sent,
        "manifests": [m["digest"] for m in manifests],
        # Other platforms' images the key's index already listed (a runner of another
        # architecture pushed them): kept beside this push's.
        "platforms_kept": [m["digest"] for m in kept],
        "remote": str(getattr(getattr(client, "settings", None), "url", "") or ""),
        "duration": round(time.monotonic() - start, 3),
        "blobs_verified": pusher.blobs_verified,
        "healed": pusher.healed,
        "not_healed": pusher.not_healed,
    }


def other_platforms(client: Any, key: str, manifests: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The image descriptors of the key's current index whose platform none of ``manifests``
    has: one key then serves a fleet of several architectures (a pull takes its own
    platform's images). Only from runnerkeep's index of this very key, only well-formed image
    descriptors with a platform, at most MAX_IMAGES in all. Two runners of different
    platforms pushing the same key at the same instant: the later index wins, and the other
    platform's next save puts its images back."""
    try:
        current = client.get_manifest(key, INDEX_TYPES)
    except RemoteMiss:
        return []  # a new key
    try:
        document = parse_json_object(current.data, f"the index of key '{key}'")
    except BadRemoteData:
        return []
    listed = document.get("manifests")
    if index_key(document) != key or not isinstance(listed, list):
        return []  # not runnerkeep's index of this key: replaced, as before
    ours = {_platform_of(m.get("platform")) for m in manifests}
    kept: list[dict[str, Any]] = []
    for item in listed:
        where = _platform_of(item.get("platform")) if isinstance(item, dict) else None
        if where is None or where in ours or item.get("mediaType") not in MANIFEST_TYPES:
            continue
        try:
            descriptor(item, f"an image of key '{key}'")
        except BadRemoteData:
            continue
        if len(manifests) + len(kept) >= MAX_IMAGES:
            break
        kept.append(item)
    return kept


def _platform_of(value: Any) -> tuple[str, str, str] | None:
    """(os, architecture, variant) of a descriptor's platform; None when it names none."""
    if not isinstance(value, dict):
        return None
    os_name, arch, variant = value.get("os"), value.get("architecture"), value.get("variant", "")
    if not all(isinstance(part, str) for part in (os_name, arch, variant)) or not (
        os_name and arch
    ):
        return None
    return (os_name, arch, variant)


def _checked_entry(store: Store, name: str) -> dict[str, Any]:
    """The entry as restore checks it (a bad one quarantined: it would not restore either)."""
    try:
        entry, _digest = load_checked_entry(store, name)
    except CacheMiss as exc:
        raise RemoteCacheMiss(f"nothing to push: {exc}") from None
    except (CorruptEntry, CorruptBlob) as exc:
        quarantine_for(store, name, exc)
        raise RemoteCacheMiss(
            f"cache entry '{name}' not pushed, quarantined: {exc}", corrupt=True
        ) from None
    return entry


def _provenance(entry: dict[str, Any], given: dict[str, Any] | None) -> dict[str, Any]:
    """Where the entry came from: what the caller says, else what the entry recorded; the host
    at least."""
    found = dict(
        given or (entry.get("provenance") if isinstance(entry.get("provenance"), dict) else {})
    )
    found.setdefault("host", socket.gethostname())
    return found


def build_index(
    key: str, manifests: list[dict[str, Any]], provenance: dict[str, Any], now: float
) -> bytes:
    """The index the key's tag names: one descriptor per image (its platform and original
    tags), and whose key it is, when it was pushed and where it was built."""
    annotations = {KEY_ANNOTATION: key, PUSHED_ANNOTATION: rfc3339(now)}
    annotations.update(provenance_annotations(provenance))
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": manifests,
        "annotations": annotations,
    }
    return canonical(index)


class _Pusher:
    """The blobs and image manifests of one push."""

    def __init__(self, store: Store, client: Any, progress: Any, verify_remote: bool) -> None:
        self.store = store
        self.client = client
        self.progress = progress
        self.verify_remote = verify_remote
        self.blobs_verified = 0  # read back from the registry and found good
        self.healed: list[str] = []
        self.not_healed: list[dict[str, str]] = []
        self.done: set[str] = set()
        self.blobs_sent = 0
        self.blobs_present = 0
        self.blob_bytes_sent = 0
        self.manifest_bytes_sent = 0

    def push_images(self, entry: dict[str, Any]) -> list[dict[str, Any]]:
        """Upload what the registry lacks and put each image's manifest (by digest); the
        index's descriptors."""
        descriptors = []
        for image in entry["images"]:
            config = self._config_bytes(image["config"]["digest"])
            layers = [_layer_descriptor(layer) for layer in image["layers"]]
            self._blob(image["config"]["digest"], image["config"]["size"])
            for layer in image["layers"]:
                self._blob(layer["digest"], layer["size"])
            manifest = canonical(
                {
                    "schemaVersion": 2,
                    "mediaType": OCI_MANIFEST,
                    "config": {
                        "mediaType": OCI_CONFIG,
                        "digest": image["config"]["digest"],
                        "size": image["config"]["size"],
                    },
                    "layers": layers,
                }
            )
            digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
            self.client.put_manifest(digest, OCI_MANIFEST, manifest)
            self.manifest_bytes_sent += len(manifest)
            described = {"mediaType": OCI_MANIFEST, "digest": digest, "size": len(manifest)}
            platform = _platform(config)
            if platform:
                described["platform"] = platform
            described["annotations"] = {TAGS_ANNOTATION: json.dumps(sorted(image["tags"]))}
            descriptors.append(described)
        return descriptors

    def _config_bytes(self, digest: str) -> bytes:
        try:
            data = read_regular(self.store.blob_path(digest), MAX_CONFIG_BYTES)
        except OSError as exc:
            raise CorruptBlob(digest, f"config blob {digest} cannot be read: {exc}") from None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise CorruptBlob(digest, f"config blob {digest} fails its sha256 check")
        return data

    def _blob(self, digest: str, size: int) -> None:
        if digest in self.done:
            return
        self.done.add(digest)
        if self.client.blob_size(digest) == size:
            if not self.verify_remote:
                self.blobs_present += 1
                return
            if remote_blob_is_good(self.client, digest, size):
                self.blobs_present += 1
                self.blobs_verified += 1
                return
            self._heal(digest, size)
            return
        self._upload(digest, size)

    def _heal(self, digest: str, size: int) -> None:
        """The registry serves bad bytes for ``digest``: delete its copy, upload ours, read it
        back. Distribution keeps a blob's existing data file on upload (its storage is content
        addressed), so there only the cache host can replace it: reported, with what to do."""
        with contextlib.suppress(RemoteMiss):  # gone already: the upload is the heal
            self.client.delete_blob(digest)
        self._upload(digest, size)
        if remote_blob_is_good(self.client, digest, size):
            self.healed.append(digest)
            return
        self.not_healed.append(
            {
                "digest": digest,
                "reason": "the registry still serves bad bytes after the blob was deleted and "
                "uploaded again (it keeps its stored copy): delete the blob's data file in the "
                "registry's storage on the cache host, then push again",
            }
        )

    def _upload(self, digest: str, size: int) -> None:
        reader = VerifiedBlobReader(self.store, digest, size, self._sent)
        try:
            self.client.upload_blob(digest, reader, size)
        except BaseException:
            if reader.corrupt is not None:
                raise reader.corrupt from None  # however the client wrapped it
            raise
        finally:
            reader.close()
        if reader.corrupt is not None:
            raise reader.corrupt
        self.blobs_sent += 1

    def _sent(self, count: int) -> None:
        self.blob_bytes_sent += count
        if self.progress:
            self.progress(self.blob_bytes_sent)


def remote_blob_is_good(client: Any, digest: str, size: int) -> bool:
    """Whether the registry's blob ``digest`` reads back as ``size`` bytes hashing to it (at
    most ``size`` + one buffer is read, whatever the registry announces). A registry that
    cannot be reached raises as for any other call: that says nothing of the blob."""
    hasher = hashlib.sha256()
    received = 0
    buffer = bytearray(READ_BACK_BUFFER)
    view = memoryview(buffer)
    try:
        with client.open_blob(digest) as reader:
            while received <= size:
                count = reader.readinto(view)
                if not count:
                    break
                hasher.update(view[:count])
                received += count
    except (RemoteMiss, RemoteDataError):
        return False
    return received == size and "sha256:" + hasher.hexdigest() == digest


def _layer_descriptor(layer: dict[str, Any]) -> dict[str, Any]:
    """An uncompressed layer (stored under its diff_id) goes as an OCI tar layer; a gzip layer
    an OCI archive carried, as an OCI gzip layer. Anything else cannot be pulled back."""
    if layer["digest"] == layer["diff_id"]:
        media = OCI_LAYER
    elif layer.get("media_type") in GZIP_LAYER_TYPES:
        media = OCI_LAYER_GZIP
    else:
        raise PushRefused(
            f"layer {layer['digest']} is {layer.get('media_type')!r}: the fleet tier takes "
            "uncompressed and gzip layers only"
        )
    return {"mediaType": media, "digest": layer["digest"], "size": layer["size"]}


def _platform(config: bytes) -> dict[str, str] | None:
    try:
        parsed = json.loads(config)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(parsed, dict):
        return None
    os_name, arch = parsed.get("os"), parsed.get("architecture")
    if not isinstance(os_name, str) or not isinstance(arch, str) or not os_name or not arch:
        return None
    platform = {"architecture": arch, "os": os_name}
    if isinstance(parsed.get("variant"), str) and parsed["variant"]:
        platform["variant"] = parsed["variant"]
    return platform


class VerifiedBlobReader:
    """A stored blob read for an upload, hashed in the same read. The read that would hand out
    the last bytes checks the digest first: a blob that fails it raises CorruptBlob (kept in
    ``corrupt``) instead, so the upload never completes with bad bytes."""

    def __init__(
        self, store: Store, digest: str, size: int, on_read: Callable[[int], None] | None = None
    ) -> None:
        self.digest = digest
        self.size = size
        self.remaining = size
        self.sha = hashlib.sha256()
        self.on_read = on_read
        self.corrupt: CorruptBlob | None = None
        self.fd: int | None = None
        try:
            self.fd = os.open(store.blob_path(digest), os.O_RDONLY | os.O_NOFOLLOW)
        except OSError as exc:
            self._fail(f"blob {digest} cannot be read: {exc.strerror}")
        if os.fstat(self.fd).st_size != size:
            self.close()
            self._fail(f"blob {digest} has another size than the entry's {size}")

    def _fail(self, message: str) -> None:
        self.corrupt = CorruptBlob(self.digest, message)
        raise self.corrupt

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        if not self.remaining or not len(view):
            return 0
        try:
            count = os.readv(self.fd, [view[: min(len(view), self.remaining)]])
        except OSError as exc:
            self._fail(f"blob {self.digest} cannot be read: {exc.strerror}")
        self._took(view[:count])
        return count

    def read(self, size: int | None = -1) -> bytes:
        """Up to ``size`` bytes (all that is left when negative or None); b"" at the end. One
        os.read: no buffer to zero, no copy (the client sends what it gets)."""
        want = self.remaining if size is None or size < 0 else min(size, self.remaining)
        if not want:
            return b""
        try:
            data = os.read(self.fd, want)
        except OSError as exc:
            self._fail(f"blob {self.digest} cannot be read: {exc.strerror}")
        self._took(memoryview(data))
        return data

    def _took(self, view: memoryview) -> None:
        """Hash what was read; at the blob's end, the digest is checked before the caller
        gets the last bytes."""
        if not len(view):
            self._fail(f"blob {self.digest} was truncated while being read")
        self.sha.update(view)
        self.remaining -= len(view)
        if self.on_read:
            self.on_read(len(view))
        if not self.remaining and "sha256:" + self.sha.hexdigest() != self.digest:
            self._fail(f"blob {self.digest} fails its sha256 check (damaged on disk)")

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> VerifiedBlobReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def touch_key(client: Any, key: str, now: float) -> dict[str, Any]:
    """Record on the registry that ``key`` was just used: its index is PUT again under the tag
    with ``io.runnerkeep.used`` = ``now``, when the last push or use is older than
    TOUCH_INTERVAL; then the previous index digest is deleted (the key annotation makes it the
    key's alone; a registry that refuses the delete, or has it gone already, is reported, not
    an error). The image manifests are not touched: a pull that read the previous index fetches
    them by digest and still succeeds. Returns {key, result: touched|fresh|not_runnerkeep,
    index_digest, previous_digest, previous_deleted, used}; the client's RemoteError otherwise."""
    validate_key(key)
    manifest = client.get_manifest(key, INDEX_TYPES)
    try:
        document = parse_json_object(manifest.data, f"the index of key '{key}'")
    except BadRemoteData:
        document = None
    pushed = index_pushed(document) if document is not None else None
    if document is None or index_key(document) != key or pushed is None:
        # Not runnerkeep's index for this key: not ours to rewrite.
        return _touched(key, "not_runnerkeep", manifest.digest)
    annotations = document["annotations"]
    used = parse_rfc3339(annotations.get(USED_ANNOTATION))
    last = max(pushed, used if used is not None else pushed)
    if now - last < TOUCH_INTERVAL:
        return _touched(key, "fresh", manifest.digest, used=rfc3339(last))
    annotations[USED_ANNOTATION] = rfc3339(now)
    media_type = manifest.media_type if manifest.media_type in INDEX_TYPES else OCI_INDEX
    digest = client.put_manifest(key, media_type, canonical(document))
    result = _touched(key, "touched", digest, used=annotations[USED_ANNOTATION])
    result["previous_digest"] = manifest.digest
    if digest != manifest.digest:
        try:
            client.delete_manifest(manifest.digest)
            result["previous_deleted"] = True
        except RemoteError as exc:
            if exc.status not in (404, 405):
                raise
            # 404: deleted already; 405: deletes disabled (the registry's GC keeps it).
            result["previous_deleted"] = False
            result["previous_error"] = str(exc)
    return result


def _touched(key: str, outcome: str, digest: str, used: str | None = None) -> dict[str, Any]:
    return {
        "key": key,
        "result": outcome,
        "index_digest": digest,
        "previous_digest": None,
        "previous_deleted": False,
        "used": used,
    }
