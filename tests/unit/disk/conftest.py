"""Fixtures for the disk unit tests: a config in a temp dir, fake measurements, a webhook sink."""

from __future__ import annotations

import pytest
from harness import webhook_sink as sink
from runnerkeep.disk import watch as watch_mod
from runnerkeep.disk.budget import BudgetInputs

GiB = 1024**3
MiB = 1024**2


@pytest.fixture
def make_config(tmp_path):
    def make(**disk):
        base = {
            "textfile_dir": str(tmp_path / "textfile"),
            "watch_docker": False,
            "syslog": True,
            "emergency_cleanup": False,
            "job_peak_floor": "10GiB",
            "cache_quota_min": 0,
        }
        base.update(disk)
        return {
            "paths": {
                "cache_dir": str(tmp_path / "cache"),
                "state_dir": str(tmp_path / "state"),
                "log_dir": str(tmp_path / "log"),
            },
            "disk": base,
        }

    return make


class FakeDisk:
    """Replaces the watch's measurement: a 100 GiB filesystem whose free space a test sets."""

    def __init__(self, capacity=100 * GiB, inodes=1_000_000):
        self.capacity = capacity
        self.inodes = inodes
        self.free_bytes = 90 * GiB
        self.free_inodes = 900_000
        self.peaks: list[int] = []

    def measure(self, config):
        return BudgetInputs(
            path="/fake",
            capacity_bytes=self.capacity,
            capacity_inodes=self.inodes,
            peaks_bytes=list(self.peaks),
            peaks_inodes=[0] * len(self.peaks),
            cache_bytes=0,
            cache_logical_bytes=0,
            free_bytes=self.free_bytes,
            free_inodes=self.free_inodes,
        )


@pytest.fixture
def fake_disk(monkeypatch):
    disk = FakeDisk()
    monkeypatch.setattr(watch_mod, "measure_inputs", disk.measure)
    return disk


@pytest.fixture
def syslog_calls(monkeypatch):
    calls: list[tuple[str, str]] = []

    def fake(message, severity="info", tag="runnerkeep"):
        calls.append((severity, message))
        return "test"

    monkeypatch.setattr(watch_mod.alerts, "syslog", fake)
    return calls


@pytest.fixture
def webhook():
    """An HTTP server on 127.0.0.1 that records the JSON bodies POSTed to it."""
    with sink.webhook_sink() as server:
        yield server


@pytest.fixture
def dead_url():
    """A loopback URL on a port nobody listens on (bound, then closed)."""
    return sink.dead_url()
