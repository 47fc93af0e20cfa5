"""``cache prune``, ``cache list`` and entry removal."""

from __future__ import annotations

import contextlib
import os
import time
from typing import Any

from ..errors import CacheMiss, ConfigError, RunnerkeepError
from ..events import record_event
from .store import (
    TRUSTED,
    CorruptEntry,
    Store,
    as_store,
    entry_blobs,
    split_name,
    validate_key,
)


def _scan(store: Store) -> dict[str, dict[str, Any]]:
    """key -> {entry (None when unreadable), problem (why), digest, last_used, blobs}."""
    out: dict[str, dict[str, Any]] = {}
    for key in store.list_keys():
        try:
            last_used = store.entry_times(key)
        except FileNotFoundError:
            continue
        problem = None
        try:
            entry, digest = store.read_entry(key)
            blobs = entry_blobs(entry)
        except CacheMiss:
            continue  # removed since it was listed
        except CorruptEntry as exc:
            entry, digest, blobs, problem = None, None, {}, str(exc)
        out[key] = {
            "entry": entry,
            "problem": problem,
            "digest": digest,
            "last_used": last_used,
            "blobs": blobs,
        }
    return out


def _empty_prune(store: Store, dry_run: bool) -> dict[str, Any]:
    return {
        "dir": store.root,
        "evicted": [],
        "blobs_deleted": 0,
        "bytes_freed": 0,
        "quarantine_bytes_freed": 0,
        "size_before": 0,
        "size_after": 0,
        "stale_temps_removed": [],
        "warnings": [],
        "empty": True,
        "dry_run": dry_run,
    }


def prune_store(
    store_dir: str | Store,
    *,
    max_size: int | None = None,
    max_age: float | None = None,
    quarantine_retention: float | None = None,
    protect: set[str] | frozenset[str] = frozenset(),
    dry_run: bool = False,
    state_dir: str | None = None,
    keep_trusted: bool = False,
    lock_wait: float | None = None,
) -> dict[str, Any]:
    """Evict whole entries, least recently used first, until under ``max_size`` (and any not
    used for ``max_age``); then delete blobs no entry references. Holds the store lock
    exclusively, so no save can be between writing its blobs and its entry. A dry run
    changes nothing (not even a lock file); a real one records a ``cache`` event in
    ``state_dir`` when given, whichever front door ran it. ``keep_trusted``: the prune after
    an untrusted job's write, which never evicts a trusted entry (the store may then stay
    over its quota until a trusted write or the scheduled prune)."""
    store = as_store(store_dir)
    if not store.exists():
        return _empty_prune(store, dry_run)
    lock = store.read_lock() if dry_run else store.store_lock(exclusive=True, wait=lock_wait)
    with lock:
        if keep_trusted:
            protect = set(protect) | {n for n in store.list_keys() if _is_trusted(n)}
        report = _prune_locked(store, max_size, max_age, quarantine_retention, protect, dry_run)
    if state_dir and not dry_run:
        record_event(
            state_dir,
            "cache",
            op="prune",
            result="pruned",
            bytes_freed=report["bytes_freed"],
            evicted=len(report["evicted"]),
        )
    return report


def reclaim_unreferenced_blobs(store: Store) -> None:
    """After a write cut short between its blobs and its entry (a full or failing disk; its
    locks released): a prune deletes the blobs no entry references. Only if nobody holds the
    store lock now: the failed write answers at once, and the scheduled prune deletes them
    otherwise. Best effort: the write's error stands."""
    with contextlib.suppress(RunnerkeepError, OSError):
        prune_store(store, lock_wait=0)


def trusted_blob_sizes(store: Store) -> dict[str, int]:
    """digest -> size of the stored blobs a trusted entry references (an unreadable trusted
    entry references nothing: the next prune removes it)."""
    on_disk = store.list_blobs()
    sizes: dict[str, int] = {}
    for name, info in _scan(store).items():
        if _is_trusted(name):
            sizes.update((d, on_disk[d]) for d in info["blobs"] if d in on_disk)
    return sizes


def _is_trusted(name: str) -> bool:
    try:
        return split_name(name)[0] == TRUSTED
    except ConfigError:
        return False  # not a name an entry may have: no trusted entry


def _prune_locked(
    store: Store,
    max_size: int | None,
    max_age: float | None,
    quarantine_retention: float | None,
    protect: set[str] | frozenset[str],
    dry_run: bool,
) -> dict[str, Any]:
    now = time.time()
    stale = [] if dry_run else store.remove_stale_temps()
    scan = _scan(store)
    on_disk = store.list_blobs()
    size_before = sum(on_disk.values())
    evicted, keep = _choose_evictions(scan, on_disk, now, max_size, max_age, protect)
    referenced: set[str] = set()
    for info in keep.values():
        referenced.update(info["blobs"])
    garbage = sorted(set(on_disk) - referenced)
    freed = sum(on_disk[digest] for digest in garbage)
    warnings = _evict(store, scan, evicted, dry_run)
    if not dry_run:
        for digest in garbage:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(store.blob_path(digest))
    quarantine_freed = 0
    if quarantine_retention is not None:
        quarantine_freed = store.clean_quarantine(quarantine_retention, dry_run=dry_run)
    return {
        "dir": store.root,
        "evicted": evicted,
        "blobs_deleted": len(garbage),
        "bytes_freed": freed,
        "quarantine_bytes_freed": quarantine_freed,
        "size_before": size_before,
        "size_after": size_before - freed,
        "stale_temps_removed": stale,
        "warnings": warnings,
        "empty": not scan and not on_disk,
        "dry_run": dry_run,
    }


def _choose_evictions(
    scan: dict[str, dict[str, Any]],
    on_disk: dict[str, int],
    now: float,
    max_size: int | None,
    max_age: float | None,
    protect: set[str] | frozenset[str],
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """(evicted with why, the entries kept): unreadable and too old first, then, until the
    blobs the kept entries use fit ``max_size``, untrusted entries least recently used first
    and only then trusted ones: a job that keeps its own entry fresh by restoring it must not
    push a trusted entry out. Protected names stay."""
    evicted: list[dict[str, Any]] = []
    keep = dict(scan)
    by_last_use = sorted(scan.items(), key=lambda item: item[1]["last_used"])
    for name, info in by_last_use:
        if name in protect:
            continue
        reason = None
        if info["entry"] is None:
            reason = "unreadable entry"
        elif max_age is not None and now - info["last_used"] > max_age:
            reason = "older than max_age"
        if reason:
            evicted.append({"key": name, "reason": reason})
            del keep[name]
    if max_size is not None:
        for name, _info in sorted(keep.items(), key=_quota_eviction_order):
            if _unique_size(keep, on_disk) <= max_size:
                break
            if name in protect:
                continue
            scope = "trusted" if _is_trusted(name) else "untrusted"
            evicted.append({"key": name, "reason": f"over max_size ({scope}, least recently used)"})
            del keep[name]
    return evicted, keep


def _quota_eviction_order(item: tuple[str, dict[str, Any]]) -> tuple[bool, float]:
    name, info = item
    return _is_trusted(name), info["last_used"]


def _evict(
    store: Store, scan: dict[str, dict[str, Any]], evicted: list[dict[str, Any]], dry_run: bool
) -> list[str]:
    """Remove the evicted entries (an unreadable one is quarantined instead); the warnings."""
    warnings = []
    for item in evicted:
        info = scan[item["key"]]
        if info["entry"] is None:
            moved = None
            if not dry_run:
                moved = store.quarantine("entry", store.entry_path(item["key"]), info["problem"])
            warnings.append(_skip_warning(item["key"], info["problem"], moved))
        elif not dry_run:
            store.remove_entry(item["key"])
    return warnings


def _skip_warning(key: str, problem: str, moved_to: str | None) -> str:
    where = f" (moved to {moved_to})" if moved_to else ""
    return f"skipped damaged cache entry '{key}'{where}: {problem}"


def _unique_size(keep: dict[str, dict[str, Any]], on_disk: dict[str, int]) -> int:
    blobs: set[str] = set()
    for info in keep.values():
        blobs.update(info["blobs"])
    return sum(on_disk.get(d, 0) for d in blobs)


def visible_to(name: str, scope: str | None) -> bool:
    """Whether a job of ``scope`` sees the entry ``name`` (None: the store's owner sees all)."""
    entry_scope = split_name(name)[0]
    return scope is None or entry_scope in (TRUSTED, scope)


def list_entries(store_dir: str | Store, scope: str | None = None) -> dict[str, Any]:
    """Keys, images, logical size, size unique to each entry, created, last used. ``scope``:
    only the trusted entries and that scope's (a job's view); None: every entry."""
    store = as_store(store_dir)
    if not store.exists():
        return {
            "dir": store.root,
            "entries": [],
            "store_bytes": 0,
            "logical_bytes": 0,
            "warnings": [],
        }
    with store.read_lock():
        scan = _scan(store)
        on_disk = store.list_blobs()
    users: dict[str, int] = {}
    for info in scan.values():
        for digest in info["blobs"]:
            users[digest] = users.get(digest, 0) + 1
    rows = []
    for name, info in sorted(scan.items()):
        if not visible_to(name, scope):
            continue
        entry_scope, key = split_name(name)
        entry = info["entry"]
        if entry is None:
            rows.append(
                {
                    "key": key,
                    "scope": entry_scope,
                    "ok": False,
                    "last_used": info["last_used"],
                    "problem": info["problem"],
                }
            )
            continue
        rows.append(
            {
                "key": key,
                "scope": entry_scope,
                "ok": True,
                "format": entry.get("archive_format"),
                "images": [{"id": i["id"], "tags": i["tags"]} for i in entry["images"]],
                "logical_bytes": sum(info["blobs"].values()),
                "unique_bytes": sum(s for d, s in info["blobs"].items() if users[d] == 1),
                "created": entry.get("created"),
                "last_used": info["last_used"],
                "entry_digest": info["digest"],
            }
        )
    return {
        "dir": store.root,
        "entries": rows,
        "store_bytes": sum(on_disk.values()),
        "logical_bytes": sum(r.get("logical_bytes", 0) for r in rows),
        "warnings": [_skip_warning(r["key"], r["problem"], None) for r in rows if not r["ok"]],
    }


def remove_key(store_dir: str | Store, key: str, *, dry_run: bool = False) -> dict[str, Any]:
    """Drop a key's trusted entry (state: absent); its blobs go at the next prune unless
    shared."""
    validate_key(key)
    store = as_store(store_dir)
    if not store.exists() or not os.path.exists(store.entry_path(key)):
        return {"key": key, "removed": False}
    if dry_run:
        return {"key": key, "removed": True, "dry_run": True}
    with store.key_lock(key), store.store_lock():
        removed = store.remove_entry(key)
    return {"key": key, "removed": removed}
