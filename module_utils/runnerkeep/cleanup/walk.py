"""Safe sizing and removal of directory trees.

Everything here works relative to directory file descriptors: a root is opened component by
component with ``O_NOFOLLOW``, every child directory is opened with ``O_NOFOLLOW`` relative to
its parent's descriptor, every stat is an ``lstat`` (``fstatat`` with ``AT_SYMLINK_NOFOLLOW``)
and every removal is ``unlinkat``/``rmdir`` relative to a descriptor. So a symlink is never
followed (the link itself is removed, its target is left alone), a directory swapped for a
symlink between planning and removal is not entered, and nothing outside the opened root can
be reached: names come from ``scandir`` (never ``..``).

Sizing counts allocated bytes (``st_blocks * 512``: what the filesystem gets back) and inodes,
each hard-linked inode once per run. The walk stays on the root's filesystem unless told
otherwise, skips protected inodes (the image cache store, swap files, runner binaries) and
special files (sockets, FIFOs, devices), and records files that vanish or cannot be read as
errors without stopping.

The walker is an explicit stack holding one descriptor per depth level (no recursion limit, no
descriptor exhaustion on wide trees); ``os.scandir`` on a descriptor plus ``DirEntry.stat``
costs one ``getdents`` per directory and one ``fstatat`` per entry, which is the floor.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from stat import S_ISDIR, S_ISLNK, S_ISREG
from typing import Callable

OPEN_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

# Test hook: called as ``hook(dir_path, names)`` after a directory was listed and before its
# entries are examined, so tests can make files vanish in the middle of a walk.
_listing_hook: Callable[[str, list[str]], None] | None = None


@dataclass
class WalkOptions:
    """What a walk may touch: the root's device, protected inodes, cross-filesystem policy."""

    dev: int
    protected: frozenset = frozenset()  # {(st_dev, st_ino)}
    one_filesystem: bool = True
    seen: set = field(default_factory=set)  # hard-linked inodes already counted this run


@dataclass
class TreeStats:
    """Totals for one entry (file or tree): allocated bytes, inodes, newest mtime, problems."""

    bytes: int = 0
    inodes: int = 0
    newest_mtime: float = 0.0
    errors: list = field(default_factory=list)  # [(path, message)]
    kept: list = field(default_factory=list)  # [(path, reason)] deliberately left in place

    def add_stat(self, st: os.stat_result, opts: WalkOptions) -> None:
        if st.st_mtime > self.newest_mtime:
            self.newest_mtime = st.st_mtime
        if st.st_nlink > 1 and not stat.S_ISDIR(st.st_mode):
            key = (st.st_dev, st.st_ino)
            if key in opts.seen:
                return
            opts.seen.add(key)
        self.bytes += st.st_blocks * 512
        self.inodes += 1


def _err(exc: OSError) -> str:
    return exc.strerror or str(exc)


def open_root(path: str) -> int:
    """Open an absolute directory path without following a symlink in any component.

    Raises OSError (ELOOP/ENOTDIR) when a component is a symlink or not a directory.
    """
    if not os.path.isabs(path):
        raise ValueError(f"root must be an absolute path: {path}")
    parts = [p for p in os.path.normpath(path).split("/") if p]
    fd = os.open("/", OPEN_DIR_FLAGS)
    try:
        for part in parts:
            child = os.open(part, OPEN_DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_beneath(root_fd: int, rel_parts: list[str]) -> int:
    """Open directory ``rel_parts`` beneath ``root_fd``, never following a symlink."""
    fd = os.dup(root_fd)
    try:
        for part in rel_parts:
            child = os.open(part, OPEN_DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def _list(fd: int, path: str) -> list[os.DirEntry]:
    with os.scandir(fd) as it:
        entries = list(it)
    if _listing_hook is not None:
        _listing_hook(path, [e.name for e in entries])
    return entries


def _should_skip(st: os.stat_result, path: str, opts: WalkOptions, stats: TreeStats) -> bool:
    if (st.st_dev, st.st_ino) in opts.protected:
        stats.kept.append((path, "protected"))
        return True
    mode = st.st_mode
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode)):
        stats.kept.append((path, "special file"))
        return True
    if stat.S_ISDIR(mode) and opts.one_filesystem and st.st_dev != opts.dev:
        stats.kept.append((path, "other filesystem (mount point)"))
        return True
    return False


def size_entry(parent_fd: int, name: str, path: str, opts: WalkOptions) -> TreeStats:
    """Size ``name`` (relative to ``parent_fd``): a file, a symlink (the link) or a whole tree."""
    stats = TreeStats()
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError as exc:
        stats.errors.append((path, _err(exc)))
        return stats
    if _should_skip(st, path, opts, stats):
        return stats
    stats.add_stat(st, opts)
    if stat.S_ISDIR(st.st_mode):
        try:
            fd = os.open(name, OPEN_DIR_FLAGS, dir_fd=parent_fd)
        except OSError as exc:
            stats.errors.append((path, _err(exc)))
            return stats
        _size_tree(fd, path, opts, stats)
    return stats


def size_tree(path: str, opts: WalkOptions | None = None) -> TreeStats:
    """Size everything beneath the directory ``path`` (the directory itself included)."""
    fd = open_root(path)
    st = os.fstat(fd)
    opts = opts or WalkOptions(dev=st.st_dev)
    stats = TreeStats()
    stats.add_stat(st, opts)
    _size_tree(fd, path, opts, stats)
    return stats


def _size_tree(fd: int, path: str, opts: WalkOptions, stats: TreeStats) -> None:
    """Walk the directory open on ``fd`` (consumed: closed on return).

    The per-entry loop is the hot path (one ``fstatat`` per entry is the floor); regular
    files and symlinks take a short inline path, everything else goes through the checks.
    """
    protected = opts.protected
    prot_inos = {ino for _dev, ino in protected}
    seen = opts.seen
    one_fs, dev = opts.one_filesystem, opts.dev
    blocks = inodes = 0
    newest = stats.newest_mtime
    stack: list = []
    try:
        try:
            entries = _list(fd, path)
        except OSError as exc:
            stats.errors.append((path, _err(exc)))
            os.close(fd)
            return
        stack.append((fd, path, iter(entries)))
        while stack:
            dfd, dpath, it = stack[-1]
            entry = next(it, None)
            if entry is None:
                os.close(dfd)
                stack.pop()
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError as exc:
                stats.errors.append((dpath + "/" + entry.name, _err(exc)))
                continue
            mode = st.st_mode
            if st.st_ino in prot_inos and (st.st_dev, st.st_ino) in protected:
                stats.kept.append((dpath + "/" + entry.name, "protected"))
                continue
            if S_ISREG(mode) or S_ISLNK(mode):
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
            elif S_ISDIR(mode):
                epath = dpath + "/" + entry.name
                if one_fs and st.st_dev != dev:
                    stats.kept.append((epath, "other filesystem (mount point)"))
                    continue
                try:
                    cfd = os.open(entry.name, OPEN_DIR_FLAGS, dir_fd=dfd)
                except OSError as exc:
                    stats.errors.append((epath, _err(exc)))
                    continue
                try:
                    centries = _list(cfd, epath)
                except OSError as exc:
                    stats.errors.append((epath, _err(exc)))
                    os.close(cfd)
                    continue
                stack.append((cfd, epath, iter(centries)))
            else:
                stats.kept.append((dpath + "/" + entry.name, "special file"))
                continue
            blocks += st.st_blocks
            inodes += 1
            if st.st_mtime > newest:
                newest = st.st_mtime
    finally:
        for dfd, _p, _i in stack:
            os.close(dfd)
        stats.bytes += blocks * 512
        stats.inodes += inodes
        stats.newest_mtime = newest


def remove_entry(parent_fd: int, name: str, path: str, opts: WalkOptions) -> TreeStats:
    """Remove ``name`` beneath ``parent_fd``: unlink a file or symlink, delete a tree bottom-up.

    Returns what was actually freed. Protected, special and other-filesystem entries are kept
    (their parent directories then stay too); vanished files are not counted; other failures
    are recorded as errors and the removal goes on with the rest.
    """
    stats = TreeStats()
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError as exc:
        stats.errors.append((path, _err(exc)))
        return stats
    if _should_skip(st, path, opts, stats):
        return stats
    if not stat.S_ISDIR(st.st_mode):
        try:
            os.unlink(name, dir_fd=parent_fd)
        except OSError as exc:
            stats.errors.append((path, _err(exc)))
            return stats
        stats.add_stat(st, opts)
        return stats
    try:
        fd = os.open(name, OPEN_DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        stats.errors.append((path, _err(exc)))
        return stats
    fst = os.fstat(fd)
    if (fst.st_ino, fst.st_dev) != (st.st_ino, st.st_dev):
        os.close(fd)
        stats.errors.append((path, "changed while being removed; left alone"))
        return stats
    complete = _remove_tree(fd, path, opts, stats)
    if complete:
        try:
            os.rmdir(name, dir_fd=parent_fd)
            stats.add_stat(st, opts)
        except OSError as exc:
            if exc.errno != errno.ENOENT:
                stats.errors.append((path, _err(exc)))
    return stats


def _remove_tree(fd: int, path: str, opts: WalkOptions, stats: TreeStats) -> bool:
    """Empty the directory open on ``fd`` (consumed). True when it is now empty.

    Frames are ``[fd, path, entries, complete, (name, stat) in parent]``; a directory is
    removed when its frame ends complete (nothing kept or failed inside it).
    """
    protected = opts.protected
    prot_inos = {ino for _dev, ino in protected}
    seen = opts.seen
    one_fs, dev = opts.one_filesystem, opts.dev
    unlink = os.unlink
    blocks = inodes = 0
    try:
        entries = _list(fd, path)
    except OSError as exc:
        stats.errors.append((path, _err(exc)))
        os.close(fd)
        return False
    stack: list = [[fd, path, iter(entries), True, None]]
    try:
        while stack:
            frame = stack[-1]
            dfd = frame[0]
            entry = next(frame[2], None)
            if entry is None:
                os.close(dfd)
                stack.pop()
                if not stack:
                    return frame[3]
                parent = stack[-1]
                name, st = frame[4]
                if frame[3]:
                    try:
                        os.rmdir(name, dir_fd=parent[0])
                        blocks += st.st_blocks
                        inodes += 1
                    except OSError as exc:
                        if exc.errno != errno.ENOENT:
                            stats.errors.append((frame[1], _err(exc)))
                            parent[3] = False
                else:
                    parent[3] = False
                continue
            name = entry.name
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                stats.errors.append((frame[1] + "/" + name, "vanished before it could be removed"))
                continue
            except OSError as exc:
                stats.errors.append((frame[1] + "/" + name, _err(exc)))
                frame[3] = False
                continue
            mode = st.st_mode
            if st.st_ino in prot_inos and (st.st_dev, st.st_ino) in protected:
                stats.kept.append((frame[1] + "/" + name, "protected"))
                frame[3] = False
                continue
            if S_ISREG(mode) or S_ISLNK(mode):
                try:
                    unlink(name, dir_fd=dfd)
                except FileNotFoundError:
                    stats.errors.append(
                        (frame[1] + "/" + name, "vanished before it could be removed")
                    )
                    continue
                except OSError as exc:
                    stats.errors.append((frame[1] + "/" + name, _err(exc)))
                    frame[3] = False
                    continue
                if st.st_nlink > 1:
                    key = (st.st_dev, st.st_ino)
                    if key in seen:
                        continue
                    seen.add(key)
                blocks += st.st_blocks
                inodes += 1
            elif S_ISDIR(mode):
                epath = frame[1] + "/" + name
                if one_fs and st.st_dev != dev:
                    stats.kept.append((epath, "other filesystem (mount point)"))
                    frame[3] = False
                    continue
                try:
                    cfd = os.open(name, OPEN_DIR_FLAGS, dir_fd=dfd)
                except OSError as exc:
                    stats.errors.append((epath, _err(exc)))
                    frame[3] = False
                    continue
                try:
                    centries = _list(cfd, epath)
                except OSError as exc:
                    os.close(cfd)
                    stats.errors.append((epath, _err(exc)))
                    frame[3] = False
                    continue
                stack.append([cfd, epath, iter(centries), True, (name, st)])
            else:
                stats.kept.append((frame[1] + "/" + name, "special file"))
                frame[3] = False
    finally:
        for frame in stack:
            os.close(frame[0])
        stats.bytes += blocks * 512
        stats.inodes += inodes
    return False
