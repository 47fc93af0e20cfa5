"""The spool: where job hooks running as the CI user leave records for root.

The state dir (``paths.state_dir``, root:root 0755) holds root's own state only; a job hook
that cannot write it (it runs as the CI user) writes one file per record into the spool
(``paths.spool_dir``, root:<job group> 1730: the group may create files, cannot list, and the
sticky bit keeps a user from removing or renaming another's files):

- ``job-<id>.json``: the job lock (``cleanup job-start``), removed by ``cleanup job-end``;
- ``disk-<id>.json`` (+ ``disk-<id>.pid``): a running job's disk record, the sampler's peaks;
- ``done-<id>-<time>.json``: a finished job's disk record (``disk job-end``);
- ``events-<uid>.jsonl``: event lines, appended.

Writers (job side) create with ``O_CREAT|O_EXCL|O_NOFOLLOW`` mode 0600 (a temp name, fsync,
then rename over their own record: root never sees half a record, a planted symlink is replaced,
never followed) and append events with ``O_APPEND|O_NOFOLLOW``.

Root reads the spool only through ``Spool.read``: the directory is opened ``O_DIRECTORY|
O_NOFOLLOW`` and must be owned by root (else a warning and nothing read); entries are listed on
that fd and each is opened relative to it with ``O_NOFOLLOW|O_NONBLOCK`` and checked by
``fstat`` (a regular file with one link, within a size bound) before it is parsed with the
statefile validators. A record comes back with the file's OWNER uid: nothing else it says is
trusted (the job registry checks that the process it names is alive, is that process and runs as
that owner). Ingesting is reading then ``unlinkat`` on the same fd; dry runs only read.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import stat
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from . import statefile
from .config import state_dir_of

SPOOL_NAME = "spool"
RECORD_BOUND = 64 * 1024  # one job or done record is a few hundred bytes
EVENTS_BOUND = 1024 * 1024  # per events file and cycle: what a job may make root read
MAX_MATCHING = 1000  # records of one kind read per call: a job may create many files
MAX_SCANNED = 100000  # names looked at per call, whatever they are
STATUS_BOUND = 16 * 1024

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_ENTRY_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
_CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
_APPEND_FLAGS = (
    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
)

_SAFE = r"[A-Za-z0-9][A-Za-z0-9._-]{0,119}"
KINDS = {
    "job": re.compile(rf"^job-({_SAFE})\.json$"),
    "disk": re.compile(rf"^disk-({_SAFE})\.json$"),
    "done": re.compile(r"^done-([A-Za-z0-9][A-Za-z0-9._-]{0,159})\.json$"),
    "events": re.compile(r"^events-([0-9]{1,10})\.jsonl$"),
}


def default_spool(state_dir: str) -> str:
    """The spool of a state dir when the config does not name one (tests, old callers)."""
    return os.path.join(state_dir, SPOOL_NAME)


def spool_dir_of(config: dict[str, Any]) -> str:
    """``paths.spool_dir``, else the spool of ``paths.state_dir`` (not ``DEFAULT_PATHS``'s: a
    config that moves the state dir and names no spool keeps its spool in it)."""
    return (config.get("paths") or {}).get("spool_dir") or default_spool(state_dir_of(config))


def safe_id(job_id: Any) -> str:
    """A job id as a file name part: ``[A-Za-z0-9._-]``, at most 120, never leading dot."""
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", str(job_id))[:120].lstrip("._-")
    return safe or "job"


def use_spool(state_dir: str) -> bool:
    """Whether this process writes the spool instead of ``state_dir``: it is not root and the
    state dir belongs to someone else (root). A user with a state dir of its own (a single-user
    machine) keeps writing it directly."""
    euid = os.geteuid()
    if euid == 0:
        return False
    try:
        return os.stat(state_dir).st_uid != euid
    except FileNotFoundError:
        return False
    except OSError:
        return True


# --- the job side: writing ----------------------------------------------------------------


def write_record(spool_dir: str, name: str, record: dict[str, Any]) -> str:
    """Write ``record`` as ``spool_dir/name`` (created O_EXCL|O_NOFOLLOW 0600 under a temp
    name, fsynced, renamed over the job's own previous record). Raises OSError."""
    data = (json.dumps(record, sort_keys=True) + "\n").encode()
    target = os.path.join(spool_dir, name)
    temp = os.path.join(spool_dir, f".tmp-{name}.{os.getpid()}.{time.time_ns()}")
    fd = os.open(temp, _CREATE_FLAGS, 0o600)
    try:
        try:
            os.write(fd, data)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    return target


def read_own(spool_dir: str, name: str, validate: statefile.Validator) -> dict[str, Any] | None:
    """The job side reading back a record it wrote (never followed, never blocked on)."""
    record, _report = statefile.read_json_object(
        os.path.join(spool_dir, name), validate, max_bytes=RECORD_BOUND, repair=False
    )
    return record


def remove_own(spool_dir: str, name: str) -> bool:
    """Remove the job's own record (the sticky bit refuses anyone else's)."""
    try:
        os.unlink(os.path.join(spool_dir, name))
    except FileNotFoundError:
        return False
    return True


def append_event(spool_dir: str, line: bytes) -> None:
    """Append one event line to ``events-<uid>.jsonl``; a full file takes no more. Raises
    OSError when the spool cannot take it."""
    path = os.path.join(spool_dir, f"events-{os.geteuid()}.jsonl")
    fd = os.open(path, _APPEND_FLAGS, 0o600)
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise OSError(errno.EINVAL, f"{path} is not this user's regular file")
        if info.st_size + len(line) <= EVENTS_BOUND:
            os.write(fd, line)
    finally:
        os.close(fd)


# --- root's side: reading -----------------------------------------------------------------


@dataclass
class SpoolRecord:
    """One spool file as root saw it: its owner, and its record or why it is unusable."""

    name: str
    kind: str
    key: str  # the id (job, disk, done) or uid (events) in the name
    uid: int | None = None
    record: Any = None  # the validated object; for events, the list of validated lines
    problem: str | None = None
    skipped: int = 0  # event lines that did not validate

    @property
    def usable(self) -> bool:
        return self.problem is None


class Spool:
    """An open spool directory; every access is relative to its fd."""

    def __init__(self, path: str, fd: int) -> None:
        self.path = path
        self.fd = fd

    def read(
        self,
        kind: str,
        validate: statefile.Validator | None = None,
        *,
        max_bytes: int | None = None,
    ) -> list[SpoolRecord]:
        """Every file of ``kind`` (name order), with its owner uid and validated record."""
        pattern = KINDS[kind]
        bound = max_bytes or (EVENTS_BOUND if kind == "events" else RECORD_BOUND)
        names = self._names(pattern)
        found = []
        for name in names:
            entry = SpoolRecord(name, kind, pattern.match(name).group(1))
            self._load(entry, validate, bound, lines=kind == "events")
            found.append(entry)
        return found

    def _names(self, pattern: re.Pattern) -> list[str]:
        names: list[str] = []
        try:
            with os.scandir(self.fd) as listing:
                for scanned, item in enumerate(listing):
                    if scanned >= MAX_SCANNED or len(names) >= MAX_MATCHING:
                        break
                    if pattern.match(item.name):
                        names.append(item.name)
        except OSError as exc:
            statefile.warn(f"cannot list the spool {self.path}: {exc.strerror or exc}")
        return sorted(names)

    def _load(
        self, entry: SpoolRecord, validate: statefile.Validator | None, bound: int, lines: bool
    ) -> None:
        try:
            fd = os.open(entry.name, _ENTRY_FLAGS, dir_fd=self.fd)
        except OSError as exc:
            entry.problem = "a symlink" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
            return
        try:
            info = os.fstat(fd)
            entry.uid = info.st_uid
            entry.problem = _shape_problem(info, bound)
            if entry.problem:
                return
            data = statefile.read_fd(fd, bound + 1)
        except OSError as exc:
            entry.problem = exc.strerror or str(exc)
            return
        finally:
            os.close(fd)
        if len(data) > bound:
            entry.problem = f"larger than {bound} bytes"
        elif lines:
            entry.record, entry.skipped = statefile.parse_json_lines(data, validate)
        else:
            entry.record = _parse_object(data, validate)
            if entry.record is None:
                entry.problem = "not a usable record"

    def remove(self, name: str) -> bool:
        """``unlinkat`` on the spool fd (never follows, whatever ``name`` is now)."""
        try:
            os.unlink(name, dir_fd=self.fd)
        except IsADirectoryError:
            with contextlib.suppress(OSError):
                os.rmdir(name, dir_fd=self.fd)  # only when empty: nothing of it is walked
            return False
        except OSError:
            return False
        return True


def _shape_problem(info: os.stat_result, bound: int) -> str | None:
    if not stat.S_ISREG(info.st_mode):
        kinds = (
            (stat.S_ISFIFO, "a FIFO"),
            (stat.S_ISDIR, "a directory"),
            (stat.S_ISSOCK, "a socket"),
            (stat.S_ISCHR, "a device"),
            (stat.S_ISBLK, "a device"),
        )
        return next((name for test, name in kinds if test(info.st_mode)), "not a regular file")
    if info.st_nlink != 1:
        # A hard link to a file of someone else's (root's) is not a record of its owner.
        return "a hard link"
    if info.st_size > bound:
        return f"larger than {bound} bytes"
    return None


def _parse_object(data: bytes, validate: statefile.Validator | None) -> Any:
    try:
        record = statefile.loads_strict(data)
    except ValueError:
        return None
    if not isinstance(record, dict):
        return None
    return statefile.validated(record, validate)


_warned_dirs: set[str] = set()


@contextlib.contextmanager
def opened(spool_dir: str) -> Iterator[Spool | None]:
    """The spool open for reading; None when absent, or unsafe (a symlink, not a directory,
    not owned by root or this user: then one warning, and nothing of it is read)."""
    try:
        fd = os.open(spool_dir, _DIR_FLAGS)
    except FileNotFoundError:
        yield None
        return
    except PermissionError:
        # A job user may create files in the spool, not list it: nothing to say.
        yield None
        return
    except OSError as exc:
        _warn_dir(spool_dir, "is a symlink" if exc.errno == errno.ELOOP else str(exc.strerror))
        yield None
        return
    try:
        info = os.fstat(fd)
        if info.st_uid not in (0, os.geteuid()):
            _warn_dir(spool_dir, f"is owned by uid {info.st_uid}, not root")
            yield None
        else:
            yield Spool(spool_dir, fd)
    finally:
        os.close(fd)


def _warn_dir(spool_dir: str, why: str) -> None:
    if spool_dir in _warned_dirs:
        return
    _warned_dirs.add(spool_dir)
    statefile.warn(
        f"the spool {spool_dir} {why}: its records are ignored; "
        f"recreate it as root (chown root {spool_dir} && chmod 1730 {spool_dir})"
    )


def read_spool(
    spool_dir: str, kind: str, validate: statefile.Validator | None = None
) -> list[SpoolRecord]:
    """``Spool.read`` on a spool opened for this call only (nothing removed)."""
    with opened(spool_dir) as spool:
        return [] if spool is None else spool.read(kind, validate)


# --- processes named by records -----------------------------------------------------------


def process_real_uid(pid: int) -> int | None:
    """The real uid of ``pid`` (``Uid:`` of /proc/PID/status), None when unknown."""
    try:
        data, _rest = statefile.read_bounded(f"/proc/{int(pid)}/status", STATUS_BOUND)
    except (OSError, statefile.Unreadable, ValueError):
        return None
    for line in data.decode("ascii", errors="replace").splitlines():
        if line.startswith("Uid:"):
            fields = line.split()
            if len(fields) > 1 and fields[1].isdigit():
                return int(fields[1])
    return None
