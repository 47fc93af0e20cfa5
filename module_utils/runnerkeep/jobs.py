"""The job record: what a job hook writes when a CI job starts, and how root judges it.

One format for every job registry (the cleanup job lock, cleanup/lock.py; the job-peak history
reads the same clock and age rules, disk/history.py): the job id, a process that lives as long
as the job (``pid``) with that process's start time (``pid_start``, so a reused pid is never
taken for the job), when the job started and on which host.

A record is judged, never believed (docs/threat-model.md): it is stale when its process is
gone or is another one, it is older than ``cleanup.lock_max_age``, it started in the future
(beyond ``CLOCK_SKEW``: it would never age), or it has no process start time. A record a CI
user left in the spool also needs its process to run as the file's owner (real uid).
"""

from __future__ import annotations

import math
import socket
import time
from typing import Any

from . import spool, statefile
from .procutil import process_alive, process_start_time, same_process
from .units import parse_duration

DEFAULT_MAX_AGE = 24 * 3600.0  # cleanup.lock_max_age unset (catalog.SECTION_DEFAULTS: "24h")
CLOCK_SKEW = 300.0  # seconds a job's time may lie in the future (clocks of hook and host)


def max_age_of(config: dict[str, Any]) -> float:
    """``cleanup.lock_max_age`` in seconds: the longest a job record counts as a running job
    (a runner killed mid-job must not block cleanup forever) or a done job may have lasted."""
    value = (config.get("cleanup") or {}).get("lock_max_age")
    if value is None:
        return DEFAULT_MAX_AGE
    return parse_duration(value, "cleanup.lock_max_age")


def new_record(job_id: Any, pid: int, now: float | None = None) -> dict[str, Any]:
    """The record of a job starting now, held alive by process ``pid``."""
    return {
        "job_id": str(job_id),
        "pid": pid,
        "pid_start": process_start_time(pid),
        "started": time.time() if now is None else now,
        "host": socket.gethostname(),
    }


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


def stale_reason(record: dict[str, Any] | None, max_age: float, now: float) -> str | None:
    """Why a job record (``valid_record``'d, or None: unusable) is not a running job; None
    when it is one."""
    if record is None:
        return "unreadable lock file"
    started = record.get("started")
    if not statefile.finite_number(started) or not math.isfinite(max_age):
        return "unreadable lock file"
    if started > now + CLOCK_SKEW:
        # It would never grow older than lock_max_age: a forged or clock-broken lock.
        return "started in the future"
    if now - started > max_age:
        return f"older than {max_age:.0f}s"
    pid = record.get("pid")
    if not statefile.plain_int(pid, 1):
        return "unreadable lock file"
    pid_start = record.get("pid_start")
    usable_start = isinstance(pid_start, str) and bool(pid_start)
    if not process_alive(pid, pid_start if usable_start else None):
        return f"process {pid} is gone"
    if not usable_start:
        # Without it a reused pid (or pid 1) would keep the lock alive for lock_max_age.
        return "cannot be checked: no process start time"
    return None


def spool_stale_reason(
    record: dict[str, Any] | None, owner: int | None, max_age: float, now: float
) -> str | None:
    """Why a spool job record is not a live job (None: it is). Only the file's owner is
    trusted; the process it names must be alive, be that process (start time) and run as
    that owner."""
    reason = stale_reason(record, max_age, now)
    if reason:
        return reason
    pid = record["pid"]
    if not same_process(pid, record.get("pid_start")):
        return f"process {pid} is gone or is another process"
    uid = spool.process_real_uid(pid)
    if owner is None or uid != owner:
        return f"process {pid} does not run as the record's owner (uid {owner})"
    return None
