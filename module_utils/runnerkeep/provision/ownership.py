"""Names of users and groups to ids, and fixing the owner and mode of an open file."""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat

from .changes import Changes, LayoutError

_OCTAL_MODE = re.compile(r"^0?[0-7]{3,4}$")


def user_id(name: str, check_mode: bool) -> int | None:
    """The uid of ``name``; None in check mode when the user is still to be created."""
    try:
        return pwd.getpwnam(name).pw_uid
    except KeyError:
        if check_mode:
            return None
        raise LayoutError(f"user {name!r} does not exist: create it first") from None


def group_id(name: str, check_mode: bool) -> int | None:
    """The gid of ``name``; None in check mode when the group is still to be created."""
    try:
        return grp.getgrnam(name).gr_gid
    except KeyError:
        if check_mode:
            return None
        raise LayoutError(f"group {name!r} does not exist: create it first") from None


def parse_mode(value: str | int, path: str) -> int:
    """An octal mode written as a string ("0755", "01730"). A number is refused: YAML reads an
    unquoted 0640 as 416 and an unquoted 755 as 755, and no reading of a number is safe for
    both (one is a world-writable file)."""
    if isinstance(value, int) and not isinstance(value, bool):
        raise LayoutError(
            f'{path}: mode {value!r} is a number; quote the octal mode (mode: "0644")'
        )
    if not isinstance(value, str) or not _OCTAL_MODE.match(value):
        raise LayoutError(f"{path}: mode {value!r} is not an octal mode such as 0644")
    return int(value, 8)


def fix_owner_and_mode(
    fd: int, path: str, owner: str, group: str, mode: int, changes: Changes
) -> None:
    """Give the file open on ``fd`` (opened without following a link) its owner and mode."""
    info = os.fstat(fd)
    uid = user_id(owner, changes.check_mode)
    gid = group_id(group, changes.check_mode)
    if uid != info.st_uid or gid != info.st_gid:
        changes.note(path, "owner")
        if not changes.check_mode:
            os.fchown(fd, uid, gid)
    # chown clears setuid/setgid bits: the mode is compared and set after it.
    current = info if changes.check_mode else os.fstat(fd)
    if stat.S_IMODE(current.st_mode) != mode:
        changes.note(path, "mode")
        if not changes.check_mode:
            os.fchmod(fd, mode)
