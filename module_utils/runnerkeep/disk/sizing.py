"""Fast tree sizing with ``os.fwalk`` + ``stat(name, dir_fd=...)`` (never follows symlinks).

Logical bytes are ``st_size``; on-disk bytes are ``st_blocks * 512``. Hard-linked files count
once. The walk stays on the filesystem it starts on (like ``du -x``): a mount point below a
root is somebody else's filesystem. Errors (vanished or unreadable entries) are collected, not
raised, so a report over a busy tree still completes.
"""

from __future__ import annotations

import os
import stat as stat_mod
from dataclasses import asdict, dataclass, field


@dataclass
class TreeSize:
    path: str
    logical_bytes: int = 0
    disk_bytes: int = 0
    files: int = 0
    dirs: int = 0
    errors: list[str] = field(default_factory=list)
    exists: bool = True

    def as_dict(self) -> dict:
        data = asdict(self)
        data["errors"] = self.errors[:20]
        data["error_count"] = len(self.errors)
        return data


def _walk(root: str, depth: int, result: TreeSize, per_dir: dict[str, int] | None) -> None:
    """One pass; when ``per_dir`` is given, on-disk bytes are summed per directory up to depth."""
    try:
        root_stat = os.stat(root, follow_symlinks=False)
    except FileNotFoundError:
        result.exists = False
        return
    except OSError as exc:
        result.errors.append(f"{root}: {exc.strerror}")
        return
    if not stat_mod.S_ISDIR(root_stat.st_mode):
        result.files += 1
        result.logical_bytes += root_stat.st_size
        result.disk_bytes += root_stat.st_blocks * 512
        return
    device = root_stat.st_dev
    seen: set[tuple[int, int]] = set()
    root_parts = len(root.rstrip(os.sep).split(os.sep)) if root != os.sep else 1

    def onerror(exc: OSError) -> None:
        result.errors.append(f"{exc.filename}: {exc.strerror}")

    for dirpath, dirnames, filenames, dirfd in os.fwalk(root, onerror=onerror):
        result.dirs += 1
        own_bytes = 0
        keep = []
        for name in dirnames:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError as exc:
                result.errors.append(f"{os.path.join(dirpath, name)}: {exc.strerror}")
                continue
            own_bytes += st.st_blocks * 512
            result.disk_bytes += st.st_blocks * 512
            result.logical_bytes += st.st_size
            if st.st_dev == device:
                keep.append(name)
        dirnames[:] = keep
        for name in filenames:
            try:
                st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
            except OSError as exc:
                result.errors.append(f"{os.path.join(dirpath, name)}: {exc.strerror}")
                continue
            if st.st_nlink > 1:
                key = (st.st_dev, st.st_ino)
                if key in seen:
                    continue
                seen.add(key)
            result.files += 1
            result.logical_bytes += st.st_size
            blocks = st.st_blocks * 512
            result.disk_bytes += blocks
            own_bytes += blocks
        if per_dir is not None:
            parts = dirpath.rstrip(os.sep).split(os.sep)
            rel_depth = len(parts) - root_parts
            if rel_depth > depth:
                dirpath = os.sep.join(parts[: root_parts + depth])
            per_dir[dirpath] = per_dir.get(dirpath, 0) + own_bytes


def tree_size(root: str) -> TreeSize:
    """Logical and on-disk size of everything under ``root`` (0 and exists=False if absent)."""
    result = TreeSize(path=root)
    _walk(root, 0, result, None)
    return result


def largest_dirs(root: str, depth: int = 2, limit: int = 10) -> tuple[list[dict], TreeSize]:
    """The ``limit`` largest directories under ``root`` down to ``depth`` levels (on-disk bytes,
    each including everything below it), from a single walk."""
    result = TreeSize(path=root)
    own_bytes: dict[str, int] = {}
    _walk(root, depth, result, own_bytes)
    totals: dict[str, int] = {}
    root_norm = root.rstrip(os.sep) or os.sep
    for path, nbytes in own_bytes.items():
        # Roll each directory's own bytes up into itself and its ancestors below the root.
        current = path
        while True:
            if current != root_norm:
                totals[current] = totals.get(current, 0) + nbytes
            if current == root_norm or len(current) <= len(root_norm):
                break
            current = os.path.dirname(current)
    ranked = sorted(totals.items(), key=lambda item: (-item[1], item[0]))[:limit]
    return [{"path": p, "disk_bytes": b} for p, b in ranked], result
