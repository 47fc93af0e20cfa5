"""Entry and blob checks against the store, the one place save, restore, export and verify take
them from: an entry's blobs present with their sizes, its image configs re-hashed and matching
its layers, stored blobs re-hashed, and what fails moved to the quarantine.

The entry *file* itself (JSON, checksum, MAC, key, scope, field types) is checked by
``store.check_entry`` inside ``Store.read_entry``: the store never hands out an unchecked entry.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Callable

from .hashing import hash_file
from .store import (
    MAX_CONFIG_BYTES,
    CorruptBlob,
    CorruptEntry,
    Store,
    describe_os_error,
    entry_blobs,
    read_regular,
)


def config_diff_ids(store: Store, digest: str) -> tuple[list[str], int]:
    """An image config blob's ``rootfs.diff_ids`` and its size, read once and checked against
    its sha256. Raises CorruptBlob (damaged, or no diff_ids), CorruptEntry (not a digest),
    FileNotFoundError (not stored)."""
    try:
        data = read_regular(store.blob_path(digest), MAX_CONFIG_BYTES)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise CorruptBlob(
            digest, f"config blob {digest} cannot be read: {describe_os_error(exc)}"
        ) from None
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise CorruptBlob(digest, f"config blob {digest} fails its sha256 check (damaged on disk)")
    try:
        diff_ids = json.loads(data)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError, RecursionError):
        raise CorruptBlob(digest, f"config blob {digest} has no rootfs.diff_ids") from None
    if not isinstance(diff_ids, list) or not all(isinstance(d, str) for d in diff_ids):
        raise CorruptBlob(digest, f"config blob {digest} has malformed rootfs.diff_ids")
    return diff_ids, len(data)


def check_blob_sizes(store: Store, name: str, entry: dict[str, Any]) -> None:
    """Every blob the entry needs is stored with the size the entry gives it. Raises
    CorruptEntry (a blob is missing) or CorruptBlob (a size differs)."""
    for blob, size in entry_blobs(entry).items():
        actual = store.blob_size(blob)
        if actual is None:
            raise CorruptEntry(f"entry '{name}' needs blob {blob}, which is missing from the store")
        if actual != size:
            raise CorruptBlob(blob, f"blob {blob} has {actual} bytes, entry '{name}' says {size}")


def load_checked_entry(store: Store, name: str) -> tuple[dict[str, Any], str]:
    """Read the entry and check what can be checked without reading layers: blob presence and
    sizes, config blobs' sha256 and their diff_ids against the entry. Raises CorruptEntry or
    CorruptBlob; CacheMiss when there is no entry."""
    entry, digest = store.read_entry(name)
    check_blob_sizes(store, name, entry)
    for image in entry["images"]:
        config_digest = image["config"]["digest"]
        diff_ids, _size = config_diff_ids(store, config_digest)
        if diff_ids != [layer["diff_id"] for layer in image["layers"]]:
            raise CorruptEntry(
                f"entry '{name}': layers do not match the diff_ids of config {config_digest}"
            )
    return entry, digest


@dataclass(frozen=True)
class BlobHash:
    """What re-reading one stored blob found."""

    digest: str  # the name it is stored under
    actual: str | None  # sha256 of the bytes read; None when it could not be read
    size: int
    error: OSError | None = None

    @property
    def matches(self) -> bool:
        return self.actual == self.digest


def rehash_blobs(
    store: Store,
    digests: Iterable[str],
    workers: int,
    on_hashed: Callable[[BlobHash], None] | None = None,
) -> dict[str, BlobHash]:
    """Re-hash stored blobs on ``workers`` threads (hashlib and file reads release the GIL).
    ``on_hashed`` sees each result as it completes; the dict keeps the order of ``digests``."""
    order = list(digests)
    found: dict[str, BlobHash] = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        futures = {pool.submit(hash_file, store.blob_path(d)): d for d in order}
        for future in concurrent.futures.as_completed(futures):
            digest = futures[future]
            try:
                actual, size = future.result()
                result = BlobHash(digest, actual, size)
            except OSError as exc:
                result = BlobHash(digest, None, 0, exc)
            found[digest] = result
            if on_hashed:
                on_hashed(result)
    return {digest: found[digest] for digest in order}


def quarantine_for(store: Store, name: str, exc: Exception) -> list[str]:
    """Move the rejected entry (and the bad blob, if one was named) aside."""
    moved = []
    reason = str(exc)
    if isinstance(exc, CorruptBlob):
        target = store.quarantine("blob", store.blob_path(exc.digest), reason)
        if target:
            moved.append(target)
    target = store.quarantine("entry", store.entry_path(name), reason)
    if target:
        moved.append(target)
    return moved
