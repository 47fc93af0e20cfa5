"""Streaming read and write of image archives: the legacy docker-archive and the OCI layout.

The reader is a small tar parser over a raw file descriptor: 512-byte headers, member data
read with ``readinto`` into one reused 1 MiB buffer, every byte hashed once while it goes to a
temp file (or only hashed, when the blob is already stored). tarfile's stream mode copies
every chunk twice and hides how far the stream got, which is what a short-stream error needs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import posixpath
import queue
import tarfile
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable

from ..errors import RunnerkeepError
from .store import Store, _mkstemp, _write_all, entry_blobs, is_no_space

BUFSIZE = 1 << 20
SMALL_MEMBER = 1 << 20  # members up to this size are kept in memory (configs, manifests, json)
BLOCK = 512
HASH_OFFLOAD_MIN = 256 * 1024

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

Progress = Callable[[int], None]


class ArchiveError(RunnerkeepError):
    """The archive is short, malformed, or its content does not match its own metadata."""


class NoSpaceWhileWriting(RunnerkeepError):
    """ENOSPC/EDQUOT while writing a temp blob."""


@dataclass
class Member:
    """A regular file seen in the stream."""

    name: str
    size: int
    digest: str
    data: bytes | None = None  # small members
    temp_path: str | None = None  # large members written to the store's temp area
    reused: bool = False  # large member only hashed: the blob is already stored
    lost: bool = False  # hashed without writing on a guess that turned out wrong


@dataclass
class ParsedArchive:
    format: str  # "docker-archive" or "oci"
    images: list[dict[str, Any]]
    blobs: dict[str, Member]  # digest -> member holding it
    bytes_read: int = 0
    lost_needed: bool = False  # a needed blob was not kept: parse again without guessing


@dataclass
class StreamStats:
    bytes_read: int = 0
    bytes_written: int = 0
    members: dict[str, Member] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------
# tar reading
# ---------------------------------------------------------------------------------------
class _Reader:
    """Buffered reader over a raw fd with exact-size reads and an EOF that is an error."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.buf = bytearray(BUFSIZE)
        self.view = memoryview(self.buf)
        self.pos = 0
        self.end = 0
        self.total = 0

    def _fill(self) -> int:
        n = self.raw.readinto(self.view) or 0
        self.pos, self.end = 0, n
        self.total += n
        return n

    def read_exact(self, n: int) -> bytes:
        out = bytearray()
        while len(out) < n:
            if self.pos == self.end and not self._fill():
                raise ArchiveError(
                    f"the archive stream ended early after {self.total} bytes "
                    "(truncated: the daemon or the pipe stopped mid-archive)"
                )
            take = min(n - len(out), self.end - self.pos)
            out += self.view[self.pos : self.pos + take]
            self.pos += take
        return bytes(out)

    def chunks(self, n: int) -> Iterable[memoryview]:
        """Yield views covering the next n bytes; each view is valid until the next one."""
        remaining = n
        while remaining:
            if self.pos == self.end and not self._fill():
                raise ArchiveError(
                    f"the archive stream ended early after {self.total} bytes "
                    "(truncated inside a member)"
                )
            take = min(remaining, self.end - self.pos)
            yield self.view[self.pos : self.pos + take]
            self.pos += take
            remaining -= take

    def skip(self, n: int) -> None:
        for _ in self.chunks(n):
            pass

    def drain(self) -> None:
        while self._fill():
            pass


def _octal(field_bytes: bytes) -> int:
    if field_bytes and field_bytes[0] & 0x80:  # base-256 (GNU) for sizes >= 8 GiB
        value = field_bytes[0] & 0x7F
        for b in field_bytes[1:]:
            value = (value << 8) | b
        return value
    text = field_bytes.split(b"\0", 1)[0].strip()
    try:
        return int(text, 8) if text else 0
    except ValueError:
        raise ArchiveError(f"not a tar archive (bad numeric header field {text[:12]!r})") from None


def _parse_pax(data: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    pos = 0
    while pos < len(data):
        space = data.index(b" ", pos)
        length = int(data[pos:space])
        record = data[space + 1 : pos + length - 1]
        key, _, value = record.partition(b"=")
        out[key.decode()] = value.decode("utf-8", "replace")
        pos += length
    return out


def _clean_name(name: str) -> str:
    name = posixpath.normpath(name.lstrip("/")) if name else name
    return "" if name == "." else name


def read_archive_stream(
    raw: BinaryIO,
    store: Store,
    area: str,
    reuse_candidates: dict[int, set[str]] | None = None,
    progress: Progress | None = None,
    hash_pool: concurrent.futures.Executor | None = None,
) -> StreamStats:
    """Read a tar stream once: hash every regular member, keep small ones in memory, write large
    ones to temp files in ``area`` unless the blob is already stored.

    ``reuse_candidates`` maps a size to digests already stored that a legacy ``layer.tar`` of
    that size may be (legacy member names do not carry digests); such a member is only hashed.
    If the guess is wrong the member is marked lost and the caller reads the stream again.
    """
    reader = _Reader(raw)
    stats = StreamStats()
    candidates = reuse_candidates or {}
    fsync_pool = concurrent.futures.ThreadPoolExecutor(max_workers=1)
    pending: list[concurrent.futures.Future] = []
    pax: dict[str, str] = {}
    long_name: str | None = None
    long_link: str | None = None
    last_report = 0.0
    try:
        while True:
            header = reader.read_exact(BLOCK)
            if header == b"\0" * BLOCK:
                break  # end-of-archive marker; the rest (second zero block, padding) drained
            if _octal(header[148:156]) != _header_checksum(header):
                where = reader.total - (reader.end - reader.pos) - BLOCK
                raise ArchiveError(f"bad tar header checksum at byte {where}")
            typeflag = header[156:157]
            size = _octal(header[124:136])
            name = header[0:100].split(b"\0", 1)[0].decode("utf-8", "replace")
            if header[257:262] == b"ustar":
                prefix = header[345:500].split(b"\0", 1)[0].decode("utf-8", "replace")
                if prefix:
                    name = prefix + "/" + name
            linkname = header[157:257].split(b"\0", 1)[0].decode("utf-8", "replace")
            padded = (size + BLOCK - 1) // BLOCK * BLOCK
            if typeflag in (b"x", b"g", b"L", b"K"):
                data = reader.read_exact(padded)[:size]
                if typeflag == b"x":
                    pax = _parse_pax(data)
                elif typeflag == b"L":
                    long_name = data.rstrip(b"\0").decode("utf-8", "replace")
                elif typeflag == b"K":
                    long_link = data.rstrip(b"\0").decode("utf-8", "replace")
                continue
            name = pax.get("path") or long_name or name
            linkname = pax.get("linkpath") or long_link or linkname
            if "size" in pax:
                size = int(pax["size"])
                padded = (size + BLOCK - 1) // BLOCK * BLOCK
            pax, long_name, long_link = {}, None, None
            name = _clean_name(name)
            if typeflag in (b"0", b"\0", b"7"):
                member = _read_member(
                    reader,
                    name,
                    size,
                    store,
                    area,
                    candidates,
                    stats,
                    fsync_pool,
                    pending,
                    hash_pool,
                )
                stats.members[name] = member
                reader.skip(padded - size)
            else:
                if typeflag == b"2":  # symlink: relative to the member's directory
                    stats.links[name] = _clean_name(
                        posixpath.join(posixpath.dirname(name), linkname)
                    )
                elif typeflag == b"1":  # hard link: relative to the archive root
                    stats.links[name] = _clean_name(linkname)
                reader.skip(padded)
            now = time.monotonic()
            if progress and now - last_report > 0.2:
                progress(reader.total)
                last_report = now
        reader.drain()
        for fut in pending:
            fut.result()
    except BaseException:
        for fut in pending:
            fut.cancel()
        raise
    finally:
        fsync_pool.shutdown(wait=True)
    stats.bytes_read = reader.total
    if progress:
        progress(reader.total)
    return stats


def _header_checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 32 + sum(header[156:])


def _read_member(
    reader: _Reader,
    name: str,
    size: int,
    store: Store,
    area: str,
    candidates: dict[int, set[str]],
    stats: StreamStats,
    fsync_pool: concurrent.futures.Executor,
    pending: list,
    hash_pool: concurrent.futures.Executor | None,
) -> Member:
    h = hashlib.sha256()
    if size <= SMALL_MEMBER:
        data = reader.read_exact(size)
        h.update(data)
        return Member(name, size, "sha256:" + h.hexdigest(), data=data)
    named = _digest_from_blob_name(name)
    if named and store.has_blob(named):
        mode = "reuse"
    elif not named and size in candidates:
        mode = "guess"
    else:
        mode = "write"
    if mode != "write":
        for chunk in reader.chunks(size):
            h.update(chunk)
        digest = "sha256:" + h.hexdigest()
        lost = mode == "guess" and digest not in candidates[size]
        return Member(name, size, digest, reused=not lost, lost=lost)
    fd, path = _mkstemp(area)
    try:
        for chunk in reader.chunks(size):
            # Hash on a second thread while this one writes: hashlib and os.write both
            # release the GIL, so the two overlap (ENVIRONMENT.md: 0.43 -> 0.82 GB/s).
            # Pipe reads are often 64 KiB (the daemon is the slow side): handing those to a
            # thread costs more than hashing them here, so only large chunks go to the pool.
            big = hash_pool is not None and len(chunk) >= HASH_OFFLOAD_MIN
            fut = hash_pool.submit(h.update, chunk) if big else None
            if fut is None:
                h.update(chunk)
            try:
                _write_all(fd, chunk)
            except OSError as exc:
                if fut:
                    fut.result()
                if is_no_space(exc):
                    raise NoSpaceWhileWriting(
                        f"no space left in the cache directory {store.root} while writing "
                        f"{name} ({size} bytes): {exc.strerror}"
                    ) from None
                raise
            if fut:
                fut.result()
            stats.bytes_written += len(chunk)
    except BaseException:
        os.close(fd)
        raise

    def _sync_close(fd: int = fd) -> None:
        # fsync off the reading thread so the stream keeps flowing; closed either way.
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    pending.append(fsync_pool.submit(_sync_close))
    return Member(name, size, "sha256:" + h.hexdigest(), temp_path=path)


def _digest_from_blob_name(name: str) -> str | None:
    parts = name.split("/")
    if len(parts) == 3 and parts[0] == "blobs":
        return f"{parts[1]}:{parts[2]}"
    return None


# ---------------------------------------------------------------------------------------
# analysis: what images the archive holds, all checks
# ---------------------------------------------------------------------------------------
def analyze(stats: StreamStats) -> ParsedArchive:
    """Check the archive's members against its own metadata and describe its images."""
    members = stats.members

    def lookup(path: str, what: str) -> Member:
        path = _clean_name(path)
        for _ in range(16):  # follow link chains, bounded
            if path in members:
                return members[path]
            if path in stats.links:
                path = stats.links[path]
                continue
            break
        raise ArchiveError(f"the archive lacks {what} '{path}' (missing member)")

    for name, member in members.items():
        named = _digest_from_blob_name(name)
        if named:
            if not named.startswith("sha256:"):
                raise ArchiveError(f"unsupported digest algorithm in blob name '{name}'")
            if member.digest != named:
                raise ArchiveError(
                    f"blob '{name}' does not match its name: its sha256 is {member.digest}"
                )

    legacy_manifest = None
    if "manifest.json" in members:
        legacy_manifest = _json_member(members["manifest.json"], "manifest.json")
        if not isinstance(legacy_manifest, list):
            raise ArchiveError("manifest.json is not a list")
    if "index.json" in members:
        images = _analyze_oci(members, lookup, legacy_manifest)
        fmt = "oci"
    elif legacy_manifest is not None:
        images = _analyze_legacy(legacy_manifest, lookup)
        fmt = "docker-archive"
    else:
        raise ArchiveError(
            "the archive has neither manifest.json nor index.json (empty, cut short or not an "
            "image archive)"
        )
    if not images:
        raise ArchiveError("the archive holds no images")
    blobs: dict[str, Member] = {}
    lost_needed = False
    for image in images:
        for ref in _image_refs(image):
            member = image["_members"][ref]
            blobs.setdefault(ref, member)
            if member.lost:
                lost_needed = True
        del image["_members"]
    return ParsedArchive(fmt, images, blobs, stats.bytes_read, lost_needed)


def _image_refs(image: dict[str, Any]) -> list[str]:
    refs = [image["config"]["digest"]]
    refs += [layer["digest"] for layer in image["layers"]]
    refs += [m["digest"] for m in image.get("manifests") or []]
    return refs


def _json_member(member: Member, what: str) -> Any:
    if member.data is None:
        if member.temp_path is None:
            raise ArchiveError(f"{what} was not kept (internal error)")
        with open(member.temp_path, "rb") as handle:
            raw = handle.read()
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


def _analyze_legacy(manifest: list, lookup) -> list[dict[str, Any]]:
    images = []
    for item in manifest:
        try:
            config_path, layer_paths = item["Config"], item["Layers"]
        except (KeyError, TypeError):
            raise ArchiveError("manifest.json entry lacks Config or Layers") from None
        config = lookup(config_path, "image config")
        image_id = config.digest
        diff_ids = _config_diff_ids(config, f"config {config_path}")
        if len(diff_ids) != len(layer_paths):
            raise ArchiveError(
                f"image {image_id}: manifest lists {len(layer_paths)} layers, config has "
                f"{len(diff_ids)} diff_ids"
            )
        layers = []
        mem = {image_id: config}
        for i, (path, diff_id) in enumerate(zip(layer_paths, diff_ids)):
            layer = lookup(path, f"layer {i} of image {image_id}")
            # Legacy layer.tar files are uncompressed, so their sha256 is the diff_id.
            if layer.digest != diff_id:
                raise ArchiveError(
                    f"layer {i} of image {image_id} ({path}) has sha256 {layer.digest}, "
                    f"the config says {diff_id}"
                )
            layers.append(
                {
                    "digest": layer.digest,
                    "size": layer.size,
                    "diff_id": diff_id,
                    "media_type": "application/vnd.docker.image.rootfs.diff.tar",
                }
            )
            mem[layers[-1]["digest"]] = layer
        images.append(
            {
                "id": image_id,
                "tags": list(item.get("RepoTags") or []),
                "config": {"digest": image_id, "size": config.size},
                "layers": layers,
                "manifests": [],
                "_members": mem,
            }
        )
    return images


def _analyze_oci(members, lookup, legacy_manifest) -> list[dict[str, Any]]:
    index = _json_member(members["index.json"], "index.json")
    tags_by_config: dict[str, list[str]] = {}
    for item in legacy_manifest or []:
        if isinstance(item, dict) and item.get("Config"):
            tags_by_config[_clean_name(item["Config"])] = list(item.get("RepoTags") or [])
    images: list[dict[str, Any]] = []

    def blob(desc: dict, what: str) -> Member:
        try:
            digest, size = desc["digest"], desc["size"]
        except (KeyError, TypeError):
            raise ArchiveError(f"{what}: descriptor lacks digest or size") from None
        member = lookup("blobs/" + digest.replace(":", "/", 1), what)
        if member.size != size:
            raise ArchiveError(
                f"{what} {digest}: descriptor says {size} bytes, archive has {member.size}"
            )
        return member

    def walk(descs: list, parents: list[dict], nested: bool, annotations: dict) -> None:
        for desc in descs:
            media = desc.get("mediaType", "")
            ann = {**annotations, **(desc.get("annotations") or {})}
            if nested and desc.get("digest") and not _has(members, lookup, desc["digest"]):
                continue  # other platforms of a multi-platform image are not exported
            if media in INDEX_TYPES:
                member = blob(desc, "image index")
                child = _json_member(member, f"index {desc['digest']}")
                walk(child.get("manifests") or [], [*parents, _desc(desc, member)], True, ann)
            elif media in MANIFEST_TYPES or not media:
                member = blob(desc, "image manifest")
                manifest = _json_member(member, f"manifest {desc['digest']}")
                if (ann.get("vnd.docker.reference.type") or "") == "attestation-manifest":
                    continue
                images.append(
                    _oci_image(manifest, desc, member, parents, ann, blob, tags_by_config)
                )

    walk(index.get("manifests") or [], [], False, {})
    return images


def _has(members, lookup, digest: str) -> bool:
    try:
        lookup("blobs/" + digest.replace(":", "/", 1), "blob")
        return True
    except ArchiveError:
        return False


def _desc(desc: dict, member: Member) -> dict[str, Any]:
    return {
        "digest": member.digest,
        "size": member.size,
        "media_type": desc.get("mediaType", ""),
        "annotations": desc.get("annotations") or {},
        "_member": member,
    }


def _oci_image(manifest, desc, member, parents, ann, blob, tags_by_config) -> dict[str, Any]:
    config_desc = manifest.get("config") or {}
    config = blob(config_desc, "image config")
    image_id = config.digest
    diff_ids = _config_diff_ids(config, f"config {image_id}")
    layer_descs = manifest.get("layers") or []
    if len(diff_ids) != len(layer_descs):
        raise ArchiveError(
            f"image {image_id}: manifest lists {len(layer_descs)} layers, config has "
            f"{len(diff_ids)} diff_ids"
        )
    layers = []
    mem = {image_id: config, member.digest: member}
    for i, (ldesc, diff_id) in enumerate(zip(layer_descs, diff_ids)):
        layer = blob(ldesc, f"layer {i} of image {image_id}")
        media = ldesc.get("mediaType", "")
        if media in UNCOMPRESSED_LAYER_TYPES and layer.digest != diff_id:
            raise ArchiveError(
                f"layer {i} of image {image_id} has sha256 {layer.digest}, "
                f"the config says {diff_id}"
            )
        layers.append(
            {"digest": layer.digest, "size": layer.size, "diff_id": diff_id, "media_type": media}
        )
        mem[layer.digest] = layer
    tags = tags_by_config.get("blobs/" + image_id.replace(":", "/", 1))
    if tags is None:
        tags = []
        name = ann.get("io.containerd.image.name") or ""
        ref_name = ann.get("org.opencontainers.image.ref.name") or ""
        if name:
            tags.append(familiar_ref(name))
        elif ":" in ref_name or "/" in ref_name:
            tags.append(familiar_ref(ref_name))
    manifests = []
    for parent in parents:
        mem[parent["digest"]] = parent["_member"]
        manifests.append({k: v for k, v in parent.items() if k != "_member"})
    manifests.append(
        {
            "digest": member.digest,
            "size": member.size,
            "media_type": desc.get("mediaType") or "application/vnd.oci.image.manifest.v1+json",
            "annotations": desc.get("annotations") or {},
        }
    )
    return {
        "id": image_id,
        "tags": tags,
        "config": {"digest": image_id, "size": config.size},
        "layers": layers,
        "manifests": manifests,
        "_members": mem,
    }


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


# ---------------------------------------------------------------------------------------
# writing: an entry back into an archive `docker load` accepts, verifying as it reads
# ---------------------------------------------------------------------------------------
def _tar_header(name: str, size: int, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = mode
    info.mtime = 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _blob_name(digest: str) -> str:
    return "blobs/" + digest.replace(":", "/", 1)


def archive_metadata(entry: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The small files that follow the blobs; manifest.json comes last."""
    files: list[tuple[str, bytes]] = []
    if entry.get("archive_format") == "oci":
        files.append(("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'))
        tops = []
        seen = set()
        for image in entry["images"]:
            top = image["manifests"][0]
            if top["digest"] in seen:
                continue
            seen.add(top["digest"])
            desc = {"mediaType": top["media_type"], "digest": top["digest"], "size": top["size"]}
            if top.get("annotations"):
                desc["annotations"] = top["annotations"]
            tops.append(desc)
        index = {"schemaVersion": 2, "mediaType": INDEX_TYPES[0], "manifests": tops}
        files.append(("index.json", json.dumps(index).encode()))
    manifest = [
        {
            "Config": _blob_name(image["config"]["digest"]),
            "RepoTags": image["tags"] or None,
            "Layers": [_blob_name(layer["digest"]) for layer in image["layers"]],
        }
        for image in entry["images"]
    ]
    # Written last: an aborted stream never reaches it, so docker load never tags anything.
    files.append(("manifest.json", json.dumps(manifest).encode()))
    return files


def entry_archive_length(entry: dict[str, Any]) -> int:
    """Bytes ``write_entry_archive`` writes for ``entry`` (an HTTP body needs it up front)."""
    total = 2 * BLOCK  # the blobs/ and blobs/sha256/ directory headers
    for size in entry_blobs(entry).values():
        total += BLOCK + size + (-size) % BLOCK
    for _name, data in archive_metadata(entry):
        total += BLOCK + len(data) + (-len(data)) % BLOCK
    return total + 2 * BLOCK  # end-of-archive blocks


def write_entry_archive(
    entry: dict[str, Any],
    store: Store,
    out_fd: int,
    progress: Progress | None = None,
    before_metadata: Callable[[], None] | None = None,
) -> int:
    """Write ``entry`` as a tar to ``out_fd``, checking size and sha256 of every blob in the same
    read that feeds the output. Raises CorruptBlob at the first bad blob, before manifest.json.
    Returns the bytes written."""

    order = list(entry_blobs(entry).items())
    hasher = _HashThread()
    try:
        return _write_archive(entry, store, out_fd, order, hasher, progress, before_metadata)
    finally:
        hasher.close()


WRITE_BUFFERS = 4  # 1 MiB buffers in flight: one being read, the others hashed or written


class _HashThread:
    """Hashes buffers on a second thread while the caller reads the next one and writes this one
    (hashlib, os.readv and os.write all release the GIL). A buffer goes back to the free list
    only once hashed; the caller takes the next buffer only after its write returned, so a
    buffer is never refilled while it is still hashed or written. No round trip per chunk: the
    caller waits for the hasher only when every buffer is in flight, and at the end of a blob.
    """

    def __init__(self, count: int = WRITE_BUFFERS, size: int = BUFSIZE) -> None:
        self.views = [memoryview(bytearray(size)) for _ in range(count)]
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        for i in range(count):
            self.free.put(i)
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="rk-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.work.get()
            if item is None:
                return
            h, index, n = item
            if h is not None:
                h.update(self.views[index][:n])
            self.free.put(index)

    def take(self) -> int:
        return self.free.get()

    def hash(self, h: Any, index: int, n: int) -> None:
        self.work.put((h, index, n))

    def settle(self) -> None:
        """Wait until every buffer is back: every update handed over so far is done."""
        got = [self.free.get() for _ in self.views]
        for index in got:
            self.free.put(index)

    def close(self) -> None:
        self.work.put(None)
        self.thread.join()


def _sequential(fd: int) -> None:
    # Larger readahead for the one sequential pass (a cold page cache reads ahead further).
    with contextlib.suppress(AttributeError, OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)


def _write_archive(entry, store, out_fd, order, hasher, progress, before_metadata) -> int:
    from .store import CorruptBlob

    total = 0
    last = 0.0
    for dirname in ("blobs/", "blobs/sha256/"):
        header = _tar_header(dirname, 0, tarfile.DIRTYPE, 0o755)
        _write_all(out_fd, memoryview(header))
        total += len(header)
    for digest, size in order:
        path = store.blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY)
        except FileNotFoundError:
            raise CorruptBlob(digest, f"blob {digest} is missing from the store") from None
        try:
            actual = os.fstat(fd).st_size
            if actual != size:
                raise CorruptBlob(
                    digest, f"blob {digest} has {actual} bytes, the entry says {size}"
                )
            _sequential(fd)
            header = _tar_header(_blob_name(digest), size)
            _write_all(out_fd, memoryview(header))
            total += len(header)
            h = hashlib.sha256()
            remaining = size
            while remaining:
                index = hasher.take()
                view = hasher.views[index]
                try:
                    n = os.readv(fd, [view[: min(len(view), remaining)]])
                except BaseException:
                    hasher.hash(None, index, 0)  # give the buffer back
                    raise
                if n == 0:
                    hasher.hash(None, index, 0)
                    raise CorruptBlob(digest, f"blob {digest} was truncated while being read")
                # The same bytes are hashed (second thread) and written (here).
                hasher.hash(h, index, n)
                _write_all(out_fd, view[:n])
                remaining -= n
                total += n
                now = time.monotonic()
                if progress and now - last > 0.2:
                    progress(total)
                    last = now
            hasher.settle()
            if "sha256:" + h.hexdigest() != digest:
                raise CorruptBlob(digest, f"blob {digest} fails its sha256 check (damaged on disk)")
        finally:
            os.close(fd)
        pad = (-size) % BLOCK
        if pad:
            _write_all(out_fd, memoryview(bytes(pad)))
            total += pad
    if before_metadata:
        before_metadata()
    for name, data in archive_metadata(entry):
        chunk = _tar_header(name, len(data)) + data + bytes((-len(data)) % BLOCK)
        _write_all(out_fd, memoryview(chunk))
        total += len(chunk)
    _write_all(out_fd, memoryview(bytes(2 * BLOCK)))
    total += 2 * BLOCK
    if progress:
        progress(total)
    return total
