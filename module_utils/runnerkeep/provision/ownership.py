"""Names of users and groups to ids, and fixing the owner and mode of an open file."""

from __future__ import annotations

import grp
import os
import pwd
import stat

from .changes import Changes, LayoutError


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
    """A mode as Ansible's file modules take it: a string is octal ("0755", "01730"); an
    integer is the mode itself (YAML reads an unquoted 0640 as the integer 416, i.e. 0o640)."""
    if isinstance(value, bool) or not isinstance(value, (int, str)):
        raise LayoutError(f"{path}: mode {value!r} is not an octal mode such as 0644")
    if isinstance(value, int):
        mode = value
    else:
        try:
            mode = int(value, 8)
        except ValueError:
            raise LayoutError(f"{path}: mode {value!r} is not an octal mode such as 0644") from None
    if not 0 <= mode <= 0o7777:
        raise LayoutError(f"{path}: mode {value!r} is out of range (0000-7777)")
    return mode


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
