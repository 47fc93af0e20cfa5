"""What the disk watch gets of the cache scrub: runnerkeep.wiring.scrub_status(config), the
status of the configured store at a time, read without writing anything."""

from __future__ import annotations

import os

import pytest
from runnerkeep.cache import Store
from runnerkeep.cache.scrub import STATUS_FILE, scrub_store
from runnerkeep.wiring import scrub_status


def test_the_watch_reads_the_configured_store(tmp_path, monkeypatch):
    monkeypatch.delenv("RUNNERKEEP_CACHE_DIR", raising=False)
    store = Store(str(tmp_path / "store"), key_file=None)
    store.ensure()
    config = {"paths": {"cache_dir": store.root}}
    status = scrub_status(config)
    assert status(1_800_000_000.0) is None  # never scrubbed: the watch writes no scrub metric
    blob = store.blob_path("sha256:" + "0" * 64)
    with open(blob, "wb") as handle:
        handle.write(b"rot")  # named for other bytes: the scrub counts it
    os.utime(blob, (1_700_000_000, 1_700_000_000))
    scrub_store(store, max_duration=60, period=86400)
    before = sorted(os.listdir(store.root))
    now = os.stat(os.path.join(store.root, STATUS_FILE)).st_mtime + 3600
    found = status(now)
    assert found["corruptions_total"] == 1 and found["blobs_verified_total"] == 0
    # The bad blob keeps its stored time (no --repair): unverified since then.
    assert found["oldest_unverified_seconds"] == pytest.approx(now - 1_700_000_000, abs=0.01)
    assert sorted(os.listdir(store.root)) == before  # read only


def test_the_watch_writes_the_scrub_metrics(tmp_path, monkeypatch):
    from runnerkeep.disk.metrics import metric_value, parse_metrics
    from runnerkeep.disk.watch import run_watch

    monkeypatch.setenv("RUNNERKEEP_RUN_DIR", str(tmp_path / "run"))
    store = Store(str(tmp_path / "store"), key_file=None)
    store.ensure()
    blob = store.blob_path("sha256:" + "0" * 64)
    with open(blob, "wb") as handle:
        handle.write(b"rot")
    scrub_store(store, max_duration=60, period=86400, repair=True)
    config = {
        "paths": {"cache_dir": store.root, "state_dir": str(tmp_path / "state")},
        "disk": {"textfile_dir": str(tmp_path / "prom"), "watch_docker": False, "syslog": False},
    }
    seen = []

    def status(now):
        seen.append(now)
        return scrub_status(config)(now + 9 * 86400)  # the scrub stopped 9 days ago

    run_watch(config, scrub_status=status)
    with open(tmp_path / "prom" / "runnerkeep_disk.prom", encoding="utf-8") as handle:
        samples = parse_metrics(handle.read())
    assert len(seen) == 1
    assert metric_value(samples, "runnerkeep_cache_scrub_corruptions_total") == 1
    assert metric_value(samples, "runnerkeep_cache_scrub_blobs_verified_total") == 0
    assert metric_value(samples, "runnerkeep_cache_oldest_unverified_seconds") == 0  # empty now
    assert metric_value(samples, "runnerkeep_cache_scrub_last_run_timestamp_seconds") > 0
    run_watch(config)  # no scrub_status handed in: no scrub metrics
    with open(tmp_path / "prom" / "runnerkeep_disk.prom", encoding="utf-8") as handle:
        text = handle.read()
    assert "runnerkeep_cache_scrub" not in text and "oldest_unverified" not in text
