"""What images an archive holds, every member checked against the archive's own metadata.

Two layouts: the legacy docker-archive (``manifest.json`` naming each image's config and
``layer.tar`` files) and the OCI image layout (``index.json`` -> indexes -> manifests ->
config and layer blobs under ``blobs/sha256/``). The members come from tar_reader, already
hashed; nothing here reads the stream.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from .tar_reader import (
    ArchiveError,
    Member,
    StreamStats,
    blob_member_name,
    clean_name,
    digest_from_blob_name,
)

INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
UNCOMPRESSED_LAYER_TYPES = (
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
)
LEGACY_LAYER_TYPE = "application/vnd.docker.image.rootfs.diff.tar"
MAX_LINK_HOPS = 16
# A JSON member (manifest, index, config) is parsed whole in memory; real ones are a few
# hundred KiB at most (a config with a long history).
MAX_JSON_MEMBER = 64 << 20


@dataclass
class ParsedArchive:
    format: str  # "docker-archive" or "oci"
    images: list[dict[str, Any]]
    blobs: dict[str, Member]  # digest -> member holding it
    bytes_read: int = 0
    lost_needed: bool = False  # a needed blob was not kept: parse again without guessing


class _Members:
    """The archive's regular members by name, reached through its links too."""

    def __init__(self, stats: StreamStats) -> None:
        self.by_name = stats.members
        self.links = stats.links

    def get(self, path: str, what: str) -> Member:
        path = clean_name(path)
        for _ in range(MAX_LINK_HOPS):  # follow link chains, bounded
            if path in self.by_name:
                return self.by_name[path]
            if path in self.links:
                path = self.links[path]
                continue
            break
        raise ArchiveError(f"the archive lacks {what} '{path}' (missing member)")

    def has_blob(self, digest: str) -> bool:
        try:
            self.get(blob_member_name(digest), "blob")
            return True
        except ArchiveError:
            return False

    def blob(self, descriptor: dict, what: str) -> Member:
        """The member an OCI descriptor points to, its size checked against the descriptor."""
        try:
            digest, size = descriptor["digest"], descriptor["size"]
        except (KeyError, TypeError):
            raise ArchiveError(f"{what}: descriptor lacks digest or size") from None
        member = self.get(blob_member_name(digest), what)
        if member.size != size:
            raise ArchiveError(
                f"{what} {digest}: descriptor says {size} bytes, archive has {member.size}"
            )
        return member


class _GuessedWrong(Exception):
    """A JSON member the read only hashed on a wrong guess: the caller reads again."""


def analyze(stats: StreamStats) -> ParsedArchive:
    """Check the archive's members against its own metadata and describe its images."""
    members = _Members(stats)
    _check_blob_names(stats.members)
    try:
        archive_format, images = _read_images(members)
    except _GuessedWrong:
        return ParsedArchive("", [], {}, stats.bytes_read, lost_needed=True)
    blobs: dict[str, Member] = {}
    lost_needed = False
    for image in images:
        for digest in _image_blob_digests(image):
            member = image["_members"][digest]
            blobs.setdefault(digest, member)
            if member.lost:
                lost_needed = True
        del image["_members"]
    return ParsedArchive(archive_format, images, blobs, stats.bytes_read, lost_needed)


def _check_blob_names(by_name: dict[str, Member]) -> None:
    """A member named by a digest (blobs/sha256/HEX) must hash to it."""
    for name, member in by_name.items():
        named = digest_from_blob_name(name)
        if not named:
            continue
        if not named.startswith("sha256:"):
            raise ArchiveError(f"unsupported digest algorithm in blob name '{name}'")
        if member.digest != named:
            raise ArchiveError(
                f"blob '{name}' does not match its name: its sha256 is {member.digest}"
            )


def _read_images(members: _Members) -> tuple[str, list[dict[str, Any]]]:
    """(layout, images): OCI when there is an index.json, else the legacy manifest.json."""
    by_name = members.by_name
    legacy_manifest = None
    if "manifest.json" in by_name:
        legacy_manifest = _json_member(by_name["manifest.json"], "manifest.json")
        if not isinstance(legacy_manifest, list):
            raise ArchiveError("manifest.json is not a list")
    if "index.json" in by_name:
        archive_format, images = "oci", _analyze_oci(members, legacy_manifest)
    elif legacy_manifest is not None:
        archive_format, images = "docker-archive", _analyze_legacy(legacy_manifest, members)
    else:
        raise ArchiveError(
            "the archive has neither manifest.json nor index.json (empty, cut short or not an "
            "image archive)"
        )
    if not images:
        raise ArchiveError("the archive holds no images")
    return archive_format, images


def _image_blob_digests(image: dict[str, Any]) -> list[str]:
    digests = [image["config"]["digest"]]
    digests += [layer["digest"] for layer in image["layers"]]
    digests += [manifest["digest"] for manifest in image.get("manifests") or []]
    return digests


def _read_kept(member: Member, what: str) -> bytes:
    """A member's bytes from its temp file, or from the store's blob when it was only hashed
    because the blob is stored (checked again: the stored copy may have rotted)."""
    path = member.temp_path or member.stored_path
    if path is None:
        raise ArchiveError(f"{what} was not kept (internal error)")
    try:
        with open(path, "rb") as handle:
            raw = handle.read(member.size + 1)
    except OSError as exc:
        raise ArchiveError(f"{what} could not be read back from {path}: {exc.strerror}") from None
    if member.temp_path is None and "sha256:" + hashlib.sha256(raw).hexdigest() != member.digest:
        raise ArchiveError(
            f"{what} matches the stored blob {member.digest}, whose copy in the store is "
            "damaged: run `runnerkeep cache verify --repair`, then try again"
        )
    return raw


def _json_member(member: Member, what: str) -> Any:
    if member.size > MAX_JSON_MEMBER:
        raise ArchiveError(
            f"{what} is {member.size} bytes, more than any real one ({MAX_JSON_MEMBER}): "
            "not an archive docker or skopeo writes"
        )
    if member.data is None:
        if member.lost:
            raise _GuessedWrong(what)
        raw = _read_kept(member, what)
    else:
        raw = member.data
    try:
        return json.loads(raw)
    except ValueError as exc:
        raise ArchiveError(f"{what} is not valid JSON: {exc}") from None


def _config_diff_ids(config_member: Member, what: str) -> list[str]:
    config = _json_member(config_member, what)
    try:
        diff_ids = config["rootfs"]["diff_ids"]
        if not isinstance(diff_ids, list):
            raise TypeError
    except (KeyError, TypeError):
        raise ArchiveError(f"{what} has no rootfs.diff_ids") from None
    return diff_ids


def _check_layer_count(image_id: str, listed: int, diff_ids: list[str]) -> None:
    if len(diff_ids) != listed:
        raise ArchiveError(
            f"image {image_id}: manifest lists {listed} layers, config has {len(diff_ids)} diff_ids"
        )


# ---------------------------------------------------------------------------------------
# the legacy docker-archive
# ---------------------------------------------------------------------------------------
def _analyze_legacy(manifest: list, members: _Members) -> list[dict[str, Any]]:
    images = []
    for item in manifest:
        try:
            config_path, layer_paths = item["Config"], item["Layers"]
        except (KeyError, TypeError):
            raise ArchiveError("manifest.json entry lacks Config or Layers") from None
        config = members.get(config_path, "image config")
        image_id = config.digest
        diff_ids = _config_diff_ids(config, f"config {config_path}")
        _check_layer_count(image_id, len(layer_paths), diff_ids)
        image_members = {image_id: config}
        layers = []
        for index, (path, diff_id) in enumerate(zip(layer_paths, diff_ids)):
            layer = members.get(path, f"layer {index} of image {image_id}")
            # Legacy layer.tar files are uncompressed, so their sha256 is the diff_id.
            if layer.digest != diff_id:
                raise ArchiveError(
                    f"layer {index} of image {image_id} ({path}) has sha256 {layer.digest}, "
                    f"the config says {diff_id}"
                )
            layers.append(
                {
                    "digest": layer.digest,
                    "size": layer.size,
                    "diff_id": diff_id,
                    "media_type": LEGACY_LAYER_TYPE,
                }
            )
            image_members[layer.digest] = layer
        images.append(
            {
                "id": image_id,
                "tags": list(item.get("RepoTags") or []),
                "config": {"digest": image_id, "size": config.size},
                "layers": layers,
                "manifests": [],
                "_members": image_members,
            }
        )
    return images


# ---------------------------------------------------------------------------------------
# the OCI image layout
# ---------------------------------------------------------------------------------------
def _analyze_oci(members: _Members, legacy_manifest: list | None) -> list[dict[str, Any]]:
    index = _json_member(members.by_name["index.json"], "index.json")
    # docker save (engine >= 25) writes both layouts: manifest.json carries the RepoTags.
    tags_by_config: dict[str, list[str]] = {}
    for item in legacy_manifest or []:
        if isinstance(item, dict) and item.get("Config"):
            tags_by_config[clean_name(item["Config"])] = list(item.get("RepoTags") or [])
    images: list[dict[str, Any]] = []
    _walk_index(members, index.get("manifests") or [], [], False, {}, tags_by_config, images)
    return images


def _walk_index(
    members: _Members,
    descriptors: list,
    parents: list[dict[str, Any]],
    nested: bool,
    annotations: dict,
    tags_by_config: dict[str, list[str]],
    images: list[dict[str, Any]],
) -> None:
    """Descend through image indexes to the image manifests, appending one image each."""
    for descriptor in descriptors:
        media_type = descriptor.get("mediaType", "")
        merged = {**annotations, **(descriptor.get("annotations") or {})}
        digest = descriptor.get("digest")
        if nested and digest and not members.has_blob(digest):
            continue  # other platforms of a multi-platform image are not exported
        if media_type in INDEX_TYPES:
            member = members.blob(descriptor, "image index")
            child = _json_member(member, f"index {descriptor['digest']}")
            _walk_index(
                members,
                child.get("manifests") or [],
                [*parents, _parent_manifest(descriptor, member)],
                True,
                merged,
                tags_by_config,
                images,
            )
        elif media_type in MANIFEST_TYPES or not media_type:
            member = members.blob(descriptor, "image manifest")
            manifest = _json_member(member, f"manifest {descriptor['digest']}")
            if (merged.get("vnd.docker.reference.type") or "") == "attestation-manifest":
                continue
            image = _oci_image(manifest, descriptor, member, parents, members)
            tags = tags_by_config.get(blob_member_name(image["id"]))
            image["tags"] = tags if tags is not None else _tags_from_annotations(merged)
            images.append(image)


def _parent_manifest(descriptor: dict, member: Member) -> dict[str, Any]:
    return {
        "digest": member.digest,
        "size": member.size,
        "media_type": descriptor.get("mediaType", ""),
        "annotations": descriptor.get("annotations") or {},
        "_member": member,
    }


def _oci_image(
    manifest: dict,
    descriptor: dict,
    member: Member,
    parents: list[dict[str, Any]],
    members: _Members,
) -> dict[str, Any]:
    """One image of an OCI manifest (without its tags): config, layers checked against the
    config's diff_ids, and the chain of manifests that leads to it."""
    config = members.blob(manifest.get("config") or {}, "image config")
    image_id = config.digest
    image_members = {image_id: config, member.digest: member}
    layers = _oci_layers(manifest, config, members, image_members)
    chain = []
    for parent in parents:
        image_members[parent["digest"]] = parent["_member"]
        chain.append({k: v for k, v in parent.items() if k != "_member"})
    chain.append(
        {
            "digest": member.digest,
            "size": member.size,
            "media_type": descriptor.get("mediaType") or MANIFEST_TYPES[0],
            "annotations": descriptor.get("annotations") or {},
        }
    )
    return {
        "id": image_id,
        "tags": [],
        "config": {"digest": image_id, "size": config.size},
        "layers": layers,
        "manifests": chain,
        "_members": image_members,
    }


def _oci_layers(
    manifest: dict, config: Member, members: _Members, image_members: dict[str, Member]
) -> list[dict[str, Any]]:
    image_id = config.digest
    diff_ids = _config_diff_ids(config, f"config {image_id}")
    layer_descriptors = manifest.get("layers") or []
    _check_layer_count(image_id, len(layer_descriptors), diff_ids)
    layers = []
    for index, (descriptor, diff_id) in enumerate(zip(layer_descriptors, diff_ids)):
        layer = members.blob(descriptor, f"layer {index} of image {image_id}")
        media_type = descriptor.get("mediaType", "")
        if media_type in UNCOMPRESSED_LAYER_TYPES and layer.digest != diff_id:
            raise ArchiveError(
                f"layer {index} of image {image_id} has sha256 {layer.digest}, "
                f"the config says {diff_id}"
            )
        layers.append(
            {
                "digest": layer.digest,
                "size": layer.size,
                "diff_id": diff_id,
                "media_type": media_type,
            }
        )
        image_members[layer.digest] = layer
    return layers


def _tags_from_annotations(annotations: dict) -> list[str]:
    """Tags of an OCI image without a manifest.json: the containerd image name, else a ref
    name that looks like a reference (not a bare tag such as 'latest')."""
    name = annotations.get("io.containerd.image.name") or ""
    ref_name = annotations.get("org.opencontainers.image.ref.name") or ""
    if name:
        return [familiar_ref(name)]
    if ":" in ref_name or "/" in ref_name:
        return [familiar_ref(ref_name)]
    return []


def familiar_ref(ref: str) -> str:
    """'docker.io/library/foo:1' -> 'foo:1'; 'foo' -> 'foo:latest' (how RepoTags spell it)."""
    ref = ref.strip()
    if "@" in ref:
        return ref
    name, tag = ref, "latest"
    last = ref.rsplit("/", 1)[-1]
    if ":" in last:
        name, tag = ref.rsplit(":", 1)
    for prefix in (
        "docker.io/library/",
        "index.docker.io/library/",
        "docker.io/",
        "index.docker.io/",
    ):
        if name.startswith(prefix):
            name = name[len(prefix) :]
            break
    return f"{name}:{tag}"
