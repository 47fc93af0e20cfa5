"""Incremental restore: which of an entry's layers the daemon already holds.

``docker load`` registers a layer only when the daemon lacks its chain (the layer on top of the
same parents); for a chain it holds, it never opens the layer's file in the archive. So an
archive may leave those ``layer.tar`` members out while manifest.json still names them, and the
engine loads the same image (checked on engine 20.10 with the legacy image store; an engine
with the containerd image store wants every blob and refuses, and restore then sends the whole
archive). A CI image mostly shares a big base with the images already present, so a restore
then sends only what the daemon lacks.

The chains held are worked out from what every image in the daemon lists in ``RootFS.Layers``
(the chain ID of a layer is defined by the image spec from the diff_ids below and including it).
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable
from typing import Any

from .. import docker_api
from .store import entry_blobs

# Bounds on asking the daemon: a host with thousands of images costs ~0.5 ms per inspect.
MAX_IMAGES_INSPECTED = 2000
INSPECT_BUDGET = 3.0  # seconds; past it, whatever was found so far is used


def chain_ids(diff_ids: Iterable[str]) -> list[str]:
    """The chain ID of each layer of an image, bottom up (OCI image spec: ChainID(L0) =
    DiffID(L0), ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln)))."""
    chains: list[str] = []
    for diff_id in diff_ids:
        if not chains:
            chains.append(diff_id)
        else:
            text = f"{chains[-1]} {diff_id}".encode()
            chains.append("sha256:" + hashlib.sha256(text).hexdigest())
    return chains


def entry_chains(entry: dict[str, Any]) -> set[str]:
    """Every chain ID the entry's images are built of."""
    wanted: set[str] = set()
    for image in entry["images"]:
        wanted.update(chain_ids(layer["diff_id"] for layer in image["layers"]))
    return wanted


def held_chains(socket_path: str, wanted: set[str]) -> set[str]:
    """The chains of ``wanted`` that images in the daemon are built of.

    Stops once every wanted chain was found, after MAX_IMAGES_INSPECTED images or after
    INSPECT_BUDGET seconds (what was found until then still holds). An image removed while we
    look is skipped; a chain found here that is gone by the load makes the engine refuse the
    partial archive, and restore sends the whole one."""
    found: set[str] = set()
    deadline = time.monotonic() + INSPECT_BUDGET
    for count, image_id in enumerate(docker_api.list_image_ids(socket_path)):
        if found == wanted or count >= MAX_IMAGES_INSPECTED or time.monotonic() > deadline:
            break
        info = docker_api.inspect_image(socket_path, image_id)
        if info is None:
            continue
        layers = (info.get("RootFS") or {}).get("Layers") or []
        found.update(wanted.intersection(chain_ids(layers)))
    return found


def blobs_held(entry: dict[str, Any], held: set[str]) -> dict[str, int]:
    """digest -> size of the entry's layer blobs every image that uses them can do without:
    the daemon holds the layer's chain wherever the layer appears. Configs and manifests are
    always sent."""
    needed: set[str] = set()
    maybe: set[str] = set()
    for image in entry["images"]:
        needed.add(image["config"]["digest"])
        needed.update(manifest["digest"] for manifest in image.get("manifests") or [])
        chains = chain_ids(layer["diff_id"] for layer in image["layers"])
        for layer, chain in zip(image["layers"], chains):
            (maybe if chain in held else needed).add(layer["digest"])
    sizes = entry_blobs(entry)
    return {digest: sizes[digest] for digest in maybe - needed}
