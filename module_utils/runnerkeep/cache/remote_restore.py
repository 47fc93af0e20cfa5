"""Restore from the fleet tier in one pass, when the host has nothing of the key: each layer,
as it arrives from the registry, is hashed once, written to its temp blob and streamed into
the engine's image load (``POST /images/load``) in the same read.

The archive is the one ``restore_entry`` would send for the entry the pull is about to
commit, ``manifest.json`` last: a layer that fails its digest stops the stream before it,
so the engine tags nothing, and nothing is committed locally either. Once the engine has the
whole archive the verified blobs and the entry are committed as ``pull_entry`` commits them,
so the next restore is a local hit. A single image of more than one batch of layers goes in
batches instead (batched_load), so the engine unpacks one batch while the next arrives.

Otherwise (no local engine socket, a gzip layer, a layer already stored or held by the
daemon, an image already present) it is ``pull_entry`` (only what the store lacks) then
``restore_entry`` (only what the daemon lacks).
"""

from __future__ import annotations

import tarfile
import time
from typing import Any, Callable

from ..docker_api import EngineSocketUnavailable, load_image_archive, local_engine_socket
from ..errors import DockerCommandError
from ..remote.errors import RemoteDataError, RemoteMiss
from .archive_layout import LEGACY_LAYER_TYPE
from .archive_writer import (
    BLOB_DIRECTORIES,
    END_OF_ARCHIVE,
    _tar_header,
    archive_metadata,
    entry_archive_length,
)
from .batched_load import BatchedLoad, PartialLoadRefused, layer_batches
from .hashing import HashThread
from .partial import blobs_held, entry_chains, held_chains
from .progress import announce_total
from .remote_layout import GZIP_LAYER_TYPES, BadRemoteData, RemoteCacheMiss
from .remote_pull import (
    PULL_BUFFERS,
    PullLimits,
    RemoteImage,
    _diff_ids,
    _Puller,
    corrupt_miss,
    keep_quota,
    key_images,
    pull_entry,
    pulled_report,
    reclaim_on_write_failure,
    remote_url,
    remove_dead_temps,
    space_guard,
    store_errors_as_miss,
)
from .restore import _ensure_tags, daemon_images, engine_tags, loaded_lines, restore_entry
from .save import _new_entry
from .store import TRUSTED, Store, as_store, entry_blobs, entry_name, validate_key, write_all
from .tar_reader import BLOCK, blob_member_name

Progress = Callable[[int], None]


def restore_from_fleet(
    store: str | Store,
    key: str,
    client: Any,
    *,
    progress: Progress | None = None,
    reserve: int = 0,
    max_size: int | None = None,
    scope: str = TRUSTED,
) -> dict[str, Any]:
    """Make the images of ``key`` present in the daemon from the fleet tier, leaving a local
    entry behind. Returns restore_entry's result with ``pulled`` (pull_entry's result) and
    ``overlapped`` (True when the layers went into the engine as they arrived). ``reserve``,
    ``max_size``, ``scope``: the disk rules pull_entry keeps (PullLimits)."""
    validate_key(key)
    start = time.monotonic()
    store = as_store(store)
    url = remote_url(client)
    limits = PullLimits(reserve, max_size, scope)
    remove_dead_temps(store)
    index_digest, images = key_images(client, key, url)
    socket_path = local_engine_socket()
    result = None
    if socket_path is not None and _may_overlap(store, images):
        where = (socket_path, url, index_digest)
        result = _overlapped(store, key, client, images, where, progress, limits)
        if result is not None:
            result["pulled"]["prune"] = keep_quota(store, key, result["pulled"], limits)
    if result is None:
        pulled = pull_entry(
            store, key, client, progress=progress, reserve=reserve, max_size=max_size, scope=scope
        )
        result = restore_entry(store, key, progress=progress)
        result.update(pulled=pulled, overlapped=False)
    result["duration"] = round(time.monotonic() - start, 3)
    return result


def _may_overlap(store: Store, images: list[RemoteImage]) -> bool:
    """Every layer uncompressed (its size is the archive's) and none stored here."""
    for image in images:
        for layer in image.layers:
            if layer["mediaType"] in GZIP_LAYER_TYPES or store.has_blob(layer["digest"]):
                return False
    return True


def _overlapped(
    store: Store,
    key: str,
    client: Any,
    images: list[RemoteImage],
    where: tuple[str, str, str],
    progress: Progress | None,
    limits: PullLimits,
) -> dict[str, Any] | None:
    """The one-pass restore under the key and store locks; None when the daemon already
    holds some of it (the caller then pulls and restores incrementally). ``where``: the
    engine's socket, the registry's URL, the key's index digest."""
    socket_path, url, index_digest = where
    try:
        with reclaim_on_write_failure(store), store_errors_as_miss(store, key):
            store.ensure()
            with store.key_lock(entry_name(key)), store.store_lock():
                guard = space_guard(store, key, images, limits)
                with store.temp_area() as area:
                    puller = _Puller(store, client, area, progress, guard)
                    return _overlapped_guarded(
                        store, key, puller, images, socket_path, url, index_digest
                    )
    except EngineSocketUnavailable:
        return None  # the sequential path reports an unreachable engine in its own words


def _overlapped_guarded(
    store: Store,
    key: str,
    puller: _Puller,
    images: list[RemoteImage],
    socket_path: str,
    url: str,
    index_digest: str,
) -> dict[str, Any] | None:
    """_overlapped_locked, bad data and a missing blob as the pull's misses."""
    try:
        return _overlapped_locked(store, key, puller, images, socket_path, url, index_digest)
    except (RemoteDataError, BadRemoteData) as exc:
        raise corrupt_miss(key, url, exc) from None
    except RemoteMiss as exc:
        raise RemoteCacheMiss(
            f"key '{key}' in the fleet cache {url} lacks a blob it names "
            f"(nothing was stored or loaded): {exc}",
            corrupt=True,
        ) from None
    finally:
        puller.close()


def _overlapped_locked(
    store: Store,
    key: str,
    puller: _Puller,
    images: list[RemoteImage],
    socket_path: str,
    url: str,
    index_digest: str,
) -> dict[str, Any] | None:
    configs = {image.config["digest"]: puller.config(image.config) for image in images}
    entry = _new_entry(key, "docker-archive", _entry_images(images, configs), [f"{url}:{key}"])
    entry["provenance"] = {"pulled_from": url, "index_digest": index_digest}
    ids = [image["id"] for image in entry["images"]]
    if daemon_images(ids) or blobs_held(entry, held_chains(socket_path, entry_chains(entry))):
        return None
    # The load applies the archive's RepoTags: only the tags restore's rule lets reach the
    # engine go in (a pulled key never re-points another image's name); the entry keeps all.
    loadable, not_retagged = engine_tags(entry)
    loaded = _load(store, key, puller, loadable, configs, images, socket_path)
    if loaded is None:
        return None
    length, batches = loaded
    puller.commit_blobs()
    entry_digest = store.write_entry(entry)
    present = daemon_images(ids)
    missing = [i for i in ids if i not in present]
    if missing:
        raise DockerCommandError(f"docker load finished but the daemon lacks {', '.join(missing)}")
    retagged = _ensure_tags(loadable, present)
    store.touch_entry(entry_name(key))
    return {
        "key": key,
        "scope": TRUSTED,
        "entry_digest": entry_digest,
        "images": [{"id": i["id"], "tags": i["tags"]} for i in entry["images"]],
        "result": "hit",
        "loaded": True,
        "bytes_loaded": length,
        "loaded_via": "engine-api",
        "load_batches": batches,
        "bytes_left_out": 0,
        "retagged": retagged,
        "not_retagged": not_retagged,
        "overlapped": True,
        "pulled": pulled_report(key, url, index_digest, entry_digest, puller, []),
    }


def _load(
    store: Store,
    key: str,
    puller: _Puller,
    loadable: dict[str, Any],
    configs: dict[str, bytes],
    images: list[RemoteImage],
    socket_path: str,
) -> tuple[int, int] | None:
    """Stream ``loadable`` into the engine as its layers arrive: one image of several
    batches of layers in batches (batched_load), anything else as one archive. Returns the
    bytes sent and the number of loads; None when the engine refused a batch that leaves out
    the layers it holds (the layers fetched are committed; the caller pulls the rest and
    restores)."""
    described = {layer["digest"]: layer for image in images for layer in image.layers}
    hasher = HashThread(count=PULL_BUFFERS)
    try:
        [*others, image] = loadable["images"]
        if not others and len(layer_batches(image["layers"])) > 1:

            def fetch(layer: dict[str, Any], out: Callable[[Any], None]) -> None:
                digest = layer["digest"]
                path, got = puller.fetch_layer(described[digest], digest, False, hasher, also=out)
                puller.fetched_blob(digest, path, got)

            config = configs[image["config"]["digest"]]
            batched = BatchedLoad(socket_path, loadable, config, fetch, f"{store.root}#{key}")
            announce_total(puller.progress, batched.length())
            try:
                batched.run(loaded_lines(loadable))
            except PartialLoadRefused:
                # The layers fetched so far are verified: kept, so the pull that follows
                # fetches only the rest.
                puller.commit_blobs()
                return None
            return batched.length(), len(batched.batches)
        length = entry_archive_length(loadable)
        announce_total(puller.progress, length)
        stream = _ArchiveStream(puller, loadable, configs, described, hasher)
        load_image_archive(socket_path, length, stream.write, done_when=loaded_lines(loadable))
        return length, 1
    finally:
        hasher.close()


def _entry_images(images: list[RemoteImage], configs: dict[str, bytes]) -> list[dict[str, Any]]:
    """The entry's images from the manifests and their verified configs: uncompressed layers
    only (``_may_overlap``), each of which must be its config's diff_id."""
    found = []
    for image in images:
        digest = image.config["digest"]
        diff_ids = _diff_ids(configs[digest], digest, len(image.layers))
        layers = []
        for described, diff_id in zip(image.layers, diff_ids):
            if described["digest"] != diff_id:
                raise BadRemoteData(
                    f"uncompressed layer {described['digest']} is not the config's diff_id "
                    f"{diff_id}"
                )
            layers.append(
                {
                    "digest": diff_id,
                    "size": described["size"],
                    "diff_id": diff_id,
                    "media_type": LEGACY_LAYER_TYPE,
                }
            )
        found.append(
            {
                "id": digest,
                "tags": image.tags,
                "config": {"digest": digest, "size": len(configs[digest])},
                "layers": layers,
                "manifests": [],
            }
        )
    return found


class _ArchiveStream:
    """The entry's archive into the engine's socket (the layout archive_writer writes), each
    layer fetched, verified and kept (temp blob) in the same read."""

    def __init__(
        self,
        puller: _Puller,
        entry: dict[str, Any],
        configs: dict[str, bytes],
        described: dict[str, dict[str, Any]],
        hasher: HashThread,
    ) -> None:
        self.puller = puller
        self.entry = entry
        self.configs = configs
        self.described = described
        self.hasher = hasher
        self.out_fd = -1
        self.total = 0

    def _out(self, data: bytes | memoryview) -> None:
        write_all(self.out_fd, memoryview(data))
        self.total += len(data)

    def write(self, out_fd: int) -> int:
        self.out_fd = out_fd
        for name in BLOB_DIRECTORIES:
            self._out(_tar_header(name, 0, tarfile.DIRTYPE, 0o755))
        for digest, size in entry_blobs(self.entry).items():
            self._out(_tar_header(blob_member_name(digest), size))
            if digest in self.configs:
                self._out(self.configs[digest])
            else:
                path, got = self.puller.fetch_layer(
                    self.described[digest], digest, False, self.hasher, also=self._out
                )
                self.puller.fetched_blob(digest, path, got)
            self._out(bytes((-size) % BLOCK))
        # Every layer verified: only now the metadata, manifest.json last.
        for name, data in archive_metadata(self.entry):
            self._out(_tar_header(name, len(data)) + data + bytes((-len(data)) % BLOCK))
        self._out(END_OF_ARCHIVE)
        return self.total
