"""Safety rails shared by every filesystem cleaner: which roots are acceptable, what is protected.

A root is refused (reported, never walked) when it is ``/``, a home directory or a parent of
home directories, a top-level system directory, a path through a symlink, or a mount point that
the configuration does not name in ``cleanup.allowed_mount_points``. Inside accepted roots the
walker skips protected inodes: runnerkeep's own directories (the image cache store, state and
logs), the Docker data root, active swap files and the runner's own binaries.
"""

from __future__ import annotations

import glob
import os
import pwd
from typing import Any

SYSTEM_DIRS = frozenset(
    [
        "/",
        "/bin",
        "/boot",
        "/dev",
        "/etc",
        "/home",
        "/lib",
        "/lib32",
        "/lib64",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/srv",
        "/sys",
        "/usr",
        "/usr/bin",
        "/usr/lib",
        "/usr/local",
        "/usr/sbin",
        "/var",
        "/var/lib",
    ]
)

SWAPS_FILE = "/proc/swaps"


def home_dirs() -> set[str]:
    homes = {"/root", "/home"}
    try:
        for entry in pwd.getpwall():
            # Real users (root and uid 1000..65533); system accounts' "homes" are service dirs.
            if not (entry.pw_uid == 0 or 1000 <= entry.pw_uid < 65534):
                continue
            if entry.pw_dir and entry.pw_dir not in ("/", "/nonexistent"):
                homes.add(os.path.normpath(entry.pw_dir))
    except OSError:
        pass
    home = os.environ.get("HOME")
    if home:
        homes.add(os.path.normpath(home))
    return homes


def swap_files(swaps_file: str = SWAPS_FILE) -> list[str]:
    """Active swap files and partitions (``/proc/swaps``): never touched, never swapped off."""
    try:
        with open(swaps_file, encoding="utf-8") as handle:
            lines = handle.read().splitlines()[1:]
    except OSError:
        return []
    return [line.split()[0].replace("\\040", " ") for line in lines if line.strip()]


def expand_roots(patterns: list[str]) -> list[str]:
    """Expand glob patterns in configured roots (``/home/*/.cache/pip``); keep literal ones."""
    roots: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            roots.extend(sorted(glob.glob(pattern)))
        else:
            roots.append(pattern)
    seen: set[str] = set()
    unique = []
    for root in roots:
        root = os.path.normpath(root)
        if root not in seen:
            seen.add(root)
            unique.append(root)
    return unique


def check_root(
    root: str, allowed_mount_points: list[str], homes: set[str], allow_system: bool = False
) -> str | None:
    """Why ``root`` must not be cleaned, or None when it is acceptable."""
    if not os.path.isabs(root):
        return "not an absolute path"
    norm = os.path.normpath(root)
    if norm == "/":
        return "refusing to clean /"
    if norm in homes:
        return "refusing to clean a home directory"
    if any(h.startswith(norm + "/") for h in homes if h != "/"):
        return "refusing to clean a parent of home directories"
    if norm in SYSTEM_DIRS and not allow_system:
        return "refusing to clean a system directory"
    if not os.path.lexists(norm):
        return "does not exist"
    if os.path.realpath(norm) != norm:
        return "path goes through a symlink"
    if not os.path.isdir(norm):
        return "not a directory"
    allowed = {os.path.normpath(p) for p in allowed_mount_points}
    if os.path.ismount(norm) and norm not in allowed:
        return "is a mount point not named in cleanup.allowed_mount_points"
    return None


def protected_inodes(config: dict[str, Any], section: dict[str, Any]) -> frozenset:
    """(st_dev, st_ino) of everything the walkers must skip."""
    paths = list(section.get("protected_paths") or [])
    paths.extend((config.get("paths") or {}).values())
    paths.extend(swap_files(section.get("swaps_file") or SWAPS_FILE))
    keys = set()
    for pattern in paths:
        for path in expand_roots([pattern]):
            try:
                st = os.stat(path, follow_symlinks=False)
            except OSError:
                continue
            keys.add((st.st_dev, st.st_ino))
    return frozenset(keys)
