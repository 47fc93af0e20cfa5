"""``cache verify``: re-read every blob (like ``restic check --read-data``), check every entry;
with ``--max-duration``, the scrub (scrub.py): a time-bounded slice, least recently verified
first."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from ..errors import CacheMiss, ConfigError
from .checks import BlobHash, load_checked_entry, quarantine_for, rehash_blobs
from .scrub import DEFAULT_PERIOD, scrub_store
from .store import (
    MAX_ENTRY_BYTES,
    CorruptBlob,
    CorruptEntry,
    Store,
    as_store,
    check_entry,
    entry_blobs,
    read_regular,
    validate_name,
)


@dataclass
class _Findings:
    """What a verify found so far: the entries that passed the cheap checks, and what is bad."""

    entries: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> entry
    bad_entries: list[dict[str, str]] = field(default_factory=list)
    bad_blobs: dict[str, str] = field(default_factory=dict)  # digest -> reason
    checked_bytes: int = 0


def verify_store(
    store_dir: str | Store,
    key: str | None = None,
    *,
    workers: int = 2,
    repair: bool = False,
    progress: Callable[[int], None] | None = None,
    max_duration: float | None = None,
    scrub_period: float = DEFAULT_PERIOD,
) -> dict[str, Any]:
    """Check entries and blobs; report every bad one. ``repair`` quarantines what is bad.

    Blobs are hashed on ``workers`` threads: hashlib and file reads release the GIL, so two
    threads use both cores. Without ``repair`` nothing is written, not even a lock file; a
    store never written to is an empty, good store (unless a ``key`` is asked for).

    ``max_duration`` (seconds): the scrub instead (``scrub.scrub_store``): the least recently
    verified blobs for at most that long, so that every blob is re-read within
    ``scrub_period``; its report has ``"scrub": True``."""
    if max_duration is not None:
        if key:
            raise ConfigError(
                "--max-duration scrubs the whole store a slice at a time: it takes no --key"
            )
        return scrub_store(
            store_dir,
            max_duration=max_duration,
            period=scrub_period,
            workers=workers,
            repair=repair,
            progress=progress,
        )
    start = time.monotonic()
    store = as_store(store_dir)
    if not store.exists():
        if key:
            raise CacheMiss(f"no cache at {store.root}")
        return _empty_report(store)
    with store.store_lock() if repair else store.read_lock():
        names = [validate_name(key)] if key else store.list_keys()
        found = _check_entries(store, names)
        referenced: dict[str, int] = {}
        for entry in found.entries.values():
            referenced.update(entry_blobs(entry))
        on_disk = store.list_blobs()
        to_hash = _blobs_to_hash(referenced if key else set(on_disk) | set(referenced), on_disk)
        to_hash = [digest for digest in to_hash if digest not in found.bad_blobs]
        _hash_blobs(store, to_hash, referenced, workers, progress, found)
        _mark_entries_using_bad_blobs(found)
        quarantined = _quarantine_findings(store, found) if repair else []
        # The temp areas of saves, imports and pulls that died: the store lock is held, so
        # what is unlocked there belongs to nobody.
        stale_temps = store.remove_stale_temps() if repair else []
        unreferenced = sorted(set(on_disk) - set(referenced)) if not key else []
    duration = time.monotonic() - start
    return {
        "dir": store.root,
        "ok": not found.bad_entries and not found.bad_blobs,
        "entries_checked": len(names),
        "blobs_checked": len(to_hash),
        "bytes_checked": found.checked_bytes,
        "bad_entries": sorted(found.bad_entries, key=lambda bad: bad["key"]),
        "bad_blobs": [{"digest": d, "reason": r} for d, r in sorted(found.bad_blobs.items())],
        "unreferenced_blobs": len(unreferenced),
        "quarantined": quarantined,
        "stale_temps_removed": stale_temps,
        "duration": round(duration, 3),
        "throughput_bytes_per_second": int(found.checked_bytes / duration) if duration > 0 else 0,
        "empty": not names and not on_disk,
    }


def _check_entries(store: Store, names: list[str]) -> _Findings:
    """The cheap checks of every entry (load_checked_entry): no layer is read yet."""
    found = _Findings()
    for name in names:
        try:
            entry, _ = load_checked_entry(store, name)
            found.entries[name] = entry
        except CorruptBlob as exc:
            found.bad_blobs[exc.digest] = str(exc)
            found.bad_entries.append({"key": name, "reason": str(exc)})
        except (CacheMiss, CorruptEntry) as exc:
            found.bad_entries.append({"key": name, "reason": str(exc)})
    return found


def _blobs_to_hash(wanted: Any, on_disk: dict[str, int]) -> list[str]:
    """The wanted blobs that are on disk, biggest first so the threads finish together."""
    present = [digest for digest in sorted(wanted) if digest in on_disk]
    present.sort(key=lambda digest: -on_disk[digest])
    return present


def _hash_blobs(
    store: Store,
    to_hash: list[str],
    referenced: dict[str, int],
    workers: int,
    progress: Callable[[int], None] | None,
    found: _Findings,
) -> None:
    def on_hashed(result: BlobHash) -> None:
        if result.error is None:
            found.checked_bytes += result.size
            if progress:
                progress(found.checked_bytes)

    for digest, result in rehash_blobs(store, to_hash, workers, on_hashed).items():
        problem = _blob_problem(result, referenced.get(digest))
        if problem:
            found.bad_blobs[digest] = problem


def _mark_entries_using_bad_blobs(found: _Findings) -> None:
    for name, entry in found.entries.items():
        bad = sorted(digest for digest in entry_blobs(entry) if digest in found.bad_blobs)
        if bad:
            found.bad_entries.append({"key": name, "reason": f"uses bad blob(s): {', '.join(bad)}"})


def _quarantine_findings(store: Store, found: _Findings) -> list[str]:
    """Move every bad blob and bad entry aside; where each went."""
    quarantined: list[str] = []
    for digest, reason in found.bad_blobs.items():
        target = store.quarantine("blob", store.blob_path(digest), reason)
        if target:
            quarantined.append(target)
    for bad in found.bad_entries:
        target = store.quarantine("entry", store.entry_path(bad["key"]), bad["reason"])
        if target:
            quarantined.append(target)
    return quarantined


def _blob_problem(found: BlobHash, entry_size: int | None) -> str | None:
    """Why a re-read blob is bad (None: it is good); ``entry_size``: what entries say, if any."""
    digest = found.digest
    if found.error is not None:
        return f"blob {digest} cannot be read: {found.error.strerror}"
    if not found.matches:
        return f"blob {digest} fails its sha256 check (is {found.actual})"
    if entry_size is not None and entry_size != found.size:
        return f"blob {digest} has {found.size} bytes, entries say {entry_size}"
    return None


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
        "stale_temps_removed": [],
        "duration": 0.0,
        "throughput_bytes_per_second": 0,
        "empty": True,
        "dir": store.root,
    }


def sign_entries(store_dir: str | Store, *, workers: int = 2) -> dict[str, Any]:
    """The migration of a store written before it had a key: every unsigned entry whose blobs
    all re-hash to their digests is re-written with its MAC (its "last used" time kept); one
    that fails is quarantined. Entries already signed with this key are left as they are."""
    store = as_store(store_dir)
    if store.mac_key is None:
        raise ConfigError(
            f"no cache key at {store.key_file}: create it first (the image_cache role does)"
        )
    report: dict[str, Any] = {
        "dir": store.root,
        "signed": [],
        "already_signed": 0,
        "bad": [],
        "ok": True,
    }
    if not store.exists():
        return report
    unsigned_view = Store(store.root, key_file=None)
    with store.store_lock(exclusive=True):
        for name in store.list_keys():
            try:
                data = read_regular(store.entry_path(name), MAX_ENTRY_BYTES)
                check_entry(data, name, store.mac_key)
                report["already_signed"] += 1
                continue
            except (CorruptEntry, OSError):
                pass
            try:
                _sign_one(store, unsigned_view, name, workers)
                report["signed"].append(name)
            except (CacheMiss, CorruptEntry, CorruptBlob, OSError) as exc:
                reason = str(exc) if not isinstance(exc, OSError) else (exc.strerror or str(exc))
                moved = quarantine_for(store, name, exc) if not isinstance(exc, CacheMiss) else []
                report["bad"].append({"key": name, "reason": reason, "quarantined": moved})
    report["ok"] = not report["bad"]
    return report


def _sign_one(store: Store, unsigned_view: Store, name: str, workers: int) -> None:
    entry, _digest = load_checked_entry(unsigned_view, name)
    blobs = entry_blobs(entry)
    for digest, found in rehash_blobs(store, blobs, workers).items():
        if found.error is not None:
            raise found.error
        if not found.matches or found.size != blobs[digest]:
            raise CorruptBlob(digest, f"blob {digest} fails its sha256 or size check")
    last_used = store.entry_times(name)
    store.write_entry(entry)
    os.utime(store.entry_path(name), (last_used, last_used))


__all__ = ["sign_entries", "verify_store"]
