"""sha256 of the store's blobs: a whole file in one pass, or buffers on a second thread while
the caller reads and writes (hashlib, file reads and writes all release the GIL)."""

from __future__ import annotations

import hashlib
import os

from .store import open_regular

FILE_READ_BUFFER = 4 << 20


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
