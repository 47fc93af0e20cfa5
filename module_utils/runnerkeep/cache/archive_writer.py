"""Write a stored entry back as an archive ``docker load`` accepts, verifying as it reads.

Every blob is read once: the same buffer is hashed (on hashing.HashThread) and written. The
layout is the OCI one (blobs/sha256/HEX) plus a legacy manifest.json, which comes last: a
stream cut at a bad blob never reaches it, so ``docker load`` tags nothing.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tarfile
import time
from collections.abc import Collection
from typing import Any, Callable

from .archive_layout import INDEX_TYPES
from .hashing import HashThread
from .store import CorruptBlob, Store, entry_blobs, write_all
from .tar_reader import BLOCK, PROGRESS_INTERVAL, Progress, blob_member_name

END_OF_ARCHIVE = bytes(2 * BLOCK)
BLOB_DIRECTORIES = ("blobs/", "blobs/sha256/")


def archive_metadata(entry: dict[str, Any]) -> list[tuple[str, bytes]]:
    """The small files that follow the blobs; manifest.json comes last."""
    files: list[tuple[str, bytes]] = []
    if entry.get("archive_format") == "oci":
        files.append(("oci-layout", b'{"imageLayoutVersion":"1.0.0"}'))
        tops = _top_manifests(entry)
        index = {"schemaVersion": 2, "mediaType": INDEX_TYPES[0], "manifests": tops}
        files.append(("index.json", json.dumps(index).encode()))
    manifest = [
        {
            "Config": blob_member_name(image["config"]["digest"]),
            "RepoTags": image["tags"] or None,
            "Layers": [blob_member_name(layer["digest"]) for layer in image["layers"]],
        }
        for image in entry["images"]
    ]
    # Written last: an aborted stream never reaches it, so docker load never tags anything.
    files.append(("manifest.json", json.dumps(manifest).encode()))
    return files


def _top_manifests(entry: dict[str, Any]) -> list[dict[str, Any]]:
    """index.json's descriptors: each image's outermost manifest (or index), once."""
    descriptors = []
    seen = set()
    for image in entry["images"]:
        top = image["manifests"][0]
        if top["digest"] in seen:
            continue
        seen.add(top["digest"])
        descriptor = {"mediaType": top["media_type"], "digest": top["digest"], "size": top["size"]}
        if top.get("annotations"):
            descriptor["annotations"] = top["annotations"]
        descriptors.append(descriptor)
    return descriptors


def entry_archive_length(entry: dict[str, Any], leave_out: Collection[str] = ()) -> int:
    """Bytes ``write_entry_archive`` writes for ``entry`` and the same ``leave_out`` (an HTTP
    body needs its length up front)."""
    total = len(BLOB_DIRECTORIES) * BLOCK
    for digest, size in entry_blobs(entry).items():
        if digest not in leave_out:
            total += BLOCK + size + (-size) % BLOCK
    for _name, data in archive_metadata(entry):
        total += BLOCK + len(data) + (-len(data)) % BLOCK
    return total + len(END_OF_ARCHIVE)


def write_entry_archive(
    entry: dict[str, Any],
    store: Store,
    out_fd: int,
    progress: Progress | None = None,
    before_metadata: Callable[[], None] | None = None,
    leave_out: Collection[str] = (),
) -> int:
    """Write ``entry`` as a tar to ``out_fd``, checking size and sha256 of every blob in the same
    read that feeds the output. Raises CorruptBlob at the first bad blob, before manifest.json.
    Returns the bytes written.

    ``leave_out``: digests of blobs not written (nor read) although the metadata still names
    them, for a daemon that already holds those layers."""
    hasher = HashThread()
    try:
        writer = _ArchiveWriter(out_fd, progress)
        for name in BLOB_DIRECTORIES:
            writer.write(_tar_header(name, 0, tarfile.DIRTYPE, 0o755))
        for digest, size in entry_blobs(entry).items():
            if digest in leave_out:
                continue
            _copy_verified_blob(store, digest, size, writer, hasher)
        if before_metadata:
            before_metadata()
        for name, data in archive_metadata(entry):
            writer.write(_tar_header(name, len(data)) + data + bytes((-len(data)) % BLOCK))
        writer.write(END_OF_ARCHIVE)
        if progress:
            progress(writer.total)
        return writer.total
    finally:
        hasher.close()


class _ArchiveWriter:
    """The output fd, the bytes written so far and the progress reports they make."""

    def __init__(self, out_fd: int, progress: Progress | None) -> None:
        self.out_fd = out_fd
        self.progress = progress
        self.total = 0
        self.last_report = 0.0

    def write(self, data: bytes | memoryview) -> None:
        write_all(self.out_fd, memoryview(data))
        self.total += len(data)

    def write_member_data(self, data: memoryview) -> None:
        """Like ``write``, reporting progress now and then (blob data is where time goes)."""
        self.write(data)
        now = time.monotonic()
        if self.progress and now - self.last_report > PROGRESS_INTERVAL:
            self.progress(self.total)
            self.last_report = now


def _copy_verified_blob(
    store: Store, digest: str, size: int, writer: _ArchiveWriter, hasher: HashThread
) -> None:
    """The blob as one tar member: header, data, padding. CorruptBlob when it is missing,
    has another size, or its bytes do not hash to ``digest`` (found once all were written,
    so the caller must stop before the archive's end)."""
    fd = _open_blob(store, digest)
    try:
        actual = os.fstat(fd).st_size
        if actual != size:
            raise CorruptBlob(digest, f"blob {digest} has {actual} bytes, the entry says {size}")
        _read_sequentially(fd)
        writer.write(_tar_header(blob_member_name(digest), size))
        sha = hashlib.sha256()
        _stream_blob(fd, digest, size, sha, writer, hasher)
        hasher.settle()
        if "sha256:" + sha.hexdigest() != digest:
            raise CorruptBlob(digest, f"blob {digest} fails its sha256 check (damaged on disk)")
    finally:
        os.close(fd)
    padding = (-size) % BLOCK
    if padding:
        writer.write(bytes(padding))


def _open_blob(store: Store, digest: str) -> int:
    try:
        return os.open(store.blob_path(digest), os.O_RDONLY)
    except FileNotFoundError:
        raise CorruptBlob(digest, f"blob {digest} is missing from the store") from None


def _stream_blob(
    fd: int, digest: str, size: int, sha: Any, writer: _ArchiveWriter, hasher: HashThread
) -> None:
    """Read ``size`` bytes of ``fd`` into the hasher's buffers; each is hashed (second thread)
    and written (here)."""
    remaining = size
    while remaining:
        index = hasher.take()
        view = hasher.views[index]
        try:
            count = os.readv(fd, [view[: min(len(view), remaining)]])
        except BaseException:
            hasher.give_back(index)
            raise
        if count == 0:
            hasher.give_back(index)
            raise CorruptBlob(digest, f"blob {digest} was truncated while being read")
        hasher.hash(sha, index, count)
        writer.write_member_data(view[:count])
        remaining -= count


def _tar_header(name: str, size: int, kind: bytes = tarfile.REGTYPE, mode: int = 0o644) -> bytes:
    info = tarfile.TarInfo(name)
    info.size = size
    info.type = kind
    info.mode = mode
    info.mtime = 0
    return info.tobuf(format=tarfile.USTAR_FORMAT)


def _read_sequentially(fd: int) -> None:
    # Larger readahead for the one sequential pass (a cold page cache reads ahead further).
    with contextlib.suppress(AttributeError, OSError):
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_SEQUENTIAL)
