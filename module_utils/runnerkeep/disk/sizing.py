"""Fast tree sizing with an ``fwalk`` + ``stat(name, dir_fd=...)`` (never follows symlinks).

Logical bytes are ``st_size``; on-disk bytes are ``st_blocks * 512``. Hard-linked files count
once. The walk stays on the filesystem it starts on (like ``du -x``): a mount point below a
root is somebody else's filesystem. Errors (vanished or unreadable entries) are collected, not
raised, so a report over a busy tree still completes.
"""

from __future__ import annotations

import os
import stat as stat_mod
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from typing import Any, Callable


@dataclass
class TreeSize:
    path: str
    logical_bytes: int = 0
    disk_bytes: int = 0
    files: int = 0
    dirs: int = 0
    errors: list[str] = field(default_factory=list)
    exists: bool = True

    def as_dict(self) -> dict:
        data = asdict(self)
        data["errors"] = self.errors[:20]
        data["error_count"] = len(self.errors)
        return data


def _walk(root: str, depth: int, result: TreeSize, per_dir: dict[str, int] | None) -> None:
    """One pass; when ``per_dir`` is given, on-disk bytes are summed per directory up to depth."""
    try:
        root_stat = os.stat(root, follow_symlinks=False)
    except FileNotFoundError:
        result.exists = False
        return
    except OSError as exc:
        result.errors.append(f"{root}: {exc.strerror}")
        return
    if not stat_mod.S_ISDIR(root_stat.st_mode):
        result.files += 1
        result.logical_bytes += root_stat.st_size
        result.disk_bytes += root_stat.st_blocks * 512
        return
    device = root_stat.st_dev
    seen: set[tuple[int, int]] = set()
    root_parts = len(root.rstrip(os.sep).split(os.sep)) if root != os.sep else 1

    def onerror(exc: OSError) -> None:
        result.errors.append(f"{exc.filename}: {exc.strerror}")

    for dirpath, dirnames, filenames, dirfd in fwalk(root, onerror):
        result.dirs += 1
        own_bytes = 0
        keep = []
        for name in dirnames:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError as exc:
                result.errors.append(f"{os.path.join(dirpath, name)}: {exc.strerror}")
                continue
            own_bytes += st.st_blocks * 512
            result.disk_bytes += st.st_blocks * 512
            result.logical_bytes += st.st_size
            if st.st_dev == device:
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError as exc:
                result.errors.append(f"{os.path.join(dirpath, name)}: {exc.strerror}")
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            result.files += 1
            result.logical_bytes += st.st_size
            blocks = st.st_blocks * 512
            result.disk_bytes += blocks
            own_bytes += blocks
        if per_dir is not None:
            parts = dirpath.rstrip(os.sep).split(os.sep)
            rel_depth = len(parts) - root_parts
            if rel_depth > depth:
                dirpath = os.sep.join(parts[: root_parts + depth])
            per_dir[dirpath] = per_dir.get(dirpath, 0) + own_bytes


def fwalk(
    root: str, onerror: Callable[[OSError], None]
) -> Iterator[tuple[str, list[str], list[str], int]]:
    """``os.fwalk(root, onerror=onerror)`` (top down, symlinks not followed), without recursion.

    Before Python 3.13 os.fwalk recurses once per directory level, so a tree about 1000 levels
    deep (a CI user can make one under /tmp or a work dir) raised RecursionError out of the
    report. This is Python 3.13's iterative fwalk cut down to what the walks here use: the same
    entries in the same order, the lstat/open/fstat check against swapped-in symlinks, one open
    descriptor per level of the current path (a level the descriptor limit refuses goes to
    ``onerror`` like any unreadable directory). Pruning the yielded dirnames prunes the walk.
    """
    stack: list[tuple[str, Any]] = [("walk", (True, None, root, root))]
    try:
        while stack:
            action, value = stack.pop()
            if action == "close":
                os.close(value)
                continue
            is_root, parent_fd, path, name = value
            try:
                before = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
                fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK, dir_fd=parent_fd)
            except OSError as exc:
                if is_root:
                    raise
                onerror(exc)
                continue
            stack.append(("close", fd))
            if is_root and not stat_mod.S_ISDIR(before.st_mode):
                continue
            if not os.path.samestat(before, os.stat(fd)):
                continue  # swapped for a symlink or another directory since it was listed
            dirnames, filenames = _list_dir(fd)
            yield path, dirnames, filenames, fd
            prefix = os.path.join(path, "")
            stack.extend(("walk", (False, fd, prefix + d, d)) for d in reversed(dirnames))
    finally:
        while stack:
            action, value = stack.pop()
            if action == "close":
                os.close(value)


def _list_dir(fd: int) -> tuple[list[str], list[str]]:
    """(directories, other entries) as os.fwalk splits them: a symlink to a directory is listed
    with the directories (never entered); a dangling one with the others."""
    dirnames: list[str] = []
    filenames: list[str] = []
    with os.scandir(fd) as entries:
        for entry in entries:
            try:
                if entry.is_dir():
                    dirnames.append(entry.name)
                else:
                    filenames.append(entry.name)
            except OSError:
                try:
                    if entry.is_symlink():
                        filenames.append(entry.name)
                except OSError:
                    pass
    return dirnames, filenames


def tree_size(root: str) -> TreeSize:
    """Logical and on-disk size of everything under ``root`` (0 and exists=False if absent)."""
    result = TreeSize(path=root)
    _walk(root, 0, result, None)
    return result


def largest_dirs(root: str, depth: int = 2, limit: int = 10) -> tuple[list[dict], TreeSize]:
    """The ``limit`` largest directories under ``root`` down to ``depth`` levels (on-disk bytes,
    each including everything below it), from a single walk."""
    result = TreeSize(path=root)
    own_bytes: dict[str, int] = {}
    _walk(root, depth, result, own_bytes)
    totals: dict[str, int] = {}
    root_norm = root.rstrip(os.sep) or os.sep
    for path, nbytes in own_bytes.items():
        # Roll each directory's own bytes up into itself and its ancestors below the root.
        current = path
        while True:
            if current != root_norm:
                totals[current] = totals.get(current, 0) + nbytes
            if current == root_norm or len(current) <= len(root_norm):
                break
            current = os.path.dirname(current)
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [{"path": p, "disk_bytes": b} for p, b in ranked], result
