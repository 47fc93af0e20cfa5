"""The CI job lock: while a job runs, the post and emergency stages keep their hands off.

Runner hooks are separate short-lived processes (``runnerkeep cleanup job-start`` when a job
starts, ``job-end`` when it ends), so the lock cannot be a held file descriptor. It is a file
per job, ``<state_dir>/job-locks/<job id>.json``, holding the job id, the pid of a process that
lives as long as the job (the runner worker: hooks pass ``--pid $PPID``) with that process's
start time, and when the job started. ``job-start`` creates it, ``job-end`` removes it. Several
files at once means several concurrent jobs (GitLab ``concurrent``).

A lock is stale, and is removed when next looked at, when its process is gone (or the pid was
reused: the start time differs), it is older than ``cleanup.lock_max_age`` (a runner killed
mid-job must not block cleanup forever), it started in the future (beyond ``CLOCK_SKEW``: it
would never age), or it records no process start time (``take_job_lock`` always records one: a
lock without it cannot be checked against pid reuse, and a forged one must not block cleanup).

Reads and writes of the lock directory are serialized with ``fcntl.flock`` on
``<state_dir>/job-locks/.guard``, taken with LOCK_NB and retried until ``GUARD_WAIT`` seconds
(a job may flock any file it can open: it must not hang the hooks).
Lock files are read through ``statefile`` (no symlink followed, no FIFO blocked on, wrong
types rejected): an unusable one is a stale lock. A dry run (``remove_stale=False``) reads
only: no stale lock removed, neither ``job-locks/`` nor ``.guard`` created.

A second lock, ``<state_dir>/cleanup.lock`` (flock held for the run), keeps two cleanup runs
from racing each other.

A state dir that cannot be written (full disk, read-only) must not stop a cleanup or fail a
job: the guard and ``cleanup.lock`` fall back to the run dir (``statefile.open_lock_fallback``),
and a job lock that cannot be written to ``job-locks/`` is written to
``$RUNNERKEEP_RUN_DIR/job-locks-<hash of state dir>/``; ``active_jobs`` reads both, so a
cleanup still sees the job. When neither can take it, the hooks warn in one line and go on.

Hooks that run as the CI user cannot write the state dir (root:root 0755): their job lock is a
spool record, ``<spool>/job-<id>.json`` (``runnerkeep.spool``). Root merges three sources into
the registry it trusts: its own ``job-locks/``, the run-dir fallback, and the spool. A spool
record says nothing root believes but its file's owner uid: it is a live job only when the pid
it names runs now with the recorded start time AS THAT OWNER (real uid), and its start is
neither in the future (beyond ``CLOCK_SKEW``) nor older than ``lock_max_age``. So a job can
hold the lock only with a living process of its own, for at most ``lock_max_age``. Anything
else is stale: reported, and (not in dry runs) removed relative to the spool's fd.

The guard and ``cleanup.lock`` are private (0600) and a hold that outlasts its wait is judged
by the pid the last taker wrote (``statefile.take_owned_lock``): a lock held by anyone but a
running runnerkeep process never stops a cleanup.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import time
from collections.abc import Iterator
from typing import Any

from .. import spool, statefile
from ..errors import LockHeldError
from ..fsutil import atomic_write
from ..jobs import DEFAULT_MAX_AGE, new_record, spool_stale_reason, stale_reason, valid_record

LOCK_DIR = "job-locks"
GUARD = ".guard"
RUN_LOCK = "cleanup.lock"
BLOCKED_STAGES = ("post", "emergency")
GUARD_WAIT = 10.0  # seconds a hook waits for the guard before LockHeldError
RUN_LOCK_WAIT = 1.0  # seconds before cleanup.lock is judged by its holder


def lock_dir(state_dir: str) -> str:
    return os.path.join(state_dir, LOCK_DIR)


def fallback_lock_dir(state_dir: str) -> str:
    """Where job locks go when ``job-locks/`` cannot take them (in the run dir)."""
    return statefile.fallback_path(state_dir, LOCK_DIR)


def _lock_dirs(state_dir: str) -> list[str]:
    return [lock_dir(state_dir), fallback_lock_dir(state_dir)]


def _safe_id(job_id: str) -> str:
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(job_id))[:120].lstrip(".")
    return safe or "job"


@contextlib.contextmanager
def _guard(state_dir: str, create: bool = True) -> Iterator[None]:
    """Serialize access to the lock directories; ``create=False`` (dry runs) makes nothing and
    reads unguarded when there is no usable guard file yet. A state dir that cannot take the
    guard puts it in the run dir; when nothing can be opened at all, or the guard is held past
    ``GUARD_WAIT`` by anything but a running runnerkeep process, access is unguarded rather
    than refused (a hook must not fail a job, a cleanup must not stop)."""
    path = os.path.join(lock_dir(state_dir), GUARD)
    fallback = os.path.join(fallback_lock_dir(state_dir), GUARD)
    fd = (
        None if spool.use_spool(state_dir) else statefile.open_lock_fallback(path, fallback, create)
    )
    try:
        if fd is not None:
            statefile.take_owned_lock(fd, f"the job lock guard {path}", GUARD_WAIT)
        yield
    finally:
        if fd is not None:
            os.close(fd)


def _write_record(state_dir: str, name: str, record: dict[str, Any]) -> str:
    """Write the job lock to ``job-locks/``, else to the fallback dir; the path written.

    Raises the state dir's OSError when neither can take it.
    """
    data = json.dumps(record, sort_keys=True).encode()
    primary = os.path.join(lock_dir(state_dir), name)
    fallback = os.path.join(fallback_lock_dir(state_dir), name)
    try:
        os.makedirs(lock_dir(state_dir), exist_ok=True)
        atomic_write(primary, data)
    except OSError as exc:
        try:
            statefile.make_fallback_dir(fallback_lock_dir(state_dir))
            atomic_write(fallback, data, mode=0o600)
        except OSError:
            raise exc from None
        return fallback
    # An older copy left in the fallback dir would outlive this job's job-end otherwise.
    with contextlib.suppress(OSError):
        os.unlink(fallback)
    return primary


def _spool_name(job_id: Any) -> str:
    return f"job-{spool.safe_id(job_id)}.json"


def take_job_lock(
    state_dir: str,
    job_id: str,
    pid: int | None = None,
    now: float | None = None,
    spool_dir: str | None = None,
) -> dict[str, Any]:
    """Take the job lock for ``job_id`` (idempotent: a repeated start refreshes the record).

    As the CI user (the state dir is root's) the lock is a record in the spool."""
    record = new_record(job_id, os.getppid() if pid is None else int(pid), now)
    if spool.use_spool(state_dir):
        return _spool_start(spool_dir or spool.default_spool(state_dir), record)
    with _guard(state_dir):
        try:
            where = _write_record(state_dir, _safe_id(job_id) + ".json", record)
        except OSError as exc:
            # A hook must never fail a CI job: say once why cleanup will not see this job.
            message = (
                f"cannot record the job lock of {job_id} in {lock_dir(state_dir)} "
                f"({exc.strerror or exc}) nor in {fallback_lock_dir(state_dir)}; "
                "cleanup will not know that this job runs"
            )
            statefile.warn(message)
            return {**record, "recorded": False, "warning": message}
    if where != os.path.join(lock_dir(state_dir), _safe_id(job_id) + ".json"):
        statefile.warn(f"{lock_dir(state_dir)} cannot be written; job lock kept in {where}")
    return {**record, "lock_file": where}


def _spool_start(spool_dir: str, record: dict[str, Any]) -> dict[str, Any]:
    try:
        where = spool.write_record(spool_dir, _spool_name(record["job_id"]), record)
    except OSError as exc:
        message = (
            f"cannot record the job lock of {record['job_id']} in the spool {spool_dir} "
            f"({exc.strerror or exc}); cleanup will not know that this job runs"
        )
        statefile.warn(message)
        return {**record, "recorded": False, "warning": message}
    return {**record, "lock_file": where}


def release_job_lock(
    state_dir: str, job_id: str, spool_dir: str | None = None
) -> dict[str, Any] | None:
    """Release the job lock; returns the record removed, None when there was none.

    A lock that cannot be removed (read-only state dir) is returned with ``released``
    False and a warning (one line on stderr): it stays until it is stale.
    """
    if spool.use_spool(state_dir):
        directory = spool_dir or spool.default_spool(state_dir)
        name = _spool_name(job_id)
        record = spool.read_own(directory, name, valid_record)
        try:
            removed = spool.remove_own(directory, name)
        except OSError as exc:
            message = f"cannot remove the job lock {name} in {directory} ({exc.strerror or exc})"
            statefile.warn(message)
            return {"job_id": job_id, "released": False, "warning": message}
        return (record or {"job_id": job_id}) if removed else None
    name = _safe_id(job_id) + ".json"
    removed: dict[str, Any] | None = None
    refused: list[str] = []
    with _guard(state_dir):
        for directory in _lock_dirs(state_dir):
            path = os.path.join(directory, name)
            record = _read(path)
            try:
                os.unlink(path)
            except FileNotFoundError:
                continue
            except IsADirectoryError:
                statefile.quarantine(path)  # planted: not a lock, and not ours to delete
            except OSError as exc:
                # A read-only filesystem answers EROFS even for a name that is not there.
                if os.path.lexists(path):
                    refused.append(f"{path} ({exc.strerror or exc})")
                continue
            removed = removed or record or {"job_id": job_id}
    if refused:
        message = (
            f"cannot remove the job lock {', '.join(refused)}; it blocks the post stage until "
            "its process is gone or it is older than cleanup.lock_max_age"
        )
        statefile.warn(message)
        return {**(removed or {"job_id": job_id}), "released": False, "warning": message}
    return removed


def _read(path: str, repair: bool = False) -> dict[str, Any] | None:
    # Not moved aside even outside dry runs: an unusable lock is stale and removed as such.
    record, _report = statefile.read_json_object(path, valid_record, repair=repair)
    return record


def active_jobs(
    state_dir: str,
    max_age: float = DEFAULT_MAX_AGE,
    now: float | None = None,
    remove_stale: bool = True,
    spool_dir: str | None = None,
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(live job records, stale records: removed just now unless ``remove_stale`` is False).

    Root's own lock dirs and the spool's job records (``spool_dir``, default ``<state
    dir>/spool``). ``remove_stale=False`` is for dry runs: nothing is removed or created.
    """
    now = time.time() if now is None else now
    live: dict[str, dict[str, Any]] = {}
    stale: list[dict[str, Any]] = []
    directories = [d for d in _lock_dirs(state_dir) if os.path.isdir(d)]
    if directories:
        with _guard(state_dir, create=remove_stale and not spool.use_spool(state_dir)):
            for directory in directories:
                _root_locks(directory, max_age, now, remove_stale, live, stale)
    spooled = _spool_jobs(spool_dir or spool.default_spool(state_dir), max_age, now, remove_stale)
    for record in spooled:
        if "stale" in record:
            stale.append(record)
            continue
        key = "spool:" + _safe_id(record.get("job_id")) + ".json"
        live[key] = record
    return [live[name] for name in sorted(live)], stale


def _root_locks(
    directory: str,
    max_age: float,
    now: float,
    remove_stale: bool,
    live: dict[str, dict[str, Any]],
    stale: list[dict[str, Any]],
) -> None:
    for name, path in _lock_files(directory):
        record = _read(path)
        reason = stale_reason(record, max_age, now)
        if reason:
            if remove_stale:
                with contextlib.suppress(OSError):
                    os.unlink(path)
            stale.append({**(record or {"file": name}), "stale": reason})
        elif name not in live or record["started"] > live[name]["started"]:
            live[name] = record  # the same job in both dirs: its newest start


def _spool_jobs(
    spool_dir: str, max_age: float, now: float, remove_stale: bool
) -> list[dict[str, Any]]:
    """The spool's job records, each judged; stale ones carry ``stale`` (and are removed)."""
    judged = []
    with spool.opened(spool_dir) as opened:
        if opened is None:
            return []
        for entry in opened.read("job", valid_record):
            reason = entry.problem or spool_stale_reason(entry.record, entry.uid, max_age, now)
            shown = {
                **(entry.record or {"job_id": entry.key}),
                "source": "spool",
                "file": entry.name,
                "uid": entry.uid,
            }
            if reason:
                if remove_stale:
                    opened.remove(entry.name)
                shown["stale"] = reason
            judged.append(shown)
    return judged


def _lock_files(directory: str) -> list[tuple[str, str]]:
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        return []
    return [(n, os.path.join(directory, n)) for n in names if n.endswith(".json")]


def check_job_lock(
    state_dir: str,
    stage: str,
    force: bool = False,
    max_age: float = DEFAULT_MAX_AGE,
    spool_dir: str | None = None,
) -> list[dict[str, Any]]:
    """Raise LockHeldError when a job holds the lock and ``stage`` must wait; return live jobs."""
    live, _stale = active_jobs(state_dir, max_age, spool_dir=spool_dir)
    if live and stage in BLOCKED_STAGES and not force:
        jobs = ", ".join(f"{r.get('job_id')} (pid {r.get('pid')})" for r in live)
        raise LockHeldError(
            f"a CI job holds the runner lock: {jobs}; the {stage} stage does not run during a "
            f"job (wait for it to end, or pass --force)"
        )
    return live


def wait_for_jobs(
    state_dir: str,
    timeout: float,
    max_age: float = DEFAULT_MAX_AGE,
    poll: float = 5.0,
    spool_dir: str | None = None,
) -> bool:
    """Wait until no job holds the lock; True when free, False on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        live, _ = active_jobs(state_dir, max_age, spool_dir=spool_dir)
        if not live:
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(min(poll, max(deadline - time.monotonic(), 0.05)))


@contextlib.contextmanager
def job_lock(state_dir: str, job_id: str, pid: int | None = None) -> Iterator[dict[str, Any]]:
    """Hold the job lock for the duration of a ``with`` block (in-process callers, tests)."""
    record = take_job_lock(state_dir, job_id, os.getpid() if pid is None else pid)
    try:
        yield record
    finally:
        release_job_lock(state_dir, job_id)


@contextlib.contextmanager
def run_lock(state_dir: str) -> Iterator[None]:
    """One cleanup run at a time per host; raises LockHeldError if another is in progress.

    A state dir that cannot take ``cleanup.lock`` (full, read-only) never stops the run: the
    lock is taken in the run dir, or on what exists, or (nothing at all) the run goes unlocked.
    """
    path = os.path.join(state_dir, RUN_LOCK)
    fallback = statefile.fallback_path(state_dir, "cleanup", ".lock")
    # Never follows a planted symlink: the file is truncated and written below.
    fd = statefile.open_lock_fallback(path, fallback)
    if fd is None:
        statefile.warn(f"cannot open {path} nor {fallback}: this cleanup runs without its lock")
        yield
        return
    try:
        try:
            # A second's wait lets a run that has just taken the lock write its pid.
            statefile.take_owned_lock(fd, f"the cleanup lock {path}", RUN_LOCK_WAIT)
        except LockHeldError:
            other = statefile.lock_holder_pid(fd)
            raise LockHeldError(
                f"another cleanup run is in progress (pid {other or '?'}); try again later"
            ) from None
        yield
    finally:
        os.close(fd)
