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
    workers: int = 0  # processes sharing a big sizing walk; 0 = one per CPU, at most 4
    # Inode numbers of ``protected``: a cheap first test in the walkers' per-entry loops.
    prot_inos: frozenset = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.prot_inos = frozenset(ino for _dev, ino in self.protected)


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
    """Size the directory open on ``fd`` (consumed: closed on return) into ``stats``."""
    workers = opts.workers or default_workers()
    if workers < 2:
        _walk_into(fd, path, opts, stats)
        return
    retry_fd = os.dup(fd)
    try:
        tally = _Tally()
        try:
            complete = _walk_shared(fd, path, opts, tally, workers)
        except BaseException:
            tally.add_to(stats)
            raise
        if complete:
            tally.add_to(stats)
            return
        # A helper died (killed, out of memory): its share is unknown, so size the whole
        # tree again in this process rather than report a wrong figure.
        for dev, ino, _blocks in tally.links:
            opts.seen.discard((dev, ino))
        _walk_into(os.dup(retry_fd), path, opts, stats)
        stats.errors.append((path, "a sizing helper process failed; sized again in one process"))
    finally:
        os.close(retry_fd)


def _walk_into(fd: int, path: str, opts: WalkOptions, stats: TreeStats) -> None:
    """Count the tree below ``fd`` (consumed) in this process alone, into ``stats``."""
    tally = _Tally()
    try:
        _walk(fd, path, opts, tally)
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
        self.links: list = []  # [(st_dev, st_ino, st_blocks)] hard links first counted here

    def add_to(self, stats: TreeStats) -> None:
        stats.bytes += self.blocks * 512
        stats.inodes += self.inodes
        stats.newest_mtime = max(stats.newest_mtime, self.newest)
        stats.errors.extend(self.errors)
        stats.kept.extend(self.kept)


def _scan_dir(dfd: int, dpath: str, opts: WalkOptions, tally: _Tally) -> list:
    """Count every non-directory entry of the directory open on ``dfd``.

    Returns its subdirectories as ``(name, st_blocks, st_mtime)``: they are counted by whoever
    opens them, so a directory that cannot be opened is reported, not counted. This loop runs
    once per entry of the tree, so it keeps everything in locals.
    """
    try:
        entries = _list(dfd, dpath)
    except OSError as exc:
        tally.errors.append((dpath, _err(exc)))
        return []
    protected, prot_inos = opts.protected, opts.prot_inos
    seen = opts.seen
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
        if S_ISREG(mode) or S_ISLNK(mode):
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
                tally.links.append((st.st_dev, st.st_ino, st.st_blocks))
            blocks += st.st_blocks
            inodes += 1
            if st.st_mtime > newest:
                newest = st.st_mtime
        elif S_ISDIR(mode):
            if one_fs and st.st_dev != dev:
                tally.kept.append((dpath + "/" + entry.name, "other filesystem (mount point)"))
                continue
            subdirs.append((entry.name, st.st_blocks, st.st_mtime))
        else:
            tally.kept.append((dpath + "/" + entry.name, "special file"))
    tally.blocks += blocks
    tally.inodes += inodes
    tally.newest = newest
    return subdirs


def _open_subdir(dfd: int, dpath: str, sub: tuple, tally: _Tally) -> tuple:
    """Open and count a subdirectory found by ``_scan_dir``: ``(fd, path)``, or ``(-1, path)``."""
    name, blocks, mtime = sub
    path = dpath + "/" + name
    try:
        fd = os.open(name, OPEN_DIR_FLAGS, dir_fd=dfd)
    except OSError as exc:
        tally.errors.append((path, _err(exc)))
        return -1, path
    tally.blocks += blocks
    tally.inodes += 1
    if mtime > tally.newest:
        tally.newest = mtime
    return fd, path


def _walk(fd: int, path: str, opts: WalkOptions, tally: _Tally, on_directory=None) -> None:
    """Count the tree below the directory open on ``fd`` (consumed), depth first.

    The stack holds one descriptor per depth level, so wide trees cannot exhaust descriptors.
    ``on_directory`` is called before each subdirectory is entered (the work-sharing check).
    """
    stack = [(fd, path, iter(_scan_dir(fd, path, opts, tally)))]
    try:
        while stack:
            dfd, dpath, subdirs = stack[-1]
            sub = next(subdirs, None)
            if sub is None:
                stack.pop()
                os.close(dfd)
                continue
            if on_directory is not None:
                on_directory()
            cfd, cpath = _open_subdir(dfd, dpath, sub, tally)
            if cfd >= 0:
                stack.append((cfd, cpath, iter(_scan_dir(cfd, cpath, opts, tally))))
    finally:
        for dfd, _path, _subdirs in stack:
            os.close(dfd)


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


def _walk_shared(fd: int, path: str, opts: WalkOptions, tally: _Tally, workers: int) -> bool:
    """Count the tree below ``fd`` (consumed), sharing it with up to ``workers - 1`` helpers.

    The top levels are scanned here until at least SHARE_FRONTIER directories are found (the
    frontier); then this process walks frontier directories in order and, once the walk has
    taken SHARE_AFTER_SECONDS, forks helpers. From then on every process takes frontier ranges
    from one pipe (written before the fork, so reads only ever drain it) and helpers send
    their tallies back through their own pipe. False when a helper failed (its share is lost).
    """
    level = [(fd, path)]
    frontier: list = []  # (parent fd, subdir tuple, parent path)
    try:
        while level:
            found = []
            for dfd, dpath in level:
                for sub in _scan_dir(dfd, dpath, opts, tally):
                    found.append((dfd, sub, dpath))
            if not found or len(found) >= SHARE_FRONTIER:
                frontier = found
                break
            deeper = []
            for dfd, sub, dpath in found:
                cfd, cpath = _open_subdir(dfd, dpath, sub, tally)
                if cfd >= 0:
                    deeper.append((cfd, cpath))
            for dfd, _dpath in level:
                os.close(dfd)
            level = deeper
        if not frontier:
            return True
        return _share_frontier(frontier, opts, tally, workers)
    finally:
        for dfd, _dpath in level:
            os.close(dfd)


def _share_frontier(frontier: list, opts: WalkOptions, tally: _Tally, workers: int) -> bool:
    started = time.monotonic()
    next_index = 0  # next frontier item this process takes, until the helpers start
    read_fd = -1  # the shared queue's pipe: >= 0 once the helpers have started
    helpers: list = []  # (pid, result read fd)

    def take_range() -> tuple:
        nonlocal next_index
        if read_fd < 0:
            i = next_index
            next_index = i + 1
            return (i, i + 1) if i < len(frontier) else (0, 0)
        record = os.read(read_fd, _QUEUE_RECORD.size)
        return _QUEUE_RECORD.unpack(record) if record else (0, 0)

    def walk_frontier(this_tally: _Tally, on_directory) -> None:
        while True:
            start, end = take_range()
            if start >= end:
                return
            for dfd, sub, dpath in frontier[start:end]:
                cfd, cpath = _open_subdir(dfd, dpath, sub, this_tally)
                if cfd >= 0:
                    _walk(cfd, cpath, opts, this_tally, on_directory)

    def start_helpers() -> None:
        nonlocal read_fd
        remaining = len(frontier) - next_index
        if remaining < 1 or time.monotonic() - started < SHARE_AFTER_SECONDS:
            return
        read_fd, write_fd = os.pipe()
        # Small ranges keep the processes balanced; few enough records to fit the pipe.
        step = max(1, -(-remaining // _QUEUE_MAX_RECORDS))
        records = b"".join(
            _QUEUE_RECORD.pack(i, min(i + step, len(frontier)))
            for i in range(next_index, len(frontier), step)
        )
        os.write(write_fd, records)
        os.close(write_fd)
        for _ in range(min(workers - 1, remaining)):
            result_read, result_write = os.pipe()
            pid = os.fork()
            if pid == 0:  # helper: walk its share, send the tally, never return
                code = 1
                try:
                    os.close(result_read)
                    if _helper_hook is not None:
                        _helper_hook()
                    mine = _Tally()
                    walk_frontier(mine, None)
                    payload = marshal.dumps(
                        (mine.blocks, mine.inodes, mine.newest, mine.errors, mine.kept, mine.links)
                    )
                    view = memoryview(payload)
                    while view:
                        view = view[os.write(result_write, view) :]
                    code = 0
                finally:
                    os._exit(code)
            os.close(result_write)
            helpers.append((pid, result_read))

    def on_directory() -> None:
        if read_fd < 0:
            start_helpers()

    try:
        walk_frontier(tally, on_directory)
    except BaseException:
        for pid, result_read in helpers:  # interrupted: the helpers' work is not wanted
            os.kill(pid, signal.SIGKILL)
            os.close(result_read)
            os.waitpid(pid, 0)
        raise
    finally:
        if read_fd >= 0:
            os.close(read_fd)
    complete = True
    for pid, result_read in helpers:
        complete = _collect_helper(pid, result_read, opts, tally) and complete
    return complete


def _collect_helper(pid: int, result_read: int, opts: WalkOptions, tally: _Tally) -> bool:
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
    # A hard link met by two processes was counted by both: keep the first count only.
    for dev, ino, link_blocks in links:
        key = (dev, ino)
        if key in opts.seen:
            blocks -= link_blocks
            inodes -= 1
        else:
            opts.seen.add(key)
            tally.links.append((dev, ino, link_blocks))
    tally.blocks += blocks
    tally.inodes += inodes
    tally.newest = max(tally.newest, newest)
    tally.errors.extend(errors)  # marshal keeps the (path, message) tuples as tuples
    tally.kept.extend(kept)
    return True


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
    protected, prot_inos = opts.protected, opts.prot_inos
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
