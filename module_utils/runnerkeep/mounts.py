"""Which mount a file or directory is on: mount IDs, not device numbers.

A bind mount of another directory of the *same* filesystem has the same ``st_dev`` as its
parent, so a walker that compares device numbers crosses it without noticing. The kernel gives
every mount an ID: ``statx`` reports it (``STATX_MNT_ID``, Linux >= 5.8) and
``/proc/self/fdinfo/FD`` has it for an open descriptor (Linux >= 3.15). Both are read on an open
descriptor, so what is checked is what the caller then works on (no path race).

Only the standard library: ``statx`` through ctypes when libc has it, else fdinfo.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import struct

_AT_EMPTY_PATH = 0x1000
_STATX_MNT_ID = 0x1000
_STATX_BUF_SIZE = 256
_STATX_MASK_OFFSET = 0
_STATX_MNT_ID_OFFSET = 144  # struct statx: stx_mnt_id follows stx_dev_minor (include/uapi)

OPEN_PATH_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


class MountIdUnavailable(OSError):
    """Neither statx nor /proc tells mount IDs here (not Linux, or /proc not mounted)."""


def _load_statx():
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        func = libc.statx
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
    func.restype = ctypes.c_int
    return func


_statx = _load_statx()


def _mount_id_statx(fd: int) -> int | None:
    if _statx is None:
        return None
    buffer = ctypes.create_string_buffer(_STATX_BUF_SIZE)  # per call: safe across threads
    if _statx(fd, b"", _AT_EMPTY_PATH, _STATX_MNT_ID, buffer) != 0:
        return None
    (mask,) = struct.unpack_from("=I", buffer, _STATX_MASK_OFFSET)
    if not mask & _STATX_MNT_ID:
        return None  # kernel older than 5.8: the field is not filled in
    (mnt_id,) = struct.unpack_from("=Q", buffer, _STATX_MNT_ID_OFFSET)
    return mnt_id


def _mount_id_fdinfo(fd: int) -> int:
    try:
        with open(f"/proc/self/fdinfo/{fd}", "rb") as handle:
            text = handle.read(4096)
    except OSError as exc:
        raise MountIdUnavailable(exc.errno, f"cannot read mount IDs: {exc.strerror}") from None
    for line in text.splitlines():
        if line.startswith(b"mnt_id:"):
            return int(line.split()[1])
    raise MountIdUnavailable(0, "this kernel does not report mount IDs in /proc/self/fdinfo")


def mount_id(fd: int) -> int:
    """The ID of the mount the open descriptor ``fd`` is on."""
    found = _mount_id_statx(fd)
    return found if found is not None else _mount_id_fdinfo(fd)


def mount_id_at(dir_fd: int, name: str) -> int:
    """The mount ID of ``name`` beneath ``dir_fd``, without following a final symlink."""
    fd = os.open(name, OPEN_PATH_FLAGS, dir_fd=dir_fd)
    try:
        return mount_id(fd)
    finally:
        os.close(fd)


def is_mount_root(fd: int) -> bool:
    """True when the directory open on ``fd`` is the top of a mount (its parent is elsewhere).

    ``/`` counts as a mount root. Same-filesystem bind mounts are seen (unlike ``ismount``).
    """
    parent = os.open("..", os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0), dir_fd=fd)
    try:
        if os.fstat(parent)[1:3] == os.fstat(fd)[1:3]:
            return True  # ".." of "/" is "/" itself
        return mount_id(parent) != mount_id(fd)
    finally:
        os.close(parent)
