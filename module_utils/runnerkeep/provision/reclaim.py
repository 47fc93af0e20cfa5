"""Taking back trees a job could write under an older layout (docs/threat-model.md).

Root's state dir: directories a job owned or could write become root's and lose group/other
write, shallowest first, so each is root's before its content is read; links, FIFOs and other
non-regular entries, and job locks a job wrote (a far-future start would hold off every
cleanup), are moved aside, never followed; regular files a job wrote become root's.
The store: planted links are moved aside, everything else is given to the service user
without following a link.
Moved aside: into ``aside_dir`` under the entry's path with ``/`` written as ``%``.
"""

from __future__ import annotations

import errno
import os
import stat
from typing import Any

from .changes import Changes, LayoutError, printable
from .ownership import group_id, user_id

_WRITABLE_BY_OTHERS = stat.S_IWGRP | stat.S_IWOTH


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
    if spec["policy"] == "root_state":
        skip = {os.path.normpath(p) for p in spec.get("skip") or []}
        _reclaim_root_state(root, skip, spec["aside_dir"], changes)
    else:
        uid = user_id(spec["owner"], changes.check_mode)
        gid = group_id(spec["group"], changes.check_mode)
        _reclaim_store(root, uid, gid, spec["aside_dir"], changes)


def _reclaim_root_state(directory: str, skip: set[str], aside: str, changes: Changes) -> None:
    skip = skip | {os.path.normpath(aside)}
    for entry in _entries(directory):
        path = os.path.normpath(entry.path)
        if path in skip:
            continue
        info = _lstat(entry)
        if info is None:
            continue
        if stat.S_ISDIR(info.st_mode):
            _take_back(path, info, changes)
            _reclaim_root_state(path, skip, aside, changes)
        elif not stat.S_ISREG(info.st_mode) or (
            os.path.basename(directory) == "job-locks" and info.st_uid != 0
        ):
            _move_aside(path, aside, changes)
        else:
            _take_back(path, info, changes)


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
        mode &= ~(stat.S_ISUID | stat.S_ISGID)
    # Through a descriptor of the entry itself: a link swapped in meanwhile is not followed.
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        os.fchown(fd, 0, 0)
        os.fchmod(fd, mode)
    finally:
        os.close(fd)


def _reclaim_store(
    directory: str, uid: int | None, gid: int | None, aside: str, changes: Changes
) -> None:
    for entry in _entries(directory):
        info = _lstat(entry)
        if info is None:
            continue
        if stat.S_ISLNK(info.st_mode):
            _move_aside(entry.path, aside, changes)
            continue
        if (uid, gid) != (info.st_uid, info.st_gid):
            changes.note(entry.path, "owner")
            if not changes.check_mode:
                os.chown(entry.path, uid, gid, follow_symlinks=False)
        if stat.S_ISDIR(info.st_mode):
            _reclaim_store(entry.path, uid, gid, aside, changes)


def _move_aside(path: str, aside: str, changes: Changes) -> None:
    target = os.path.join(aside, path.lstrip("/").replace("/", "%"))
    changes.note(path, f"moved aside to {target}")
    if changes.check_mode:
        return
    try:
        os.rename(path, target)
    except OSError as exc:
        if exc.errno != errno.EXDEV or not os.path.islink(path):
            raise
        # The store may be on another filesystem than root's state: a link is recreated.
        with_target = os.readlink(path)
        if os.path.lexists(target):
            os.unlink(target)
        os.symlink(with_target, target)
        os.unlink(path)
