"""``cache verify``: re-read every blob (like ``restic check --read-data``), check every entry."""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import time
from typing import Any, Callable

from ..errors import CacheMiss
from .restore import load_checked_entry, quarantine_for
from .store import CorruptBlob, CorruptEntry, Store, entry_blobs, open_regular, validate_key

CHUNK = 1 << 20


def hash_file(path: str) -> tuple[str, int]:
    """sha256 and size, read with readinto into one buffer (no per-chunk allocation). Only a
    regular file is read (NotRegularFile, an OSError, otherwise): never a symlink's target,
    never a FIFO that would block."""
    h = hashlib.sha256()
    buf = bytearray(CHUNK * 4)
    view = memoryview(buf)
    size = 0
    fd = open_regular(path)
    try:
        with open(fd, "rb", buffering=0, closefd=False) as handle:
            while True:
                n = handle.readinto(view)
                if not n:
                    break
                h.update(view[:n])
                size += n
    finally:
        os.close(fd)
    return "sha256:" + h.hexdigest(), size


def verify_store(
    store_dir: str,
    key: str | None = None,
    *,
    workers: int = 2,
    repair: bool = False,
    progress: Callable[[int], None] | None = None,
) -> dict[str, Any]:
    """Check entries and blobs; report every bad one. ``repair`` quarantines what is bad.

    Blobs are hashed on ``workers`` threads: hashlib and file reads release the GIL, so two
    threads use both cores. Without ``repair`` nothing is written, not even a lock file; a
    store never written to is an empty, good store (unless a ``key`` is asked for)."""
    start = time.monotonic()
    store = Store(store_dir)
    if not store.exists():
        if key:
            raise CacheMiss(f"no cache at {store.root}")
        return _empty_report(store)
    bad_entries: list[dict[str, str]] = []
    bad_blobs: dict[str, str] = {}
    with store.store_lock() if repair else store.read_lock():
        keys = [validate_key(key)] if key else store.list_keys()
        entries: dict[str, dict[str, Any]] = {}
        for k in keys:
            try:
                entry, _ = load_checked_entry(store, k)
                entries[k] = entry
            except CacheMiss as exc:
                bad_entries.append({"key": k, "reason": str(exc)})
            except CorruptBlob as exc:
                bad_blobs[exc.digest] = str(exc)
                bad_entries.append({"key": k, "reason": str(exc)})
            except CorruptEntry as exc:
                bad_entries.append({"key": k, "reason": str(exc)})
        referenced: dict[str, int] = {}
        for entry in entries.values():
            referenced.update(entry_blobs(entry))
        on_disk = store.list_blobs()
        to_hash = sorted(referenced if key else set(on_disk) | set(referenced))
        to_hash = [d for d in to_hash if d in on_disk and d not in bad_blobs]
        # Biggest first so the two threads finish together.
        to_hash.sort(key=lambda d: -on_disk[d])
        checked_bytes = 0
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            futures = {pool.submit(hash_file, store.blob_path(d)): d for d in to_hash}
            for fut in concurrent.futures.as_completed(futures):
                digest = futures[fut]
                try:
                    actual, size = fut.result()
                except OSError as exc:
                    bad_blobs[digest] = f"blob {digest} cannot be read: {exc.strerror}"
                    continue
                checked_bytes += size
                if progress:
                    progress(checked_bytes)
                if actual != digest:
                    bad_blobs[digest] = f"blob {digest} fails its sha256 check (is {actual})"
                elif digest in referenced and referenced[digest] != size:
                    bad_blobs[digest] = (
                        f"blob {digest} has {size} bytes, entries say {referenced[digest]}"
                    )
        for k, entry in entries.items():
            blobs = entry_blobs(entry)
            bad = sorted(d for d in blobs if d in bad_blobs)
            if bad:
                bad_entries.append({"key": k, "reason": f"uses bad blob(s): {', '.join(bad)}"})
        quarantined: list[str] = []
        if repair:
            for digest, reason in bad_blobs.items():
                target = store.quarantine("blob", store.blob_path(digest), reason)
                if target:
                    quarantined.append(target)
            for bad in bad_entries:
                target = store.quarantine("entry", store.entry_path(bad["key"]), bad["reason"])
                if target:
                    quarantined.append(target)
        unreferenced = sorted(set(on_disk) - set(referenced)) if not key else []
    duration = time.monotonic() - start
    return {
        "dir": store.root,
        "ok": not bad_entries and not bad_blobs,
        "entries_checked": len(keys),
        "blobs_checked": len(to_hash),
        "bytes_checked": checked_bytes,
        "bad_entries": sorted(bad_entries, key=lambda b: b["key"]),
        "bad_blobs": [{"digest": d, "reason": r} for d, r in sorted(bad_blobs.items())],
        "unreferenced_blobs": len(unreferenced),
        "quarantined": quarantined,
        "duration": round(duration, 3),
        "throughput_bytes_per_second": int(checked_bytes / duration) if duration > 0 else 0,
        "empty": not keys and not on_disk,
    }


def _empty_report(store: Store) -> dict[str, Any]:
    return {
        "ok": True,
        "entries_checked": 0,
        "blobs_checked": 0,
        "bytes_checked": 0,
        "bad_entries": [],
        "bad_blobs": [],
        "unreferenced_blobs": 0,
        "quarantined": [],
        "duration": 0.0,
        "throughput_bytes_per_second": 0,
        "empty": True,
        "dir": store.root,
    }


__all__ = ["hash_file", "quarantine_for", "verify_store"]
