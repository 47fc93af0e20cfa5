"""A one-line progress report on stderr, only for people: a terminal and more than a second."""

from __future__ import annotations

import sys
import time
from typing import TextIO

from ..units import format_size


class ProgressLine:
    """Callable with the bytes done so far; silent unless ``stream`` is a tty and 1 s passed."""

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
        rate = done / elapsed if elapsed > 0 else 0.0
        line = f"{self.label}: {format_size(done)}"
        if self.total:
            line += f" of {format_size(self.total)}"
        line += f", {format_size(rate)}/s"
        if self.total and rate > 0 and done < self.total:
            line += f", ETA {int((self.total - done) / rate)}s"
        self.stream.write("\r" + line.ljust(72))
        self.stream.flush()
        self.shown = True

    def close(self) -> None:
        if self.shown:
            self.stream.write("\n")
            self.stream.flush()
