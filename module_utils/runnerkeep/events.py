"""A small local event log, ``<state_dir>/events.jsonl``, that the monitor turns into metrics.

The cache records hits, misses and corruptions; cleanup records bytes freed per cleaner; job
hooks record disk peaks. One JSON object per line, appended with O_APPEND (atomic for lines
under PIPE_BUF on local filesystems). Bounded: past ``MAX_BYTES`` the oldest half is dropped.
Reads go through ``statefile``: a damaged log is skipped line by line and counted, never fatal.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from . import statefile
from .fsutil import atomic_write

EVENTS_FILE = "events.jsonl"
MAX_BYTES = 4 * 1024 * 1024
# A log the writer trims at MAX_BYTES is never legitimately much larger: read a bound past it.
READ_BOUND = 4 * MAX_BYTES


def events_path(state_dir: str) -> str:
    return os.path.join(state_dir, EVENTS_FILE)


def record_event(state_dir: str, kind: str, **fields: Any) -> None:
    """Append one event; a state dir that cannot be written never fails the caller's work."""
    line = json.dumps({"time": time.time(), "kind": kind, **fields}, sort_keys=True) + "\n"
    path = events_path(state_dir)
    with contextlib.suppress(OSError, ValueError):
        os.makedirs(state_dir, exist_ok=True)
        statefile.append_line(path, line.encode())
        if os.lstat(path).st_size > MAX_BYTES:
            _drop_oldest_half(path)


def valid_event(event: Any) -> dict[str, Any] | None:
    """An event is an object with a finite ``time`` and a string ``kind``."""
    if not isinstance(event, dict):
        return None
    if not statefile.finite_number(event.get("time")) or not isinstance(event.get("kind"), str):
        return None
    return event


def read_events_report(
    state_dir: str, kind: str | None = None, repair: bool = False
) -> tuple[list[dict[str, Any]], statefile.ReadReport]:
    """(usable events in the order written, what was skipped)."""
    records, report = statefile.read_json_lines(
        events_path(state_dir), valid_event, max_bytes=READ_BOUND, repair=repair
    )
    if kind is not None:
        records = [event for event in records if event["kind"] == kind]
    return records, report


def read_events(state_dir: str, kind: str | None = None) -> Iterator[dict[str, Any]]:
    """Events in the order written; lines that do not parse or lack time/kind are skipped."""
    records, _report = read_events_report(state_dir, kind)
    yield from records


def _drop_oldest_half(path: str) -> None:
    data, _rest = statefile.read_bounded(path, READ_BOUND)
    lines = data.splitlines(keepends=True)
    atomic_write(path, b"".join(lines[len(lines) // 2 :]))
