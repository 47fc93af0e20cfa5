"""Helpers for the provision unit tests: a recording stand-in for systemctl and the account
tools, a tree snapshot to prove check mode wrote nothing, and the ids the tests chown to."""

from __future__ import annotations

import os
import stat
from typing import Any

from runnerkeep.provision.changes import Changes

JOB_UID = JOB_GID = 1000  # plays a CI job's user
NOBODY_UID = NOGROUP_GID = 65534  # 'nobody' / 'nogroup' play the service user

# What `systemctl show` says of a unit it does not know.
NOT_FOUND = {"LoadState": "not-found", "UnitFileState": "", "ActiveState": "inactive"}
ENABLED_ACTIVE = {"LoadState": "loaded", "UnitFileState": "enabled", "ActiveState": "active"}
DISABLED_INACTIVE = {"LoadState": "loaded", "UnitFileState": "disabled", "ActiveState": "inactive"}


class FakeRun:
    """Stands in for module.run_command: systemd does not run in this container (no
    /run/systemd/system, no D-Bus) and groupadd/useradd would change the machine's accounts.
    Records every argv; answers `systemctl show` from ``states`` in the order asked, like
    systemctl; answers ``failures[tuple(argv)]`` when set, else rc 0. ``on_call`` (if set) is
    called with each argv before answering, to look at the host at that moment."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []
        self.states: dict[str, dict[str, str]] = {}
        self.failures: dict[tuple[str, ...], tuple[int, str, str]] = {}
        self.on_call: Any = None

    def __call__(self, argv: list[str]) -> tuple[int, str, str]:
        self.calls.append(list(argv))
        if self.on_call is not None:
            self.on_call(list(argv))
        if tuple(argv) in self.failures:
            return self.failures[tuple(argv)]
        if argv[:2] == ["systemctl", "show"]:
            names = argv[argv.index("--") + 1 :]
            blocks = []
            for name in names:
                fields = {"Id": name, **self.states.get(name, NOT_FOUND)}
                blocks.append("\n".join(f"{k}={v}" for k, v in fields.items()))
            return 0, "\n\n".join(blocks) + "\n", ""
        return 0, "", ""

    def commands(self) -> list[list[str]]:
        """Every call but the read-only `systemctl show`."""
        return [c for c in self.calls if c[:2] != ["systemctl", "show"]]


def snapshot(root: str) -> dict[str, tuple]:
    """Every entry under ``root`` (itself included) as lstat sees it, with a file's bytes and a
    link's target: equal snapshots mean nothing was created, removed, written or chowned."""
    found = {}
    for directory, dirs, files in os.walk(root):
        for name in [None, *dirs, *files]:
            path = directory if name is None else os.path.join(directory, name)
            if name is None and path != root:
                continue  # each directory is recorded once, as its parent's entry
            info = os.lstat(path)
            if stat.S_ISLNK(info.st_mode):
                body: Any = os.readlink(path)
            elif stat.S_ISREG(info.st_mode):
                with open(path, "rb") as handle:
                    body = handle.read()
            else:
                body = None
            found[path] = (
                info.st_mode,
                info.st_uid,
                info.st_gid,
                info.st_size,
                info.st_mtime_ns,
                info.st_ino,
                body,
            )
    return found


def owner_mode(path: str) -> tuple[int, int, int]:
    info = os.lstat(path)
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def write(path: str, data: bytes, uid: int = 0, gid: int = 0, mode: int = 0o644) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(data)
    os.chown(path, uid, gid)
    os.chmod(path, mode)
    return path


def read(path: str) -> bytes:
    with open(path, "rb") as handle:
        return handle.read()


def leftovers(directory: str) -> list[str]:
    return [n for n in os.listdir(directory) if n.startswith(".rk-layout-")]


def changes(check_mode: bool = False, want_diff: bool = False) -> Changes:
    return Changes(check_mode, want_diff)
