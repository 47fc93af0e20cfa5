"""The progress line: share done and time left once the total is known."""

from __future__ import annotations

import io

from runnerkeep.cache.progress import ProgressLine, announce_total, format_duration, progress_text

GiB = 1 << 30


def test_with_a_total_the_line_shows_share_rate_and_time_left():
    line = progress_text("saving k", GiB // 2, GiB, elapsed=2.0)
    assert line == "saving k: 512.0 MiB of 1.0 GiB (50%), 256.0 MiB/s, ETA 2s"


def test_without_a_total_the_line_shows_bytes_and_rate_only():
    assert (
        progress_text("importing k", GiB, None, elapsed=4.0) == "importing k: 1.0 GiB, 256.0 MiB/s"
    )


def test_done_means_no_time_left_and_never_past_100_percent():
    line = progress_text("x", GiB + 10, GiB, elapsed=1.0)
    assert "(100%)" in line and "ETA" not in line


def test_durations_read_like_a_clock():
    assert [format_duration(s) for s in (0.2, 45, 185, 3720)] == ["0s", "45s", "3m05s", "1h02m"]


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_total_announced_later_reaches_the_line():
    out = Tty()
    progress = ProgressLine("restoring k", stream=out, delay=0.0)
    announce_total(progress, 4 * GiB)
    progress(GiB)
    assert "of 4.0 GiB (25%)" in out.getvalue() and "ETA" in out.getvalue()


def test_a_plain_callable_is_left_alone():
    seen = []
    announce_total(seen.append, 100)  # no .total: nothing to set, nothing raised
    announce_total(None, 100)
    assert seen == []
