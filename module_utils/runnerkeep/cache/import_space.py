"""What an import may take of the disk: it stops before free space would go below the reserve.

An archive passed to ``cache import`` may be a pipe of unknown length, so the check cannot be
made only up front as a save's is. Every byte read from the archive goes through
``ReserveGuardedReader``. Every byte read is charged against the free space measured when the
import started and is never given back: small members are held in memory and written only at
the commit, so a measurement during the read does not see them. Free space is also read again
every ``RESTAT_STEP`` bytes (and whenever the next read could cross the reserve): what others
wrote meanwhile counts too. The import stops, storing nothing, before a read that could leave
less than ``reserve`` free on the cache directory's filesystem. Bytes read are an upper bound
of what is written (a blob already stored is only hashed), so the guard errs on the side of
the disk.
"""

from __future__ import annotations

from typing import BinaryIO

from ..errors import FreeSpaceError
from ..fsutil import filesystem_usage
from ..units import format_size

RESTAT_STEP = 8 << 20


class ReserveGuardedReader:
    """``raw`` (read with ``readinto``) that refuses to go on below the reserve."""

    def __init__(self, raw: BinaryIO, store_root: str, reserve: int, source: str) -> None:
        self.raw = raw
        self.root = store_root
        self.reserve = reserve
        self.source = source
        self.free_at_start = filesystem_usage(store_root).free_bytes
        self.free = self.free_at_start
        self.since = 0  # read since free space was last measured
        self.total = 0

    def readinto(self, buffer: memoryview) -> int:
        self._check(len(buffer))
        count = self.raw.readinto(buffer) or 0
        self.since += count
        self.total += count
        return count

    def _check(self, count: int) -> None:
        if self.reserve <= 0:
            return
        if self.since >= RESTAT_STEP or self._left(count) < self.reserve:
            self.free = filesystem_usage(self.root).free_bytes
            self.since = 0
        if self._left(count) < self.reserve:
            raise FreeSpaceError(
                f"the import of {self.source} stopped after {self.total} bytes: going on could "
                f"leave the cache directory {self.root} with less than the reserve "
                f"(cache.reserve) {format_size(self.reserve)} free "
                f"({format_size(max(0, self._left(0)))} left for it); nothing was stored"
            )

    def _left(self, count: int) -> int:
        """Free space after ``count`` more bytes: the stricter of what was free at the start
        less all this import read, and what was free at the last measurement less what it
        read since (others may have written meanwhile)."""
        return min(self.free_at_start - self.total, self.free - self.since) - count
