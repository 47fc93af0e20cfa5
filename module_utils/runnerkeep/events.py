"""A small local event log, ``<state_dir>/events.jsonl``, that the monitor turns into metrics.

The cache records hits, misses and corruptions; cleanup records bytes freed per cleaner; job
hooks record disk peaks. One JSON object per line, appended with O_APPEND (atomic for lines
under PIPE_BUF on local filesystems). Bounded: past ``MAX_BYTES`` the oldest half is dropped.
Reads go through ``statefile``: a damaged log is skipped line by line and counted, never fatal.

A process that does not own the state dir (a job hook or the cache service running as another
user) appends to ``<spool>/events-<uid>.jsonl`` instead (``runnerkeep.spool``; the spool the
caller names, ``paths.spool_dir``, else ``<state_dir>/spool``). The root watch
ingests those lines into ``events.jsonl`` each cycle: stamped with the time of ingestion (a
job's clock must not move the metrics cursor), the owner uid added, every field reduced to a
short escaped string or a finite number, then the spool file is removed.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Iterator
from typing import Any

from . import spool, statefile
from .fsutil import atomic_write
from .textutil import escape_text

EVENTS_FILE = "events.jsonl"
MAX_BYTES = 4 * 1024 * 1024
# A log the writer trims at MAX_BYTES is never legitimately much larger: read a bound past it.
READ_BOUND = 4 * MAX_BYTES
SPOOL_FIELDS = 20  # fields kept of one spooled event
SPOOL_TEXT = 200  # characters kept of one spooled string
_RESERVED = ("time", "kind", "uid", "job_time")


def events_path(state_dir: str) -> str:
    return os.path.join(state_dir, EVENTS_FILE)


def record_event(state_dir: str, kind: str, *, spool_dir: str | None = None, **fields: Any) -> None:
    """Append one event; a state dir that cannot be written never fails the caller's work.

    ``spool_dir`` is where a writer that does not own ``state_dir`` leaves the line: callers
    with the config pass ``spool.spool_dir_of(config)``, the dir the watch ingests, because a
    custom ``paths.spool_dir`` is not ``<state_dir>/spool``; None keeps the default spool."""
    line = json.dumps({"time": time.time(), "kind": kind, **fields}, sort_keys=True) + "\n"
    if spool.use_spool(state_dir):
        with contextlib.suppress(OSError, ValueError):
            spool.append_event(spool_dir or spool.default_spool(state_dir), line.encode())
        return
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


def _spooled_event(event: dict[str, Any], uid: int | None, now: float) -> dict[str, Any]:
    """A job's event as root records it: nothing but short text and finite numbers."""
    kept: dict[str, Any] = {"time": now, "kind": escape_text(event["kind"])[:40], "uid": uid}
    if statefile.timestamp(event.get("time")):
        kept["job_time"] = event["time"]
    for key, value in list(event.items())[: SPOOL_FIELDS + 2]:
        if key in _RESERVED or not isinstance(key, str) or not key.isidentifier():
            continue
        if isinstance(value, bool) or statefile.finite_number(value):
            kept[key[:40]] = value
        elif isinstance(value, str):
            kept[key[:40]] = escape_text(value)[:SPOOL_TEXT]
    return kept


def ingest_spool(state_dir: str, spool_dir: str | None = None, dry_run: bool = False) -> int:
    """Move the spool's event lines into ``events.jsonl`` (root's); returns the lines taken.

    Each spool file is read (bounded), appended here, then removed; an unusable one is removed
    too. ``dry_run`` reads only."""
    now = time.time()
    taken = 0
    with spool.opened(spool_dir or spool.default_spool(state_dir)) as opened:
        if opened is None:
            return 0
        for entry in opened.read("events", valid_event):
            if dry_run:
                continue
            lines = [
                json.dumps(_spooled_event(event, entry.uid, now), sort_keys=True) + "\n"
                for event in (entry.record or [])
            ]
            if lines and not _append_all(state_dir, lines):
                continue  # root's log cannot take them now: they wait in the spool
            opened.remove(entry.name)
            taken += len(lines)
    return taken


def _append_all(state_dir: str, lines: list[str]) -> bool:
    path = events_path(state_dir)
    try:
        os.makedirs(state_dir, exist_ok=True)
        statefile.append_line(path, "".join(lines).encode())
        if os.lstat(path).st_size > MAX_BYTES:
            _drop_oldest_half(path)
    except (OSError, ValueError):
        return False
    return True
