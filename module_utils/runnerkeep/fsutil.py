"""Filesystem primitives every part of the core relies on: durable atomic writes and free space."""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator
from dataclasses import asdict, dataclass


def fsync_dir(path: str) -> None:
    """Make a rename or unlink inside ``path`` durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` so a crash leaves the old file or the new one, never a mix.

    Temp file in the same directory (same filesystem, so rename is atomic), fsync, rename,
    fsync the directory: the pattern of restic's local backend and ansible's atomic_move.
    """
    with atomic_output(path) as fd:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fchmod(fd, mode)


@contextlib.contextmanager
def atomic_output(path: str, prefix: str = ".tmp-") -> Iterator[int]:
    """An fd on a temp file beside ``path`` that becomes ``path`` (fsync, rename, fsync of the
    directory) only when the block ends without an exception; otherwise it is removed."""
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=prefix, dir=directory)
    try:
        try:
            yield fd
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(directory)


@dataclass(frozen=True)
class FilesystemUsage:
    """Capacity and free space of the filesystem holding ``path`` (free = available to non-root)."""

    path: str
    mount_point: str
    total_bytes: int
    free_bytes: int
    total_inodes: int
    free_inodes: int

    def as_dict(self) -> dict:
        return asdict(self)


def mount_point_of(path: str) -> str:
    """The mount point of the filesystem that holds ``path`` (which must exist)."""
    path = os.path.realpath(path)
    while not os.path.ismount(path):
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return path


def nearest_existing(path: str) -> str:
    """``path`` made absolute, or its nearest parent that exists (a directory a run has not
    created yet lives on the filesystem of the first parent that does)."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    return probe


def filesystem_usage(path: str) -> FilesystemUsage:
    """statvfs of the filesystem holding ``path``; walks up to the nearest existing parent."""
    probe = nearest_existing(path)
    st = os.statvfs(probe)
    return FilesystemUsage(
        path=path,
        mount_point=mount_point_of(probe),
        total_bytes=st.f_blocks * st.f_frsize,
        free_bytes=st.f_bavail * st.f_frsize,
        total_inodes=st.f_files,
        free_inodes=st.f_favail,
    )


def same_filesystem(a: str, b: str) -> bool:
    """True when both paths (or their nearest existing parents) live on one filesystem."""
    return os.stat(nearest_existing(a)).st_dev == os.stat(nearest_existing(b)).st_dev
