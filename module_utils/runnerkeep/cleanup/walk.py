"""Safe sizing and removal of directory trees.

Everything here works relative to directory file descriptors: a root is opened component by
component with ``O_NOFOLLOW``, every child directory is opened with ``O_NOFOLLOW`` relative to
its parent's descriptor, every stat is an ``lstat`` (``fstatat`` with ``AT_SYMLINK_NOFOLLOW``)
and every removal is ``unlinkat``/``rmdir`` relative to a descriptor. So a symlink is never
followed (the link itself is removed, its target is left alone), a directory swapped for a
symlink between planning and removal is not entered, and nothing outside the opened root can
be reached: names come from ``scandir`` (never ``..``, except to climb back to a directory
whose descriptor was closed, and then only after checking it is the directory it was).

Mount boundaries are mount IDs, not only device numbers: every directory a walker opens is
checked on the descriptor it then uses (a same-filesystem bind mount has the root's ``st_dev``
but another mount ID), so neither sizing nor removal enters another mount unless told to.
A *file* can be a mount point too (a bind-mounted file), and no descriptor is opened on a file
before it is unlinked: so a walk starts from the mount points ``/proc/self/mountinfo`` lists
beneath its root (``mount_points_beneath``, their (st_dev, st_ino)) and keeps every entry that
is one of them and on another mount, in sizing and removal alike; a file mounted after that
makes ``unlink`` fail with EBUSY, which is reported as kept too. Dry run and real run agree.

Sizing counts allocated bytes (``st_blocks * 512``: what the filesystem gets back) and inodes.
An inode with several hard links counts only once all its links were met in what would be
removed (``TreeStats.links`` holds the ones still short of that; ``settle_links`` adds what a
run's earlier items met). Removal counts a file only when its last link goes, and keeps
anything changed after the scan (``WalkOptions.cutoff``) together with the directories that
hold it. The walk stays on the root's mount unless told otherwise, skips protected inodes (the
image cache store, swap files, runner binaries) and special files (sockets, FIFOs, devices),
and records files that vanish or cannot be read as errors without stopping.

The walkers are explicit stacks (no recursion limit) that keep at most ``FD_WINDOW`` directory
descriptors open, whatever the depth: deeper, the oldest ancestors' descriptors are closed and,
on the way back up, re-opened through ``..`` and checked against the (st_dev, st_ino) recorded
when they were entered, as GNU ``rm`` does. ``os.scandir`` on a descriptor plus ``DirEntry.stat``
costs one ``getdents`` per directory and one ``fstatat`` per entry, which is the floor.
Sizing a big tree is shared with forked helper processes (``_walk_shared``): Python spends as
long per entry as the kernel does, so one process alone takes ~1.5x the time of ``du``.
"""

from __future__ import annotations

import errno
import functools
import marshal
import os
import signal
import stat
import struct
import time
from dataclasses import dataclass, field
from stat import S_ISDIR, S_ISLNK, S_ISREG
from typing import Callable, NamedTuple, NoReturn

from ..mounts import MOUNTINFO, MountIdUnavailable, mount_id, mount_id_at, read_mountinfo

OPEN_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)

# Directory descriptors one walk keeps open at most (a forked sizing helper too); ancestors
# beyond are closed and re-opened through ".." on the way back up.
FD_WINDOW = 64

OTHER_FS = "other filesystem (mount point)"
OTHER_MOUNT = "other mount (mount point)"
CHANGED = "changed after the scan"
NOT_EMPTY = "not empty: something was added after the scan"
MOVED = "moved during the walk ('..' is not the directory it was); the rest was left alone"

# Test hook: called as ``hook(dir_path, names)`` after a directory was listed and before its
# entries are examined, so tests can make files vanish in the middle of a walk.
_listing_hook: Callable[[str, list[str]], None] | None = None


def _mount_id(fd: int) -> int:
    try:
        return mount_id(fd)
    except MountIdUnavailable:
        return -1  # no mount IDs on this kernel: the st_dev test is all there is


@dataclass
class WalkOptions:
    """What a walk may touch: the root's device and mount, protected inodes, cut-off time.

    ``mnt_id`` None is filled in from the first descriptor a walk starts from (-1: this kernel
    does not tell mount IDs). ``cutoff`` (removal only): entries whose mtime or ctime is at or
    after it changed since the scan and are kept.
    """

    dev: int
    protected: frozenset = frozenset()  # {(st_dev, st_ino)}
    one_filesystem: bool = True
    # Removal: hard-linked inodes this run unlinked a link of ({(st_dev, st_ino): links}),
    # so the ctime that unlink moved is not taken for a change by someone else.
    seen: dict = field(default_factory=dict)
    workers: int = 0  # processes sharing a big sizing walk; 0 = one per CPU, at most 4
    mnt_id: int | None = None
    cutoff: float | None = None
    # {(st_dev, st_ino)} of the mount points beneath the root (``mount_points_beneath``)
    mount_points: frozenset = frozenset()
    # Inode numbers of ``protected`` and ``mount_points``: a cheap first test in the walkers'
    # per-entry loops.
    prot_inos: frozenset = field(init=False, repr=False, compare=False)
    mp_inos: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.prot_inos = frozenset(ino for _dev, ino in self.protected)
        self.mp_inos = frozenset(ino for _dev, ino in self.mount_points)

    @classmethod
    def for_root(cls, root_fd: int, **kwargs) -> WalkOptions:
        """Options for a walk beneath the directory open on ``root_fd`` (its device, mount)."""
        return cls(dev=os.fstat(root_fd).st_dev, mnt_id=_mount_id(root_fd), **kwargs)

    def learn_mount(self, fd: int) -> None:
        if self.mnt_id is None:
            self.mnt_id = _mount_id(fd)

    def other_mount(self, fd: int) -> bool:
        """True when the directory open on ``fd`` is on a mount this walk must not enter."""
        if not self.one_filesystem or self.mnt_id is None or self.mnt_id < 0:
            return False
        return _mount_id(fd) != self.mnt_id

    def mount_point(self, dir_fd: int, name: str, st: os.stat_result) -> bool:
        """True when ``name`` beneath ``dir_fd`` (lstat ``st``) is a mount point listed at the
        start of the walk, other than the walk's own mount.

        Nothing mounted on it can be removed (``unlink``/``rmdir`` fail with EBUSY), so it is
        kept even where ``one_filesystem`` is off, except a directory (entered then). The
        identity test is one set lookup; the mount ID is read only on a match, which tells the
        mounted file from its source when both are beneath the root. Kept when the mount ID
        cannot be read.
        """
        if st.st_ino not in self.mp_inos or (st.st_dev, st.st_ino) not in self.mount_points:
            return False
        if S_ISDIR(st.st_mode) and not self.one_filesystem:
            return False  # told to cross mounts: the walk enters it (mount IDs decide as ever)
        if self.mnt_id is None or self.mnt_id < 0:
            return True
        try:
            return mount_id_at(dir_fd, name) != self.mnt_id
        except OSError:
            return True


def read_mount_points(path: str = MOUNTINFO) -> list[str]:
    """Every mount point of this process's mount namespace; [] when /proc cannot tell."""
    return [mount.mount_point for mount in read_mountinfo(path)]


def mount_points_beneath(root: str, points: list[str]) -> frozenset:
    """(st_dev, st_ino) of the mount points strictly beneath ``root`` (``read_mount_points``).

    An lstat of each, now: what is mounted there, as a walk's ``fstatat`` of the name sees it.
    One that vanished meanwhile is left out (a mount appearing later is caught by mount ID for
    a directory, by EBUSY for a file).
    """
    top = os.path.normpath(root)
    prefix = top.rstrip("/") + "/"
    found = set()
    for point in points:
        point = os.path.normpath(point)
        if point == top or not point.startswith(prefix):
            continue
        try:
            st = os.lstat(point)
        except OSError:
            continue
        found.add((st.st_dev, st.st_ino))
    return frozenset(found)


@dataclass
class TreeStats:
    """Totals for one entry (file or tree): allocated bytes, inodes, newest mtime, problems.

    ``links`` (sizing): hard-linked inodes not all of whose links were met in this entry,
    ``{(st_dev, st_ino): [links met, st_nlink, st_blocks]}``, not counted in ``bytes``.
    ``removed`` (removal): names removed (a link whose inode lives on frees nothing).
    """

    bytes: int = 0
    inodes: int = 0
    newest_mtime: float = 0.0
    errors: list = field(default_factory=list)  # [(path, message)]
    kept: list = field(default_factory=list)  # [(path, reason)] deliberately left in place
    links: dict = field(default_factory=dict)
    removed: int = 0

    def add_sized(self, st: os.stat_result) -> None:
        if st.st_mtime > self.newest_mtime:
            self.newest_mtime = st.st_mtime
        if st.st_nlink > 1 and not S_ISDIR(st.st_mode):
            _meet_link(self.links, (st.st_dev, st.st_ino), 1, st.st_nlink, st.st_blocks)
            return
        self.bytes += st.st_blocks * 512
        self.inodes += 1

    def add_removed(self, st: os.stat_result) -> None:
        self.removed += 1
        if st.st_nlink == 1 or S_ISDIR(st.st_mode):
            self.bytes += st.st_blocks * 512
            self.inodes += 1

    def settle_links(self, seen: dict) -> None:
        """Count the hard-linked inodes whose last link this entry holds, given the links met
        by the run's earlier entries (``seen``: {(st_dev, st_ino): links met}, updated)."""
        for key, (met, nlink, blocks) in self.links.items():
            before = seen.get(key, 0)
            seen[key] = before + met
            if before < nlink <= before + met:
                self.bytes += blocks * 512
                self.inodes += 1
        self.links = {}


def _meet_link(links: dict, key: tuple, met: int, nlink: int, blocks: int) -> None:
    record = links.get(key)
    if record is None:
        links[key] = [met, nlink, blocks]
    else:
        record[0] += met


def _err(exc: OSError) -> str:
    return exc.strerror or str(exc)


class OtherMountError(OSError):
    """A directory on the way is on another mount than the walk's root."""

    def __init__(self, path: str) -> None:
        super().__init__(errno.EXDEV, OTHER_MOUNT, path)


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


def open_beneath(root_fd: int, rel_parts: list[str], opts: WalkOptions | None = None) -> int:
    """Open directory ``rel_parts`` beneath ``root_fd``, never following a symlink.

    With ``opts``, every component must be on the root's mount: OtherMountError otherwise.
    """
    fd = os.dup(root_fd)
    try:
        for i, part in enumerate(rel_parts):
            child = os.open(part, OPEN_DIR_FLAGS, dir_fd=fd)
            os.close(fd)
            fd = child
            if opts is not None and opts.other_mount(fd):
                raise OtherMountError("/".join(rel_parts[: i + 1]))
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
        stats.kept.append((path, OTHER_FS))
        return True
    return False


def _kept_mount_point(
    parent_fd: int, name: str, st: os.stat_result, path: str, opts: WalkOptions, stats: TreeStats
) -> bool:
    if opts.mount_point(parent_fd, name, st):
        stats.kept.append((path, OTHER_MOUNT))
        return True
    return False


def _open_checked_dir(
    parent_fd: int, name: str, st: os.stat_result, path: str, opts: WalkOptions, stats: TreeStats
) -> int:
    """Open directory ``name`` (stat ``st``) for a walk: -1 when it must not be entered."""
    try:
        fd = os.open(name, OPEN_DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        stats.errors.append((path, _err(exc)))
        return -1
    opened = os.fstat(fd)
    if (opened.st_ino, opened.st_dev) != (st.st_ino, st.st_dev):
        os.close(fd)
        stats.errors.append((path, "changed while being walked; left alone"))
        return -1
    if opts.other_mount(fd):
        os.close(fd)
        stats.kept.append((path, OTHER_MOUNT))
        return -1
    return fd


def _entry_to_walk(
    parent_fd: int, name: str, path: str, opts: WalkOptions, stats: TreeStats
) -> os.stat_result | None:
    """``name``'s lstat when sizing or removing it goes on; None when it is gone or unreadable
    (an error in ``stats``), refused by the rails or a mount point kept (``stats`` says why)."""
    opts.learn_mount(parent_fd)
    try:
        st = os.stat(name, dir_fd=parent_fd, follow_symlinks=False)
    except OSError as exc:
        stats.errors.append((path, _err(exc)))
        return None
    if _should_skip(st, path, opts, stats) or _kept_mount_point(
        parent_fd, name, st, path, opts, stats
    ):
        return None
    return st


def size_entry(parent_fd: int, name: str, path: str, opts: WalkOptions) -> TreeStats:
    """Size ``name`` (relative to ``parent_fd``): a file, a symlink (the link) or a whole tree."""
    stats = TreeStats()
    st = _entry_to_walk(parent_fd, name, path, opts, stats)
    if st is None:
        return stats
    if not stat.S_ISDIR(st.st_mode):
        stats.add_sized(st)
        return stats
    fd = _open_checked_dir(parent_fd, name, st, path, opts, stats)
    if fd < 0:
        return stats
    stats.add_sized(st)
    _size_tree(fd, path, opts, stats, (st.st_dev, st.st_ino))
    if stats.kept:
        _discount_holders(parent_fd, name, path, stats)
    return stats


def _discount_holders(parent_fd: int, name: str, path: str, stats: TreeStats) -> None:
    """Take the directories holding a kept entry out of ``stats``: removal keeps them too
    (a kept mount point, special file or protected inode leaves its parents in place), so the
    dry run does not promise them. Re-opened beneath ``parent_fd`` without following symlinks.
    """
    prefix = path + "/"
    holders = set()
    for kept_path, _why in stats.kept:
        if kept_path.startswith(prefix):
            parts = tuple(kept_path[len(prefix) :].split("/")[:-1])
            holders.update(parts[:i] for i in range(len(parts) + 1))
    for parts in holders:
        try:
            fd = open_beneath(parent_fd, [name, *parts])
        except OSError:
            continue  # gone or swapped since the walk: nothing to take out
        try:
            blocks = os.fstat(fd).st_blocks
        finally:
            os.close(fd)
        stats.bytes = max(stats.bytes - blocks * 512, 0)
        stats.inodes = max(stats.inodes - 1, 0)


def size_tree(path: str, opts: WalkOptions | None = None) -> TreeStats:
    """Size everything beneath the directory ``path`` (the directory itself included).

    Hard-linked inodes with links outside the tree are not counted (removing the tree would
    not free them); they are left in ``links``.
    """
    fd = open_root(path)
    st = os.fstat(fd)
    opts = opts or WalkOptions(dev=st.st_dev)
    opts.learn_mount(fd)
    stats = TreeStats()
    stats.add_sized(st)
    _size_tree(fd, path, opts, stats, (st.st_dev, st.st_ino))
    return stats


def _size_tree(fd: int, path: str, opts: WalkOptions, stats: TreeStats, ident: tuple) -> None:
    """Size the directory open on ``fd`` (consumed: closed on return) into ``stats``."""
    workers = opts.workers or default_workers()
    if workers < 2:
        _walk_into(fd, path, opts, stats, ident)
        return
    retry_fd = os.dup(fd)
    try:
        tally = _Tally()
        try:
            complete = _walk_shared(fd, path, opts, tally, workers, ident)
        except BaseException:
            tally.add_to(stats)
            raise
        if complete:
            tally.add_to(stats)
            return
        # A helper died (killed, out of memory): its share is unknown, so size the whole
        # tree again in this process rather than report a wrong figure.
        _walk_into(os.dup(retry_fd), path, opts, stats, ident)
        stats.errors.append((path, "a sizing helper process failed; sized again in one process"))
    finally:
        os.close(retry_fd)


def _walk_into(fd: int, path: str, opts: WalkOptions, stats: TreeStats, ident: tuple) -> None:
    """Count the tree below ``fd`` (consumed) in this process alone, into ``stats``."""
    tally = _Tally()
    try:
        _walk(fd, path, opts, tally, ident)
    finally:
        tally.add_to(stats)


class _Tally:
    """What one walker (this process or a helper) counted: the hot loop's running totals."""

    __slots__ = ("blocks", "errors", "inodes", "kept", "links", "newest")

    def __init__(self) -> None:
        self.blocks = 0
        self.inodes = 0
        self.newest = 0.0
        self.errors: list = []
        self.kept: list = []
        self.links: dict = {}  # {(st_dev, st_ino): [links met, st_nlink, st_blocks]}

    def add_to(self, stats: TreeStats) -> None:
        """Add to ``stats``; an inode whose links were all met here counts, the rest wait."""
        blocks, inodes = self.blocks, self.inodes
        for key, (met, nlink, link_blocks) in self.links.items():
            pending = stats.links.get(key)
            before = pending[0] if pending else 0
            if before + met >= nlink:
                blocks += link_blocks
                inodes += 1
                stats.links.pop(key, None)
            else:
                _meet_link(stats.links, key, met, nlink, link_blocks)
        stats.bytes += blocks * 512
        stats.inodes += inodes
        stats.newest_mtime = max(stats.newest_mtime, self.newest)
        stats.errors.extend(self.errors)
        stats.kept.extend(self.kept)


class _Frame:
    """One directory on a walker's stack.

    ``fd`` is -1 while the descriptor is closed to bound how many are open (``_FdStack``);
    ``reopened`` then tells that ``DirEntry.stat`` of ``todo`` would use a stale descriptor
    number. ``ident`` is (st_dev, st_ino) when entered. Removal only: ``name`` in the parent,
    ``st_blocks`` (counted when removed), ``complete`` (nothing kept or failed inside so far).
    """

    __slots__ = ("complete", "fd", "ident", "name", "path", "reopened", "st_blocks", "todo")

    def __init__(self, fd: int, path: str, todo, ident: tuple, name: str = "", st_blocks: int = 0):
        self.fd = fd
        self.path = path
        self.todo = todo
        self.ident = ident
        self.name = name
        self.st_blocks = st_blocks
        self.complete = True
        self.reopened = False


class _FdStack:
    """The frames of a depth-first walk, at most FD_WINDOW of them with an open descriptor.

    The open ones are always the deepest (``frames[first_open:]``). ``pop`` closes the top and,
    when the new top's descriptor was closed, re-opens it through ``..`` of the one just left
    and checks its identity; if it is not the directory it was (moved meanwhile), the walk
    stops there: the stack is emptied (all its descriptors are closed) and ``abandoned`` set.
    """

    def __init__(self, opts: WalkOptions) -> None:
        self.frames: list[_Frame] = []
        self.first_open = 0
        self.opts = opts
        self.abandoned = False

    def push(self, frame: _Frame) -> None:
        frames = self.frames
        frames.append(frame)
        if len(frames) - self.first_open > FD_WINDOW:
            # Close half the window at once, so a walk going up and down at the edge does not
            # re-open an ancestor for every subdirectory.
            stop = self.first_open + FD_WINDOW // 2
            for old in frames[self.first_open : stop]:
                os.close(old.fd)
                old.fd = -1
            self.first_open = stop

    def pop(self, errors: list) -> _Frame:
        frames = self.frames
        frame = frames.pop()
        try:
            if frames and frames[-1].fd < 0:
                self._reopen(frames[-1], frame.fd, errors)
        finally:
            os.close(frame.fd)
            frame.fd = -1
        return frame

    def _reopen(self, parent: _Frame, child_fd: int, errors: list) -> None:
        fd = _reopen_parent(child_fd, parent.ident, self.opts)
        if fd < 0:
            errors.append((parent.path, MOVED))
            self.frames.clear()
            self.first_open = 0
            self.abandoned = True
            return
        parent.fd = fd
        parent.reopened = True
        self.first_open = len(self.frames) - 1

    def close_all(self) -> None:
        for frame in self.frames:
            if frame.fd >= 0:
                os.close(frame.fd)
                frame.fd = -1


def _reopen_parent(child_fd: int, ident: tuple, opts: WalkOptions) -> int:
    """``..`` of ``child_fd`` if it is the directory ``ident`` on the walk's mount, else -1."""
    try:
        fd = os.open("..", OPEN_DIR_FLAGS, dir_fd=child_fd)
    except OSError:
        return -1
    st = os.fstat(fd)
    if (st.st_dev, st.st_ino) != ident or opts.other_mount(fd):
        os.close(fd)
        return -1
    return fd


class _Subdir(NamedTuple):
    """A subdirectory ``_scan_dir`` found: counted (and checked) by whoever opens it."""

    name: str
    st_blocks: int
    st_mtime: float
    st_dev: int
    st_ino: int

    @property
    def ident(self) -> tuple:
        return (self.st_dev, self.st_ino)


def _scan_dir(dfd: int, dpath: str, opts: WalkOptions, tally: _Tally) -> list[_Subdir]:
    """Count every non-directory entry of the directory ``dpath`` open on ``dfd``.

    Returns its subdirectories: they are counted by whoever opens them, so a directory that
    cannot be opened is reported, not counted. This loop runs once per entry of the tree, so it
    keeps everything in locals (``dfd``/``dpath`` short for the same reason: read on every
    line).
    """
    try:
        entries = _list(dfd, dpath)
    except OSError as exc:
        tally.errors.append((dpath, _err(exc)))
        return []
    protected, prot_inos = opts.protected, opts.prot_inos
    mp_inos = opts.mp_inos
    links = tally.links
    one_fs, dev = opts.one_filesystem, opts.dev
    blocks = inodes = 0
    newest = tally.newest
    subdirs = []
    for entry in entries:
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError as exc:
            tally.errors.append((dpath + "/" + entry.name, _err(exc)))
            continue
        mode = st.st_mode
        if st.st_ino in prot_inos and (st.st_dev, st.st_ino) in protected:
            tally.kept.append((dpath + "/" + entry.name, "protected"))
            continue
        if st.st_ino in mp_inos and opts.mount_point(dfd, entry.name, st):
            tally.kept.append((dpath + "/" + entry.name, OTHER_MOUNT))
            continue
        if S_ISREG(mode) or S_ISLNK(mode):
            if st.st_mtime > newest:
                newest = st.st_mtime
            if st.st_nlink > 1:
                # counted once all its links are met (in _Tally.add_to / settle_links)
                key = (st.st_dev, st.st_ino)
                record = links.get(key)
                if record is None:
                    links[key] = [1, st.st_nlink, st.st_blocks]
                else:
                    record[0] += 1
                continue
            blocks += st.st_blocks
            inodes += 1
        elif S_ISDIR(mode):
            if one_fs and st.st_dev != dev:
                tally.kept.append((dpath + "/" + entry.name, OTHER_FS))
                continue
            subdirs.append(_Subdir(entry.name, st.st_blocks, st.st_mtime, st.st_dev, st.st_ino))
        else:
            tally.kept.append((dpath + "/" + entry.name, "special file"))
    tally.blocks += blocks
    tally.inodes += inodes
    tally.newest = newest
    return subdirs


def _open_subdir(
    parent_fd: int, parent_path: str, subdir: _Subdir, opts: WalkOptions, tally: _Tally
) -> tuple[int, str]:
    """Open and count a subdirectory found by ``_scan_dir``: ``(fd, path)``, or ``(-1, path)``."""
    path = parent_path + "/" + subdir.name
    try:
        fd = os.open(subdir.name, OPEN_DIR_FLAGS, dir_fd=parent_fd)
    except OSError as exc:
        tally.errors.append((path, _err(exc)))
        return -1, path
    if opts.other_mount(fd):
        os.close(fd)
        tally.kept.append((path, OTHER_MOUNT))
        return -1, path
    tally.blocks += subdir.st_blocks
    tally.inodes += 1
    if subdir.st_mtime > tally.newest:
        tally.newest = subdir.st_mtime
    return fd, path


def _walk(
    fd: int, path: str, opts: WalkOptions, tally: _Tally, ident: tuple, on_directory=None
) -> None:
    """Count the tree below the directory open on ``fd`` (consumed, identity ``ident``).

    Depth first, at most FD_WINDOW descriptors open. ``on_directory`` is called before each
    subdirectory is entered (the work-sharing check).
    """
    stack = _FdStack(opts)
    frames = stack.frames
    stack.push(_Frame(fd, path, iter(_scan_dir(fd, path, opts, tally)), ident))
    try:
        while frames:
            frame = frames[-1]
            subdir = next(frame.todo, None)
            if subdir is None:
                stack.pop(tally.errors)
                continue
            if on_directory is not None:
                on_directory()
            child_fd, child_path = _open_subdir(frame.fd, frame.path, subdir, opts, tally)
            if child_fd >= 0:
                todo = iter(_scan_dir(child_fd, child_path, opts, tally))
                stack.push(_Frame(child_fd, child_path, todo, subdir.ident))
    finally:
        stack.close_all()


# Work sharing for big trees. A Python walker spends about as long in the interpreter as in
# the kernel, so one process sizes a tree at ~1.5x the time of ``du``; forked helpers that
# take directories from a shared queue bring that under ``du`` on two cores. Small trees (most
# cleanup items) never pay for a fork: helpers start only after SHARE_AFTER_SECONDS.
SHARE_AFTER_SECONDS = 0.05
SHARE_FRONTIER = 32  # directories to hand out: enough for helpers to balance uneven subtrees
_QUEUE_RECORD = struct.Struct("=II")  # [start, end) of frontier indices
_QUEUE_MAX_RECORDS = 4096  # 32 KiB: fits a pipe buffer, so the queue is written before forking

# Test hook: called first thing in each forked helper (tests kill the helper from it).
_helper_hook: Callable[[], None] | None = None


@functools.lru_cache(maxsize=1)
def default_workers() -> int:
    """Processes for a big sizing walk: the CPUs this process may use, at most 4."""
    try:
        cpus = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = os.cpu_count() or 1
    return max(1, min(cpus, 4))


class _FrontierDir(NamedTuple):
    """A frontier directory: ``subdir`` of the directory ``parent_path`` open on ``parent_fd``."""

    parent_fd: int
    parent_path: str
    subdir: _Subdir


def _walk_shared(
    fd: int, path: str, opts: WalkOptions, tally: _Tally, workers: int, ident: tuple
) -> bool:
    """Count the tree below ``fd`` (consumed), sharing it with up to ``workers - 1`` helpers.

    The top levels are scanned here until at least SHARE_FRONTIER directories are found (the
    frontier), which ``_FrontierShare`` then walks. False when a helper failed (its share is
    lost). A level holds fewer than SHARE_FRONTIER directories, so their descriptors stay few.
    """
    level = [(fd, path)]
    frontier: list[_FrontierDir] = []
    try:
        while level:
            found = []
            for dir_fd, dir_path in level:
                for subdir in _scan_dir(dir_fd, dir_path, opts, tally):
                    found.append(_FrontierDir(dir_fd, dir_path, subdir))
            if not found or len(found) >= SHARE_FRONTIER:
                frontier = found
                break
            deeper = []
            for item in found:
                child_fd, child_path = _open_subdir(
                    item.parent_fd, item.parent_path, item.subdir, opts, tally
                )
                if child_fd >= 0:
                    deeper.append((child_fd, child_path))
            for dir_fd, _dir_path in level:
                os.close(dir_fd)
            level = deeper
        if not frontier:
            return True
        return _FrontierShare(frontier, opts, workers).run(tally)
    finally:
        for dir_fd, _dir_path in level:
            os.close(dir_fd)


class _FrontierShare:
    """The frontier's directories walked by this process and, later, by forked helpers.

    This process walks frontier directories in order and, once the walk has taken
    SHARE_AFTER_SECONDS, forks helpers. From then on every process takes ``[start, end)``
    frontier ranges from one queue pipe (written whole before the fork, so reads only ever
    drain it) and helpers send their tallies back through their own pipe.
    """

    def __init__(self, frontier: list[_FrontierDir], opts: WalkOptions, workers: int) -> None:
        self.frontier = frontier
        self.opts = opts
        self.workers = workers
        self.started = time.monotonic()
        self.next_index = 0  # next frontier item this process takes, until the helpers start
        self.queue_fd = -1  # the queue's read end: >= 0 once the helpers have started
        self.helpers: list[tuple[int, int]] = []  # (pid, result read fd)

    def run(self, tally: _Tally) -> bool:
        """Walk the frontier into ``tally``; False when a helper did not finish cleanly."""
        try:
            self._walk_frontier(tally, self._start_helpers_when_due)
        except BaseException:
            self._stop_helpers()  # interrupted: the helpers' work is not wanted
            raise
        finally:
            if self.queue_fd >= 0:
                os.close(self.queue_fd)
        complete = True
        for pid, result_read in self.helpers:
            complete = _collect_helper(pid, result_read, tally) and complete
        return complete

    def _take_range(self) -> tuple[int, int]:
        if self.queue_fd < 0:
            index = self.next_index
            self.next_index = index + 1
            return (index, index + 1) if index < len(self.frontier) else (0, 0)
        record = os.read(self.queue_fd, _QUEUE_RECORD.size)
        return _QUEUE_RECORD.unpack(record) if record else (0, 0)

    def _walk_frontier(self, tally: _Tally, on_directory: Callable[[], None] | None) -> None:
        while True:
            start, end = self._take_range()
            if start >= end:
                return
            for item in self.frontier[start:end]:
                child_fd, child_path = _open_subdir(
                    item.parent_fd, item.parent_path, item.subdir, self.opts, tally
                )
                if child_fd >= 0:
                    _walk(child_fd, child_path, self.opts, tally, item.subdir.ident, on_directory)

    def _start_helpers_when_due(self) -> None:
        """Called before each subdirectory this process enters (the work-sharing check)."""
        if self.queue_fd >= 0:
            return
        remaining = len(self.frontier) - self.next_index
        if remaining < 1 or time.monotonic() - self.started < SHARE_AFTER_SECONDS:
            return
        self._write_queue()
        for _ in range(min(self.workers - 1, remaining)):
            self.helpers.append(self._fork_helper())

    def _write_queue(self) -> None:
        """Put the frontier's remaining ranges into the queue pipe, whole, and close its end."""
        self.queue_fd, write_fd = os.pipe()
        remaining = len(self.frontier) - self.next_index
        # Small ranges keep the processes balanced; few enough records to fit the pipe.
        step = max(1, -(-remaining // _QUEUE_MAX_RECORDS))
        records = b"".join(
            _QUEUE_RECORD.pack(i, min(i + step, len(self.frontier)))
            for i in range(self.next_index, len(self.frontier), step)
        )
        try:
            os.write(write_fd, records)
        finally:
            os.close(write_fd)

    def _fork_helper(self) -> tuple[int, int]:
        """(pid, read end of its result pipe) of a new helper walking its share of the queue."""
        result_read, result_write = os.pipe()
        pid = os.fork()
        if pid == 0:
            self._helper_main(result_read, result_write)
        os.close(result_write)
        return pid, result_read

    def _helper_main(self, result_read: int, result_write: int) -> NoReturn:
        """In the helper: walk its share, send the tally, exit (never returns)."""
        code = 1
        try:
            os.close(result_read)
            if _helper_hook is not None:
                _helper_hook()
            mine = _Tally()
            self._walk_frontier(mine, None)
            payload = marshal.dumps(
                (mine.blocks, mine.inodes, mine.newest, mine.errors, mine.kept, mine.links)
            )
            view = memoryview(payload)
            while view:
                view = view[os.write(result_write, view) :]
            code = 0
        finally:
            os._exit(code)

    def _stop_helpers(self) -> None:
        for pid, result_read in self.helpers:
            os.kill(pid, signal.SIGKILL)
            os.close(result_read)
            os.waitpid(pid, 0)


def _collect_helper(pid: int, result_read: int, tally: _Tally) -> bool:
    """Read a helper's tally into ``tally``; False when it did not finish cleanly."""
    chunks = []
    try:
        while True:
            chunk = os.read(result_read, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(result_read)
        _pid, status = os.waitpid(pid, 0)
    if status != 0:
        return False
    try:
        blocks, inodes, newest, errors, kept, links = marshal.loads(b"".join(chunks))
    except (EOFError, ValueError, TypeError):
        return False
    # A hard-linked inode met by several processes: add up the links each of them met.
    for key, (met, nlink, link_blocks) in links.items():
        _meet_link(tally.links, key, met, nlink, link_blocks)
    tally.blocks += blocks
    tally.inodes += inodes
    tally.newest = max(tally.newest, newest)
    tally.errors.extend(errors)  # marshal keeps the (path, message) tuples as tuples
    tally.kept.extend(kept)
    return True


def _changed_since(st: os.stat_result, opts: WalkOptions) -> bool:
    """True when the entry was modified or changed at or after ``opts.cutoff``."""
    cutoff = opts.cutoff
    if cutoff is None or (st.st_mtime < cutoff and st.st_ctime < cutoff):
        return False
    if st.st_mtime >= cutoff or S_ISDIR(st.st_mode):
        return True
    # Unlinking one of its other links moved the ctime of this inode: not a change by others.
    return (st.st_dev, st.st_ino) not in opts.seen


def remove_entry(parent_fd: int, name: str, path: str, opts: WalkOptions) -> TreeStats:
    """Remove ``name`` beneath ``parent_fd``: unlink a file or symlink, delete a tree bottom-up.

    Returns what was actually freed. Protected, special, other-mount and changed-since-the-scan
    entries are kept (their parent directories then stay too); vanished files are not counted;
    other failures are recorded as errors and the removal goes on with the rest.
    """
    stats = TreeStats()
    st = _entry_to_walk(parent_fd, name, path, opts, stats)
    if st is None:
        return stats
    if _changed_since(st, opts):
        stats.kept.append((path, CHANGED))
        return stats
    if stat.S_ISDIR(st.st_mode):
        _remove_tree(parent_fd, name, path, st, opts, stats)
    else:
        _remove_file(parent_fd, name, path, st, opts, stats)
    return stats


def _remove_file(
    parent_fd: int, name: str, path: str, st: os.stat_result, opts: WalkOptions, stats: TreeStats
) -> None:
    """Unlink the file or symlink ``name`` (lstat ``st``), checked by ``remove_entry``."""
    try:
        os.unlink(name, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno == errno.EBUSY:  # mounted on after the walk started
            stats.kept.append((path, OTHER_MOUNT))
        else:
            stats.errors.append((path, _err(exc)))
        return
    _note_unlinked(st, opts)
    stats.add_removed(st)


def _remove_tree(
    parent_fd: int, name: str, path: str, st: os.stat_result, opts: WalkOptions, stats: TreeStats
) -> None:
    """Empty the directory ``name`` (lstat ``st``) with ``_RemovalWalk``, then remove it."""
    fd = _open_checked_dir(parent_fd, name, st, path, opts, stats)
    if fd < 0:
        return
    top = _Frame(fd, path, None, (st.st_dev, st.st_ino), name, st.st_blocks)
    if _RemovalWalk(opts, stats).run(top):
        _rmdir(parent_fd, top, stats)


def _note_unlinked(st: os.stat_result, opts: WalkOptions) -> None:
    if st.st_nlink > 1:
        key = (st.st_dev, st.st_ino)
        opts.seen[key] = opts.seen.get(key, 0) + 1


def _rmdir(parent_fd: int, frame: _Frame, stats: TreeStats) -> bool:
    """Remove the emptied directory of ``frame``; False when it stays (kept or failed)."""
    try:
        os.rmdir(frame.name, dir_fd=parent_fd)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            return True
        if exc.errno in (errno.ENOTEMPTY, errno.EEXIST):
            stats.kept.append((frame.path, NOT_EMPTY))
        elif exc.errno == errno.EBUSY:  # a mount point (the walk crossed into it, or it is new)
            stats.kept.append((frame.path, OTHER_MOUNT))
        else:
            stats.errors.append((frame.path, _err(exc)))
        return False
    stats.removed += 1
    stats.bytes += frame.st_blocks * 512
    stats.inodes += 1
    return True


class _RemovalWalk:
    """Empty one directory tree bottom-up, depth first, with a bounded number of descriptors.

    Steps: ``_next`` takes the top frame's next entry; ``_remove_one`` stats it and keeps it
    (protected, special, changed since the scan) or hands it on to ``_unlink`` (files and
    symlinks) or ``_enter`` (directories, checked for mount and identity); when a frame has no
    entries left, ``_leave`` pops it and removes the directory if nothing inside was kept.
    """

    def __init__(self, opts: WalkOptions, stats: TreeStats) -> None:
        self.opts = opts
        self.stats = stats
        self.stack = _FdStack(opts)
        self.blocks = 0  # file blocks and inodes freed, added to stats at the end
        self.inodes = 0
        self.removed = 0

    def run(self, top: _Frame) -> bool:
        """Empty the directory of ``top`` (its descriptor is consumed). True when it is empty."""
        try:
            top.todo = iter(_list(top.fd, top.path))
        except OSError as exc:
            os.close(top.fd)
            self.stats.errors.append((top.path, _err(exc)))
            return False
        stack = self.stack
        frames = stack.frames
        stack.push(top)
        try:
            while frames:
                frame = frames[-1]
                entry = next(frame.todo, None)
                if entry is None:
                    self._leave()
                else:
                    self._remove_one(frame, entry.name, entry)
            return top.complete and not stack.abandoned
        finally:
            stack.close_all()
            self.stats.bytes += self.blocks * 512
            self.stats.inodes += self.inodes
            self.stats.removed += self.removed

    def _remove_one(self, frame: _Frame, name: str, entry: os.DirEntry) -> None:
        opts = self.opts
        try:
            if frame.reopened:  # the DirEntry would stat through a closed descriptor number
                st = os.stat(name, dir_fd=frame.fd, follow_symlinks=False)
            else:
                st = entry.stat(follow_symlinks=False)
        except FileNotFoundError:
            self.stats.errors.append(
                (frame.path + "/" + name, "vanished before it could be removed")
            )
            return
        except OSError as exc:
            self._fail(frame, name, _err(exc))
            return
        mode = st.st_mode
        if st.st_ino in opts.prot_inos and (st.st_dev, st.st_ino) in opts.protected:
            self._keep(frame, name, "protected")
        elif st.st_ino in opts.mp_inos and opts.mount_point(frame.fd, name, st):
            self._keep(frame, name, OTHER_MOUNT)
        elif opts.cutoff is not None and _changed_since(st, opts):
            self._keep(frame, name, CHANGED)
        elif S_ISREG(mode) or S_ISLNK(mode):
            self._unlink(frame, name, st)
        elif S_ISDIR(mode):
            self._enter(frame, name, st)
        else:
            self._keep(frame, name, "special file")

    def _keep(self, frame: _Frame, name: str, reason: str) -> None:
        self.stats.kept.append((frame.path + "/" + name, reason))
        frame.complete = False

    def _fail(self, frame: _Frame, name: str, message: str) -> None:
        self.stats.errors.append((frame.path + "/" + name, message))
        frame.complete = False

    def _unlink(self, frame: _Frame, name: str, st: os.stat_result) -> None:
        try:
            os.unlink(name, dir_fd=frame.fd)
        except FileNotFoundError:
            self.stats.errors.append(
                (frame.path + "/" + name, "vanished before it could be removed")
            )
            return
        except OSError as exc:
            if exc.errno == errno.EBUSY:  # mounted on after the walk started
                self._keep(frame, name, OTHER_MOUNT)
            else:
                self._fail(frame, name, _err(exc))
            return
        self.removed += 1
        if st.st_nlink == 1:  # its last link: the blocks are free now
            self.blocks += st.st_blocks
            self.inodes += 1
        else:
            _note_unlinked(st, self.opts)

    def _enter(self, frame: _Frame, name: str, st: os.stat_result) -> None:
        opts = self.opts
        path = frame.path + "/" + name
        if opts.one_filesystem and st.st_dev != opts.dev:
            self._keep(frame, name, OTHER_FS)
            return
        child_fd = _open_checked_dir(frame.fd, name, st, path, opts, self.stats)
        if child_fd < 0:
            frame.complete = False
            return
        try:
            entries = _list(child_fd, path)
        except OSError as exc:
            os.close(child_fd)
            self._fail(frame, name, _err(exc))
            return
        child = _Frame(child_fd, path, iter(entries), (st.st_dev, st.st_ino), name, st.st_blocks)
        self.stack.push(child)

    def _leave(self) -> None:
        """Pop the finished top frame; remove its directory if it is now empty."""
        stack = self.stack
        frame = stack.pop(self.stats.errors)
        if not stack.frames:
            return  # the top (the caller removes it), or the walk was abandoned
        parent = stack.frames[-1]
        if frame.complete:
            frame.complete = _rmdir(parent.fd, frame, self.stats)
        if not frame.complete:
            parent.complete = False
