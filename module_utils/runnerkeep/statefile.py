"""The one safe way to read (and open for writing) runnerkeep's own state files.

State files (``events.jsonl``, ``disk-history.jsonl``, ``disk-jobs/*.json``, ``disk-watch.json``,
``job-locks/*.json``) live where CI jobs run. They may be truncated by a full disk, hold bytes
that are not UTF-8, wrong JSON types, ``1e999``, garbage, or be replaced by a FIFO, a symlink or
a huge file. Nothing of that may hang or crash a job hook or the watch, so every reader:

- opens with ``O_NOFOLLOW | O_NONBLOCK`` (a symlink is not followed, a FIFO does not block)
  and accepts only a regular file (``fstat``);
- reads at most ``max_bytes`` and counts the rest as skipped;
- parses JSON strictly (no ``NaN``/``Infinity``, no float that overflows to infinity), decodes
  each line on its own with bad bytes replaced, and lets the caller's validator reject records
  of the wrong shape;
- skips and counts what it cannot use, and says so in ONE warning line per file and process
  (stderr, which is the journal for the systemd units);
- moves a file that cannot be read at all aside (``NAME.corrupt-<time>``, the newest
  ``KEEP_CORRUPT`` kept) so the next writer rebuilds it, unless the caller is a dry run.

Writers keep ``atomic_write`` (rename replaces a planted symlink or FIFO, never follows it) or
append through ``append_line``, which refuses a symlink or a FIFO at the final component.

A state dir that cannot be written (full disk, quota, read-only, no permission) must never stop
protective work (the watch, an emergency cleanup, a job hook): what has to be *created* before
that work (a lock, a guard, a job lock) goes to the run dir instead, ``$RUNNERKEEP_RUN_DIR``
(default ``/run/runnerkeep``, a tmpfs that is writable when the state disk is not), under a name
keyed by a hash of the state dir (``fallback_path``); ``open_lock_fallback`` picks the lock file.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import math
import os
import stat
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, Callable

from .errors import LockHeldError
from .procutil import process_start_time, same_process

DEFAULT_MAX_BYTES = 16 * 1024 * 1024
KEEP_CORRUPT = 3
LOCK_WAIT_SECONDS = 10.0

_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_APPEND_FLAGS = (
    os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
)
_LOCK_FLAGS = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
# A symlink (ELOOP), a FIFO without reader (ENXIO) or a directory (EISDIR) where a state file
# should be: damage to move aside, unlike EACCES or EROFS, which are the host's business.
_DAMAGED_ERRNOS = (errno.ELOOP, errno.ENXIO, errno.EISDIR)

RUN_DIR_ENV = "RUNNERKEEP_RUN_DIR"
DEFAULT_RUN_DIR = "/run/runnerkeep"

Validator = Callable[[Any], Any]

_skipped_totals: dict[str, int] = {}
_warned: set[str] = set()


class Unreadable(Exception):
    """The path exists but is not a regular file runnerkeep may read."""


@dataclass
class ReadReport:
    """What one read of one state file could not use."""

    path: str
    records: int = 0
    skipped: int = 0
    skipped_bytes: int = 0
    unreadable: str | None = None
    moved_to: str | None = None

    @property
    def file(self) -> str:
        return os.path.basename(self.path)

    @property
    def damaged(self) -> bool:
        return bool(self.skipped or self.skipped_bytes or self.unreadable)

    def describe(self) -> str:
        parts = []
        if self.unreadable:
            parts.append(f"cannot be read ({self.unreadable})")
        if self.skipped:
            parts.append(f"{self.skipped} unusable record(s) skipped")
        if self.skipped_bytes:
            parts.append(f"{self.skipped_bytes} byte(s) past the {DEFAULT_MAX_BYTES}-byte bound")
        if self.moved_to:
            parts.append(f"moved aside to {self.moved_to} and rebuilt on next write")
        return f"state file {self.path}: " + "; ".join(parts)


# --- strict JSON --------------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"{text} overflows a float")
    return value


def loads_strict(text: str | bytes) -> Any:
    """json.loads without NaN/Infinity/1e999; every failure is a ValueError."""
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float)
    except RecursionError:
        raise ValueError("nested too deeply") from None


def finite_number(value: Any) -> bool:
    """A JSON number usable as a time or size (bool is not a number here)."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and abs(value) < 1e18
    )


def timestamp(value: Any) -> bool:
    """A time ``time.localtime`` can format (1970 to year ~5000)."""
    return finite_number(value) and 0 <= value < 1e11


def plain_int(value: Any, minimum: int = 0) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and minimum <= value < 1 << 62


# --- reading ------------------------------------------------------------------------------


def read_bounded(path: str, max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[bytes, int]:
    """(the first ``max_bytes`` of a regular file, bytes left unread).

    Raises FileNotFoundError when absent, Unreadable when not a regular file (symlink, FIFO,
    device, directory), OSError for the rest.
    """
    data, rest, _info = read_regular(path, max_bytes)
    return data, rest


def read_regular(
    path: str, max_bytes: int = DEFAULT_MAX_BYTES
) -> tuple[bytes, int, os.stat_result]:
    """``read_bounded`` plus the ``fstat`` of what was read (owner and mode checks)."""
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError as exc:
        if exc.errno in _DAMAGED_ERRNOS:
            raise Unreadable(_kind_of(path)) from None
        raise
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise Unreadable(_kind_of(path))
        data = read_fd(fd, max_bytes)
        return data, max(0, os.fstat(fd).st_size - len(data)), info
    finally:
        os.close(fd)


def read_fd(fd: int, max_bytes: int) -> bytes:
    """At most ``max_bytes`` from ``fd`` (an endless file costs no more than that)."""
    chunks = []
    left = max_bytes
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)


def _kind_of(path: str) -> str:
    try:
        mode = os.lstat(path).st_mode
    except OSError:
        return "not a regular file"
    for test, name in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a device"),
        (stat.S_ISBLK, "a device"),
    ):
        if test(mode):
            return name
    return "not a regular file"


def validated(record: Any, validate: Validator | None) -> Any:
    """``validate(record)``, None when the validator refuses it or fails on it."""
    if validate is None:
        return record
    # A validator is ordinary code looking at hostile data: any exception means "unusable".
    try:
        return validate(record)
    except Exception:
        return None


def read_json_lines(
    path: str,
    validate: Validator | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
    repair: bool = True,
) -> tuple[list[Any], ReadReport]:
    """Records of a JSON-lines file, oldest first, that parse and pass ``validate``.

    ``validate(record)`` returns the record to keep (possibly cleaned) or None to skip it.
    """
    report = ReadReport(path)
    data = _read_or_report(path, max_bytes, report, repair)
    if data is None:
        return [], _finish(report)
    records, report.skipped = parse_json_lines(data, validate)
    report.records = len(records)
    return records, _finish(report)


def parse_json_lines(data: bytes, validate: Validator | None = None) -> tuple[list[Any], int]:
    """(records that parse and pass ``validate``, lines skipped) of JSON-lines bytes: the one
    parser of every JSON-lines file the core reads (state files here, the spool's)."""
    records: list[Any] = []
    skipped = 0
    for line in data.split(b"\n"):
        if not line.strip():
            continue
        try:
            record = validated(loads_strict(line), validate)
        except ValueError:
            record = None
        if record is None:
            skipped += 1
        else:
            records.append(record)
    return records, skipped


def read_json_object(
    path: str,
    validate: Validator | None = None,
    *,
    max_bytes: int = 1024 * 1024,
    repair: bool = True,
) -> tuple[dict[str, Any] | None, ReadReport]:
    """The JSON object in ``path``, or None when absent or unusable (then moved aside)."""
    report = ReadReport(path)
    data = _read_or_report(path, max_bytes, report, repair)
    if data is None:
        return None, _finish(report)
    record = None
    if not report.skipped_bytes:
        try:
            record = loads_strict(data)
        except ValueError:
            record = None
    if isinstance(record, dict):
        record = validated(record, validate)
    if not isinstance(record, dict):
        report.unreadable = "too large" if report.skipped_bytes else "not a valid JSON object"
        report.skipped_bytes = 0
        if repair:
            report.moved_to = quarantine(path)
        return None, _finish(report)
    report.records = 1
    return record, _finish(report)


def _read_or_report(path: str, max_bytes: int, report: ReadReport, repair: bool) -> bytes | None:
    try:
        data, rest = read_bounded(path, max_bytes)
    except FileNotFoundError:
        return None
    except Unreadable as exc:
        report.unreadable = str(exc)
        if repair:
            report.moved_to = quarantine(path)
        return None
    except OSError as exc:
        if exc.errno == errno.ENOTDIR:
            return None  # a parent is not a directory: nothing recorded there
        report.unreadable = exc.strerror or str(exc)
        return None
    report.skipped_bytes = rest
    return data


def _finish(report: ReadReport) -> ReadReport:
    if report.damaged:
        count = report.skipped + (1 if report.unreadable or report.skipped_bytes else 0)
        _skipped_totals[report.file] = _skipped_totals.get(report.file, 0) + count
        warn_once(report)
    return report


def warn_once(report: ReadReport) -> None:
    """One line per damaged file and process: a log, not a flood, however many records."""
    if report.path in _warned:
        return
    _warned.add(report.path)
    with contextlib.suppress(OSError, ValueError):
        print(f"runnerkeep: warning: {report.describe()}", file=sys.stderr, flush=True)


def warn(message: str) -> None:
    """One warning line on stderr (the journal for the units); never fails the caller."""
    with contextlib.suppress(OSError, ValueError):
        print(f"runnerkeep: warning: {message}", file=sys.stderr, flush=True)


def skipped_totals() -> dict[str, int]:
    """{file name: records (or whole files) skipped} in this process, for a metric."""
    return dict(_skipped_totals)


# --- moving a damaged file aside ----------------------------------------------------------


def quarantine(path: str, keep: int = KEEP_CORRUPT) -> str | None:
    """Rename ``path`` to ``path.corrupt-<time>`` (never following it); keep the newest few."""
    # One clock read, in UTC: names sort in time order across a second's turn and a DST change.
    now_ns = time.time_ns()
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now_ns // 10**9)) + f".{now_ns % 10**9:09d}"
    target = f"{path}.corrupt-{stamp}"
    try:
        os.rename(path, target)
    except OSError:
        return None
    _prune_corrupt(path, keep)
    return target


def _prune_corrupt(path: str, keep: int) -> None:
    directory, base = os.path.split(path)
    prefix = base + ".corrupt-"
    try:
        names = sorted(n for n in os.listdir(directory or ".") if n.startswith(prefix))
    except OSError:
        return
    for name in names[:-keep] if keep > 0 else names:
        victim = os.path.join(directory, name)
        with contextlib.suppress(OSError):
            if not stat.S_ISDIR(os.lstat(victim).st_mode):
                os.unlink(victim)


# --- writing and locking ------------------------------------------------------------------


def _open_regular(path: str, flags: int, mode: int = 0o644) -> int:
    """Open ``path`` as a regular file; a symlink or FIFO there is moved aside once."""
    for attempt in range(2):
        try:
            fd = os.open(path, flags, mode)
        except OSError as exc:
            if exc.errno not in _DAMAGED_ERRNOS or attempt or not quarantine(path):
                raise
            continue
        info = os.fstat(fd)
        if stat.S_ISREG(info.st_mode):
            if flags == _LOCK_FLAGS:
                _make_private(fd, info)
            return fd
        os.close(fd)
        if attempt or not quarantine(path):
            break
    raise OSError(errno.EINVAL, f"{path} is not a regular file")


def _make_private(fd: int, info: os.stat_result) -> None:
    """A lock file only its owner may open: anyone who can open a file can flock it, and a
    lock held by a job must not stop root's work (an older 0644 lock file is fixed by fd)."""
    if info.st_uid == os.geteuid() and stat.S_IMODE(info.st_mode) & 0o077:
        with contextlib.suppress(OSError):
            os.fchmod(fd, 0o600)


def append_line(path: str, line: bytes) -> None:
    """O_APPEND one line (atomic under PIPE_BUF); never follows a symlink or blocks on a FIFO."""
    fd = _open_regular(path, _APPEND_FLAGS)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def open_lock_file(path: str, create: bool = True) -> int | None:
    """An fd to flock: created when ``create``; None when absent (or unusable) and not ``create``.

    Without ``create`` nothing is written, moved or made (dry runs): O_RDONLY is enough for
    flock, and a lock file that is not a regular file is simply not used.
    """
    if create:
        return _open_regular(path, _LOCK_FLAGS, 0o600)
    try:
        fd = os.open(path, _READ_FLAGS)
    except OSError:
        return None
    if stat.S_ISREG(os.fstat(fd).st_mode):
        return fd
    os.close(fd)
    return None


def flock_bounded(
    fd: int, what: str, timeout: float = LOCK_WAIT_SECONDS, mode: int = fcntl.LOCK_EX
) -> None:
    """flock ``mode`` (LOCK_EX or LOCK_SH), polling with LOCK_NB until ``timeout``: a lock held
    forever (a job can flock any file it can open) must not hang a hook or a timer. Raises
    LockHeldError past the deadline."""
    deadline = time.monotonic() + max(0.0, timeout)
    pause = 0.01
    while True:
        try:
            fcntl.flock(fd, mode | fcntl.LOCK_NB)
            return
        except OSError as exc:
            if exc.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
        left = deadline - time.monotonic()
        if left <= 0:
            raise LockHeldError(
                f"{what} is locked by another process for more than {timeout:.0f}s; "
                "if no runnerkeep command is running, find the holder with 'fuser -v' "
                f"and stop it (or remove {what})"
            )
        time.sleep(min(pause, left))
        pause = min(pause * 2, 0.2)


def take_owned_lock(fd: int, what: str, timeout: float = 0.0) -> bool:
    """flock ``fd`` (bounded) and write our pid and start time into it; True when held.

    When the lock stays held, the holder is judged by the pid the last taker wrote: that
    process still running (same start time), or no taker known, is another run
    (LockHeldError); a file whose last taker is gone but that someone still holds (a job that
    opened it while it was readable) is no reason to stop protective work: a warning, and
    False (the caller goes on unlocked).
    """
    try:
        flock_bounded(fd, what, timeout)
    except LockHeldError:
        pid, start = _lock_holder(fd)
        if not pid or same_process(pid, start):
            raise
        warn(f"{what} is held by a process that is not a runnerkeep run; going on without it")
        return False
    with contextlib.suppress(OSError):
        me = os.getpid()
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{me} {process_start_time(me) or ''}\n".encode(), 0)
    return True


def _lock_holder(fd: int) -> tuple[int | None, str | None]:
    try:
        fields = os.pread(fd, 64, 0).decode("ascii", errors="replace").split()
    except OSError:
        return None, None  # a directory fd (the last fallback) holds nothing
    if not fields or not fields[0].isdigit():
        return None, None
    return int(fields[0]), fields[1] if len(fields) > 1 else None


def lock_holder_pid(fd: int) -> str:
    """The pid written by the last taker of a lock file, for messages ("" when unknown)."""
    pid, _start = _lock_holder(fd)
    return str(pid) if pid else ""


# --- the run dir: where state goes when the state dir cannot be written ---------------------


def run_dir() -> str:
    return os.environ.get(RUN_DIR_ENV) or DEFAULT_RUN_DIR


def fallback_path(state_dir: str, stem: str, suffix: str = "") -> str:
    """``<run dir>/<stem>-<hash of the state dir><suffix>``: one name per state dir, so two
    configs on one host never share a fallback."""
    digest = hashlib.sha256(os.path.abspath(state_dir).encode()).hexdigest()[:16]
    return os.path.join(run_dir(), f"{stem}-{digest}{suffix}")


def make_fallback_dir(path: str) -> None:
    """Create ``path`` in the run dir, the run dir included, both private to the owner."""
    os.makedirs(run_dir(), mode=0o700, exist_ok=True)
    os.makedirs(path, mode=0o700, exist_ok=True)


def open_lock_fallback(path: str, fallback: str, create: bool = True) -> int | None:
    """An fd to flock for ``path``, whatever state its filesystem is in.

    Tried in order, every process in the same situation picking the same file: ``path``
    created (with its directory); ``path`` as it is, read-only (a full or read-only disk still
    lets a process flock a file that exists); ``fallback`` created in the run dir; ``fallback``
    as it is; the existing directory of ``path`` itself (flock works on a directory fd). None
    only when none of that can be opened: the caller goes on unlocked rather than not at all.
    Without ``create`` (dry runs) only files that exist are opened: nothing is made.
    """
    if not create:
        fd = open_lock_file(path, create=False)
        return fd if fd is not None else open_lock_file(fallback, create=False)
    with contextlib.suppress(OSError):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        return _open_regular(path, _LOCK_FLAGS, 0o600)
    fd = open_lock_file(path, create=False)
    if fd is not None:
        return fd
    with contextlib.suppress(OSError):
        make_fallback_dir(os.path.dirname(fallback))
        return _open_regular(fallback, _LOCK_FLAGS, 0o600)
    fd = open_lock_file(fallback, create=False)
    if fd is not None:
        return fd
    with contextlib.suppress(OSError):
        return os.open(
            os.path.dirname(path) or ".",
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
        )
    return None


@contextlib.contextmanager
def locked(path: str, what: str | None = None, timeout: float = LOCK_WAIT_SECONDS) -> Iterator[int]:
    """Hold an exclusive bounded flock on ``path`` (created) for a ``with`` block."""
    fd = _open_regular(path, _LOCK_FLAGS, 0o600)
    try:
        flock_bounded(fd, what or path, timeout)
        yield fd
    finally:
        os.close(fd)
