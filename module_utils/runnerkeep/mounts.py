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
import re
import struct
from typing import NamedTuple

_AT_EMPTY_PATH = 0x1000
_STATX_MNT_ID = 0x1000
_STATX_BUF_SIZE = 256
_STATX_MASK_OFFSET = 0
_STATX_MNT_ID_OFFSET = 144  # struct statx: stx_mnt_id follows stx_dev_minor (include/uapi)

OPEN_PATH_FLAGS = getattr(os, "O_PATH", os.O_RDONLY) | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
MOUNTINFO = "/proc/self/mountinfo"
_MOUNTINFO_ESCAPE = re.compile(rb"\\([0-7]{3})")


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


class Mount(NamedTuple):
    """One line of /proc/self/mountinfo: which directory of which filesystem is mounted where."""

    mount_id: int
    parent_id: int
    device: str  # "major:minor" of the filesystem
    root: str  # the directory of that filesystem shown at mount_point
    mount_point: str


def _unescape(field: bytes) -> str:
    # The kernel writes blanks, newlines and backslashes in paths as octal escapes (\040 ...).
    return os.fsdecode(_MOUNTINFO_ESCAPE.sub(lambda m: bytes([int(m.group(1), 8) & 0xFF]), field))


def read_mountinfo(path: str = MOUNTINFO) -> list[Mount]:
    """The mounts of this process's mount namespace; [] when /proc cannot tell."""
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError:
        return []
    found = []
    for line in data.splitlines():
        fields = line.split(b" ")
        if len(fields) < 5:
            continue
        try:
            mount_id_, parent_id = int(fields[0]), int(fields[1])
        except ValueError:
            continue
        found.append(
            Mount(
                mount_id_,
                parent_id,
                os.fsdecode(fields[2]),
                _unescape(fields[3]),
                _unescape(fields[4]),
            )
        )
    return found


def is_self_bind_mount(fd: int, mountinfo: list[Mount] | None = None) -> bool:
    """True when the mount the directory open on ``fd`` tops shows the very directory its parent
    mount shows at the same place: a directory bind-mounted onto itself.

    systemd makes one of these for every ``ReadWritePaths=`` entry under ``ProtectSystem=``: it
    brings nothing from elsewhere into the tree, so it is no boundary a cleanup must stop at.
    A bind mount of another directory (``root`` differs) or of another filesystem (``device``
    differs) is not one.
    """
    try:
        own_id = mount_id(fd)
    except OSError:
        return False
    mounts = {m.mount_id: m for m in (mountinfo if mountinfo is not None else read_mountinfo())}
    own = mounts.get(own_id)
    parent = mounts.get(own.parent_id) if own else None
    if own is None or parent is None or own.device != parent.device:
        return False
    if own.mount_point == parent.mount_point:
        return False  # stacked on the same point: what it covers is not its parent's view
    below = os.path.relpath(own.mount_point, parent.mount_point)
    if below.startswith(".."):
        return False
    shown_by_parent = os.path.normpath(os.path.join(parent.root, below))
    return shown_by_parent == os.path.normpath(own.root)
