"""The on-disk store: content-addressed blobs, entries (the commit points), locks, quarantine.

Layout (documented in docs/cache-format.md)::

    DIR/store.lock            flock: shared for save/restore/verify, exclusive for prune
    DIR/locks/KEY.lock        flock: one save/import/removal of a key at a time
    DIR/blobs/sha256/HEX      one file per layer/config/manifest blob, named by its sha256
    DIR/entries/KEY.json      an entry; its mtime is the "last used" time
    DIR/tmp/PID-RAND/         one directory per running operation (temp blobs)
    DIR/tmp/PID-RAND.lock     held (flock) by that operation while it runs
    DIR/quarantine/           rejected entries and blobs, with log.jsonl saying why
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterator
from typing import Any

from ..errors import CacheMiss, ConfigError, RunnerkeepError
from ..fsutil import atomic_write, fsync_dir

ENTRY_FORMAT = 1
KEY_RE = re.compile(r"[A-Za-z0-9._-]{1,128}")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# atomic_write's temp files in entries/ older than this belong to a dead process: an entry
# write takes milliseconds.
STALE_ENTRY_TEMP_SECONDS = 600


class CorruptEntry(RunnerkeepError):
    """An entry file failed its checks (parse, checksum, key, references)."""


class CorruptBlob(RunnerkeepError):
    """A blob's size or sha256 does not match its name / the entry."""

    def __init__(self, digest: str, message: str) -> None:
        super().__init__(message)
        self.digest = digest


def validate_key(key: str) -> str:
    """Keys name files, so anything but letters, digits, '.', '_', '-' is refused up front."""
    if not isinstance(key, str) or not KEY_RE.fullmatch(key) or key in (".", ".."):
        raise ConfigError(
            f"invalid cache key {key!r}: use 1-128 letters, digits, '.', '_' or '-' "
            "(no '/', no spaces, not '.' or '..')"
        )
    return key


def entry_checksum(body: dict[str, Any]) -> str:
    """sha256 of the canonical JSON of an entry without its checksum field."""
    clean = {k: v for k, v in body.items() if k != "checksum"}
    canonical = json.dumps(clean, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(canonical).hexdigest()


def entry_blobs(entry: dict[str, Any]) -> dict[str, int]:
    """digest -> size of every blob an entry needs."""
    blobs: dict[str, int] = {}
    for image in entry["images"]:
        blobs[image["config"]["digest"]] = image["config"]["size"]
        for layer in image["layers"]:
            blobs[layer["digest"]] = layer["size"]
        for extra in image.get("manifests") or []:
            blobs[extra["digest"]] = extra["size"]
    return blobs


def config_diff_ids(store: Store, digest: str) -> tuple[list[str], int]:
    """An image config blob's ``rootfs.diff_ids`` and its size, read once and checked against
    its sha256. Raises CorruptBlob (damaged, or no diff_ids), CorruptEntry (not a digest),
    FileNotFoundError (not stored)."""
    with open(store.blob_path(digest), "rb") as handle:
        data = handle.read()
    if "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise CorruptBlob(digest, f"config blob {digest} fails its sha256 check (damaged on disk)")
    try:
        diff_ids = json.loads(data)["rootfs"]["diff_ids"]
    except (ValueError, KeyError, TypeError):
        raise CorruptBlob(digest, f"config blob {digest} has no rootfs.diff_ids") from None
    return diff_ids, len(data)


class Store:
    """One cache directory. Cheap to create; ``ensure()`` creates the directories."""

    def __init__(self, root: str) -> None:
        self.root = os.path.abspath(root)
        self.blob_dir = os.path.join(self.root, "blobs", "sha256")
        self.entry_dir = os.path.join(self.root, "entries")
        self.lock_dir = os.path.join(self.root, "locks")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.quarantine_dir = os.path.join(self.root, "quarantine")

    # -- layout -------------------------------------------------------------------------
    def ensure(self) -> None:
        os.makedirs(self.root, exist_ok=True)
        # The role makes the store group-writable (setgid) so CI jobs of that group can save
        # and restore: the directories inside must be too, whoever created them first.
        mode = self.shared_dir_mode()
        for path in (
            os.path.join(self.root, "blobs"),
            self.blob_dir,
            self.entry_dir,
            self.lock_dir,
            self.tmp_dir,
            self.quarantine_dir,
        ):
            os.makedirs(path, exist_ok=True)
            if mode:
                with contextlib.suppress(OSError):
                    if os.stat(path).st_mode & 0o7777 != mode:
                        os.chmod(path, mode)

    def shared_dir_mode(self) -> int | None:
        """The store root's mode when it is group-writable (shared by a group), else None."""
        try:
            mode = os.stat(self.root).st_mode & 0o7777
        except FileNotFoundError:
            return None
        return mode if mode & 0o020 else None

    def exists(self) -> bool:
        return os.path.isdir(self.entry_dir) and os.path.isdir(self.blob_dir)

    def blob_path(self, digest: str) -> str:
        if not DIGEST_RE.fullmatch(digest):
            raise CorruptEntry(f"invalid blob digest {digest!r}")
        return os.path.join(self.blob_dir, digest[len("sha256:") :])

    def entry_path(self, key: str) -> str:
        return os.path.join(self.entry_dir, validate_key(key) + ".json")

    def blob_size(self, digest: str) -> int | None:
        try:
            return os.stat(self.blob_path(digest)).st_size
        except FileNotFoundError:
            return None

    def has_blob(self, digest: str) -> bool:
        return self.blob_size(digest) is not None

    def list_blobs(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with contextlib.suppress(FileNotFoundError), os.scandir(self.blob_dir) as it:
            for item in it:
                if re.fullmatch(r"[0-9a-f]{64}", item.name) and item.is_file(follow_symlinks=False):
                    out["sha256:" + item.name] = item.stat(follow_symlinks=False).st_size
        return out

    def list_keys(self) -> list[str]:
        keys = []
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.entry_dir):
                if name.endswith(".json") and KEY_RE.fullmatch(name[:-5]):
                    keys.append(name[:-5])
        return sorted(keys)

    # -- locks --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self, path: str, mode: int) -> Iterator[None]:
        # Read-only is enough for flock, so a lock file created by another user still works.
        fd = os.open(path, os.O_RDONLY | os.O_CREAT, 0o664)
        try:
            fcntl.flock(fd, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def store_lock(self, exclusive: bool = False):
        """Shared for save/restore/verify; exclusive for prune, so no blob an entry being
        written relies on can be deleted under it."""
        self.ensure()
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        return self._flock(os.path.join(self.root, "store.lock"), mode)

    def key_lock(self, key: str):
        """Serialises saves (and removals) of one key; always taken before the store lock."""
        self.ensure()
        return self._flock(os.path.join(self.lock_dir, validate_key(key) + ".lock"), fcntl.LOCK_EX)

    # -- temp space ---------------------------------------------------------------------
    @contextlib.contextmanager
    def temp_area(self) -> Iterator[str]:
        """A private temp dir under tmp/, removed on exit whatever happens.

        Its lock file is locked *before* it gets its final name, so a cleaner that manages to
        lock a ``*.lock`` knows the owner is dead (the kernel drops flocks of killed processes).
        """
        self.ensure()
        name = f"{os.getpid()}-{os.urandom(4).hex()}"
        lock_path = os.path.join(self.tmp_dir, name + ".lock")
        pre = os.path.join(self.tmp_dir, "." + name + ".lock")
        fd = os.open(pre, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o664)
        area = os.path.join(self.tmp_dir, name)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.rename(pre, lock_path)
            os.mkdir(area)
            shared = self.shared_dir_mode()
            if shared:
                os.chmod(area, shared)  # a later run by another group member can clean it
            yield area
        finally:
            shutil.rmtree(area, ignore_errors=True)
            for path in (lock_path, pre):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            os.close(fd)

    def remove_stale_temps(self) -> list[str]:
        """Remove temp dirs of operations that died (their lock is free); returns what went."""
        removed: list[str] = []
        try:
            names = os.listdir(self.tmp_dir)
        except FileNotFoundError:
            return removed
        for name in names:
            path = os.path.join(self.tmp_dir, name)
            if name.endswith(".lock") and not name.startswith("."):
                try:
                    fd = os.open(path, os.O_RDONLY)
                except FileNotFoundError:
                    continue
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    os.close(fd)
                    continue  # owner alive
                try:
                    shutil.rmtree(path[: -len(".lock")], ignore_errors=True)
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    removed.append(name[: -len(".lock")])
                finally:
                    os.close(fd)
            elif name.startswith(".") and name.endswith(".lock"):
                # A pre-rename lock: the owner died between open and rename (or is there now).
                if _older_than(path, 60):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
            elif (
                os.path.isdir(path) and not os.path.exists(path + ".lock") and _older_than(path, 60)
            ):
                # A directory whose lock file is gone: its owner was killed mid-cleanup.
                shutil.rmtree(path, ignore_errors=True)
                removed.append(name)
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.entry_dir):
                path = os.path.join(self.entry_dir, name)
                if name.startswith(".tmp-") and _older_than(path, STALE_ENTRY_TEMP_SECONDS):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    removed.append("entries/" + name)
        return removed

    def temp_bytes(self) -> int:
        total = 0
        for dirpath, _dirs, files in os.walk(self.tmp_dir):
            for name in files:
                with contextlib.suppress(FileNotFoundError):
                    total += os.lstat(os.path.join(dirpath, name)).st_size
        return total

    # -- blobs --------------------------------------------------------------------------
    def commit_blob_file(self, temp_path: str, digest: str) -> bool:
        """Move a fully written, fsynced temp file into place; False if it was already there."""
        final = self.blob_path(digest)
        if os.path.exists(final):
            os.unlink(temp_path)
            return False
        os.chmod(temp_path, 0o444)
        os.replace(temp_path, final)
        return True

    def write_blob_bytes(self, data: bytes, digest: str, area: str) -> bool:
        """Store a small in-memory blob (configs, manifests)."""
        if self.has_blob(digest):
            return False
        fd, tmp = _mkstemp(area)
        try:
            _write_all(fd, memoryview(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        return self.commit_blob_file(tmp, digest)

    # -- entries ------------------------------------------------------------------------
    def write_entry(self, entry: dict[str, Any]) -> str:
        """The commit point: atomic write (temp, fsync, rename, fsync dir). Returns its digest."""
        body = dict(entry)
        body["checksum"] = entry_checksum(body)
        data = (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()
        # Group-writable in a shared store, so other members can record a use (utime).
        mode = 0o664 if self.shared_dir_mode() else 0o644
        atomic_write(self.entry_path(entry["key"]), data, mode=mode)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def read_entry(self, key: str) -> tuple[dict[str, Any], str]:
        """The checked entry and its file's sha256; CacheMiss if absent, CorruptEntry if bad."""
        path = self.entry_path(key)
        try:
            with open(path, "rb") as handle:
                data = handle.read()
        except FileNotFoundError:
            raise CacheMiss(f"no cache entry for key '{key}' in {self.root}") from None
        return check_entry(data, key), "sha256:" + hashlib.sha256(data).hexdigest()

    def touch_entry(self, key: str) -> None:
        """Record a use: the entry file's mtime is "last used" (no rewrite of the commit point)."""
        with contextlib.suppress(OSError):
            os.utime(self.entry_path(key))

    def entry_times(self, key: str) -> float:
        return os.stat(self.entry_path(key)).st_mtime

    def remove_entry(self, key: str) -> bool:
        try:
            os.unlink(self.entry_path(key))
        except FileNotFoundError:
            return False
        fsync_dir(self.entry_dir)
        return True

    # -- quarantine ---------------------------------------------------------------------
    def quarantine(self, what: str, path: str, reason: str) -> str | None:
        """Move a rejected entry or blob aside (same filesystem: a rename) and log why."""
        self.ensure()
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = os.path.join(
            self.quarantine_dir, f"{stamp}-{os.getpid()}-{what}-{os.path.basename(path)}"
        )
        try:
            os.replace(path, target)
        except FileNotFoundError:
            target = None
        record = {
            "time": time.time(),
            "what": what,
            "path": path,
            "moved_to": target,
            "reason": reason,
        }
        with contextlib.suppress(OSError):
            fd = os.open(
                os.path.join(self.quarantine_dir, "log.jsonl"),
                os.O_WRONLY | os.O_APPEND | os.O_CREAT,
                0o644,
            )
            try:
                os.write(fd, (json.dumps(record, sort_keys=True) + "\n").encode())
            finally:
                os.close(fd)
        return target

    def clean_quarantine(self, older_than_seconds: float, dry_run: bool = False) -> int:
        freed = 0
        now = time.time()
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.quarantine_dir):
                if name == "log.jsonl":
                    continue
                path = os.path.join(self.quarantine_dir, name)
                st = os.lstat(path)
                if now - st.st_mtime >= older_than_seconds:
                    freed += st.st_size
                    if not dry_run:
                        os.unlink(path)
        return freed


def check_entry(data: bytes, key: str) -> dict[str, Any]:
    """Parse and check an entry file's bytes against the key it is filed under."""
    try:
        entry = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise CorruptEntry(f"entry for key '{key}' is not valid JSON: {exc}") from None
    if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
        raise CorruptEntry(f"entry for key '{key}' has an unknown format")
    if entry.get("checksum") != entry_checksum(entry):
        raise CorruptEntry(f"entry for key '{key}' fails its checksum (damaged on disk)")
    if entry.get("key") != key:
        raise CorruptEntry(
            f"entry filed under key '{key}' belongs to key '{entry.get('key')}' (swapped or copied)"
        )
    try:
        blobs = entry_blobs(entry)
        if not entry["images"]:
            raise ValueError("no images")
        for digest, size in blobs.items():
            if not DIGEST_RE.fullmatch(digest) or not isinstance(size, int) or size < 0:
                raise ValueError(f"bad blob reference {digest!r}")
    except (KeyError, TypeError, ValueError) as exc:
        raise CorruptEntry(f"entry for key '{key}' is malformed: {exc}") from None
    return entry


def _older_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime > seconds
    except FileNotFoundError:
        return False


def _mkstemp(area: str) -> tuple[int, str]:
    path = os.path.join(area, f"blob-{os.urandom(6).hex()}")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), path


def _write_all(fd: int, view: memoryview) -> None:
    while view:
        written = os.write(fd, view)
        view = view[written:]


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
