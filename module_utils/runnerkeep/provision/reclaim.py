"""Taking back trees a job could write under an older layout (docs/threat-model.md).

Root's state dir: directories a job owned or could write become root's and lose group/other
write, shallowest first, so each is root's before its content is read; links, FIFOs and other
non-regular entries, job locks a job wrote (a far-future start would hold off every cleanup)
and hard links (a second name of a file that may live outside the tree) are moved aside,
never followed; regular files a job wrote are replaced by root's copy, so a job process that
still holds the old file open writes to a file nobody reads.
The store: planted links and hard links are moved aside, everything else is given to the
service user without following a link and loses group/other write.
Moved aside: into ``aside_dir`` under the entry's path with ``/`` written as ``%`` (cut and
suffixed with a digest when too long, numbered when the name is taken).
Trees are walked with an explicit stack (a job may have made them thousands of levels deep).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import os
import stat
import tempfile
from typing import Any

from .changes import Changes, LayoutError, printable
from .ownership import group_id, user_id

_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH
_SET_ID = stat.S_ISUID | stat.S_ISGID
_NAME_MAX = 255
# A state file a job wrote is copied into a root file; past this (or sparse) it is moved aside.
_COPY_MAX_BYTES = 1024 * 1024


def reclaim(spec: dict[str, Any], changes: Changes) -> None:
    try:
        _reclaim_tree(spec, changes)
    except OSError as exc:
        # A job named these entries: the message must survive names that are not UTF-8.
        names = " -> ".join(printable(p) for p in (exc.filename, exc.filename2) if p)
        raise LayoutError(
            f"reclaiming {printable(spec['path'])} failed: {exc.strerror or exc} ({names}); "
            "fix or remove that entry and run again"
        ) from None


def _reclaim_tree(spec: dict[str, Any], changes: Changes) -> None:
    root = spec["path"]
    if not os.path.isdir(root) or os.path.islink(root):
        return  # a check-mode run before the directory exists, or a tree not there yet
    aside = spec["aside_dir"]
    if spec["policy"] == "root_state":
        skip = {os.path.normpath(p) for p in spec.get("skip") or []} | {os.path.normpath(aside)}
        _walk(
            root,
            lambda path, info, parent: _root_state_entry(path, info, parent, aside, changes),
            skip,
        )
    else:
        uid = user_id(spec["owner"], changes.check_mode)
        gid = group_id(spec["group"], changes.check_mode)
        _walk(
            root,
            lambda path, info, parent: _store_entry(path, info, uid, gid, aside, changes),
            set(),
        )


def _walk(root: str, visit: Any, skip: set[str]) -> None:
    """``visit(path, info, parent)`` for every entry below ``root``, a directory before its
    content; a visit returns True to descend into a directory."""
    stack = [root]
    while stack:
        directory = stack.pop()
        for entry in _entries(directory):
            path = os.path.normpath(entry.path)
            if path in skip:
                continue
            info = _lstat(entry)
            if info is not None and visit(path, info, directory) and stat.S_ISDIR(info.st_mode):
                stack.append(path)


def _root_state_entry(
    path: str, info: os.stat_result, parent: str, aside: str, changes: Changes
) -> bool:
    if stat.S_ISDIR(info.st_mode):
        _take_back(path, info, changes)
        return True
    forged_lock = os.path.basename(parent) == "job-locks" and info.st_uid != 0
    if not stat.S_ISREG(info.st_mode) or info.st_nlink > 1 or forged_lock:
        _move_aside(path, aside, changes)
    elif info.st_uid != 0 or info.st_gid != 0:
        _replace_with_roots_copy(path, info, aside, changes)
    else:
        _take_back(path, info, changes)
    return False


def _store_entry(
    path: str, info: os.stat_result, uid: int | None, gid: int | None, aside: str, changes: Changes
) -> bool:
    if stat.S_ISLNK(info.st_mode) or (not stat.S_ISDIR(info.st_mode) and info.st_nlink > 1):
        _move_aside(path, aside, changes)
        return False
    mode = stat.S_IMODE(info.st_mode) & ~_WRITABLE_BY_OTHERS
    if not stat.S_ISDIR(info.st_mode):
        mode &= ~_SET_ID
    if (uid, gid) != (info.st_uid, info.st_gid) or mode != stat.S_IMODE(info.st_mode):
        changes.note(path, "given to the service user")
        if not changes.check_mode:
            _set_owner_and_mode(path, uid, gid, mode)
    return stat.S_ISDIR(info.st_mode)


def _entries(directory: str) -> list[os.DirEntry]:
    """The directory's entries by name; none when it went away meanwhile."""
    try:
        with os.scandir(directory) as listing:
            return sorted(listing, key=lambda e: e.name)
    except FileNotFoundError:
        return []


def _lstat(entry: os.DirEntry) -> os.stat_result | None:
    """The entry's own stat; None when it went away meanwhile."""
    try:
        return entry.stat(follow_symlinks=False)
    except FileNotFoundError:
        return None


def _take_back(path: str, info: os.stat_result, changes: Changes) -> None:
    """root:root and no group/other write, on the entry itself (never through a link)."""
    if info.st_uid == 0 and info.st_gid == 0 and not info.st_mode & _WRITABLE_BY_OTHERS:
        return
    changes.note(path, "taken back by root")
    if changes.check_mode:
        return
    mode = stat.S_IMODE(info.st_mode) & ~_WRITABLE_BY_OTHERS
    if not stat.S_ISDIR(info.st_mode):
        # A job's program must not become setuid/setgid root by changing hands (chown clears
        # these bits; the chmod below must not put them back).
        mode &= ~_SET_ID
    _set_owner_and_mode(path, 0, 0, mode)


def _set_owner_and_mode(path: str, uid: int | None, gid: int | None, mode: int) -> None:
    """Through a descriptor of the entry itself: a link swapped in meanwhile is not followed."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return  # gone meanwhile
    try:
        os.fchown(fd, -1 if uid is None else uid, -1 if gid is None else gid)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _replace_with_roots_copy(path: str, info: os.stat_result, aside: str, changes: Changes) -> None:
    """A state file a job wrote becomes a new file of root's with the same bytes: a job process
    that opened the old one keeps only an unlinked inode."""
    sparse = info.st_blocks * 512 < info.st_size
    if info.st_size > _COPY_MAX_BYTES or sparse:
        # A copy would write it out in full: a job's sparse file could fill the disk.
        _move_aside(path, aside, changes)
        return
    changes.note(path, "replaced by root's copy")
    if changes.check_mode:
        return
    mode = stat.S_IMODE(info.st_mode) & ~(_WRITABLE_BY_OTHERS | _SET_ID)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return
    with os.fdopen(fd, "rb") as old:
        data = old.read(_COPY_MAX_BYTES + 1)
    out, tmp = tempfile.mkstemp(prefix=".rk-reclaim-", dir=os.path.dirname(path))
    try:
        with os.fdopen(out, "wb") as new:
            os.fchmod(new.fileno(), mode)
            new.write(data)
            new.flush()
            os.fsync(new.fileno())
        os.rename(tmp, path)
    except OSError as exc:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if exc.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        _move_aside(path, aside, changes)  # no room for root's copy: the job's file goes aside
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _move_aside(path: str, aside: str, changes: Changes) -> None:
    target = _aside_name(path, aside)
    changes.note(path, f"moved aside to {target}")
    if changes.check_mode:
        return
    try:
        os.rename(path, target)
    except FileNotFoundError:
        if os.path.lexists(path):
            raise  # the aside dir is missing: the entry stays and the run says so
        return  # gone meanwhile
    except OSError as exc:
        if exc.errno != errno.EXDEV:
            raise
        _move_across(path, target)


def _move_across(path: str, target: str) -> None:
    """The store may be on another filesystem than root's state: a link is made again there,
    anything else (a hard link, a FIFO) is only unlinked from the store."""
    if os.path.islink(path):
        os.symlink(os.readlink(path), target)
    os.unlink(path)


def _aside_name(path: str, aside: str) -> str:
    """A free name in ``aside`` for ``path``: its path with / as %, cut to fit a file name
    (with a digest of the whole path), numbered when taken (a job may have made the name)."""
    raw = os.fsencode(path.lstrip("/").replace("/", "%"))
    if len(raw) > _NAME_MAX - 24:
        digest = hashlib.sha256(raw).hexdigest()[:16].encode()
        raw = raw[: _NAME_MAX - 24] + b"~" + digest
    base = os.path.join(aside, os.fsdecode(raw))
    target, n = base, 0
    while os.path.lexists(target):
        n += 1
        target = f"{base}.{n}"
    return target
