"""Safety rails shared by every filesystem cleaner: which roots are acceptable, what is protected.

Rails are checked on what would really be removed, not on the text of the config: each root is
normalised (``//etc``, ``/tmp/../etc``, trailing slashes) and resolved (``realpath``), after
glob expansion, and both forms must pass. A root is refused (reported, never walked) when it:

- is, or contains, a system location (``/``, ``/etc``, ``/usr``, ``/var/lib``, ...), a home
  directory or the directory holding homes;
- is a top-level entry of a system location (what ``/usr/*`` or ``/var/lib/*`` expands to);
- lies anywhere inside ``/etc`` (or ``/proc``, ``/sys``, ``/boot``);
- is, or lies inside, runnerkeep's own cache, state or log dir, or the Docker data root;
- goes through a symlink, or is itself a mount point (by mount ID, so a bind mount of the same
  filesystem is seen) that ``cleanup.allowed_mount_points`` does not name.

Catalog cleaners (``allow_system=True``) may use the few system roots the toolchain catalog
names explicitly (``/usr/share`` for ``dotnet``, ``/opt`` for ``ghc``): their patterns are fixed
names, so what goes is ``/usr/share/dotnet``, never ``/usr/share`` itself. Inside accepted roots
the walker skips protected inodes: runnerkeep's own directories (they may sit inside a root, as
the log dir does in ``/var/log``), the Docker data root, active swap files and the runner's
binaries.
"""

from __future__ import annotations

import glob
import os
import pwd
from collections.abc import Iterable, Mapping
from typing import Any

from .. import mounts
from ..config import paths_of
from ..docker_cli import DEFAULT_DOCKER_ROOT
from . import walk
from .catalog import TOOLCHAINS

# A root that is one of these, or contains one, is refused.
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
        "/libx32",
        "/lost+found",
        "/media",
        "/mnt",
        "/nix",
        "/opt",
        "/proc",
        "/root",
        "/run",
        "/sbin",
        "/snap",
        "/srv",
        "/sys",
        "/usr",
        "/usr/bin",
        "/usr/include",
        "/usr/lib",
        "/usr/lib32",
        "/usr/lib64",
        "/usr/libexec",
        "/usr/libx32",
        "/usr/local",
        "/usr/local/bin",
        "/usr/local/etc",
        "/usr/local/include",
        "/usr/local/lib",
        "/usr/local/sbin",
        "/usr/local/share",
        "/usr/sbin",
        "/usr/share",
        "/usr/src",
        "/var",
        "/var/lib",
        "/var/spool",
    ]
)

# Whose top-level entries are system too. "/" is left out: its entries are named one by one
# above, and /tmp or /actions-runner are ordinary roots. /mnt and /media hold users' mounts.
SYSTEM_PARENTS = SYSTEM_DIRS - {"/", "/mnt", "/media"}

# Top-level entries of a system parent that are meant to be cleaned (FHS: temp, logs, caches;
# /dev/shm is a tmpfs, so it also has to be named in cleanup.allowed_mount_points).
OPEN_CHILDREN = frozenset(["/var/tmp", "/var/log", "/var/cache", "/dev/shm"])

# Nothing at any depth below these is ever removable: configuration, kernel interfaces (an
# rmdir in /sys/fs/cgroup removes a cgroup) and the boot loader.
NEVER_INSIDE = ("/etc", "/proc", "/sys", "/boot")

# The only system roots a catalog cleaner may use: the toolchain catalog names each one.
CATALOG_ROOTS = frozenset(entry["root"] for entry in TOOLCHAINS.values())

OWN_DIR_LABELS = {
    "cache_dir": "cache dir",
    "state_dir": "state dir",
    "log_dir": "log dir",
    "docker_root": "Docker data root",
}

SWAPS_FILE = "/proc/swaps"


def home_dirs() -> set[str]:
    homes = {"/root", "/home"}
    try:
        for entry in pwd.getpwall():
            # Real users (root and uid 1000..65533); system accounts' "homes" are service dirs.
            if not (entry.pw_uid == 0 or 1000 <= entry.pw_uid < 65534):
                continue
            if entry.pw_dir and entry.pw_dir not in ("/", "/nonexistent"):
                homes.add(normalise(entry.pw_dir))
    except OSError:
        pass
    home = os.environ.get("HOME")
    if home and os.path.isabs(home):
        homes.add(normalise(home))
    return homes


def swap_files(swaps_file: str = SWAPS_FILE) -> list[str]:
    """Active swap files and partitions (``/proc/swaps``): never touched, never swapped off."""
    try:
        with open(swaps_file, encoding="utf-8") as handle:
            lines = handle.read().splitlines()[1:]
    except (OSError, ValueError):
        return []
    return [line.split()[0].replace("\\040", " ") for line in lines if line.strip()]


def normalise(path: str) -> str:
    """``normpath`` that also folds a leading ``//`` (POSIX lets ``normpath`` keep it)."""
    norm = os.path.normpath(path)
    if norm.startswith("//"):
        norm = "/" + norm.lstrip("/")
    return norm


def expand_roots(patterns: list[str]) -> list[str]:
    """Expand glob patterns in configured roots (``/home/*/.cache/pip``); keep literal ones.

    Every root comes back normalised: this is the text the walk opens, so the rails must see
    exactly it.
    """
    roots: list[str] = []
    for pattern in patterns:
        if any(ch in pattern for ch in "*?["):
            roots.extend(sorted(glob.glob(pattern)))
        else:
            roots.append(pattern)
    seen: set[str] = set()
    unique = []
    for root in roots:
        root = normalise(root)
        if root not in seen:
            seen.add(root)
            unique.append(root)
    return unique


def own_dirs(config: Mapping[str, Any], docker_root: str | None = None) -> dict[str, str]:
    """runnerkeep's own directories and the Docker data root (label -> normalised path).

    ``docker_root`` is what ``docker info`` reports (the caller asks the engine once per run);
    the default root is always included too, for hosts where the engine is down right now.
    """
    paths = paths_of(config)
    found = {}
    for key in ("cache_dir", "state_dir", "log_dir"):
        value = paths.get(key)
        if isinstance(value, str) and os.path.isabs(value):
            found[key] = normalise(value)
    found["docker_root"] = DEFAULT_DOCKER_ROOT
    if docker_root and os.path.isabs(docker_root):
        found["docker_root_configured"] = normalise(docker_root)
    return found


def _inside(path: str, top: str) -> bool:
    """``path`` is ``top`` or below it (both normalised)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def _label(key: str) -> str:
    return OWN_DIR_LABELS.get(key, OWN_DIR_LABELS["docker_root"])


def _rail_reason(
    path: str, homes: Iterable[str], allow_system: bool, own: Iterable[tuple[str, str]]
) -> str | None:
    """Why ``path`` (normalised) is a forbidden root, from its place in the tree alone."""
    if path == "/":
        return "refusing to clean /"
    for top in NEVER_INSIDE:
        if _inside(path, top) and path != top:
            return f"refusing to clean inside {top}: nothing there is ever removed"
    if path in homes:
        return "refusing to clean a home directory"
    if any(h != "/" and h.startswith(path + "/") for h in homes):
        return "refusing to clean a parent of home directories"
    for key, own_path in own:
        if _inside(path, own_path):
            return f"refusing to clean runnerkeep's {_label(key)} {own_path} or anything in it"
    if allow_system and path in CATALOG_ROOTS:
        return None  # the catalog names what goes below it, entry by entry
    if path in SYSTEM_DIRS:
        return "refusing to clean a system directory"
    holds = sorted(d for d in SYSTEM_DIRS if d.startswith(path + "/"))
    if holds:
        return f"refusing to clean a directory holding system directory {holds[0]}"
    parent = os.path.dirname(path)
    if parent in SYSTEM_PARENTS and path not in OPEN_CHILDREN:
        return f"refusing to clean a top-level entry of system directory {parent}"
    return None


def _mount_reason(path: str, allowed_mount_points: Iterable[str]) -> str | None:
    """Why ``path`` cannot be opened as a root, or is a mount point the config does not name.

    The check runs on a descriptor opened without following any symlink, and compares mount
    IDs, so a bind mount of the same filesystem (same ``st_dev``) counts as a mount point. A
    directory bind-mounted onto itself does not: systemd makes one for every
    ``ReadWritePaths=`` entry of a hardened unit, and it brings nothing from elsewhere.
    """
    try:
        fd = walk.open_root(path)
    except OSError as exc:
        return f"cannot open without following symlinks: {exc.strerror or exc}"
    try:
        try:
            is_root = mounts.is_mount_root(fd) and not mounts.is_self_bind_mount(fd)
        except OSError:
            is_root = os.path.ismount(path)  # no mount IDs here (not Linux, no /proc)
    finally:
        os.close(fd)
    allowed = {normalise(p) for p in allowed_mount_points if isinstance(p, str)}
    if is_root and path not in allowed:
        return "is a mount point not named in cleanup.allowed_mount_points"
    return None


def check_root(
    root: str,
    allowed_mount_points: list[str],
    homes: set[str],
    allow_system: bool = False,
    *,
    own: Mapping[str, str] | None = None,
) -> str | None:
    """Why ``root`` must not be cleaned, or None when it is acceptable.

    ``own`` maps labels to runnerkeep's own directories (``own_dirs(config)``); the default
    paths are guarded in any case.
    """
    if not isinstance(root, str) or not os.path.isabs(root):
        return "not an absolute path"
    # The default locations stay guarded whatever the caller passes: refusing them costs
    # nothing on a host that moved its directories elsewhere.
    own = [*own_dirs({}).items(), *(own or {}).items()]
    homes = {normalise(h) for h in homes}
    norm = normalise(root)
    real = os.path.realpath(norm)
    reason = _rail_reason(norm, homes, allow_system, own)
    if reason:
        return reason
    if real != norm:
        real_reason = _rail_reason(real, homes, allow_system, own)
        if real_reason:
            return f"resolves to {real}: {real_reason}"
    if not os.path.lexists(norm):
        return "does not exist"
    if real != norm:
        return "path goes through a symlink"
    if not os.path.isdir(norm):
        return "not a directory"
    return _mount_reason(norm, allowed_mount_points)


def protected_inodes(config: dict[str, Any], section: dict[str, Any]) -> frozenset:
    """(st_dev, st_ino) of everything the walkers must skip."""
    paths = list(section.get("protected_paths") or [])
    paths.extend(p for p in (config.get("paths") or {}).values() if isinstance(p, str))
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
