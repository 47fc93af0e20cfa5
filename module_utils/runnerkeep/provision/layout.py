"""One role's share of a host in one call, in a fixed order: accounts, directories, the
reclaiming of old trees, units being switched off, files, removals, ``NAME=value`` lines, then
the other systemd units (which restart on the files they read). Check mode reports the same
changes and writes nothing."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any, Callable

from ..errors import LockHeldError
from ..statefile import flock_bounded
from .accounts import ensure_group, ensure_user
from .changes import Changes, LayoutError
from .host_files import ensure_absent, ensure_directory, ensure_file, ensure_lines
from .reclaim import reclaim
from .systemd_units import apply_units, systemd_runs

Run = Callable[[list[str]], tuple[int, str, str]]
LOCK_PATH = "/run/runnerkeep-host-layout.lock"
LOCK_WAIT_SECONDS = 600.0


def apply_layout(
    params: dict[str, Any], check_mode: bool, want_diff: bool, run: Run
) -> dict[str, Any]:
    """The host_layout module's return values (library/host_layout.py RETURN). Calls on one
    host take turns (two provision runs at once would reclaim the same trees)."""
    _check_paths(params)
    if check_mode:  # reads only, and check mode leaves no trace (not even the lock file)
        return _apply(params, check_mode, want_diff, run)
    with _host_lock(LOCK_PATH, LOCK_WAIT_SECONDS):
        return _apply(params, check_mode, want_diff, run)


@contextlib.contextmanager
def _host_lock(path: str, wait_seconds: float) -> Iterator[None]:
    """An exclusive flock on ``path`` in root's /run (not /run/lock, which anyone may write)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            flock_bounded(fd, path, wait_seconds)
        except LockHeldError:
            raise LayoutError(
                f"another host_layout run has held {path} for {wait_seconds:.0f} s: "
                "let it finish (or find it with fuser) and run again"
            ) from None
        yield
    finally:
        os.close(fd)


def _apply(params: dict[str, Any], check_mode: bool, want_diff: bool, run: Run) -> dict[str, Any]:
    changes = Changes(check_mode, want_diff)
    systemd = systemd_runs()
    for group in params.get("groups") or []:
        ensure_group(group, changes, run)
    for user in params.get("users") or []:
        ensure_user(user, changes, run)
    for directory in params.get("directories") or []:
        ensure_directory(directory, changes)
    for tree in params.get("reclaim") or []:
        reclaim(tree, changes)
    going, staying = _split_units(params.get("units") or [])
    done: list[dict[str, Any]] = []
    # Units being switched off go first, while their files still exist (a disable removes
    # the enable links it finds in them).
    if systemd and going:
        done += apply_units(going, False, changes, run)
    _write_files(params, systemd, changes)
    if systemd:
        done += apply_units(staying, bool(params.get("daemon_reload")), changes, run)
    result: dict[str, Any] = {
        "changed": changes.changed,
        "changes": changes.as_list(),
        "units": done,
        "systemd": systemd,
        # Whether each look_for path exists (a link counts), after everything above.
        "present": {path: os.path.lexists(path) for path in params.get("look_for") or []},
    }
    if want_diff:
        result["diff"] = changes.diffs
    return result


def _write_files(params: dict[str, Any], systemd: bool, changes: Changes) -> None:
    for spec in _for_this_host(params.get("files"), systemd):
        ensure_file(spec, changes)
    for spec in _for_this_host(params.get("secret_files"), systemd):
        ensure_file(spec, changes, secret=True)
    for path in params.get("absent") or []:
        ensure_absent(path, changes)
    for spec in params.get("lines") or []:
        for path in spec["paths"]:
            ensure_lines(path, spec["lines"], changes)


def _check_paths(params: dict[str, Any]) -> None:
    """Every path absolute and normal: a relative path would land wherever the module runs."""
    paths = [d["path"] for d in params.get("directories") or []]
    paths += [f["path"] for f in (params.get("files") or []) + (params.get("secret_files") or [])]
    paths += list(params.get("absent") or []) + list(params.get("look_for") or [])
    paths += [p for spec in params.get("lines") or [] for p in spec["paths"]]
    paths += [t[k] for t in params.get("reclaim") or [] for k in ("path", "aside_dir")]
    for path in paths:
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise LayoutError(f"{path!r}: paths must be absolute (start with /)")
        if os.path.normpath(path) != path:
            raise LayoutError(f"{path!r}: write the path without . , .. or doubled slashes")


def _split_units(units: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(units being disabled or stopped, the others)."""
    going = [u for u in units if u.get("enabled") is False or u.get("state") == "stopped"]
    return going, [u for u in units if u not in going]


def _for_this_host(specs: list[dict[str, Any]] | None, systemd: bool) -> list[dict[str, Any]]:
    """Files marked ``systemd`` (unit files) only where systemd runs."""
    return [s for s in specs or [] if systemd or not s.get("systemd")]
