"""The one-pass restore of a single image in batches of layers, so the engine unpacks one
batch while the next arrives from the fleet tier.

``docker load`` (engine 20.10) first receives the whole archive and only then, once it has
``manifest.json``, unpacks and registers the layers. One archive therefore means: receive
everything, then unpack everything, one after the other. Here the image's layers go in
batches (consecutive layers, at least BATCH_BYTES each), each its own ``POST /images/load``:
every batch but the last is loaded as a stand-in image (a config naming the layers up to and
including the batch, labelled PARTIAL_LABEL, no tag), and its archive carries only the batch's
layers: the engine holds the chains below from the batches before, and never opens their
files (partial.py). The last batch carries the real config and manifest, with the tags.

The rules of the single archive hold for each batch: each layer is hashed in the read that
sends it and ``manifest.json`` comes last, so a layer that fails its digest cuts its batch's
archive before it and the engine loads nothing of that batch. A batch's ``manifest.json`` is
sent only once the engine has answered the batch before (its chains registered), while the
batch's layers have already streamed in. The stand-in images are removed once the real image
holds their layers, and on any failure; one left by a killed restore is an untagged image the
host's cleanup prunes (``docker images --filter label=io.runnerkeep.partial``).

An engine that wants every layer in every archive (the containerd image store) refuses the
second batch, naming a layer it was not sent: PartialLoadRefused, and the caller restores
another way (keeping the layers already fetched). Any other refusal is the engine's error.
"""

from __future__ import annotations

import contextlib
import datetime
import hashlib
import json
import tarfile
from typing import Any, Callable, Union

from ..docker_api import EngineStalled, ImageLoad, remove_image
from ..errors import DockerCommandError
from .archive_writer import BLOB_DIRECTORIES, END_OF_ARCHIVE, _tar_header, archive_metadata
from .store import write_all
from .tar_reader import BLOCK, blob_member_name

BATCH_BYTES = 64 << 20  # a batch's layers at least this much: each load costs the engine ~50 ms
PARTIAL_LABEL = "io.runnerkeep.partial"

# fetch(layer descriptor, out) -> None: the layer, verified, written to ``out`` as it arrives.
FetchLayer = Callable[[dict[str, Any], Callable[[Union[memoryview, bytes]], None]], None]


class PartialLoadRefused(DockerCommandError):
    """The engine refused an archive that leaves out the layers it already holds."""


def layer_batches(layers: list[dict[str, Any]], batch_bytes: int | None = None) -> list[list[int]]:
    """Indexes of consecutive layers, each batch at least ``batch_bytes`` (BATCH_BYTES by
    default; the last one may be smaller)."""
    batch_bytes = BATCH_BYTES if batch_bytes is None else batch_bytes
    batches: list[list[int]] = [[]]
    size = 0
    for index, layer in enumerate(layers):
        if size >= batch_bytes:
            batches.append([])
            size = 0
        batches[-1].append(index)
        size += layer["size"]
    return batches


def stand_in_config(config: dict[str, Any], diff_ids: list[str], label: str) -> bytes:
    """The config of the stand-in image holding ``diff_ids``: the platform of the real one,
    created now (a cleaner's minimum age then spares a stand-in in use)."""
    created = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return json.dumps(
        {
            "architecture": config.get("architecture") or "amd64",
            "os": config.get("os") or "linux",
            "created": created,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
            "config": {"Labels": {PARTIAL_LABEL: label}},
        },
        sort_keys=True,
    ).encode()


def _member(name: str, data: bytes) -> bytes:
    return _tar_header(name, len(data)) + data + bytes((-len(data)) % BLOCK)


class _Batch:
    """One batch's archive: its layers, then (once the engine may register them) its
    config and manifest."""

    def __init__(self, layers: list[dict[str, Any]], config: tuple[str, bytes], manifest: bytes):
        self.layers = layers
        self.config_name, self.config = config
        self.manifest = manifest
        self.head = b"".join(_tar_header(n, 0, tarfile.DIRTYPE, 0o755) for n in BLOB_DIRECTORIES)
        self.tail = (
            _member(self.config_name, self.config)
            + _member("manifest.json", self.manifest)
            + END_OF_ARCHIVE
        )

    def length(self) -> int:
        body = sum(BLOCK + layer["size"] + (-layer["size"]) % BLOCK for layer in self.layers)
        return len(self.head) + body + len(self.tail)


class BatchedLoad:
    """Load ``entry`` (one image, docker-archive layout, the tags it may set) into the engine
    at ``socket_path`` in batches, each layer from ``fetch``. ``label``: the stand-in images'
    PARTIAL_LABEL value (the store and key they belong to)."""

    def __init__(
        self,
        socket_path: str,
        entry: dict[str, Any],
        config: bytes,
        fetch: FetchLayer,
        label: str,
        batch_bytes: int | None = None,
    ) -> None:
        [image] = entry["images"]
        self.socket_path = socket_path
        self.fetch = fetch
        self.stand_ins: list[str] = []  # their image IDs, bottom up
        self.batches: list[_Batch] = []
        layers = image["layers"]
        indexes = layer_batches(layers, batch_bytes)
        for batch in indexes[:-1]:
            below = [layer["digest"] for layer in layers[: batch[-1] + 1]]
            stand_in = stand_in_config(json.loads(config), below, label)
            self.stand_ins.append("sha256:" + hashlib.sha256(stand_in).hexdigest())
            manifest = [
                {
                    "Config": blob_member_name(self.stand_ins[-1]),
                    "RepoTags": None,
                    "Layers": [blob_member_name(d) for d in below],
                }
            ]
            config_member = (blob_member_name(self.stand_ins[-1]), stand_in)
            mine = [layers[i] for i in batch]
            self.batches.append(_Batch(mine, config_member, json.dumps(manifest).encode()))
        # The last batch: the real config and manifest.json (with the tags).
        [(_name, manifest_json)] = archive_metadata(entry)
        config_member = (blob_member_name(image["config"]["digest"]), config)
        mine = [layers[i] for i in indexes[-1]]
        self.batches.append(_Batch(mine, config_member, manifest_json))

    def length(self) -> int:
        return sum(batch.length() for batch in self.batches)

    def run(self, done_when: list[str]) -> None:
        """Every batch into the engine; the stand-in images removed afterwards (also on
        failure). Raises what the fetch or the engine raised; PartialLoadRefused when the
        engine refused a batch for the layers it leaves out."""
        try:
            self._run(done_when)
        finally:
            for image_id in self.stand_ins:
                # Left behind, it is an untagged image the host's cleanup prunes.
                with contextlib.suppress(DockerCommandError, OSError):
                    remove_image(self.socket_path, image_id)

    def _run(self, done_when: list[str]) -> None:
        waiting: tuple[ImageLoad, list[str]] | None = None  # sent whole, answer not read yet
        try:
            for number, batch in enumerate(self.batches):
                load = ImageLoad(self.socket_path, batch.length())
                try:
                    load.send(lambda fd, batch=batch: self._layers(fd, batch))
                    if waiting is not None:
                        # Read once this batch's layers are in: the engine unpacked meanwhile.
                        earlier, waiting = waiting, None
                        _finish(*earlier, self.left_out(number - 1))
                    load.send(lambda fd, batch=batch: _write(fd, batch.tail))
                except BaseException:
                    load.close()  # a cut archive: the engine loads nothing of it
                    raise
                if number == len(self.batches) - 1:
                    _finish(load, done_when, self.left_out(number))
                    return
                waiting = (load, [f"Loaded image ID: {self.stand_ins[number]}"])
        finally:
            if waiting is not None:
                # Its archive is whole: the engine registers it whatever happens now; wait for
                # that before the stand-ins are removed.
                with contextlib.suppress(DockerCommandError, OSError):
                    _finish(*waiting, [])

    def left_out(self, number: int) -> list[str]:
        """The layers below batch ``number``, named by its manifest but not in its archive."""
        return [layer["digest"] for batch in self.batches[:number] for layer in batch.layers]

    def _layers(self, fd: int, batch: _Batch) -> int:
        """The batch's directories and layers (each exactly its size, or fetch raises)."""

        def out(data: memoryview | bytes) -> None:
            write_all(fd, memoryview(data))

        sent = _write(fd, batch.head)
        for layer in batch.layers:
            sent += _write(fd, _tar_header(blob_member_name(layer["digest"]), layer["size"]))
            self.fetch(layer, out)
            sent += layer["size"] + _write(fd, bytes((-layer["size"]) % BLOCK))
        return sent


def _write(fd: int, data: bytes) -> int:
    write_all(fd, memoryview(data))
    return len(data)


def _finish(load: ImageLoad, done_when: list[str], left_out: list[str]) -> None:
    """Read ``load``'s answer and close it. A refusal that names a layer ``left_out`` of the
    archive (the containerd image store: "content digest sha256:...: not found") is
    PartialLoadRefused; any other refusal is the engine's error, raised as it is."""
    try:
        load.finish(done_when)
    except DockerCommandError as exc:
        said = str(exc)
        stalled = isinstance(exc, EngineStalled)
        if not stalled and any(digest.split(":")[-1] in said for digest in left_out):
            raise PartialLoadRefused(said) from None
        raise
    finally:
        load.close()
