"""sha256 of the store's blobs: a whole file in one pass, or buffers on a second thread while
the caller reads and writes (hashlib, file reads and writes all release the GIL)."""

from __future__ import annotations

import hashlib
import os
import queue
import threading
from typing import Any

from .store import open_regular

FILE_READ_BUFFER = 4 << 20
HASH_BUFFER = 1 << 20
HASH_BUFFERS = 4  # buffers in flight: one being read, the others hashed or written


def hash_file(path: str) -> tuple[str, int]:
    """sha256 and size, read with readinto into one buffer (no per-chunk allocation). Only a
    regular file is read (NotRegularFile, an OSError, otherwise): never a symlink's target,
    never a FIFO that would block."""
    sha = hashlib.sha256()
    view = memoryview(bytearray(FILE_READ_BUFFER))
    size = 0
    fd = open_regular(path)
    try:
        with open(fd, "rb", buffering=0, closefd=False) as handle:
            while True:
                count = handle.readinto(view)
                if not count:
                    break
                sha.update(view[:count])
                size += count
    finally:
        os.close(fd)
    return "sha256:" + sha.hexdigest(), size


class HashThread:
    """Hashes buffers on a second thread while the caller reads the next one and writes this one
    (hashlib, os.readv and os.write all release the GIL). A buffer goes back to the free list
    only once hashed; the caller takes the next buffer only after its write returned, so a
    buffer is never refilled while it is still hashed or written. No round trip per chunk: the
    caller waits for the hasher only when every buffer is in flight, and at the end of a blob.

    Use: ``index = take()``, fill ``views[index]``, ``hash(sha, index, count)``, write it;
    ``settle()`` before reading the digest; ``close()`` once at the end.
    """

    def __init__(self, count: int = HASH_BUFFERS, size: int = HASH_BUFFER) -> None:
        self.views = [memoryview(bytearray(size)) for _ in range(count)]
        self.free: queue.SimpleQueue = queue.SimpleQueue()
        for index in range(count):
            self.free.put(index)
        self.work: queue.SimpleQueue = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="rk-hash", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while True:
            item = self.work.get()
            if item is None:
                return
            sha, index, count = item
            if sha is not None:
                sha.update(self.views[index][:count])
            self.free.put(index)

    def take(self) -> int:
        """A free buffer's index (waits while every buffer is in flight)."""
        return self.free.get()

    def hash(self, sha: Any, index: int, count: int) -> None:
        """Hand the first ``count`` bytes of buffer ``index`` to ``sha``; the buffer comes back
        free once hashed. ``sha`` None gives the buffer back unhashed."""
        self.work.put((sha, index, count))

    def give_back(self, index: int) -> None:
        self.hash(None, index, 0)

    def settle(self) -> None:
        """Wait until every buffer is back: every update handed over so far is done."""
        got = [self.free.get() for _ in self.views]
        for index in got:
            self.free.put(index)

    def close(self) -> None:
        self.work.put(None)
        self.thread.join()
