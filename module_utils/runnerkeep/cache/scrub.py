"""``cache verify --max-duration``: the scrub. Each run re-hashes a slice of the store, least
recently verified blob first, within a time budget, so that every blob is re-read at least once
per ``cache.scrub_period`` without one run reading the whole store.

What it keeps in the store (written by the store's owner, like everything there):

    DIR/scrub-state.json   when each blob was last verified; the running totals
    DIR/scrub-status.json  the summary the disk watch turns into metrics (the oldest unverified
                           blob, the totals): small, because the watch reads it every minute
    DIR/scrub.lock         flock: one scrub of a store at a time

A blob the state does not know enters it as verified when it was stored (its file's mtime,
never later than now): save and import hash every byte of a blob before committing it. A blob
no longer stored leaves the state. A state file that cannot be used is moved aside and the
scrub starts over from the oldest blobs: losing the state costs reading, never a crash.

How much a run reads: every blob that could be overdue before the next run (last verified
before ``now - period + 2 x gap``, where ``gap`` is the longest of the last few intervals
between runs), and at least its share of the store's bytes (``gap / period`` of them), whichever
is more; never starting a blob once the budget is spent. Runs every ``gap`` (with jitter up to
a whole ``gap``) therefore re-read every blob within ``period`` as long as the budget allows;
when it does not, the oldest blob's age (the metric) grows past the period and the scrub-overdue
alert says so.

Locks: the shared store lock is taken per round of at most ``ROUND_SECONDS`` and let go for a
pause between rounds, so a prune (exclusive) waits for one round, not for the whole run; saves
and restores (shared) run beside it. A blob gone between rounds (pruned, or quarantined by a
restore) just leaves the state.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import json
import os
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import statefile
from ..errors import CacheMiss, ConfigError, LockHeldError
from ..fsutil import atomic_write
from ..units import format_size
from .hashing import hash_file
from .store import (
    CorruptEntry,
    NotRegularFile,
    Store,
    as_store,
    describe_os_error,
    entry_blobs,
    open_regular,
)

STATE_FILE = "scrub-state.json"
STATUS_FILE = "scrub-status.json"
LOCK_FILE = "scrub.lock"
STATE_FORMAT = 1
DEFAULT_PERIOD = 7 * 86400.0
# The interval assumed before two runs have been seen: the role's timer is nightly.
DEFAULT_GAP = 86400.0
MIN_GAP = 60.0
# Intervals between runs remembered: the longest of them is the gap planned for, so one manual
# run between two nightly ones does not shrink the next night's slice.
KEPT_GAPS = 7
# A state of ~80 bytes per blob: this holds ~400 000 blobs; a bigger file is damage.
MAX_STATE_BYTES = 32 * 1024 * 1024
# The longest the shared store lock is held in one go (plus the blobs in flight), and the pause
# after it: longer than the longest poll pause of a waiting prune (statefile.flock_bounded,
# 0.2 s), so the prune gets the store between two rounds.
ROUND_SECONDS = 10.0
ROUND_PAUSE = 0.3
_HEX_RE = re.compile(r"[0-9a-f]{64}")


@dataclass
class ScrubClock:
    """Time as the scrub sees it; tests pass a simulated one (no sleeping, no waiting)."""

    monotonic: Callable[[], float] = time.monotonic
    wall: Callable[[], float] = time.time
    sleep: Callable[[float], None] = time.sleep


@dataclass
class ScrubState:
    """What scrub-state.json holds: digest -> when last verified (or stored), totals, gaps."""

    verified: dict[str, float] = field(default_factory=dict)
    totals: dict[str, int] = field(
        default_factory=lambda: {"blobs": 0, "bytes": 0, "corruptions": 0}
    )
    last_run: float | None = None
    gaps: list[float] = field(default_factory=list)


@dataclass
class _Run:
    """One run's progress: what is wanted, what was read, what was found."""

    order: list[tuple[float, str, int]]  # (last verified, digest, size), oldest first
    due_before: float  # blobs last verified at or before this are due this run
    share: float  # bytes this run reads at least
    budget_end: float  # monotonic time past which no blob is started
    next_index: int = 0
    started_bytes: int = 0
    good_blobs: int = 0  # re-hashed to their names (the totals count these)
    good_bytes: int = 0
    read_bytes: int = 0  # every byte hashed, bad blobs' too
    bad: dict[str, str] = field(default_factory=dict)  # digest -> reason
    gone: set[str] = field(default_factory=set)
    verified_at: dict[str, float] = field(default_factory=dict)  # digest -> when it passed
    stopped: str = "up to date"

    def wants(self, last_verified: float) -> bool:
        return last_verified <= self.due_before or self.started_bytes < self.share


def scrub_store(
    store_dir: str | Store,
    *,
    max_duration: float,
    period: float = DEFAULT_PERIOD,
    workers: int = 2,
    repair: bool = False,
    progress: Callable[[int], None] | None = None,
    clock: ScrubClock | None = None,
) -> dict[str, Any]:
    """Re-hash the least recently verified blobs for at most ``max_duration`` seconds (no blob
    is started after it; those in flight finish). ``repair`` quarantines a bad blob and the
    entries using it, like ``verify --repair``; without it a bad blob keeps its old time, so the
    next run reads it first again. A store that does not exist is left uncreated."""
    if max_duration < 0:
        raise ConfigError(f"--max-duration: a duration cannot be negative, got {max_duration}")
    if not period > 0:
        raise ConfigError(f"cache.scrub_period: expected a duration above 0, got {period}")
    clock = clock or ScrubClock()
    started = clock.monotonic()
    store = as_store(store_dir)
    if not store.exists():
        return _empty_report(store, period, max_duration)
    with _scrub_lock(store):
        now = clock.wall()
        state, reset = load_state(store, now)
        sizes = store.list_blobs()
        new_blobs = _enter_new_blobs(store, state, sizes, now)
        removed = [digest for digest in state.verified if digest not in sizes]
        for digest in removed:
            del state.verified[digest]
        gap = planned_gap(state, now, period)
        run = _Run(
            order=sorted((when, digest, sizes[digest]) for digest, when in state.verified.items()),
            due_before=now - period + 2 * gap,
            share=sum(sizes.values()) * gap / period,
            budget_end=started + max_duration,
        )
        _hash_in_rounds(store, run, workers, clock, progress)
        quarantined = _quarantine_bad(store, run.bad) if repair and run.bad else []
        # What left the store during the run (pruned, quarantined) leaves the state now.
        run.gone.update(set(state.verified) - set(store.list_blobs()))
        _record(state, run, now)
        save_state(store, state)
        status = write_status(store, state, clock.wall(), period)
    report = _report(store, run, state, status, quarantined, new_blobs, removed, reset, period)
    report["max_duration"] = max_duration
    report["duration"] = round(clock.monotonic() - started, 3)
    return report


def planned_gap(state: ScrubState, now: float, period: float) -> float:
    """The interval to the next run planned for: the longest of the recent ones (this one
    included), bounded to [MIN_GAP, period / 2]; DEFAULT_GAP before any run was seen."""
    gaps = list(state.gaps)
    if state.last_run is not None and state.last_run < now:
        gaps.append(now - state.last_run)
    gap = max(gaps) if gaps else DEFAULT_GAP
    return min(max(gap, MIN_GAP), period / 2)


def _enter_new_blobs(store: Store, state: ScrubState, sizes: dict[str, int], now: float) -> int:
    """Blobs the state does not know enter it as verified when they were stored."""
    count = 0
    for digest in sizes:
        if digest not in state.verified:
            state.verified[digest] = _stored_time(store, digest, now)
            count += 1
    return count


def _stored_time(store: Store, digest: str, now: float) -> float:
    try:
        return min(os.lstat(store.blob_path(digest)).st_mtime, now)
    except OSError:
        return now  # gone since it was listed: it leaves the state after this run


# --- reading, in rounds -------------------------------------------------------------------


def _hash_in_rounds(
    store: Store,
    run: _Run,
    workers: int,
    clock: ScrubClock,
    progress: Callable[[int], None] | None,
) -> None:
    """Hash what the run wants, holding the shared store lock one round at a time."""
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        first = True
        while _may_start(run, clock):
            if not first:
                clock.sleep(ROUND_PAUSE)  # a waiting prune takes the store now
            first = False
            with contextlib.ExitStack() as held:
                try:
                    held.enter_context(store.store_lock())
                except LockHeldError:
                    # A prune (or a stuck holder) kept the store past STORE_LOCK_WAIT: what
                    # was read so far is still recorded.
                    run.stopped = "the store stayed locked"
                    return
                _one_round(pool, store, run, max(1, workers), clock, progress)


def _may_start(run: _Run, clock: ScrubClock) -> bool:
    """Whether the next blob in line is to be read now; sets why the run stops when not."""
    if run.next_index >= len(run.order):
        run.stopped = "up to date"
        return False
    if not run.wants(run.order[run.next_index][0]):
        run.stopped = "up to date"
        return False
    if clock.monotonic() >= run.budget_end:
        run.stopped = "time budget spent"
        return False
    return True


def _one_round(
    pool: concurrent.futures.Executor,
    store: Store,
    run: _Run,
    workers: int,
    clock: ScrubClock,
    progress: Callable[[int], None] | None,
) -> None:
    round_end = clock.monotonic() + ROUND_SECONDS
    in_flight: dict[concurrent.futures.Future, str] = {}
    while True:
        while len(in_flight) < workers and clock.monotonic() < round_end and _may_start(run, clock):
            _when, digest, size = run.order[run.next_index]
            run.next_index += 1
            run.started_bytes += size
            in_flight[pool.submit(hash_file, store.blob_path(digest))] = digest
        if not in_flight:
            return
        done, _pending = concurrent.futures.wait(
            in_flight, return_when=concurrent.futures.FIRST_COMPLETED
        )
        for future in done:
            _take_result(run, in_flight.pop(future), future, clock, progress)


def _take_result(
    run: _Run,
    digest: str,
    future: concurrent.futures.Future,
    clock: ScrubClock,
    progress: Callable[[int], None] | None,
) -> None:
    try:
        actual, size = future.result()
    except (FileNotFoundError, NotADirectoryError):
        run.gone.add(digest)  # pruned, or quarantined by a restore, since it was listed
        return
    except OSError as exc:
        run.bad[digest] = f"blob {digest} cannot be read: {describe_os_error(exc)} (scrub)"
        return
    run.read_bytes += size
    if progress:
        progress(run.read_bytes)
    if actual != digest:
        run.bad[digest] = f"blob {digest} fails its sha256 check (is {actual}) (scrub)"
        return
    run.good_blobs += 1
    run.good_bytes += size
    # Each blob's own time: a long run does not date its first blobs by its end.
    run.verified_at[digest] = clock.wall()


def _quarantine_bad(store: Store, bad: dict[str, str]) -> list[str]:
    """Move every bad blob, and every entry using one, to the quarantine (its log is what the
    fleet report counts), as ``verify --repair`` does. A store that stays locked leaves them
    where they are: they keep their old times, so the next run reads them first again."""
    moved: list[str] = []
    try:
        with store.store_lock():
            _quarantine_locked(store, bad, moved)
    except LockHeldError:
        pass
    return moved


def _quarantine_locked(store: Store, bad: dict[str, str], moved: list[str]) -> None:
    for digest, reason in sorted(bad.items()):
        target = store.quarantine("blob", store.blob_path(digest), reason)
        if target:
            moved.append(target)
    for name in store.list_keys():
        try:
            entry, _digest = store.read_entry(name)
        except (CacheMiss, CorruptEntry):
            continue  # not this blob's business: verify and restore judge entries
        used = sorted(digest for digest in entry_blobs(entry) if digest in bad)
        if used:
            reason = f"uses bad blob(s): {', '.join(used)} (scrub)"
            target = store.quarantine("entry", store.entry_path(name), reason)
            if target:
                moved.append(target)


def _record(state: ScrubState, run: _Run, started: float) -> None:
    """The run's findings into the state: fresh times, gone blobs out, totals, the gap."""
    for digest, when in run.verified_at.items():
        state.verified[digest] = when
    for digest in run.gone:
        state.verified.pop(digest, None)
    state.totals["blobs"] += run.good_blobs
    state.totals["bytes"] += run.good_bytes
    state.totals["corruptions"] += len(run.bad)
    if state.last_run is not None and state.last_run < started:
        state.gaps = [*state.gaps, started - state.last_run][-KEPT_GAPS:]
    state.last_run = started


# --- the state file -------------------------------------------------------------------------


def load_state(store: Store, now: float) -> tuple[ScrubState, bool]:
    """(the state, True when a damaged one was moved aside and the scrub starts over)."""
    path = os.path.join(store.root, STATE_FILE)
    record, report = statefile.read_json_object(
        path, _valid_state, max_bytes=MAX_STATE_BYTES, repair=True
    )
    if record is None:
        return ScrubState(), report.damaged
    state = ScrubState(
        verified={"sha256:" + hex_: min(when, now) for hex_, when in record["blobs"].items()},
        totals=record["totals"],
        last_run=record["last_run"],
        gaps=record["gaps"],
    )
    return state, False


def _valid_state(record: Any) -> dict[str, Any] | None:
    """A usable state, cleaned: unusable blob records dropped (they enter again as stored)."""
    if record.get("format") != STATE_FORMAT or not isinstance(record.get("blobs"), dict):
        return None
    blobs = {
        hex_: float(when)
        for hex_, when in record["blobs"].items()
        if _HEX_RE.fullmatch(hex_) and statefile.timestamp(when)
    }
    totals = record.get("totals") if isinstance(record.get("totals"), dict) else {}
    gaps = record.get("gaps") if isinstance(record.get("gaps"), list) else []
    last_run = record.get("last_run")
    return {
        "blobs": blobs,
        "totals": {
            name: totals[name] if statefile.plain_int(totals.get(name)) else 0
            for name in ("blobs", "bytes", "corruptions")
        },
        "last_run": float(last_run) if statefile.timestamp(last_run) else None,
        "gaps": [
            float(gap) for gap in gaps[-KEPT_GAPS:] if statefile.finite_number(gap) and gap > 0
        ],
    }


def save_state(store: Store, state: ScrubState) -> None:
    body = {
        "format": STATE_FORMAT,
        "blobs": {
            digest[len("sha256:") :]: round(when, 1)
            for digest, when in sorted(state.verified.items())
        },
        "totals": state.totals,
        "last_run": state.last_run,
        "gaps": [round(gap, 1) for gap in state.gaps],
    }
    atomic_write(
        os.path.join(store.root, STATE_FILE),
        json.dumps(body, separators=(",", ":")).encode() + b"\n",
    )


def write_status(store: Store, state: ScrubState, now: float, period: float) -> dict[str, Any]:
    """The summary the disk watch reads (``read_scrub_status``)."""
    times = state.verified.values()
    status = {
        "format": STATE_FORMAT,
        "time": round(now, 3),
        "oldest_unverified": round(min(times), 3) if times else None,
        "blobs": len(state.verified),
        "overdue_blobs": sum(1 for when in times if when <= now - period),
        "period": period,
        "totals": dict(state.totals),
        "last_run": state.last_run,
    }
    atomic_write(
        os.path.join(store.root, STATUS_FILE), (json.dumps(status, sort_keys=True) + "\n").encode()
    )
    return status


def read_scrub_status(store_dir: str, now: float | None = None) -> dict[str, Any] | None:
    """What the disk watch makes metrics of; None when the store was never scrubbed or the
    status cannot be used (a warning line says which). Reads only (root's watch must not write
    in the store): never raises, never moves a file.

    ``oldest_unverified_seconds`` is computed against ``now``, so it keeps growing when the
    scrub stops running (the scrub-overdue alert fires), which a number written by the scrub
    itself would not."""
    path = os.path.join(store_dir, STATUS_FILE)
    try:
        record, _report = statefile.read_json_object(path, _valid_status, repair=False)
    except OSError:
        return None
    if record is None:
        return None
    now = time.time() if now is None else now
    oldest = record["oldest_unverified"]
    return {
        "oldest_unverified_seconds": 0.0 if oldest is None else round(max(0.0, now - oldest), 3),
        "blobs": record["blobs"],
        "overdue_blobs": record["overdue_blobs"],
        "blobs_verified_total": record["totals"]["blobs"],
        "bytes_verified_total": record["totals"]["bytes"],
        "corruptions_total": record["totals"]["corruptions"],
        "last_run": record["last_run"],
    }


def _valid_status(record: Any) -> dict[str, Any] | None:
    totals = record.get("totals")
    if record.get("format") != STATE_FORMAT or not isinstance(totals, dict):
        return None
    oldest = record.get("oldest_unverified")
    if oldest is not None and not statefile.timestamp(oldest):
        return None
    for name in ("blobs", "bytes", "corruptions"):
        if not statefile.plain_int(totals.get(name)):
            return None
    last_run = record.get("last_run")
    return {
        "oldest_unverified": oldest,
        "blobs": record["blobs"] if statefile.plain_int(record.get("blobs")) else 0,
        "overdue_blobs": record["overdue_blobs"]
        if statefile.plain_int(record.get("overdue_blobs"))
        else 0,
        "totals": {name: totals[name] for name in ("blobs", "bytes", "corruptions")},
        "last_run": last_run if statefile.timestamp(last_run) else None,
    }


@contextlib.contextmanager
def _scrub_lock(store: Store):
    """One scrub of a store at a time; a second one says so and stops (exit 1)."""
    path = os.path.join(store.root, LOCK_FILE)
    try:
        fd = open_regular(path, create=True)
    except NotRegularFile:
        raise ConfigError(f"{path} is not a regular file: remove it and scrub again") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise LockHeldError(f"another cache scrub of {store.root} is running") from None
        yield
    finally:
        os.close(fd)


# --- the report -----------------------------------------------------------------------------


def _report(
    store: Store,
    run: _Run,
    state: ScrubState,
    status: dict[str, Any],
    quarantined: list[str],
    new_blobs: int,
    removed: list[str],
    reset: bool,
    period: float,
) -> dict[str, Any]:
    oldest = status["oldest_unverified"]
    return {
        "dir": store.root,
        "scrub": True,
        "ok": not run.bad,
        "blobs_checked": run.good_blobs + len(run.bad),
        "bytes_checked": run.read_bytes,
        "bad_blobs": [{"digest": d, "reason": r} for d, r in sorted(run.bad.items())],
        "quarantined": quarantined,
        "blobs": len(state.verified),
        "new_blobs": new_blobs,
        "removed_blobs": len(removed) + len(run.gone),
        "overdue_blobs": status["overdue_blobs"],
        "oldest_unverified_seconds": 0.0
        if oldest is None
        else round(max(0.0, status["time"] - oldest), 3),
        "stopped": run.stopped,
        "state_reset": reset,
        "period": period,
        "totals": dict(state.totals),
        "empty": not state.verified and not run.gone,
    }


def _empty_report(store: Store, period: float, max_duration: float) -> dict[str, Any]:
    return {
        "dir": store.root,
        "scrub": True,
        "ok": True,
        "blobs_checked": 0,
        "bytes_checked": 0,
        "bad_blobs": [],
        "quarantined": [],
        "blobs": 0,
        "new_blobs": 0,
        "removed_blobs": 0,
        "overdue_blobs": 0,
        "oldest_unverified_seconds": 0.0,
        "stopped": "nothing stored",
        "state_reset": False,
        "period": period,
        "totals": {"blobs": 0, "bytes": 0, "corruptions": 0},
        "empty": True,
        "max_duration": max_duration,
        "duration": 0.0,
    }


def report_lines(report: dict[str, Any]) -> list[str]:
    """The scrub's report as the CLI prints it."""
    if report["empty"]:
        return [f"nothing to scrub: no blobs in {report['dir']}"]
    lines = [
        f"scrubbed {report['blobs_checked']} blob(s), {format_size(report['bytes_checked'])} "
        f"in {report['duration']:.1f}s ({report['stopped']}); {report['blobs']} blob(s) stored, "
        f"oldest unverified {_age(report['oldest_unverified_seconds'])} ago, "
        f"{report['overdue_blobs']} overdue (period {_age(report['period'])})"
    ]
    if report["state_reset"]:
        lines.append("the scrub state was unusable: started over from the oldest blobs")
    for bad in report["bad_blobs"]:
        lines.append(f"BAD blob {bad['digest']}: {bad['reason']}")
    for moved in report["quarantined"]:
        lines.append(f"quarantined {moved}")
    lines.append("all good" if report["ok"] else "problems found")
    return lines


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit}"
    return f"{seconds:.0f}s"


__all__ = ["ScrubClock", "read_scrub_status", "report_lines", "scrub_store"]
