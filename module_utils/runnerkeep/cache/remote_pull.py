"""``cache pull``: a key from the fleet tier into the local store, every byte verified before
the local commit.

What the registry serves is checked all the way down: the manifests by digest (the client
checks each body it fetched by digest), the config blob's sha256, each layer's digest while it
is read, and for a gzip layer also the sha256 of the gunzipped bytes, which must be the config's
diff_id. Layers are stored uncompressed under their diff_id (the local docker-archive form), so
``restore_entry`` loads a pulled entry like a saved one. Only blobs the store lacks travel; a
stored blob that turns out bad is quarantined and fetched again (the repair). Nothing is
committed unless everything verified; the entry write (``Store.write_entry``) is the commit.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import hashlib
import http.client
import os
import platform
import time
import zlib
from dataclasses import dataclass
from typing import Any, Callable

from ..errors import CacheMiss, LockHeldError
from ..fsutil import filesystem_usage
from ..remote.errors import RemoteDataError, RemoteMiss
from ..units import format_size
from .archive_layout import LEGACY_LAYER_TYPE
from .checks import load_checked_entry
from .hashing import HashThread
from .progress import announce_total
from .prune import prune_store, reclaim_unreferenced_blobs
from .remote_layout import (
    CONFIG_TYPES,
    GZIP_LAYER_TYPES,
    INDEX_TYPES,
    MANIFEST_TYPES,
    MAX_IMAGES,
    MAX_LAYERS,
    PLAIN_LAYER_TYPES,
    TAG_RE,
    TAGS_ANNOTATION,
    BadRemoteData,
    RemoteCacheMiss,
    descriptor,
    index_key,
    media_type_of,
    parse_json_object,
    tags_annotation,
)
from .save import _new_entry, space_message, space_need
from .store import (
    MAX_CONFIG_BYTES,
    TRUSTED,
    CorruptBlob,
    CorruptEntry,
    Store,
    as_store,
    create_temp_blob,
    describe_os_error,
    entry_blobs,
    entry_name,
    is_no_space,
    read_regular,
    validate_key,
    write_all,
)

# A manifest is small JSON; the client refuses bigger bodies too.
MAX_MANIFEST_BYTES = 4 << 20
# gunzip output per call: bounds the memory one small, highly compressed input can take.
INFLATE_CHUNK = 4 << 20
GZIP_MAGIC = b"\x1f\x8b"
WRITEBACK_STEP = 8 << 20
PULL_BUFFERS = 8  # 1 MiB buffers in flight between the socket, the hasher and the disk
# While writing, free space is read again at least this often (other writers share the disk).
SPACE_RESTAT_STEP = 8 << 20
# A write the store's owner cannot make: said as a miss naming the cache directory.
STORE_WRITE_ERRORS = (errno.EROFS, errno.EACCES, errno.EPERM)
# platform.machine() -> the OCI architecture name (docker's GOARCH)
ARCHITECTURES = {
    "x86_64": "amd64",
    "amd64": "amd64",
    "aarch64": "arm64",
    "arm64": "arm64",
    "armv7l": "arm",
    "armv6l": "arm",
    "i686": "386",
    "i386": "386",
    "ppc64le": "ppc64le",
    "s390x": "s390x",
    "riscv64": "riscv64",
}


@dataclass(frozen=True)
class PullLimits:
    """What a pull may take of the disk: free space above ``reserve`` (``cache.reserve``),
    and the store's quota ``max_size`` (``cache.max_size``; None: none), kept after the
    commit as save keeps it. ``scope``: who asked; a pull for an untrusted job never
    evicts (a pull that only fits by evicting is a miss for it)."""

    reserve: int = 0
    max_size: int | None = None
    scope: str = TRUSTED

    @property
    def may_evict(self) -> bool:
        return self.scope == TRUSTED


@dataclass
class RemoteImage:
    """One image the registry holds under the key, as its manifest describes it."""

    manifest_digest: str
    config: dict[str, Any]  # descriptor
    layers: list[dict[str, Any]]  # descriptors
    tags: list[str]


def pull_entry(
    store: str | Store,
    key: str,
    client: Any,
    *,
    progress: Callable[[int], None] | None = None,
    reserve: int = 0,
    max_size: int | None = None,
    scope: str = TRUSTED,
) -> dict[str, Any]:
    """Fetch ``key`` from the registry ``client`` talks to into the local store, as a trusted
    entry. Returns {key, blobs_fetched, bytes_fetched, blobs_present, repaired, index_digest,
    entry_digest, images, pulled_from, duration} (result "pulled"; "present", nothing
    fetched, when the store already holds a valid entry of the key). RemoteCacheMiss (a
    CacheMiss, exit 3) when the registry has no such key, what it served fails verification
    (``corrupt``), or it does not fit (free space above ``reserve``, the quota ``max_size``
    for an untrusted ``scope``): nothing is committed then. Transport failures other than a
    broken-off answer (refused, timeout, TLS, 5xx, auth) propagate as the client's
    RemoteError subclasses."""
    validate_key(key)
    start = time.monotonic()
    store = as_store(store)
    url = remote_url(client)
    limits = PullLimits(reserve, max_size, scope)
    remove_dead_temps(store)  # a killed pull's temps go on every path, a miss's too
    result = present_result(store, key, url)
    if result is None:
        index_digest, images = key_images(client, key, url)
        result = _pull_locked(store, key, client, images, progress, url, index_digest, limits)
        result["prune"] = keep_quota(store, key, result, limits)
    result["duration"] = round(time.monotonic() - start, 3)
    return result


def remove_dead_temps(store: Store) -> None:
    """The temp areas of pulls (saves, imports) that died; their flocks tell (no lock needed)."""
    if store.exists():
        with contextlib.suppress(OSError):
            store.remove_stale_temps()


def present_result(store: Store, key: str, url: str) -> dict[str, Any] | None:
    """The result of a pull that has nothing to do: the store holds a valid entry of the key
    (blobs present with their sizes, configs intact). A pull never replaces one: the local
    entry may be newer than the registry's, and a job's pull must not roll back a trusted
    save. None when it is absent or damaged (then the pull replaces or repairs it)."""
    if not store.exists():
        return None
    try:
        entry, entry_digest = load_checked_entry(store, entry_name(key))
    except (CacheMiss, CorruptEntry, CorruptBlob, OSError):
        return None
    return {
        "key": key,
        "result": "present",
        "index_digest": None,
        "entry_digest": entry_digest,
        "blobs_fetched": 0,
        "bytes_fetched": 0,
        "blobs_present": len(entry_blobs(entry)),
        "repaired": [],
        "pulled_from": url,
        "images": [{"id": i["id"], "tags": i["tags"]} for i in entry["images"]],
    }


def keep_quota(
    store: Store, key: str, result: dict[str, Any], limits: PullLimits
) -> dict[str, Any] | None:
    """After a pull's commit, the store back under its quota as a save leaves it (the new
    entry protected). A pull for an untrusted job evicts nothing: it was let in only if it
    fit (``_SpaceGuard``)."""
    if limits.max_size is None or not limits.may_evict or result.get("result") != "pulled":
        return None
    return prune_store(store, max_size=limits.max_size, protect={entry_name(key)})


def key_images(client: Any, key: str, url: str) -> tuple[str, list[RemoteImage]]:
    """The digest of what the key's tag names, and the images to fetch; RemoteCacheMiss when
    the tag is absent or what it names is bad."""
    try:
        top = client.get_manifest(key, MANIFEST_TYPES + INDEX_TYPES)
        return top.digest, remote_images(client, key, top)
    except RemoteMiss as exc:
        raise RemoteCacheMiss(f"key '{key}' is not in the fleet cache {url}: {exc}") from None
    except (RemoteDataError, BadRemoteData) as exc:
        raise corrupt_miss(key, url, exc) from None


def corrupt_miss(key: str, url: str, exc: Exception) -> RemoteCacheMiss:
    return RemoteCacheMiss(
        f"key '{key}' in the fleet cache {url} failed verification, nothing was stored: {exc}",
        corrupt=True,
    )


def remote_url(client: Any) -> str:
    settings = getattr(client, "settings", None)
    return str(getattr(settings, "url", None) or "the registry")


def _pull_locked(
    store: Store,
    key: str,
    client: Any,
    images: list[RemoteImage],
    progress: Callable[[int], None] | None,
    url: str,
    index_digest: str,
    limits: PullLimits,
) -> dict[str, Any]:
    """Under the key lock and the shared store lock (so no prune deletes a stored blob the new
    entry relies on): fetch what the store lacks into a temp area, verify, commit."""
    name = entry_name(key)
    with reclaim_on_write_failure(store), store_errors_as_miss(store, key):
        store.ensure()
        with store.key_lock(name), store.store_lock():
            store.remove_stale_temps()
            present = present_result(store, key, url)  # a pull that held the lock before us
            if present is not None:
                return present
            guard = space_guard(store, key, images, limits)
            entry_images, puller, entry_digest = _fetch_and_commit(
                store, key, client, images, progress, url, index_digest, guard
            )
    repaired = sorted(set(puller.fetched) & (puller.quarantined | store.quarantined_blobs()))
    report = pulled_report(key, url, index_digest, entry_digest, puller, repaired)
    report["images"] = [{"id": i["id"], "tags": i["tags"]} for i in entry_images]
    return report


def pulled_report(
    key: str, url: str, index_digest: str, entry_digest: str, puller: _Puller, repaired: list
) -> dict[str, Any]:
    """What a pull reports (pull_entry's result, the one-pass restore's ``pulled``)."""
    return {
        "key": key,
        "result": "pulled",
        "index_digest": index_digest,
        "entry_digest": entry_digest,
        "blobs_fetched": len(puller.fetched),
        "bytes_fetched": puller.bytes_fetched,
        "blobs_present": puller.present,
        "repaired": repaired,
        "pulled_from": url,
    }


class PullOutOfSpace(RemoteCacheMiss):
    """The local disk filled during the pull (maybe after its blobs were moved into place)."""


@contextlib.contextmanager
def reclaim_on_write_failure(store: Store):
    """Outside the key and store locks: the blobs of a pull a full or failing disk cut short
    between its blobs and its entry go (prune.reclaim_unreferenced_blobs)."""
    try:
        yield
    except (PullOutOfSpace, OSError):
        reclaim_unreferenced_blobs(store)
        raise


@contextlib.contextmanager
def store_errors_as_miss(store: Store, key: str):
    """The local side's failures as the pull's miss, naming the cache directory: its lock held
    too long, no space, a read-only or foreign-owned store."""
    try:
        yield
    except LockHeldError as exc:
        raise RemoteCacheMiss(f"cannot pull key '{key}': {exc}") from None
    except OSError as exc:
        if is_no_space(exc):
            raise PullOutOfSpace(
                f"no space left in the cache directory {store.root} while pulling key "
                f"'{key}': {exc.strerror}; nothing was stored"
            ) from None
        if exc.errno in STORE_WRITE_ERRORS:
            raise RemoteCacheMiss(
                f"cannot write to the cache directory {store.root} while pulling key "
                f"'{key}': {describe_os_error(exc)}; nothing was stored (check that the "
                "filesystem is writable and owned by the store's owner)"
            ) from None
        raise


def _fetch_and_commit(
    store: Store,
    key: str,
    client: Any,
    images: list[RemoteImage],
    progress: Callable[[int], None] | None,
    url: str,
    index_digest: str,
    guard: _SpaceGuard,
) -> tuple[list[dict[str, Any]], _Puller, str]:
    """In a temp area: fetch and verify every blob the store lacks, then commit (blobs, then
    the entry). Bad data is a corrupt RemoteCacheMiss; the temp area goes either way."""
    with store.temp_area() as area:
        puller = _Puller(store, client, area, progress, guard)
        try:
            entry_images = puller.fetch(images)
            puller.commit_blobs()
        except (RemoteDataError, BadRemoteData) as exc:
            raise corrupt_miss(key, url, exc) from None
        except RemoteMiss as exc:
            raise RemoteCacheMiss(
                f"key '{key}' in the fleet cache {url} lacks a blob it names "
                f"(nothing was stored): {exc}",
                corrupt=True,
            ) from None
        finally:
            puller.close()
        entry = _new_entry(key, "docker-archive", entry_images, [f"{url}:{key}"], TRUSTED)
        entry["provenance"] = {"pulled_from": url, "index_digest": index_digest}
        return entry_images, puller, store.write_entry(entry)


# ---------------------------------------------------------------------------------------
# what the pull may take of the disk
# ---------------------------------------------------------------------------------------
def space_guard(
    store: Store, key: str, images: list[RemoteImage], limits: PullLimits
) -> _SpaceGuard:
    """Before anything is fetched: the bytes the store lacks against free space minus the
    reserve (save's check), and for an untrusted job against the quota with nothing evicted.
    A miss naming the filesystem, the need and the reserve when it does not fit; otherwise
    the guard every write of the pull then goes through."""
    need = bytes_lacking(store, images)
    plan = space_need(store.root, need, limits.reserve, "blobs the registry lists")
    if not plan["ok"]:
        raise RemoteCacheMiss(f"key '{key}': " + space_message([plan], "pull"))
    room = None
    if limits.max_size is not None and not limits.may_evict:
        used = sum(store.list_blobs().values())
        room = limits.max_size - used
        if need > room:
            raise RemoteCacheMiss(
                f"key '{key}' needs {need} bytes in the cache directory "
                f"{store.root}, which holds {used} of its quota (cache.max_size) "
                f"{limits.max_size}, and a pull for an untrusted job ({limits.scope}) evicts "
                "nothing; nothing was written"
            )
    return _SpaceGuard(store, key, limits.reserve, room, plan)


def bytes_lacking(store: Store, images: list[RemoteImage]) -> int:
    """The blob bytes the registry's descriptors say the store lacks. A gzip layer counts its
    compressed size, a lower bound: what it inflates to is held by the guard as it is written."""
    need = 0
    seen: set[str] = set()
    for image in images:
        for described in [image.config, *image.layers]:
            digest = described["digest"]
            if digest not in seen and store.blob_size(digest) is None:
                need += described["size"]
            seen.add(digest)
    return need


class _SpaceGuard:
    """Every byte a pull writes passes ``take``: the pull stops before the filesystem's free
    space would go below the reserve (a gzip layer's inflated bytes included, as they come
    out), and, for an untrusted job, before it outgrows the room left under the quota."""

    def __init__(
        self, store: Store, key: str, reserve: int, room: int | None, plan: dict[str, Any]
    ) -> None:
        self.store = store
        self.key = key
        self.reserve = reserve
        self.room = room
        self.mount_point = plan["mount_point"]
        self.free = plan["free_bytes"]
        self.since = 0  # written since free space was last read
        self.written = 0

    def take(self, count: int) -> None:
        if self.room is not None and self.written + count > self.room:
            raise RemoteCacheMiss(
                f"the pull of key '{self.key}' grew past the {self.room} bytes left under "
                f"the quota (cache.max_size) of the cache directory {self.store.root}, and a "
                "pull for an untrusted job evicts nothing; nothing was stored"
            )
        if self.since >= SPACE_RESTAT_STEP or self.free - self.since - count < self.reserve:
            self.free = filesystem_usage(self.store.root).free_bytes
            self.since = 0
        if self.free - self.since - count < self.reserve:
            raise RemoteCacheMiss(
                f"the pull of key '{self.key}' stopped after {self.written} bytes: one more "
                f"write would leave the filesystem {self.mount_point} of the cache directory "
                f"{self.store.root} with less than the reserve (cache.reserve) "
                f"{format_size(self.reserve)} free ({self.free - self.since} bytes free now); "
                "nothing was stored"
            )
        self.since += count
        self.written += count


# ---------------------------------------------------------------------------------------
# what the registry holds under the key
# ---------------------------------------------------------------------------------------
def remote_images(client: Any, key: str, top: Any) -> list[RemoteImage]:
    """The images to fetch for ``key``, from the manifest its tag names (``top``): every image
    of a runnerkeep index, the linux/<this host's architecture> image of a list or index that
    docker or skopeo pushed, or the one image of a plain manifest. BadRemoteData when it is
    malformed, RemoteCacheMiss when nothing in it is usable here."""
    if len(top.data) > MAX_MANIFEST_BYTES:
        raise BadRemoteData(f"the manifest of {key} is larger than {MAX_MANIFEST_BYTES} bytes")
    document = parse_json_object(top.data, f"the manifest of {key}")
    media = media_type_of(document, top.media_type)
    if media in INDEX_TYPES:
        return _images_of_index(client, key, document)
    if media in MANIFEST_TYPES:
        return [_image_of_manifest(document, top.digest, foreign_tags(client, key))]
    raise BadRemoteData(f"the manifest of {key} has media type {media[:80]!r}")


def _images_of_index(client: Any, key: str, index: dict[str, Any]) -> list[RemoteImage]:
    manifests = index.get("manifests")
    if not isinstance(manifests, list) or not manifests:
        raise BadRemoteData(f"the index of {key} lists no manifests")
    if len(manifests) > MAX_IMAGES:
        raise BadRemoteData(f"the index of {key} lists more than {MAX_IMAGES} manifests")
    owner = index_key(index)
    if owner is not None and owner != key:
        raise BadRemoteData(
            f"the index under tag {key} was pushed for key {owner[:130]!r} (replaced with another "
            "key's)"
        )
    # A runnerkeep index: every image of this host's platform (another arch's runner may have
    # pushed the key); a docker/skopeo list: the first one, as docker pull picks.
    chosen = _for_this_host(key, manifests, every=owner is not None)
    images = []
    for item in chosen:
        described = descriptor(item, f"index entry of {key}", MAX_MANIFEST_BYTES)
        if described.get("mediaType") not in MANIFEST_TYPES:
            raise BadRemoteData(
                f"the index of {key} names {str(described.get('mediaType'))[:80]!r}, not an "
                "image manifest"
            )
        manifest = client.get_manifest(described["digest"], MANIFEST_TYPES)
        if manifest.digest != described["digest"] or len(manifest.data) != described["size"]:
            raise BadRemoteData(f"manifest {described['digest']} differs from its descriptor")
        document = parse_json_object(manifest.data, f"manifest {described['digest']}")
        if media_type_of(document, manifest.media_type) != described["mediaType"]:
            raise BadRemoteData(f"manifest {described['digest']} is not the type its index says")
        annotations = item.get("annotations") if isinstance(item.get("annotations"), dict) else {}
        tags = (
            tags_annotation(annotations.get(TAGS_ANNOTATION))
            if owner is not None
            else foreign_tags(client, key)
        )
        images.append(_image_of_manifest(document, described["digest"], tags))
    return images


def host_architecture() -> str:
    machine = platform.machine().lower()
    return ARCHITECTURES.get(machine, machine)


def _for_this_host(key: str, manifests: list[Any], every: bool = False) -> list[Any]:
    """The linux/<arch> manifests of a multi-platform list or index: the first (``every``
    False) or all of them (a runnerkeep index; an image whose config names no platform has
    none in it and is taken). A miss naming the platform, and those it holds, when none is."""
    wanted = ("linux", host_architecture())
    chosen, found = [], []
    for item in manifests:
        where = item.get("platform") if isinstance(item, dict) else None
        if not isinstance(where, dict):
            if every and isinstance(item, dict) and "platform" not in item:
                chosen.append(item)
            continue
        platform_of = (where.get("os"), where.get("architecture"))
        if platform_of == wanted:
            chosen.append(item)
            if not every:
                break
        else:
            found.append("/".join(str(part)[:20] for part in platform_of))
    if not chosen:
        held = ", ".join(sorted(set(found))[:8]) or "none named"
        raise RemoteCacheMiss(
            f"key '{key}' in the fleet cache has no {'/'.join(wanted)} image (platforms: {held})"
        )
    return chosen


def foreign_tags(client: Any, key: str) -> list[str]:
    """The tag an image pushed by docker or skopeo gets: REGISTRY/REPOSITORY:KEY, as
    ``docker pull`` would name it."""
    settings = getattr(client, "settings", None)
    host, repository = getattr(settings, "host", None), getattr(settings, "repository", None)
    if not host or not repository:
        return []
    port = getattr(settings, "port", None)
    default = {"https": 443, "http": 80}.get(str(getattr(settings, "scheme", "")))
    where = host if not port or port == default else f"{host}:{port}"
    tag = f"{where}/{repository}:{key}"
    return [tag] if TAG_RE.fullmatch(tag) else []


def _image_of_manifest(document: dict[str, Any], digest: str, tags: list[str]) -> RemoteImage:
    if document.get("schemaVersion") != 2:
        raise BadRemoteData(f"manifest {digest} is not schemaVersion 2")
    config = descriptor(document.get("config"), f"config of manifest {digest}", MAX_CONFIG_BYTES)
    if config.get("mediaType") not in CONFIG_TYPES:
        raise BadRemoteData(
            f"manifest {digest} has a config of type {str(config.get('mediaType'))[:80]!r}"
        )
    layers = document.get("layers")
    if not isinstance(layers, list) or len(layers) > MAX_LAYERS:
        raise BadRemoteData(f"manifest {digest} lists no layers or more than {MAX_LAYERS}")
    checked = [descriptor(layer, f"layer of manifest {digest}") for layer in layers]
    for layer in checked:
        media = layer.get("mediaType")
        if media not in PLAIN_LAYER_TYPES + GZIP_LAYER_TYPES:
            raise RemoteCacheMiss(
                f"manifest {digest} has a layer of media type {str(media)[:100]!r}: runnerkeep "
                "takes uncompressed and gzip layers only (push with gzip compression)"
            )
    return RemoteImage(digest, config, checked, tags)


# ---------------------------------------------------------------------------------------
# fetching and verifying the blobs
# ---------------------------------------------------------------------------------------
class _Puller:
    """The blobs of one pull: fetched into the temp ``area``, each verified before it counts."""

    def __init__(
        self, store: Store, client: Any, area: str, progress: Any, guard: _SpaceGuard | None
    ) -> None:
        self.store = store
        self.client = client
        self.area = area
        self.progress = progress
        self.guard = guard
        self.temps: dict[str, str] = {}  # digest -> verified temp file
        self.sizes: dict[str, int] = {}  # digest -> its (uncompressed) size
        self.fetched: list[str] = []
        self.quarantined: set[str] = set()
        self.bytes_fetched = 0
        self.present = 0
        self.syncer = concurrent.futures.ThreadPoolExecutor(max_workers=1)
        self.syncs: list[concurrent.futures.Future] = []

    def fetch(self, images: list[RemoteImage]) -> list[dict[str, Any]]:
        announce_total(self.progress, self._bytes_to_fetch(images))
        hasher = HashThread(count=PULL_BUFFERS)
        try:
            return [self._image(image, hasher) for image in images]
        finally:
            hasher.close()

    def _bytes_to_fetch(self, images: list[RemoteImage]) -> int:
        total = 0
        for image in images:
            for layer in image.layers:
                if self.store.blob_size(layer["digest"]) is None:
                    total += layer["size"]
        return total

    def _image(self, image: RemoteImage, hasher: HashThread) -> dict[str, Any]:
        config_digest = image.config["digest"]
        data = self.config(image.config)
        diff_ids = _diff_ids(data, config_digest, len(image.layers))
        layers = []
        for described, diff_id in zip(image.layers, diff_ids):
            size = self._layer(described, diff_id, hasher)
            layers.append(
                {
                    "digest": diff_id,
                    "size": size,
                    "diff_id": diff_id,
                    "media_type": LEGACY_LAYER_TYPE,
                }
            )
        return {
            "id": config_digest,
            "tags": image.tags,
            "config": {"digest": config_digest, "size": len(data)},
            "layers": layers,
            "manifests": [],
        }

    def config(self, described: dict[str, Any]) -> bytes:
        digest, size = described["digest"], described["size"]
        stored = self._stored_config(digest)
        if stored is not None:
            return stored
        with self.client.open_blob(digest) as reader:
            data = _read_small(reader, size, digest)
        self.report(len(data))
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            raise BadRemoteData(f"config blob {digest} fails its sha256 check")
        if digest not in self.temps:
            if self.guard is not None:
                self.guard.take(len(data))
            fd, path = create_temp_blob(self.area)
            try:
                write_all(fd, memoryview(data))
                os.fsync(fd)
            finally:
                os.close(fd)
            self.fetched_blob(digest, path, len(data))
        return data

    def _stored_config(self, digest: str) -> bytes | None:
        """A stored config's bytes; a damaged one is quarantined (and fetched again)."""
        if digest in self.temps:
            return read_regular(self.temps[digest], MAX_CONFIG_BYTES)
        path = self.store.blob_path(digest)
        try:
            data = read_regular(path, MAX_CONFIG_BYTES)
        except FileNotFoundError:
            return None
        except OSError as exc:
            self._quarantine(digest, f"config blob {digest} unreadable: {describe_os_error(exc)}")
            return None
        if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
            self._quarantine(digest, f"config blob {digest} fails its sha256 check")
            return None
        self.present += 1
        return data

    def _quarantine(self, digest: str, reason: str) -> None:
        if self.store.quarantine("blob", self.store.blob_path(digest), reason):
            self.quarantined.add(digest)

    def _layer(self, described: dict[str, Any], diff_id: str, hasher: HashThread) -> int:
        """The uncompressed size of the layer ``diff_id``, fetched unless already stored."""
        if diff_id in self.sizes:
            return self.sizes[diff_id]
        gzip = described["mediaType"] in GZIP_LAYER_TYPES
        if not gzip and described["digest"] != diff_id:
            raise BadRemoteData(
                f"uncompressed layer {described['digest']} is not the config's diff_id {diff_id}"
            )
        stored = self.store.blob_size(diff_id)
        if stored is not None and (gzip or stored == described["size"]):
            # Stored blobs are verified on every read (restore, export, verify, scrub).
            self.present += 1
            self.sizes[diff_id] = stored
            return stored
        path, size = self.fetch_layer(described, diff_id, gzip, hasher)
        if stored is not None:
            # Same sha256, another size: the stored copy is the damaged one.
            self._quarantine(diff_id, f"blob {diff_id} has {stored} bytes, the fleet cache {size}")
        self.fetched_blob(diff_id, path, size)
        return size

    def fetch_layer(
        self,
        described: dict[str, Any],
        diff_id: str,
        gzip: bool,
        hasher: HashThread,
        also: Callable[[memoryview], None] | None = None,
    ) -> tuple[str, int]:
        fd, path = create_temp_blob(self.area)
        try:
            with self.client.open_blob(described["digest"]) as reader:
                declared = getattr(reader, "size", None)
                if declared is not None and declared != described["size"]:
                    raise BadRemoteData(
                        f"blob {described['digest']} is served with {declared} bytes, its "
                        f"descriptor says {described['size']}"
                    )
                copy = _BlobCopy(reader, fd, hasher, self)
                size = copy.gunzip(described, diff_id) if gzip else copy.plain(described, also)
        except BaseException:
            os.close(fd)
            raise
        # fsync on a thread of its own while the next blob arrives; commit waits for them all.
        self.syncs.append(self.syncer.submit(_sync_and_close, fd))
        return path, size

    def fetched_blob(self, digest: str, path: str, size: int) -> None:
        self.temps[digest] = path
        self.sizes[digest] = size
        self.fetched.append(digest)

    def report(self, count: int) -> None:
        self.bytes_fetched += count
        if self.progress:
            self.progress(self.bytes_fetched)

    def commit_blobs(self) -> None:
        """Every blob verified and on disk: rename them into blobs/ (the entry write follows)."""
        for done in self.syncs:
            done.result()  # an fsync's OSError (ENOSPC, EIO) fails the pull here
        self.store.commit_temp_blobs(self.temps)

    def close(self) -> None:
        """Wait for the fsyncs in flight (each closes its file)."""
        self.syncer.shutdown(wait=True)


def _sync_and_close(fd: int) -> None:
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _diff_ids(data: bytes, digest: str, layers: int) -> list[str]:
    config = parse_json_object(data, f"config blob {digest}")
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise BadRemoteData(f"config blob {digest} has no rootfs.diff_ids")
    if len(diff_ids) != layers:
        raise BadRemoteData(
            f"config blob {digest} lists {len(diff_ids)} diff_ids, its manifest {layers} layers"
        )
    for diff_id in diff_ids:
        descriptor({"digest": diff_id, "size": 0}, f"diff_id of config {digest}")
    return diff_ids


def _read_small(reader: Any, size: int, digest: str) -> bytes:
    """Exactly ``size`` bytes of a small blob (a config)."""
    declared = getattr(reader, "size", None)
    if declared is not None and declared != size:
        raise BadRemoteData(f"blob {digest} is served with {declared} bytes, expected {size}")
    buffer = bytearray(size)
    view = memoryview(buffer)
    done = 0
    while done < size:
        count = _read_into(reader, view[done:])
        if not count:
            raise BadRemoteData(f"blob {digest} ended after {done} of {size} bytes")
        done += count
    return bytes(buffer)


def _read_into(reader: Any, view: memoryview) -> int:
    """reader.readinto, a connection broken mid-answer said as a miss (the job rebuilds)."""
    try:
        return reader.readinto(view)
    except (OSError, http.client.HTTPException) as exc:
        raise RemoteCacheMiss(
            f"the fleet cache's answer broke off: {exc or type(exc).__name__}; nothing was stored"
        ) from None


class _BlobFile:
    """A temp blob being written. Every WRITEBACK_STEP bytes, the kernel is asked to start
    writing the step just written (POSIX_FADV_DONTNEED starts writeback of dirty pages and
    drops only clean ones, so the step stays cached for the restore that follows): the
    fsync before the commit then waits for the last step only, not the whole blob (the
    fallback PostgreSQL uses where there is no sync_file_range)."""

    def __init__(self, fd: int, guard: _SpaceGuard | None) -> None:
        self.fd = fd
        self.guard = guard
        self.written = 0
        self.kicked = 0

    def write(self, view: memoryview) -> None:
        if self.guard is not None:
            self.guard.take(len(view))
        write_all(self.fd, view)
        self.written += len(view)
        if self.written - self.kicked >= WRITEBACK_STEP:
            with contextlib.suppress(AttributeError, OSError):
                os.posix_fadvise(
                    self.fd, self.kicked, self.written - self.kicked, os.POSIX_FADV_DONTNEED
                )
            self.kicked = self.written


class _BlobCopy:
    """One layer from the socket to a temp file: read into the hasher's buffers, hashed on its
    thread (the compressed digest), written here (or gunzipped, hashed and written here)."""

    def __init__(self, reader: Any, fd: int, hasher: HashThread, puller: _Puller) -> None:
        self.reader = reader
        self.fd = fd
        self.hasher = hasher
        self.puller = puller

    def _stream(self, described: dict[str, Any], sink: Callable[[memoryview], None]) -> str:
        """Read exactly the descriptor's size, handing each buffer to ``sink``; the sha256 of
        what was read."""
        sha = hashlib.sha256()
        remaining = described["size"]
        while remaining:
            index = self.hasher.take()
            view = self.hasher.views[index]
            try:
                count = _read_into(self.reader, view[: min(len(view), remaining)])
            except BaseException:
                self.hasher.give_back(index)
                raise
            if not count:
                self.hasher.give_back(index)
                raise BadRemoteData(
                    f"blob {described['digest']} ended after {described['size'] - remaining} of "
                    f"{described['size']} bytes"
                )
            self.hasher.hash(sha, index, count)
            sink(view[:count])
            remaining -= count
            self.puller.report(count)
        self.hasher.settle()
        return "sha256:" + sha.hexdigest()

    def plain(
        self, described: dict[str, Any], also: Callable[[memoryview], None] | None = None
    ) -> int:
        """Copy an uncompressed layer (to ``also`` too: the engine's load); its size."""
        blob = _BlobFile(self.fd, self.puller.guard)

        def sink(view: memoryview) -> None:
            blob.write(view)
            if also is not None:
                also(view)

        actual = self._stream(described, sink)
        if actual != described["digest"]:
            raise BadRemoteData(f"layer {described['digest']} fails its sha256 check ({actual})")
        return described["size"]

    def gunzip(self, described: dict[str, Any], diff_id: str) -> int:
        inflater = _Gunzip(self.fd, self.puller.guard)
        actual = self._stream(described, inflater.feed)
        if actual != described["digest"]:
            raise BadRemoteData(f"layer {described['digest']} fails its sha256 check ({actual})")
        inflater.finish(described["digest"])
        if inflater.digest() != diff_id:
            raise BadRemoteData(
                f"layer {described['digest']} gunzips to {inflater.digest()}, not the config's "
                f"diff_id {diff_id}"
            )
        return inflater.size


class _Gunzip:
    """Gunzip (one or more gzip members, as Go's reader takes them), hashing and writing the
    output in bounded chunks. A blob that does not start with the gzip magic is taken as it
    is, like docker's own pull does: `docker push` of an image pulled with uncompressed layers
    mounts those blobs under a gzip media type. Its bytes must then hash to the diff_id."""

    def __init__(self, fd: int, guard: _SpaceGuard | None) -> None:
        self.file = _BlobFile(fd, guard)
        self.sha = hashlib.sha256()
        self.size = 0
        self.inflater = zlib.decompressobj(wbits=31)
        self.started = False
        self.plain = False

    def feed(self, data: memoryview) -> None:
        if not self.started:
            self.started = True
            self.plain = len(data) >= 2 and bytes(data[:2]) != GZIP_MAGIC
        if self.plain:
            self._out(data)
            return
        chunk: bytes | memoryview = data
        try:
            while True:
                if self.inflater.eof:
                    if not chunk:
                        return
                    self.inflater = zlib.decompressobj(wbits=31)  # the next gzip member
                out = self.inflater.decompress(chunk, INFLATE_CHUNK)
                self._out(out)
                if self.inflater.eof:
                    chunk = self.inflater.unused_data
                    continue
                chunk = self.inflater.unconsumed_tail
                # A full output chunk may leave more output inside zlib, even with no input left.
                if not chunk and len(out) < INFLATE_CHUNK:
                    return
        except zlib.error as exc:
            raise BadRemoteData(f"a gzip layer does not gunzip: {exc}") from None

    def _out(self, data: bytes | memoryview) -> None:
        if data:
            self.sha.update(data)
            self.file.write(memoryview(data))
            self.size += len(data)

    def finish(self, digest: str) -> None:
        if not self.started or not (self.plain or self.inflater.eof):
            raise BadRemoteData(f"gzip layer {digest} is truncated (no end of the gzip stream)")

    def digest(self) -> str:
        return "sha256:" + self.sha.hexdigest()
