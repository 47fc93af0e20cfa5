"""Process identity: a pid plus its start time names one process life, so a reused pid is told
apart from the process that first had it (job locks, the disk peak sampler's pid file)."""

from __future__ import annotations

import contextlib
import fcntl
import os

# Pipes to and from child processes (``docker save`` / ``docker load``): Linux's F_SETPIPE_SZ,
# which Python < 3.10 does not name.
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)
PIPE_SIZE = 1 << 20


def process_start_time(pid: int) -> str | None:
    """Field 22 of /proc/PID/stat (start time in clock ticks): identifies one process life.

    None when there is no such process, /proc cannot be read, or the process has ended (a
    zombie is not "that process" any more).
    """
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as handle:
            data = handle.read()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    rest = data[data.rfind(")") + 2 :].split()
    if not rest or rest[0] in ("Z", "X"):
        return None
    return rest[19] if len(rest) > 19 else None


def process_alive(pid: int, start_time: str | None = None) -> bool:
    """Whether ``pid`` still runs, and is the same process when ``start_time`` is given.

    Errs towards "alive" (for locks: a live job must never lose its lock): a process we may not
    signal, or whose start time cannot be read, counts as alive.
    """
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    if start_time is not None:
        current = process_start_time(pid)
        if current is not None and current != start_time:
            return False
    return True


def same_process(pid: int, start_time: str | None) -> bool:
    """Whether ``pid`` is, right now, the process that had ``start_time``.

    Errs towards "no" (for signalling: a recycled pid must never be signalled): an unknown
    start time, a process that is gone or a zombie, or an unreadable /proc all count as no.
    """
    return bool(start_time) and process_start_time(pid) == start_time


def enlarge_pipe(fd: int) -> None:
    """Ask for a 1 MiB pipe buffer on ``fd``; silently keeps the default where that is refused.

    The default 64 KiB pipe reads erratically; 1 MiB gives a steady stream.
    """
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, PIPE_SIZE)
