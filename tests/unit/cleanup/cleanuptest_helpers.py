"""Fixtures for cleanup unit tests: real temp trees, a config pointing at them, a fake probe."""

from __future__ import annotations

import os
import time

from runnerkeep.fsutil import FilesystemUsage, mount_point_of

DAY = 86400.0


def make_file(path, size=1000, age_days=0.0, now=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(b"x" * size)
    set_age(path, age_days, now)
    return path


def set_age(path, age_days, now=None):
    t = (now or time.time()) - age_days * DAY
    os.utime(path, (t, t), follow_symlinks=False)


def age_tree(path, age_days):
    """Set every mtime in a tree (bottom-up, so directory mtimes stick)."""
    for dirpath, dirnames, filenames in os.walk(path, topdown=False):
        for name in filenames + dirnames:
            set_age(os.path.join(dirpath, name), age_days)
    set_age(path, age_days)


class FakeProbe:
    """statvfs stand-in for the tree under ``path``: fixed capacity, and free space that grows
    by what has really left the tree since the probe was made (allocated blocks and inodes,
    each inode once), as statvfs does on a filesystem nobody else writes to. ``ignore`` names
    top-level entries not counted (the run's own state and log files)."""

    def __init__(
        self,
        path,
        free_bytes,
        total_bytes=10**12,
        free_inodes=10**6,
        total_inodes=10**7,
        ignore=("state", "logs"),
    ):
        self.top = str(path)
        self.mount = mount_point_of(self.top)
        self.free_bytes = free_bytes
        self.total_bytes = total_bytes
        self.free_inodes = free_inodes
        self.total_inodes = total_inodes
        self.ignore = set(ignore)
        self.calls = 0
        self.base_bytes, self.base_inodes = self._used()

    def _used(self):
        seen = set()
        used = 0
        for dirpath, dirnames, filenames in os.walk(self.top):
            if dirpath == self.top:
                dirnames[:] = [d for d in dirnames if d not in self.ignore]
                filenames = [f for f in filenames if f not in self.ignore]
            for name in dirnames + filenames:
                st = os.lstat(os.path.join(dirpath, name))
                if (st.st_dev, st.st_ino) not in seen:
                    seen.add((st.st_dev, st.st_ino))
                    used += st.st_blocks * 512
        return used, len(seen)

    def __call__(self, path):
        self.calls += 1
        used, inodes = self._used()
        return FilesystemUsage(
            path=path,
            mount_point=self.mount,
            total_bytes=self.total_bytes,
            free_bytes=self.free_bytes + self.base_bytes - used,
            total_inodes=self.total_inodes,
            free_inodes=self.free_inodes + self.base_inodes - inodes,
        )


def files_cleaner(roots, **over):
    base = {
        "kind": "files",
        "roots": [str(r) for r in roots],
        "patterns": ["*"],
        "min_age": "0s",
        "stages": ["pre", "post", "emergency"],
    }
    base.update(over)
    return base
