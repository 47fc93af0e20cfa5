"""The textfile format: rendered text parses back; escaping; atomic replacement."""

from __future__ import annotations

import os

import pytest
from runnerkeep.disk.metrics import MetricSet, metric_value, parse_metrics, write_textfile


def test_render_and_parse_back():
    m = MetricSet()
    m.add("runnerkeep_x_bytes", 12, {"mountpoint": "/"}, help="x")
    m.add("runnerkeep_x_bytes", 3.5, {"mountpoint": "/var/lib/docker"})
    m.add("runnerkeep_hits_total", 7, kind="counter", help="hits")
    m.add("runnerkeep_odd", 1, {"path": 'a "quoted"\\path\nnext'})
    text = m.render()
    samples = parse_metrics(text)
    assert metric_value(samples, "runnerkeep_x_bytes", mountpoint="/") == 12
    assert metric_value(samples, "runnerkeep_x_bytes", mountpoint="/var/lib/docker") == 3.5
    assert metric_value(samples, "runnerkeep_hits_total") == 7
    assert metric_value(samples, "runnerkeep_odd", path='a "quoted"\\path\nnext') == 1
    lines = text.splitlines()
    # One HELP and one TYPE per family, before its samples.
    assert lines.count("# TYPE runnerkeep_x_bytes gauge") == 1
    assert lines.index("# TYPE runnerkeep_hits_total counter") < lines.index(
        "runnerkeep_hits_total 7"
    )
    assert text.endswith("\n")


def test_invalid_names_and_lines_are_rejected():
    with pytest.raises(ValueError):
        MetricSet().add("bad-name", 1)
    with pytest.raises(ValueError):
        parse_metrics("runnerkeep_x{a=unquoted} 1\n")
    with pytest.raises(ValueError):
        parse_metrics("runnerkeep_x 1\nrunnerkeep_x 2\n")


def test_write_textfile_is_atomic_and_leaves_no_temp(tmp_path):
    directory = tmp_path / "tf"
    path = write_textfile(str(directory), "runnerkeep_disk.prom", "a 1\n")
    write_textfile(str(directory), "runnerkeep_disk.prom", "a 2\n")
    with open(path) as handle:
        assert handle.read() == "a 2\n"
    assert os.listdir(directory) == ["runnerkeep_disk.prom"]
    assert oct(os.stat(path).st_mode & 0o777) == "0o644"


# --- the watch's metric table -----------------------------------------------------------------


def full_readings():
    """Readings of a cycle where every part answered, so every family has samples."""
    from runnerkeep.disk.budget import BudgetInputs, compute_budget
    from runnerkeep.disk.disk_config import DISK_DEFAULTS
    from runnerkeep.disk.metrics import WatchReadings, event_totals

    inputs = BudgetInputs(
        path="/data",
        capacity_bytes=100 * 1024**3,
        capacity_inodes=1_000_000,
        cache_bytes=5,
        cache_logical_bytes=6,
        free_bytes=50 * 1024**3,
        free_inodes=500_000,
    )
    counters = event_totals(
        {
            "cache": {"hit": 1},
            "cleanup_bytes": {"tmp": 10},
            "last_job_peak_bytes": 7,
            "last_job_peak_inodes": 2,
        }
    )
    state = {
        "state": "warning",
        "since": 1000.0,
        "alert_counts": {"syslog:sent": 3, "webhook:failed": 1},
        "webhook_ok": False,
        "webhook_pending": [{"message": "m", "event": "e"}],
        "emergency_cleanups": 1,
        "last_emergency_cleanup_freed_bytes": 9,
        "last_emergency_cleanup_ok": True,
    }
    return WatchReadings(
        state=state,
        counters=counters,
        budget=compute_budget(inputs, DISK_DEFAULTS),
        inputs=inputs,
        webhook_configured=True,
        docker={
            "checked": True,
            "up": True,
            "kinds": {"images": {"size_bytes": 4, "reclaimable_bytes": 1}},
        },
        filesystems=[
            {
                "mount_point": "/",
                "size_bytes": 8,
                "free_bytes": 4,
                "size_inodes": 80,
                "free_inodes": 40,
            }
        ],
        watched_paths=[("tmp", "/tmp", True), ("work_dir", "/srv/work", False)],
        spool={"ingested": [{}], "rejected": []},
        records_skipped={"disk-watch.json": 0, "events.jsonl": 2},
        drain={"drained": True, "reason": "free bytes on /: needs 9 GiB", "since": 1400.0},
        cache_scrub={
            "oldest_unverified_seconds": 5.0,
            "blobs_verified_total": 3,
            "bytes_verified_total": 300,
            "corruptions_total": 1,
            "last_run": 1900.0,
        },
        errors=1,
        duration_seconds=0.5,
        run_time=2000.0,
    )


def test_the_metric_table_is_well_formed():
    from runnerkeep.disk.metrics import WATCH_METRICS

    names = [metric.name for metric in WATCH_METRICS]
    assert len(names) == len(set(names))
    for metric in WATCH_METRICS:
        assert metric.kind in ("gauge", "counter"), metric.name
        assert metric.help, metric.name
        assert metric.kind != "counter" or metric.name.endswith("_total"), metric.name


def test_every_metric_of_the_table_takes_its_samples_from_the_readings():
    from runnerkeep.disk.metrics import WATCH_METRICS, watch_metric_set

    text = watch_metric_set(full_readings()).render()
    samples = parse_metrics(text)
    written = {name for name, _labels in samples}
    assert written == {metric.name for metric in WATCH_METRICS}
    for metric in WATCH_METRICS:
        assert f"# HELP {metric.name} {metric.help}" in text
        assert f"# TYPE {metric.name} {metric.kind}" in text
        for name, labels in samples:
            if name == metric.name:
                assert sorted(key for key, _value in labels) == sorted(metric.labels), name
    assert metric_value(samples, "runnerkeep_disk_state", state="warning") == 1
    assert metric_value(samples, "runnerkeep_disk_state", state="ok") == 0
    assert metric_value(samples, "runnerkeep_disk_webhook_up") == 0
    assert (
        metric_value(samples, "runnerkeep_disk_path_readable", role="work_dir", path="/srv/work")
        == 0
    )
    assert metric_value(samples, "runnerkeep_state_records_skipped", file="events.jsonl") == 2
    assert metric_value(samples, "runnerkeep_disk_cache_size_bytes", kind="logical") == 6


def test_the_watch_writes_only_metrics_of_the_table(make_config, fake_disk, syslog_calls, webhook):
    from runnerkeep.disk.metrics import WATCH_METRICS
    from runnerkeep.disk.watch import run_watch

    config = make_config(webhook_url=webhook.url, emergency_cleanup=True)
    fake_disk.free_bytes = 1024**3  # emergency: the cleanup runs and alerts
    run_watch(config, cleanup_func=lambda *a, **k: {})
    path = os.path.join(config["disk"]["textfile_dir"], "runnerkeep_disk.prom")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    table = {metric.name: metric for metric in WATCH_METRICS}
    for name, labels in parse_metrics(text):
        assert name in table, name
        assert sorted(key for key, _value in labels) == sorted(table[name].labels), name
    assert metric_value(parse_metrics(text), "runnerkeep_disk_emergency_cleanups_total") == 1
