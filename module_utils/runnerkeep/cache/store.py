"""The on-disk store: content-addressed blobs, entries (the commit points), locks, quarantine.

Layout (documented in docs/cache-format.md)::

    DIR/store.lock            flock: shared for save/restore/verify, exclusive for prune
    DIR/locks/KEY.lock        flock: one save/import/removal of a key at a time
    DIR/blobs/sha256/HEX      one file per layer/config/manifest blob, named by its sha256
    DIR/entries/KEY.json      an entry of the trusted scope; its mtime is the "last used" time
    DIR/entries/@SCOPE@KEY.json  an entry written by an untrusted job of SCOPE (pr-12, mr-3, ...):
                              '@' is not a key character, so it can never name a trusted entry
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
import math
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from typing import Any

from ..errors import CacheMiss, ConfigError, RunnerkeepError
from ..fsutil import atomic_write, fsync_dir
from ..statefile import flock_bounded, read_fd
from .entrymac import DEFAULT_KEY_FILE, entry_mac, load_entry_key, mac_matches

ENTRY_FORMAT = 1
# The first character is a letter or digit: a leading '.' would name a hidden file next to the
# store's own temps and locks, a leading '-' reads as an option.
KEY_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
TRUSTED = "trusted"
SCOPE_RE = re.compile(r"[a-z0-9][a-z0-9-]{0,62}")
# The file name (without .json) of an entry: KEY for the trusted scope, @SCOPE@KEY otherwise.
NAME_RE = re.compile(r"(?:@([a-z0-9][a-z0-9-]{0,62})@)?([A-Za-z0-9._-]{1,128})")
DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
# atomic_write's temp files in entries/ older than this belong to a dead process: an entry
# write takes milliseconds.
STALE_ENTRY_TEMP_SECONDS = 600
# Entries and image configs are small JSON; anything bigger is damage or a plant, and reading
# it whole would let one file exhaust memory.
MAX_ENTRY_BYTES = 16 * 1024 * 1024
# Longest wait for a store or key lock: a save or prune holds one for minutes, never for ever;
# past it the command fails (LockHeldError) instead of hanging a job or a timer.
STORE_LOCK_WAIT = 900.0
MAX_CONFIG_BYTES = 32 * 1024 * 1024
# O_NONBLOCK: opening a FIFO planted in place of a file must not wait for a writer.
SAFE_OPEN_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)


class NotRegularFile(OSError):
    """A symlink, FIFO, device or directory where the store keeps a regular file."""


def open_regular(path: str, create: bool = False) -> int:
    """An fd on the regular file at ``path``, never following a symlink nor waiting on a FIFO.
    Raises FileNotFoundError when absent (and not ``create``), NotRegularFile otherwise."""
    flags = SAFE_OPEN_FLAGS | (os.O_CREAT if create else 0)
    try:
        fd = os.open(path, flags, 0o664)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise NotRegularFile(errno.ELOOP, "is a symbolic link", path) from None
        if exc.errno == errno.EISDIR:
            raise NotRegularFile(errno.EISDIR, "is a directory", path) from None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise NotRegularFile(errno.EINVAL, "is not a regular file", path)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_regular(path: str, limit: int) -> bytes:
    """The whole regular file at ``path``; NotRegularFile when it is not one or exceeds
    ``limit`` bytes."""
    fd = open_regular(path)
    try:
        if os.fstat(fd).st_size > limit:
            raise NotRegularFile(errno.EFBIG, f"is larger than {limit} bytes", path)
        # One byte past the limit tells a file that grew while it was read.
        data = read_fd(fd, limit + 1)
    finally:
        os.close(fd)
    if len(data) > limit:
        raise NotRegularFile(errno.EFBIG, f"is larger than {limit} bytes", path)
    return data


def describe_os_error(exc: OSError) -> str:
    return exc.strerror or str(exc)


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
            f"invalid cache key {key!r}: use 1-128 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit (no '/', no spaces)"
        )
    return key


def validate_scope(scope: str) -> str:
    """Scopes name files too: lower-case letters, digits and '-' (e.g. trusted, pr-12, mr-3)."""
    if not isinstance(scope, str) or not SCOPE_RE.fullmatch(scope):
        raise ConfigError(
            f"invalid cache scope {scope!r}: use 1-63 lower-case letters, digits or '-'"
        )
    return scope


def entry_name(key: str, scope: str = TRUSTED) -> str:
    """The name an entry is filed under: the key itself in the trusted scope."""
    validate_key(key)
    return key if validate_scope(scope) == TRUSTED else f"@{scope}@{key}"


def split_name(name: str) -> tuple[str, str]:
    """(scope, key) of an entry name; ConfigError when it is none (``@trusted@KEY`` included:
    one entry has one name)."""
    match = NAME_RE.fullmatch(name) if isinstance(name, str) else None
    if not match or match.group(1) == TRUSTED:
        raise ConfigError(f"invalid cache entry name {name!r}")
    validate_key(match.group(2))
    return match.group(1) or TRUSTED, match.group(2)


def validate_name(name: str) -> str:
    split_name(name)
    return name


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


class Store:
    """One cache directory. Cheap to create; ``ensure()`` creates the directories."""

    def __init__(self, root: str, key_file: str | None = DEFAULT_KEY_FILE) -> None:
        """``key_file``: the HMAC key of the entries (None or absent: unsigned entries)."""
        self.root = os.path.abspath(root)
        self.key_file = key_file
        self._mac_key: bytes | None = None
        self._mac_key_loaded = False
        self.blob_dir = os.path.join(self.root, "blobs", "sha256")
        self.entry_dir = os.path.join(self.root, "entries")
        self.lock_dir = os.path.join(self.root, "locks")
        self.tmp_dir = os.path.join(self.root, "tmp")
        self.quarantine_dir = os.path.join(self.root, "quarantine")

    @property
    def mac_key(self) -> bytes | None:
        """Loaded on first use, so commands that never read an entry need no key."""
        if not self._mac_key_loaded:
            self._mac_key = load_entry_key(self.key_file)
            self._mac_key_loaded = True
        return self._mac_key

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
            _make_layout_dir(path)
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

    def entry_path(self, name: str) -> str:
        """The file of the entry ``name`` (see entry_name)."""
        return os.path.join(self.entry_dir, validate_name(name) + ".json")

    def blob_size(self, digest: str) -> int | None:
        """The size of a stored blob; None when absent or not a regular file (a symlink or
        FIFO planted there is no blob, and reading it could leave the store or block)."""
        try:
            st = os.lstat(self.blob_path(digest))
        except (FileNotFoundError, NotADirectoryError):
            return None
        return st.st_size if stat.S_ISREG(st.st_mode) else None

    def has_blob(self, digest: str) -> bool:
        return self.blob_size(digest) is not None

    def list_blobs(self) -> dict[str, int]:
        out: dict[str, int] = {}
        with (
            contextlib.suppress(FileNotFoundError, NotADirectoryError),
            os.scandir(self.blob_dir) as it,
        ):
            for item in it:
                if re.fullmatch(r"[0-9a-f]{64}", item.name) and item.is_file(follow_symlinks=False):
                    out["sha256:" + item.name] = item.stat(follow_symlinks=False).st_size
        return out

    def list_keys(self) -> list[str]:
        """Entry names of every scope (plain keys are the trusted ones)."""
        keys = []
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for name in os.listdir(self.entry_dir):
                if name.endswith(".json") and _is_name(name[:-5]):
                    keys.append(name[:-5])
        return sorted(keys)

    # -- locks --------------------------------------------------------------------------
    @contextlib.contextmanager
    def _flock(self, path: str, mode: int, wait: float | None = None) -> Iterator[None]:
        # Read-only is enough for flock, so a lock file created by another user still works.
        fd = self._open_lock_file(path)
        try:
            flock_bounded(fd, path, STORE_LOCK_WAIT if wait is None else wait, mode)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _open_lock_file(self, path: str) -> int:
        """Open (creating) a lock file. A symlink, FIFO or directory planted in its place is
        moved aside once and replaced: following it would create or lock a file elsewhere."""
        try:
            return open_regular(path, create=True)
        except NotRegularFile:
            _move_aside(path)
        return open_regular(path, create=True)

    @contextlib.contextmanager
    def read_lock(self) -> Iterator[bool]:
        """The shared store lock for read-only work, creating nothing: yields False (no lock
        held) when the store or its lock file does not exist or the lock file is damaged.
        Entries are committed by rename, so an unlocked reader still sees whole files."""
        try:
            fd = open_regular(os.path.join(self.root, "store.lock"))
        except OSError:
            yield False
            return
        try:
            flock_bounded(fd, "store.lock", STORE_LOCK_WAIT, fcntl.LOCK_SH)
            yield True
        finally:
            os.close(fd)

    def store_lock(self, exclusive: bool = False, wait: float | None = None):
        """Shared for save/restore/verify; exclusive for prune, so no blob an entry being
        written relies on can be deleted under it. LockHeldError after ``wait`` seconds
        (STORE_LOCK_WAIT when None)."""
        self.ensure()
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        return self._flock(os.path.join(self.root, "store.lock"), mode, wait)

    def key_lock(self, key: str):
        """Serialises saves (and removals) of one key; always taken before the store lock."""
        self.ensure()
        return self._flock(os.path.join(self.lock_dir, validate_name(key) + ".lock"), fcntl.LOCK_EX)

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
        try:
            names = os.listdir(self.tmp_dir)
        except (FileNotFoundError, NotADirectoryError):
            names = []
        removed: list[str] = []
        for name in names:
            gone = self._remove_if_dead(name)
            if gone:
                removed.append(gone)
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for name in os.listdir(self.entry_dir):
                path = os.path.join(self.entry_dir, name)
                if name.startswith(".tmp-") and _older_than(path, STALE_ENTRY_TEMP_SECONDS):
                    with contextlib.suppress(FileNotFoundError):
                        os.unlink(path)
                    removed.append("entries/" + name)
        return removed

    def _remove_if_dead(self, name: str) -> str | None:
        """Clean up the tmp/ item ``name`` if the operation owning it is gone; what went."""
        path = os.path.join(self.tmp_dir, name)
        if name.endswith(".lock") and not name.startswith("."):
            return self._remove_area_if_unlocked(name)
        if name.startswith(".") and name.endswith(".lock"):
            # A pre-rename lock: the owner died between open and rename (or is there now).
            if _older_than(path, 60):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(path)
            return None
        if _is_real_dir(path) and not os.path.lexists(path + ".lock") and _older_than(path, 60):
            # A directory whose lock file is gone: its owner was killed mid-cleanup.
            shutil.rmtree(path, ignore_errors=True)
            return name
        return None

    def _remove_area_if_unlocked(self, lock_name: str) -> str | None:
        """A temp area whose lock we can take belongs to a dead operation: remove both."""
        path = os.path.join(self.tmp_dir, lock_name)
        try:
            fd = open_regular(path)
        except FileNotFoundError:
            return None
        except OSError:
            # Not a lock any operation holds (a FIFO or symlink planted here): drop the name
            # itself, never what it points to.
            _remove_name(path)
            return None
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                return None  # owner alive
            shutil.rmtree(path[: -len(".lock")], ignore_errors=True)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)
            return lock_name[: -len(".lock")]
        finally:
            os.close(fd)

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
        if self.blob_size(digest) is not None:
            os.unlink(temp_path)
            return False
        if _is_real_dir(final):
            _move_aside(final)  # os.replace cannot put a file over a directory
        os.chmod(temp_path, 0o444)
        os.replace(temp_path, final)
        return True

    def commit_temp_blobs(self, temps: dict[str, str]) -> int:
        """Move verified, fsynced temp files (digest -> path) into blobs/ and make the renames
        durable: what a commit does before its entry write. Returns how many were new."""
        added = sum(self.commit_blob_file(path, digest) for digest, path in temps.items())
        fsync_dir(self.blob_dir)
        return added

    def write_blob_bytes(self, data: bytes, digest: str, area: str) -> bool:
        """Store a small in-memory blob (configs, manifests)."""
        if self.has_blob(digest):
            return False
        fd, tmp = create_temp_blob(area)
        try:
            write_all(fd, memoryview(data))
            os.fsync(fd)
        finally:
            os.close(fd)
        return self.commit_blob_file(tmp, digest)

    # -- entries ------------------------------------------------------------------------
    def write_entry(self, entry: dict[str, Any]) -> str:
        """The commit point: atomic write (temp, fsync, rename, fsync dir). Returns its digest."""
        body = dict(entry)
        body.setdefault("scope", TRUSTED)
        body.pop("mac", None)
        body.pop("checksum", None)
        if self.mac_key is not None:
            body["mac"] = entry_mac(body, self.mac_key)
        body["checksum"] = entry_checksum(body)
        data = (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()
        # Group-writable in a shared store, so other members can record a use (utime).
        mode = 0o664 if self.shared_dir_mode() else 0o644
        path = self.entry_path(entry_name(entry["key"], body["scope"]))
        if _is_real_dir(path):
            # rename() cannot replace a directory with a file: move the damage aside first.
            self.quarantine("entry", path, "a directory in place of an entry file")
        atomic_write(path, data, mode=mode)
        return "sha256:" + hashlib.sha256(data).hexdigest()

    def read_entry(self, key: str) -> tuple[dict[str, Any], str]:
        """The checked entry and its file's sha256; CacheMiss if absent, CorruptEntry if bad."""
        path = self.entry_path(key)
        try:
            data = read_regular(path, MAX_ENTRY_BYTES)
        except (FileNotFoundError, NotADirectoryError):
            raise CacheMiss(f"no cache entry for key '{key}' in {self.root}") from None
        except OSError as exc:
            raise CorruptEntry(
                f"entry for key '{key}' cannot be read: {describe_os_error(exc)}"
            ) from None
        entry = check_entry(data, key, self.mac_key)
        return entry, "sha256:" + hashlib.sha256(data).hexdigest()

    def touch_entry(self, key: str) -> None:
        """Record a use: the entry file's mtime is "last used" (no rewrite of the commit point)."""
        with contextlib.suppress(OSError):
            os.utime(self.entry_path(key))

    def entry_times(self, key: str) -> float:
        return os.lstat(self.entry_path(key)).st_mtime

    def remove_entry(self, key: str) -> bool:
        try:
            os.unlink(self.entry_path(key))
        except FileNotFoundError:
            return False
        fsync_dir(self.entry_dir)
        return True

    # -- quarantine ---------------------------------------------------------------------
    def quarantine(self, what: str, path: str, reason: str) -> str | None:
        """Move a rejected entry or blob aside (same filesystem: a rename) and log why. None
        when nothing was moved (already gone, or the quarantine cannot be written)."""
        try:
            self.ensure()
        except OSError:
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        target = os.path.join(
            self.quarantine_dir, f"{stamp}-{os.getpid()}-{what}-{os.path.basename(path)}"
        )
        try:
            os.replace(path, target)
        except FileNotFoundError:
            target = None
        except OSError:
            return None
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

    def quarantined_blobs(self) -> set[str]:
        """Digests of the blobs in the quarantine (``STAMP-PID-blob-HEX``): what a fetch from
        the fleet tier repairs."""
        found = set()
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            for name in os.listdir(self.quarantine_dir):
                match = re.fullmatch(r"[0-9TZ]+-[0-9]+-blob-([0-9a-f]{64})", name)
                if match:
                    found.add("sha256:" + match.group(1))
        return found

    def clean_quarantine(self, older_than_seconds: float, dry_run: bool = False) -> int:
        freed = 0
        now = time.time()
        try:
            names = os.listdir(self.quarantine_dir)
        except (FileNotFoundError, NotADirectoryError):
            return 0
        for name in names:
            if name == "log.jsonl":
                continue
            path = os.path.join(self.quarantine_dir, name)
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if now - st.st_mtime >= older_than_seconds:
                freed += st.st_size
                if not dry_run:
                    # A quarantined damaged entry can be a directory.
                    _remove_name(path)
        return freed


def check_entry(data: bytes, key: str, mac_key: bytes | None = None) -> dict[str, Any]:
    """Parse and check an entry file's bytes against the name (``key``) it is filed under.

    The checksum only catches accidents (anyone who can write an entry can recompute it): with
    ``mac_key`` the entry must carry the MAC of that key, else it is a forgery or an edit. Every
    field a reader uses is type-checked too: a forged or damaged entry is a CorruptEntry, never
    an exception in whatever reads it later."""
    scope, plain_key = split_name(key)
    try:
        entry = json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise CorruptEntry(f"entry for key '{key}' is not valid JSON: {exc}") from None
    if not isinstance(entry, dict) or entry.get("format") != ENTRY_FORMAT:
        raise CorruptEntry(f"entry for key '{key}' has an unknown format")
    try:
        checksum = entry_checksum(entry)
    except (ValueError, TypeError, RecursionError):
        checksum = None
    if checksum is None or entry.get("checksum") != checksum:
        raise CorruptEntry(f"entry for key '{key}' fails its checksum (damaged on disk)")
    if mac_key is not None and not mac_matches(entry, mac_key):
        raise CorruptEntry(
            f"entry for key '{key}' has no valid MAC (edited, forged, or written before the "
            "store had a key and never signed: runnerkeep cache sign-entries)"
        )
    if entry.get("key") != plain_key:
        raise CorruptEntry(
            f"entry filed under key '{key}' belongs to key '{entry.get('key')}' (swapped or copied)"
        )
    if entry.get("scope", TRUSTED) != scope:
        raise CorruptEntry(
            f"entry filed under key '{key}' was written for scope {entry.get('scope')!r}, "
            f"not {scope!r} (copied across scopes)"
        )
    try:
        _check_entry_fields(entry)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptEntry(f"entry for key '{key}' is malformed: {exc}") from None
    return entry


def _is_name(name: str) -> bool:
    try:
        split_name(name)
    except ConfigError:
        return False
    return True


def as_store(store_dir: str | Store) -> Store:
    """A Store for a path (with the default key file), or the one given (its key file and all)."""
    return store_dir if isinstance(store_dir, Store) else Store(store_dir)


def _check_entry_fields(entry: dict[str, Any]) -> None:
    images = entry.get("images")
    if not isinstance(images, list) or not images:
        raise ValueError("no images")
    for name in ("archive_format", "runnerkeep_version"):
        _expect(entry.get(name), (str, type(None)), name)
    created = entry.get("created")
    if created is not None and not _finite_number(created):
        raise ValueError(f"created is {created!r}, not a time")
    for image in images:
        _expect(image, dict, "image")
        _expect(image.get("id"), str, "image id")
        tags = image.get("tags")
        _expect(tags, list, "image tags")
        for tag in tags:
            _expect(tag, str, "image tag")
        _check_blob_ref(image.get("config"), "image config")
        layers = image.get("layers")
        _expect(layers, list, "image layers")
        for layer in layers:
            _check_blob_ref(layer, "layer")
            _expect(layer.get("diff_id"), str, "layer diff_id")
        manifests = image.get("manifests")
        _expect(manifests, (list, type(None)), "image manifests")
        for manifest in manifests or []:
            _check_blob_ref(manifest, "manifest")
            _expect(manifest.get("annotations"), (dict, type(None)), "manifest annotations")


def _check_blob_ref(ref: Any, what: str) -> None:
    _expect(ref, dict, what)
    digest, size = ref.get("digest"), ref.get("size")
    if not isinstance(digest, str) or not DIGEST_RE.fullmatch(digest):
        raise ValueError(f"bad blob reference {digest!r} in {what}")
    if type(size) is not int or size < 0:
        raise ValueError(f"bad size {size!r} of {what} {digest}")
    _expect(ref.get("media_type"), (str, type(None)), f"{what} media_type")


def _expect(value: Any, types: type | tuple[type, ...], what: str) -> None:
    if not isinstance(value, types) or isinstance(value, bool):
        raise TypeError(f"{what} has the wrong type ({type(value).__name__})")


def _finite_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _is_real_dir(path: str) -> bool:
    """A directory, not a symlink to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def _move_aside(path: str) -> str | None:
    """Rename something damaged out of a name the store needs (kept for inspection)."""
    target = f"{path}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}-{os.getpid()}"
    try:
        os.replace(path, target)
    except FileNotFoundError:
        return None
    return target


def _remove_name(path: str) -> None:
    """Remove the name at ``path`` (a whole tree if it is a real directory), never a target."""
    with contextlib.suppress(FileNotFoundError):
        if _is_real_dir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.unlink(path)


def _make_layout_dir(path: str) -> None:
    """mkdir -p, moving aside a file, FIFO or symlink left where a layout directory belongs."""
    if os.path.lexists(path) and not _is_real_dir(path):
        _move_aside(path)
    os.makedirs(path, exist_ok=True)


def _older_than(path: str, seconds: float) -> bool:
    try:
        return time.time() - os.lstat(path).st_mtime > seconds
    except FileNotFoundError:
        return False


def create_temp_blob(area: str) -> tuple[int, str]:
    """A new file for a blob being written in the temp ``area``: (fd open for writing, path)."""
    path = os.path.join(area, f"blob-{os.urandom(6).hex()}")
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644), path


def write_all(fd: int, view: memoryview) -> None:
    """os.write until every byte of ``view`` is written (a pipe takes part of a big write)."""
    while view:
        written = os.write(fd, view)
        view = view[written:]


def is_no_space(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)
