"""What an import may take of the disk: it stops before free space would go below the reserve.

An archive passed to ``cache import`` may be a pipe of unknown length, so the check cannot be
made only up front as a save's is. The archive reader charges ``ReserveGuard`` with every byte
it keeps for the commit, before keeping it: large new members as they are written to temp
files, small members as they are held in memory (they are written only at the commit, so a
measurement during the read does not see them). A large member whose blob is already stored
is only hashed and costs nothing: re-importing an archive of stored layers on a tight disk
works. Charged bytes are counted against the free space measured when the import started and
never given back; free space is also read again every ``RESTAT_STEP`` charged bytes (and
whenever the next charge could cross the reserve): what others wrote meanwhile counts too. The
import stops, storing nothing, before a write that could leave less than ``reserve`` free on
the cache directory's filesystem.
"""

from __future__ import annotations

from ..errors import FreeSpaceError
from ..fsutil import filesystem_usage
from ..units import format_size

RESTAT_STEP = 8 << 20


class ReserveGuard:
    """The bytes an import keeps, charged against free space above the reserve."""

    def __init__(self, store_root: str, reserve: int, source: str) -> None:
        self.root = store_root
        self.reserve = reserve
        self.source = source
        self.free_at_start = filesystem_usage(store_root).free_bytes
        self.free = self.free_at_start
        self.since = 0  # charged since free space was last measured
        self.total = 0

    def charge(self, count: int) -> None:
        """Before ``count`` more bytes are kept: FreeSpaceError if they could cross the
        reserve."""
        if self.reserve > 0:
            self._check(count)
        self.since += count
        self.total += count

    def _check(self, count: int) -> None:
        if self.since >= RESTAT_STEP or self._left(count) < self.reserve:
            self.free = filesystem_usage(self.root).free_bytes
            self.since = 0
        if self._left(count) < self.reserve:
            raise FreeSpaceError(
                f"the import of {self.source} stopped with {format_size(self.total)} of it "
                f"kept: going on could leave the cache directory {self.root} with less than "
                f"the reserve (cache.reserve) {format_size(self.reserve)} free "
                f"({format_size(max(0, self._left(0) - self.reserve))} left for it above the "
                "reserve); nothing was stored"
            )

    def _left(self, count: int) -> int:
        """Free space after ``count`` more bytes: the stricter of what was free at the start
        less all this import kept, and what was free at the last measurement less what it
        kept since (others may have written meanwhile)."""
        return min(self.free_at_start - self.total, self.free - self.since) - count
