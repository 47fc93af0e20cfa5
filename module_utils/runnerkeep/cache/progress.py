"""A one-line progress report on stderr, only for people: a terminal and more than a second."""

from __future__ import annotations

import sys
import time
from typing import Any, TextIO

from ..units import format_size


class ProgressLine:
    """Callable with the bytes done so far; silent unless ``stream`` is a tty and 1 s passed.

    With a ``total`` (set now or later: the work often learns it after the line was made) the
    line also shows the share done and the time left at the rate so far."""

    def __init__(
        self, label: str, total: int | None = None, stream: TextIO | None = None, delay: float = 1.0
    ) -> None:
        self.label = label
        self.total = total
        self.stream = stream or sys.stderr
        self.delay = delay
        self.start = time.monotonic()
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.shown = False

    def __call__(self, done: int) -> None:
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        if elapsed < self.delay:
            return
        self.stream.write("\r" + progress_text(self.label, done, self.total, elapsed).ljust(72))
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()


def progress_text(label: str, done: int, total: int | None, elapsed: float) -> str:
    """'saving k: 1.2 GiB of 2.0 GiB (60%), 150.0 MiB/s, ETA 6s' (total and ETA when known)."""
    rate = done / elapsed if elapsed > 0 else 0.0
    line = f"{label}: {format_size(done)}"
    if total:
        line += f" of {format_size(total)} ({min(100, int(100 * done / total))}%)"
    line += f", {format_size(rate)}/s"
    if total and rate > 0 and done < total:
        line += f", ETA {format_duration((total - done) / rate)}"
    return line


def format_duration(seconds: float) -> str:
    """'45s', '3m05s', '1h02m'."""
    seconds = int(seconds + 0.5)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def announce_total(progress: Any, total: int) -> None:
    """Tell a progress callable the bytes the work will take, when it can show them (a
    ProgressLine has ``total``; a plain callable is left alone)."""
    if progress is not None and hasattr(progress, "total"):
        progress.total = total
