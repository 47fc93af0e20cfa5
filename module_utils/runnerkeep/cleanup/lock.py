"""The CI job lock: while a job runs, the post and emergency stages keep their hands off.

Runner hooks are separate short-lived processes (``runnerkeep cleanup job-start`` when a job
starts, ``job-end`` when it ends), so the lock cannot be a held file descriptor. It is a file
per job, ``<state_dir>/job-locks/<job id>.json``, holding the job id, the pid of a process that
lives as long as the job (the runner worker: hooks pass ``--pid $PPID``) with that process's
start time, and when the job started. ``job-start`` creates it, ``job-end`` removes it. Several
files at once means several concurrent jobs (GitLab ``concurrent``).

A lock is stale, and is removed when next looked at, when its process is gone (or the pid was
reused: the start time differs) or it is older than ``cleanup.lock_max_age``: a runner killed
mid-job must not block cleanup forever. Reads and writes of the lock directory are serialized
with ``fcntl.flock`` on ``<state_dir>/job-locks/.guard``, taken with LOCK_NB and retried until
``GUARD_WAIT`` seconds (a job may flock any file it can open: it must not hang the hooks).
Lock files are read through ``statefile`` (no symlink followed, no FIFO blocked on, wrong
types rejected): an unusable one is a stale lock. A dry run (``remove_stale=False``) reads
only: no stale lock removed, neither ``job-locks/`` nor ``.guard`` created.

A second lock, ``<state_dir>/cleanup.lock`` (flock held for the run), keeps two cleanup runs
from racing each other.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import math
import os
import re
import socket
import time
from collections.abc import Iterator
from typing import Any

from .. import statefile
from ..errors import LockHeldError
from ..fsutil import atomic_write
from ..procutil import process_alive, process_start_time

LOCK_DIR = "job-locks"
GUARD = ".guard"
RUN_LOCK = "cleanup.lock"
DEFAULT_MAX_AGE = 24 * 3600.0
BLOCKED_STAGES = ("post", "emergency")
GUARD_WAIT = 10.0  # seconds a hook waits for the guard before LockHeldError


def lock_dir(state_dir: str) -> str:
    return os.path.join(state_dir, LOCK_DIR)


def _safe_id(job_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(job_id))[:120].lstrip(".")
    return safe or "job"


@contextlib.contextmanager
def _guard(state_dir: str, create: bool = True) -> Iterator[str]:
    """Serialize access to the lock directory; ``create=False`` (dry runs) makes nothing and
    reads unguarded when there is no usable guard file yet."""
    directory = lock_dir(state_dir)
    if create:
        os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, GUARD)
    fd = statefile.open_lock_file(path, create=create)
    try:
        if fd is not None:
            statefile.flock_bounded(fd, f"the job lock guard {path}", GUARD_WAIT)
        yield directory
    finally:
        if fd is not None:
            os.close(fd)


def job_start(
    state_dir: str, job_id: str, pid: int | None = None, now: float | None = None
) -> dict[str, Any]:
    """Take the job lock for ``job_id`` (idempotent: a repeated start refreshes the record)."""
    pid = os.getppid() if pid is None else int(pid)
    record = {
        "job_id": str(job_id),
        "pid": pid,
        "pid_start": process_start_time(pid),
        "started": time.time() if now is None else now,
        "host": socket.gethostname(),
    }
    with _guard(state_dir) as directory:
        path = os.path.join(directory, _safe_id(job_id) + ".json")
        atomic_write(path, json.dumps(record, sort_keys=True).encode())
    return record


def job_end(state_dir: str, job_id: str) -> dict[str, Any] | None:
    """Release the job lock; returns the record removed, None when there was none."""
    with _guard(state_dir) as directory:
        path = os.path.join(directory, _safe_id(job_id) + ".json")
        record = _read(path)
        try:
            os.unlink(path)
        except FileNotFoundError:
            return None
        except IsADirectoryError:
            statefile.quarantine(path)  # planted: not a lock, and not ours to delete
        return record or {"job_id": job_id}


def valid_record(record: Any) -> dict[str, Any] | None:
    """A lock record with the types ``stale_reason`` and the status output rely on."""
    if not isinstance(record, dict):
        return None
    pid = record.get("pid")
    started = record.get("started")
    if not statefile.plain_int(pid, 1) or not statefile.finite_number(started):
        return None
    if not isinstance(record.get("pid_start"), (str, type(None))):
        return None
    if not isinstance(record.get("job_id"), (str, int)) or isinstance(record["job_id"], bool):
        return None
    return record


def _read(path: str, repair: bool = False) -> dict[str, Any] | None:
    # Not moved aside even outside dry runs: an unusable lock is stale and removed as such.
    record, _report = statefile.read_json_object(path, valid_record, repair=repair)
    return record


def stale_reason(record: dict[str, Any] | None, max_age: float, now: float) -> str | None:
    if record is None:
        return "unreadable lock file"
    started = record.get("started")
    if not statefile.finite_number(started) or not math.isfinite(max_age):
        return "unreadable lock file"
    if now - started > max_age:
        return f"older than {max_age:.0f}s"
    pid = record.get("pid")
    if not statefile.plain_int(pid, 1):
        return "unreadable lock file"
    if not process_alive(pid, record.get("pid_start")):
        return f"process {pid} is gone"
    return None


def active_jobs(
    state_dir: str,
    max_age: float = DEFAULT_MAX_AGE,
    now: float | None = None,
    remove_stale: bool = True,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(live job records, stale records: removed just now unless ``remove_stale`` is False).

    ``remove_stale=False`` is for dry runs: nothing is removed or created.
    """
    now = time.time() if now is None else now
    if not os.path.isdir(lock_dir(state_dir)):
        return [], []
    live, stale = [], []
    with _guard(state_dir, create=remove_stale) as directory:
        try:
            names = sorted(os.listdir(directory))
        except OSError:
            return [], []
        for name in names:
            if not name.endswith(".json"):
                continue
            path = os.path.join(directory, name)
            record = _read(path)
            reason = stale_reason(record, max_age, now)
            if reason:
                if remove_stale:
                    with contextlib.suppress(OSError):
                        os.unlink(path)
                stale.append({**(record or {"file": name}), "stale": reason})
            else:
                live.append(record)
    return live, stale


def check_job_lock(
    state_dir: str, stage: str, force: bool = False, max_age: float = DEFAULT_MAX_AGE
) -> list[dict[str, Any]]:
    """Raise LockHeldError when a job holds the lock and ``stage`` must wait; return live jobs."""
    live, _stale = active_jobs(state_dir, max_age)
    if live and stage in BLOCKED_STAGES and not force:
        jobs = ", ".join(f"{r.get('job_id')} (pid {r.get('pid')})" for r in live)
        raise LockHeldError(
            f"a CI job holds the runner lock: {jobs}; the {stage} stage does not run during a "
            f"job (wait for it to end, or pass --force)"
        )
    return live


def wait_for_jobs(
    state_dir: str, timeout: float, max_age: float = DEFAULT_MAX_AGE, poll: float = 5.0
) -> bool:
    """Wait until no job holds the lock; True when free, False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        live, _ = active_jobs(state_dir, max_age)
        if not live:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll, max(deadline - time.monotonic(), 0.05)))


@contextlib.contextmanager
def job_lock(state_dir: str, job_id: str, pid: int | None = None) -> Iterator[dict[str, Any]]:
    """Hold the job lock for the duration of a ``with`` block (in-process callers, tests)."""
    record = job_start(state_dir, job_id, os.getpid() if pid is None else pid)
    try:
        yield record
    finally:
        job_end(state_dir, job_id)


@contextlib.contextmanager
def run_lock(state_dir: str) -> Iterator[None]:
    """One cleanup run at a time per host; raises LockHeldError if another is in progress."""
    os.makedirs(state_dir, exist_ok=True)
    path = os.path.join(state_dir, RUN_LOCK)
    # Never follows a planted symlink: the file is truncated and written below.
    fd = statefile.open_lock_file(path)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                other = os.pread(fd, 64, 0).decode(errors="replace").strip()
                raise LockHeldError(
                    f"another cleanup run is in progress (pid {other or '?'}); try again later"
                ) from None
            raise
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)
