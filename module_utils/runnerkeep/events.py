"""A small local event log, ``<state_dir>/events.jsonl``, that the monitor turns into metrics.

The cache records hits, misses and corruptions; cleanup records bytes freed per cleaner; job
hooks record disk peaks. One JSON object per line, appended with O_APPEND (atomic for lines
under PIPE_BUF on local filesystems). Bounded: past ``MAX_BYTES`` the oldest half is dropped.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from .fsutil import atomic_write

EVENTS_FILE = "events.jsonl"
MAX_BYTES = 4 * 1024 * 1024


def events_path(state_dir: str) -> str:
    return os.path.join(state_dir, EVENTS_FILE)


def record_event(state_dir: str, kind: str, **fields: Any) -> None:
    """Append one event; a state dir that cannot be written never fails the caller's work."""
    line = json.dumps({"time": time.time(), "kind": kind, **fields}, sort_keys=True) + "\n"
    path = events_path(state_dir)
    with contextlib.suppress(OSError):
        os.makedirs(state_dir, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line.encode())
        finally:
            os.close(fd)
        if os.path.getsize(path) > MAX_BYTES:
            _drop_oldest_half(path)


def read_events(state_dir: str, kind: str | None = None) -> Iterator[dict[str, Any]]:
    """Events in the order written; lines that do not parse (a torn write) are skipped."""
    try:
        with open(events_path(state_dir), encoding="utf-8") as handle:
            lines = handle.readlines()
    except FileNotFoundError:
        return
    for line in lines:
        try:
            event = json.loads(line)
        except ValueError:
            continue
        if kind is None or event.get("kind") == kind:
            yield event


def _drop_oldest_half(path: str) -> None:
    with open(path, "rb") as handle:
        lines = handle.readlines()
    atomic_write(path, b"".join(lines[len(lines) // 2 :]))
