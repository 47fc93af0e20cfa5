"""The fleet tier's layout in an OCI registry, shared by push, pull and prune.

A key is a tag of the repository. Its manifest is an OCI image index with one OCI image manifest
per entry image: config = the stored config blob, layers = the stored layer blobs (uncompressed,
digest = diff_id), so each image's ID is the one the entry holds. The index's annotations say
whose it is (``io.runnerkeep.key``: every key's index is a distinct digest, so deleting one
never takes another key's tag), when it was pushed, and where it was built. The layout is
documented in docs/cache-format.md ("Fleet tier (remote) layout").
"""

from __future__ import annotations

import calendar
import json
import re
import time
from typing import Any

from ..errors import CacheMiss

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
DOCKER_CONFIG = "application/vnd.docker.container.image.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
DOCKER_LAYER = "application/vnd.docker.image.rootfs.diff.tar"
OCI_LAYER_GZIP = OCI_LAYER + "+gzip"
DOCKER_LAYER_GZIP = DOCKER_LAYER + ".gzip"

INDEX_TYPES = (OCI_INDEX, DOCKER_LIST)
MANIFEST_TYPES = (OCI_MANIFEST, DOCKER_MANIFEST)
ACCEPT_ANY = INDEX_TYPES + MANIFEST_TYPES
CONFIG_TYPES = (OCI_CONFIG, DOCKER_CONFIG)
PLAIN_LAYER_TYPES = (OCI_LAYER, DOCKER_LAYER)
GZIP_LAYER_TYPES = (OCI_LAYER_GZIP, DOCKER_LAYER_GZIP)

KEY_ANNOTATION = "io.runnerkeep.key"
PUSHED_ANNOTATION = "io.runnerkeep.pushed"
TAGS_ANNOTATION = "io.runnerkeep.tags"
PROVENANCE_PREFIX = "io.runnerkeep.provenance."
PROVENANCE_FIELDS = ("host", "repository", "ref", "commit", "job")

# What a registry may serve us, bounded: a hostile or broken one cannot make a pull hold
# unbounded JSON, fetch thousands of images or walk a deep tree.
MAX_IMAGES = 64
MAX_LAYERS = 512
MAX_TAGS = 64
MAX_TAG_CHARS = 255
MAX_ANNOTATION_CHARS = 1024
# A Docker reference as `docker tag` takes it: [host[:port]/]path[:tag]; no digest form.
TAG_RE = re.compile(
    r"(?:[a-zA-Z0-9.-]+(?::[0-9]{1,5})?/)?[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
    r"(?:/[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*)*:[A-Za-z0-9_][A-Za-z0-9._-]{0,127}"
)
RFC3339_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


class RemoteCacheMiss(CacheMiss):
    """The fleet tier has no usable copy of a key (exit 3: the job rebuilds). ``corrupt``: what
    the registry served, or the local blob meant for it, failed verification."""

    def __init__(self, reason: str, corrupt: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.corrupt = corrupt


class BadRemoteData(Exception):
    """Internal: something the registry served is off (turned into RemoteCacheMiss)."""


def rfc3339(when: float) -> str:
    return time.strftime(RFC3339_FORMAT, time.gmtime(when))


def parse_rfc3339(text: Any) -> float | None:
    """Unix time of ``YYYY-MM-DDTHH:MM:SS[.frac]Z``; None for anything else."""
    if not isinstance(text, str) or not text.endswith("Z") or len(text) > 40:
        return None
    whole, _dot, frac = text[:-1].partition(".")
    if frac and not frac.isdigit():
        return None
    try:
        return calendar.timegm(time.strptime(whole, RFC3339_FORMAT[:-1]))
    except ValueError:
        return None


def parse_json_object(data: bytes, what: str) -> dict[str, Any]:
    """A JSON object from the registry, or BadRemoteData naming ``what``."""
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadRemoteData(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise BadRemoteData(f"{what} is not a JSON object")
    return value


def descriptor(value: Any, what: str, max_size: int | None = None) -> dict[str, Any]:
    """A checked OCI descriptor: {mediaType, digest, size, ...}."""
    if not isinstance(value, dict):
        raise BadRemoteData(f"{what}: descriptor is not an object")
    digest, size, media = value.get("digest"), value.get("size"), value.get("mediaType")
    if not isinstance(digest, str) or not re.fullmatch(r"sha256:[0-9a-f]{64}", digest):
        raise BadRemoteData(f"{what}: digest {str(digest)[:80]!r} is not a sha256 digest")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise BadRemoteData(f"{what} {digest}: bad size {size!r}")
    if max_size is not None and size > max_size:
        raise BadRemoteData(f"{what} {digest}: {size} bytes, more than the {max_size} allowed")
    if media is not None and not isinstance(media, str):
        raise BadRemoteData(f"{what} {digest}: bad media type")
    return value


def media_type_of(document: dict[str, Any], served: str | None) -> str:
    """A manifest's media type: its own ``mediaType`` field, else what the registry served it
    as. The two must agree when both are there (a mismatch is a confusion attack)."""
    own = document.get("mediaType")
    if own is not None and not isinstance(own, str):
        raise BadRemoteData("manifest has a non-string mediaType")
    if own and served and served in ACCEPT_ANY and own != served:
        raise BadRemoteData(f"manifest says it is {own} but was served as {served}")
    return own or served or ""


def tags_annotation(value: Any) -> list[str]:
    """The original tags of an image (JSON list in ``io.runnerkeep.tags``), each checked as a
    reference ``docker tag`` takes: a restore re-tags the daemon with them."""
    if value is None:
        return []
    if not isinstance(value, str) or len(value) > MAX_TAGS * (MAX_TAG_CHARS + 4):
        raise BadRemoteData(f"annotation {TAGS_ANNOTATION} is not a short JSON string")
    try:
        tags = json.loads(value)
    except (ValueError, RecursionError):
        raise BadRemoteData(f"annotation {TAGS_ANNOTATION} is not JSON") from None
    if not isinstance(tags, list) or len(tags) > MAX_TAGS:
        raise BadRemoteData(f"annotation {TAGS_ANNOTATION} is not a list of at most {MAX_TAGS}")
    for tag in tags:
        if not isinstance(tag, str) or len(tag) > MAX_TAG_CHARS or not TAG_RE.fullmatch(tag):
            raise BadRemoteData(f"annotation {TAGS_ANNOTATION} holds a bad tag {str(tag)[:80]!r}")
    return sorted(set(tags))


def provenance_annotations(provenance: dict[str, Any] | None) -> dict[str, str]:
    """``io.runnerkeep.provenance.FIELD`` for each known, non-empty field (strings, bounded)."""
    found = {}
    for field in PROVENANCE_FIELDS:
        value = (provenance or {}).get(field)
        if value is None or value == "":
            continue
        found[PROVENANCE_PREFIX + field] = str(value)[:MAX_ANNOTATION_CHARS]
    return found


def index_key(index: dict[str, Any]) -> str | None:
    """The key a runnerkeep index was pushed for (None: not runnerkeep's)."""
    annotations = index.get("annotations")
    if not isinstance(annotations, dict):
        return None
    key = annotations.get(KEY_ANNOTATION)
    return key if isinstance(key, str) else None


def index_pushed(index: dict[str, Any]) -> float | None:
    annotations = index.get("annotations")
    if not isinstance(annotations, dict):
        return None
    return parse_rfc3339(annotations.get(PUSHED_ANNOTATION))


def canonical(document: dict[str, Any]) -> bytes:
    """The bytes pushed for a manifest or index: compact JSON with sorted keys, so the same
    entry pushed twice gives the same manifest digests (only the index's time differs)."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
