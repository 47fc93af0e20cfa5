"""Job peaks: disk use at job start, the peak during the job, and at its end.

``job_start`` measures the budget filesystem, writes ``<state_dir>/disk-jobs/<job>.json`` and
spawns a detached sampler (double fork, own session) that re-measures every
``disk.sample_interval`` and rewrites the job file when a new peak is seen; it stops itself
after ``disk.sampler_max_lifetime`` or when the job file disappears. ``job_end`` stops the
sampler (its pid file holds the pid *and* the process start time, so a recycled pid is never
signalled), takes a last sample and appends one record to ``<state_dir>/disk-history.jsonl``,
which keeps the newest ``disk.history_max_jobs`` records.

Peaks are growth: ``peak used - used at start`` in bytes and inodes, never negative.

A job hook running as the CI user cannot write the state dir (root's): its job file, pid file
and the sampler's peaks live in the spool (``<spool>/disk-<id>.json``, ``.pid``), and
``job_end`` leaves a ``done-<id>-<time>.json`` record there instead of appending to the history.
The root watch ingests done records each cycle (``ingest_spool``): validated (integers bounded,
times sane and recent, peaks recomputed from the used figures and clamped to the room root
measures, the job id escaped, a few per owner uid and cycle), the owner uid recorded, appended
to ``disk-history.jsonl`` and removed.

Every file here is read through ``statefile``: records of the wrong shape are skipped and
counted, a job or pid file that cannot be used is moved aside, and the history lock is taken
with a bounded wait (past it the record is appended unlocked: O_APPEND keeps lines whole).
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import time
from typing import Any

from .. import events, spool, statefile
from ..config import state_dir_of
from ..errors import ConfigError, LockHeldError
from ..fsutil import atomic_write, filesystem_usage
from ..jobs import CLOCK_SKEW, max_age_of
from ..procutil import process_start_time as _proc_start_time
from ..procutil import same_process
from ..textutil import escape_text
from .disk_config import as_int, budget_path, disk_settings, expand, seconds

# Done records of one owner uid ingested per watch cycle: more than its runners can finish in
# one interval, few enough that a forged flood trickles in (see ingest_spool).
DONE_PER_UID = 4

HISTORY_FILE = "disk-history.jsonl"
JOBS_DIR = "disk-jobs"
HISTORY_READ_BOUND = 64 * 1024 * 1024
HISTORY_LOCK_WAIT = 5.0
_JOB_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}$")
_JOB_INTS = ("start_used_bytes", "start_used_inodes", "peak_used_bytes", "peak_used_inodes")


def history_path(state_directory: str) -> str:
    return os.path.join(state_directory, HISTORY_FILE)


def _job_paths(state_directory: str, job_id: str, spool_dir: str | None = None) -> tuple[str, str]:
    """The job and pid files: in ``disk-jobs/``, or in ``spool_dir`` (a CI user's hook)."""
    if not _JOB_ID_RE.match(job_id or ""):
        raise ConfigError(
            f"job id {job_id!r} is not usable: use letters, digits and . _ : @ - (max 128)"
        )
    if spool_dir:
        base = os.path.join(spool_dir, "disk-" + spool.safe_id(job_id))
        return base + ".json", base + ".pid"
    safe = job_id.replace(":", "_").replace("@", "_")
    base = os.path.join(state_directory, JOBS_DIR, safe)
    return base + ".json", base + ".pid"


def _spool_of(config: dict[str, Any]) -> str | None:
    """The spool when this process writes there (not the state dir's owner), else None."""
    return spool.spool_dir_of(config) if spool.use_spool(state_dir_of(config)) else None


def sample(path: str) -> dict[str, int]:
    usage = filesystem_usage(path)
    return {
        "used_bytes": usage.total_bytes - usage.free_bytes,
        "used_inodes": usage.total_inodes - usage.free_inodes,
        "free_bytes": usage.free_bytes,
        "free_inodes": usage.free_inodes,
    }


def _usable_job_id(value: Any) -> bool:
    return isinstance(value, str) and bool(_JOB_ID_RE.match(value))


def valid_job(job: Any) -> dict[str, Any] | None:
    """A running job's file, with the types ``job_end`` and the sampler compute with."""
    if not isinstance(job, dict) or not _usable_job_id(job.get("job_id")):
        return None
    if not isinstance(job.get("path"), str) or not statefile.timestamp(job.get("start_time")):
        return None
    if not all(statefile.plain_int(job.get(key)) for key in _JOB_INTS):
        return None
    if not statefile.plain_int(job.get("samples", 1)):
        job["samples"] = 1
    return job


def valid_pid_file(info: Any) -> dict[str, Any] | None:
    # pid 1 and below are never a sampler: kill(-1) would signal every process.
    if not isinstance(info, dict) or not statefile.plain_int(info.get("pid"), 2):
        return None
    return info if isinstance(info.get("start_time"), (str, type(None))) else None


def valid_record(record: Any) -> dict[str, Any] | None:
    """A history record: ``peak_bytes`` is required; the other fields, when there, must have
    the type the budget and ``disk history`` compute with."""
    if not isinstance(record, dict) or not statefile.plain_int(record.get("peak_bytes")):
        return None
    checks = {
        "job_id": lambda v: isinstance(v, str),
        "start_time": statefile.timestamp,
        "duration_seconds": statefile.finite_number,
        "peak_inodes": statefile.plain_int,
        "start_used_bytes": statefile.plain_int,
        "end_used_bytes": statefile.plain_int,
    }
    for key, check in checks.items():
        if key in record and not check(record[key]):
            return None
    return record


def _read_json(
    path: str, validate: statefile.Validator = valid_job, repair: bool = True
) -> dict[str, Any] | None:
    record, _report = statefile.read_json_object(path, validate, repair=repair)
    return record


def _write_json(path: str, data: dict[str, Any]) -> None:
    if os.path.basename(os.path.dirname(path)) != JOBS_DIR:
        # The job's own spool record: created O_EXCL|O_NOFOLLOW 0600, renamed over its last.
        spool.write_record(os.path.dirname(path), os.path.basename(path), data)
        return
    atomic_write(path, (json.dumps(data, sort_keys=True) + "\n").encode())


def _update_peak(job: dict[str, Any], now: dict[str, int]) -> bool:
    changed = False
    if now["used_bytes"] > job["peak_used_bytes"]:
        job["peak_used_bytes"] = now["used_bytes"]
        job["peak_time"] = time.time()
        changed = True
    if now["used_inodes"] > job["peak_used_inodes"]:
        job["peak_used_inodes"] = now["used_inodes"]
        changed = True
    return changed


def job_start(config: dict[str, Any], job_id: str, *, spawn: bool = True) -> dict[str, Any]:
    """Record the start of a job and (by default) start its background peak sampler."""
    settings = disk_settings(config)
    state_directory = state_dir_of(config)
    spooled = _spool_of(config)
    job_file, pid_file = _job_paths(state_directory, job_id, spooled)
    if not spooled:
        os.makedirs(os.path.dirname(job_file), exist_ok=True)
    _stop_sampler(pid_file)
    lifetime = seconds(settings, "sampler_max_lifetime")
    if not spooled:  # the spool's stale records are root's to judge (ingest_spool)
        reap_stale_jobs(state_directory, 2 * lifetime)
    path = expand(budget_path(config))
    now = sample(path)
    job = {
        "job_id": job_id,
        "path": path,
        "start_time": time.time(),
        "start_used_bytes": now["used_bytes"],
        "start_used_inodes": now["used_inodes"],
        "peak_used_bytes": now["used_bytes"],
        "peak_used_inodes": now["used_inodes"],
        "peak_time": time.time(),
        "samples": 1,
    }
    _write_json(job_file, job)
    interval = seconds(settings, "sample_interval")
    if interval <= 0:
        raise ConfigError("disk.sample_interval must be greater than 0")
    result = {"job": job, "sampler_pid": None}
    if spawn:
        result["sampler_pid"] = _spawn_sampler(job_file, pid_file, path, interval, lifetime)
    return result


def _spawn_sampler(
    job_file: str, pid_file: str, path: str, interval: float, lifetime: float
) -> int | None:
    """Double fork: the sampler is re-parented to init and outlives the hook that started it."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:  # the caller: wait for the intermediate child, read the sampler's pid
        os.close(write_fd)
        os.waitpid(pid, 0)
        with os.fdopen(read_fd, "rb") as pipe:
            data = pipe.read()
        return int(data) if data.strip() else None
    # Intermediate child and sampler: never return into the caller's code.
    status = 0
    try:
        os.close(read_fd)
        os.setsid()
        if os.fork():
            os._exit(0)
        devnull = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(devnull, fd)
        os.close(devnull)
        # Drop every other inherited descriptor: a runner waiting for its hook's pipes to close
        # must not wait for the sampler too.
        os.closerange(3, write_fd)
        os.closerange(write_fd + 1, _max_fd())
        signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        sampler_pid = os.getpid()
        _write_json(pid_file, {"pid": sampler_pid, "start_time": _proc_start_time(sampler_pid)})
        os.write(write_fd, str(sampler_pid).encode())
        os.close(write_fd)
        _sampler_loop(job_file, path, interval, lifetime)
    except BaseException:
        status = 1
    finally:
        os._exit(status)


def _max_fd() -> int:
    try:
        return min(os.sysconf("SC_OPEN_MAX"), 65536)
    except (ValueError, OSError):
        return 1024


def _sampler_loop(job_file: str, path: str, interval: float, lifetime: float) -> None:
    deadline = time.monotonic() + lifetime
    while time.monotonic() < deadline:
        time.sleep(min(interval, max(0.0, deadline - time.monotonic())))
        job = _read_json(job_file, repair=False)
        if job is None:
            return
        try:
            now = sample(path)
        except OSError:
            continue
        job["samples"] = job.get("samples", 1) + 1
        if _update_peak(job, now):
            _write_json(job_file, job)


def _stop_sampler(pid_file: str, wait: float = 3.0) -> bool:
    """Stop the sampler named in ``pid_file`` if it is still that same process."""
    info = _read_json(pid_file, valid_pid_file)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(pid_file)
    if not info:
        return False
    pid = info["pid"]
    if not same_process(pid, info.get("start_time")):
        return False
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        if not same_process(pid, info["start_time"]):
            return True
        # A zombie (when the sampler is our own child, e.g. in tests) counts as stopped.
        with contextlib.suppress(ChildProcessError):
            if os.waitpid(pid, os.WNOHANG)[0] == pid:
                return True
        time.sleep(0.02)
    return True


def job_end(config: dict[str, Any], job_id: str) -> dict[str, Any]:
    """Stop the sampler, take the last sample and append the job's record to the history."""
    settings = disk_settings(config)
    state_directory = state_dir_of(config)
    spooled = _spool_of(config)
    job_file, pid_file = _job_paths(state_directory, job_id, spooled)
    _stop_sampler(pid_file)
    job, report = statefile.read_json_object(job_file, valid_job, max_bytes=spool.RECORD_BOUND)
    if job is None and report.unreadable:
        # Damaged state must not fail a job hook: say so, record nothing, carry on.
        return {
            "job_id": job_id,
            "recorded": False,
            "warning": (
                f"the record of job {job_id!r} could not be used ({report.unreadable}); "
                f"{'moved aside to ' + report.moved_to if report.moved_to else 'left in place'}"
                ": this job's peak is not recorded, the next job records its own"
            ),
        }
    if job is None:
        raise ConfigError(
            f"no running job {job_id!r} in {os.path.dirname(job_file)}: "
            "call 'runnerkeep disk job-start --job-id ID' when the job starts"
        )
    now = sample(job["path"])
    _update_peak(job, now)
    end_time = time.time()
    record = {
        "job_id": job_id,
        "path": job["path"],
        "start_time": job["start_time"],
        "end_time": end_time,
        "duration_seconds": round(end_time - job["start_time"], 3),
        "start_used_bytes": job["start_used_bytes"],
        "peak_used_bytes": job["peak_used_bytes"],
        "end_used_bytes": now["used_bytes"],
        "start_used_inodes": job["start_used_inodes"],
        "peak_used_inodes": job["peak_used_inodes"],
        "end_used_inodes": now["used_inodes"],
        "peak_bytes": max(0, job["peak_used_bytes"] - job["start_used_bytes"]),
        "peak_inodes": max(0, job["peak_used_inodes"] - job["start_used_inodes"]),
        "samples": job.get("samples", 1) + 1,
    }
    max_jobs = as_int(settings["history_max_jobs"], "disk.history_max_jobs", 1)
    if spooled:
        return _spool_done(spooled, job_file, record)
    append_history(state_directory, record, max_jobs)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(job_file)
    events.record_event(
        state_directory,
        "job",
        spool_dir=spool.spool_dir_of(config),
        job_id=job_id,
        peak_bytes=record["peak_bytes"],
        peak_inodes=record["peak_inodes"],
        duration_seconds=record["duration_seconds"],
    )
    return record


def _spool_done(spool_dir: str, job_file: str, record: dict[str, Any]) -> dict[str, Any]:
    """A CI user's job end: the record goes to the spool for the root watch to ingest."""
    name = f"done-{spool.safe_id(record['job_id'])}-{time.time_ns()}.json"
    try:
        where = spool.write_record(spool_dir, name, record)
    except OSError as exc:
        return {
            **record,
            "recorded": False,
            "warning": f"cannot leave the record of job {record['job_id']!r} in the spool "
            f"{spool_dir} ({exc.strerror or exc}): this job's peak is not recorded",
        }
    with contextlib.suppress(OSError):
        os.unlink(job_file)
    return {**record, "spooled": where}


def valid_done(record: Any) -> dict[str, Any] | None:
    """A done record from the spool, with every figure root computes with usable."""
    if not isinstance(record, dict) or not isinstance(record.get("job_id"), str):
        return None
    if not (
        statefile.timestamp(record.get("start_time"))
        and statefile.timestamp(record.get("end_time"))
    ):
        return None
    if record["end_time"] < record["start_time"]:
        return None
    used = (*_JOB_INTS, "end_used_bytes", "end_used_inodes")
    if not all(statefile.plain_int(record.get(key)) for key in used):
        return None
    return record


def _ingested(
    record: dict[str, Any], uid: int | None, path: str, room: tuple[int, int]
) -> dict[str, Any]:
    """Root's history record of a job's done record: recomputed, clamped, the owner added."""
    peak_bytes = max(0, record["peak_used_bytes"] - record["start_used_bytes"])
    peak_inodes = max(0, record["peak_used_inodes"] - record["start_used_inodes"])
    # A job cannot have grown by more than the room root measures now (capacity minus used):
    # its claim cannot make the budget reserve more than the disk could give it.
    peak_bytes, peak_inodes = min(peak_bytes, room[0]), min(peak_inodes, room[1])
    start, end = record["start_time"], record["end_time"]
    return {
        "job_id": escape_text(record["job_id"])[:128],
        "path": path,
        "start_time": start,
        "end_time": end,
        "duration_seconds": round(end - start, 3),
        "start_used_bytes": record["start_used_bytes"],
        "peak_used_bytes": record["peak_used_bytes"],
        "end_used_bytes": record["end_used_bytes"],
        "start_used_inodes": record["start_used_inodes"],
        "peak_used_inodes": record["peak_used_inodes"],
        "end_used_inodes": record["end_used_inodes"],
        "peak_bytes": peak_bytes,
        "peak_inodes": peak_inodes,
        "uid": uid,
        "source": "spool",
    }


def _last_end_by_uid(state_directory: str) -> dict[int, float]:
    """The end time of the newest spooled record of each uid already in the history."""
    last: dict[int, float] = {}
    for record in read_history(state_directory):
        uid, end = record.get("uid"), record.get("end_time")
        if statefile.plain_int(uid) and statefile.timestamp(end):
            last[uid] = max(end, last.get(uid, end))
    return last


def _done_problem(record: dict[str, Any], now: float, oldest: float, after: float | None) -> str:
    if record["end_time"] > now + CLOCK_SKEW:
        return "ends in the future"
    if record["start_time"] < oldest:
        return "started longer ago than cleanup.lock_max_age"
    if after is not None and record["end_time"] <= after:
        return "ends before the last recorded job of its owner"
    return ""


def ingest_spool(config: dict[str, Any], dry_run: bool = False) -> dict[str, Any]:
    """Move the spool's done records into the history (root's watch, each cycle).

    A done record is the job user's word (root never saw the job run), so what it can do to
    root's history is bounded:

    - at most ``DONE_PER_UID`` records of one owner uid per cycle (oldest end first); the
      others stay in the spool for the next cycles (``deferred``, one warning per uid);
    - a record must have started within ``cleanup.lock_max_age`` and end after the newest
      record of its owner already in the history (no back-filling; ordered by END, not start,
      because one user may run several runners whose jobs overlap);
    - its peaks are clamped to the room root measures now (capacity minus used).

    Residual risk: a job user can still forge up to ``DONE_PER_UID`` records per cycle, each
    claiming up to the free space, so within a few cycles they can push the peak percentile up
    and make the budget fail or the cleanup run early until honest jobs push them out (what a
    real job filling the disk does anyway). It gains no access: the fix for that would be root
    sampling each job itself.

    Returns {"ingested": [records], "rejected": [{"file", "uid", "problem"}],
    "deferred": {uid: count}}; ``dry_run`` reads only. When the filesystem cannot be measured
    nothing is ingested (no clamp without a measure): every record waits."""
    settings = disk_settings(config)
    state_directory = state_dir_of(config)
    max_jobs = as_int(settings["history_max_jobs"], "disk.history_max_jobs", 1)
    oldest = time.time() - max_age_of(config)
    path = expand(budget_path(config))
    result: dict[str, Any] = {"ingested": [], "rejected": [], "deferred": {}}
    try:
        usage = filesystem_usage(path)
    except OSError as exc:
        statefile.warn(f"cannot measure {path} ({exc.strerror or exc}): done records wait")
        return result
    room = (usage.free_bytes, usage.free_inodes)
    now = time.time()
    last_end = _last_end_by_uid(state_directory)
    taken: dict[int, int] = {}
    with spool.opened(spool.spool_dir_of(config)) as opened:
        if opened is None:
            return result
        entries = opened.read("done", valid_done)
        for entry in sorted(entries, key=_end_order):
            uid = entry.uid
            problem = entry.problem or _done_problem(entry.record, now, oldest, last_end.get(uid))
            if not problem and taken.get(uid, 0) >= DONE_PER_UID:
                result["deferred"][uid] = result["deferred"].get(uid, 0) + 1
                continue  # stays in the spool: the next cycle takes it
            if problem:
                result["rejected"].append({"file": entry.name, "uid": uid, "problem": problem})
            else:
                taken[uid] = taken.get(uid, 0) + 1
                last_end[uid] = entry.record["end_time"]
                record = _ingested(entry.record, uid, path, room)
                if not dry_run:
                    append_history(state_directory, record, max_jobs)
                    _record_job_event(state_directory, record)
                result["ingested"].append(record)
            if not dry_run:
                opened.remove(entry.name)
    for uid, count in result["deferred"].items():
        statefile.warn(
            f"uid {uid} left more than {DONE_PER_UID} finished-job records in the spool this "
            f"cycle: {count} wait for the next cycles"
        )
    return result


def _end_order(entry: spool.SpoolRecord) -> tuple[float, str]:
    record = entry.record if entry.usable else None
    return (record["end_time"] if record else 0.0, entry.name)


def _record_job_event(state_directory: str, record: dict[str, Any]) -> None:
    events.record_event(
        state_directory,
        "job",
        job_id=record["job_id"],
        peak_bytes=record["peak_bytes"],
        peak_inodes=record["peak_inodes"],
        duration_seconds=record["duration_seconds"],
        uid=record.get("uid"),
    )


def append_history(state_directory: str, record: dict[str, Any], max_jobs: int) -> None:
    """Append one record; past ``max_jobs`` records keep only the newest (atomic rewrite)."""
    os.makedirs(state_directory, exist_ok=True)
    path = history_path(state_directory)
    line = (json.dumps(record, sort_keys=True) + "\n").encode()
    try:
        with statefile.locked(path + ".lock", timeout=HISTORY_LOCK_WAIT):
            statefile.append_line(path, line)
            _trim_history(path, max_jobs)
    except LockHeldError:
        # Someone holds the lock forever: the record still goes in; trimming waits for a
        # later job.
        statefile.append_line(path, line)


def _trim_history(path: str, max_jobs: int) -> None:
    data, _rest = statefile.read_bounded(path, HISTORY_READ_BOUND)
    lines = data.splitlines(keepends=True)
    if len(lines) > max_jobs:
        atomic_write(path, b"".join(lines[-max_jobs:]))


def read_history_report(
    state_directory: str, repair: bool = False
) -> tuple[list[dict[str, Any]], statefile.ReadReport]:
    """(usable records oldest first, what was skipped)."""
    return statefile.read_json_lines(
        history_path(state_directory), valid_record, max_bytes=HISTORY_READ_BOUND, repair=repair
    )


def read_history(state_directory: str) -> list[dict[str, Any]]:
    """Records oldest first; records that do not parse or lack a usable field are skipped."""
    records, _report = read_history_report(state_directory)
    return records


def reap_stale_jobs(state_directory: str, max_age: float) -> list[str]:
    """Forget jobs whose end was never recorded (a crashed runner) after ``max_age`` seconds."""
    reaped = []
    cutoff = time.time() - max_age
    for job in running_jobs(state_directory):
        if job["start_time"] < cutoff:
            job_file, pid_file = _job_paths(state_directory, job["job_id"])
            _stop_sampler(pid_file)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(job_file)
            reaped.append(job["job_id"])
    return reaped


def running_jobs(state_directory: str, spool_dir: str | None = None) -> list[dict[str, Any]]:
    """Jobs started and not ended: root's ``disk-jobs/`` and, when ``spool_dir`` is given,
    the spool's disk records (with their owner uid; for display, never trusted further)."""
    directory = os.path.join(state_directory, JOBS_DIR)
    try:
        names = sorted(os.listdir(directory))
    except (FileNotFoundError, NotADirectoryError, PermissionError):
        names = []
    jobs = []
    for name in names:
        if name.endswith(".json"):
            job = _read_json(
                os.path.join(directory, name), repair=not spool.use_spool(state_directory)
            )
            if job:
                jobs.append(job)
    if spool_dir:
        for entry in spool.read_spool(spool_dir, "disk", valid_job):
            if entry.usable:
                jobs.append({**entry.record, "uid": entry.uid, "source": "spool"})
    return jobs


if __name__ == "__main__":  # pragma: no cover
    sys.exit("use 'runnerkeep disk job-start|job-end'")
