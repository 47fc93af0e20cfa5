"""A guard that turns a hang (a FIFO opened for reading, a lock never released) into a test
failure instead of a stuck suite. Shared by the hardening tests."""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator


@contextlib.contextmanager
def must_finish_within(seconds: int) -> Iterator[None]:
    def expired(_signum, _frame):
        raise TimeoutError(f"still blocked after {seconds} s (a hang)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
