"""The watermark state machine and the watch cycle (alerts on change only, emergency stage)."""

from __future__ import annotations

import json
import os
import time

import pytest
from runnerkeep.disk.metrics import metric_value, parse_metrics
from runnerkeep.disk.watch import level_of, next_state, run_watch

GiB = 1024**3

MARKS = {
    "warning": {"bytes": 30, "inodes": 300},
    "critical": {"bytes": 20, "inodes": 200},
    "emergency": {"bytes": 10, "inodes": 100},
}


@pytest.mark.parametrize(
    ("free", "inodes", "level"),
    [
        (50, 500, 0),
        (29, 500, 1),
        (19, 500, 2),
        (9, 500, 3),
        (50, 250, 1),
        (50, 50, 3),
        (15, 250, 2),
    ],
)
def test_level_is_the_worst_of_bytes_and_inodes(free, inodes, level):
    assert level_of(free, inodes, MARKS) == level


def test_up_at_once_down_with_hysteresis():
    assert next_state("ok", 9, 500, MARKS, 5, 0) == "emergency"
    # Back above the emergency mark but inside the hysteresis band: stays.
    assert next_state("emergency", 12, 500, MARKS, 5, 0) == "emergency"
    assert next_state("emergency", 16, 500, MARKS, 5, 0) == "critical"
    assert next_state("emergency", 40, 500, MARKS, 5, 0) == "ok"
    assert next_state("warning", 33, 500, MARKS, 5, 0) == "warning"
    assert next_state("warning", 35, 500, MARKS, 5, 0) == "ok"
    assert next_state("critical", 25, 500, MARKS, 5, 0) == "warning"
    # Inodes alone hold the state.
    assert next_state("warning", 100, 305, MARKS, 0, 10) == "warning"
    assert next_state("warning", 100, 310, MARKS, 0, 10) == "ok"
    # Inodes unknown (no inode limit): bytes decide.
    assert next_state("ok", 100, None, MARKS) == "ok"


def read_metrics(config):
    path = os.path.join(config["disk"]["textfile_dir"], "runnerkeep_disk.prom")
    with open(path, encoding="utf-8") as handle:
        return parse_metrics(handle.read())


def state_metric(samples):
    return [s for s in ("ok", "warning", "critical", "emergency")
            if metric_value(samples, "runnerkeep_disk_state", state=s) == 1]  # fmt: skip


def test_watch_walks_up_and_down_alerting_only_on_change(make_config, fake_disk, syslog_calls):
    config = make_config()
    # 100 GiB, floor P = 10 GiB: emergency < 5, critical < 15, warning < 25 GiB free, H = 1 GiB.
    steps = [
        (60, "ok", False),
        (24, "warning", True),
        (23, "warning", False),
        (14, "critical", True),
        (14, "critical", False),
        (4, "emergency", True),
        (5.5, "emergency", False),  # inside hysteresis
        (7, "critical", True),
        (80, "ok", True),
        (80, "ok", False),
    ]
    for free_gib, expected, changed in steps:
        fake_disk.free_bytes = int(free_gib * GiB)
        before = len(syslog_calls)
        result = run_watch(config)
        assert result["state"] == expected, (free_gib, result)
        assert result["changed"] is changed
        assert (len(syslog_calls) - before) == (1 if changed else 0), syslog_calls[before:]
        samples = read_metrics(config)
        assert state_metric(samples) == [expected]
        assert metric_value(samples, "runnerkeep_disk_budget_free_bytes") == int(free_gib * GiB)
    severities = [s for s, _ in syslog_calls]
    assert severities == ["warning", "critical", "emergency", "critical", "ok"]
    assert "disk ok -> warning on /fake" in syslog_calls[0][1]
    with open(os.path.join(config["paths"]["state_dir"], "disk-watch.json")) as handle:
        state = json.load(handle)
    assert state["state"] == "ok"


def test_state_survives_between_runs(make_config, fake_disk, syslog_calls):
    config = make_config()
    fake_disk.free_bytes = 14 * GiB
    assert run_watch(config)["changed"]
    assert not run_watch(config)["changed"]
    assert len(syslog_calls) == 1


def test_emergency_runs_the_cleanup_stage_and_alerts_what_it_freed(
    make_config, fake_disk, syslog_calls
):
    config = make_config(emergency_cleanup=True)
    fake_disk.free_bytes = 2 * GiB
    calls = []

    def cleanup(stage, cfg, **kw):
        calls.append((stage, kw))
        fake_disk.free_bytes = 50 * GiB  # what the fake cleaners freed

        class Report:
            def as_dict(self):
                return {"cleaners": [{"name": "tmp", "bytes_freed": 48 * GiB}]}

        return Report()

    result = run_watch(config, cleanup_func=cleanup)
    assert result["state"] == "emergency"
    assert calls and calls[0][0] == "emergency"
    assert calls[0][1]["target_free_bytes"] == 26 * GiB  # the post-stage target
    assert calls[0][1]["paths"] == ["/fake"]
    assert result["emergency_cleanup"]["ok"]
    events = [a["event"] for a in result["alerts"]]
    assert events == ["disk_state_change", "emergency_cleanup"]
    # The fake measurement does not follow the real fs; freed bytes come from statvfs of /fake's
    # parent, so only check the alert text names the stage.
    assert "emergency cleanup freed" in result["alerts"][1]["message"]
    samples = read_metrics(config)
    assert metric_value(samples, "runnerkeep_disk_emergency_cleanups_total") == 1
    assert metric_value(samples, "runnerkeep_disk_emergency_cleanup_ok") == 1
    # Next cycle sees the space: back to ok, one more alert, no second cleanup.
    result = run_watch(config, cleanup_func=cleanup)
    assert result["state"] == "ok" and result["changed"]
    assert len(calls) == 1


def test_emergency_cleanup_repeats_only_after_cooldown(make_config, fake_disk, syslog_calls):
    config = make_config(emergency_cleanup=True, emergency_cleanup_cooldown="1h")
    fake_disk.free_bytes = 2 * GiB
    calls = []
    run_watch(config, cleanup_func=lambda *a, **k: calls.append(1) or {})
    run_watch(config, cleanup_func=lambda *a, **k: calls.append(1) or {})
    assert len(calls) == 1


def test_failing_cleanup_is_reported_and_the_watch_goes_on(make_config, fake_disk, syslog_calls):
    config = make_config(emergency_cleanup=True)
    fake_disk.free_bytes = 2 * GiB

    def broken(*args, **kwargs):
        raise RuntimeError("boom")

    result = run_watch(config, cleanup_func=broken)
    assert result["state"] == "emergency"
    assert not result["emergency_cleanup"]["ok"]
    assert any("crashed" in e for e in result["errors"])
    samples = read_metrics(config)
    assert metric_value(samples, "runnerkeep_disk_emergency_cleanup_ok") == 0
    assert metric_value(samples, "runnerkeep_disk_watch_errors") >= 1


def test_a_watch_given_no_cleanup_core_degrades_with_a_message(
    make_config, fake_disk, syslog_calls
):
    # disk/ does not import cleanup/: the front door hands the watch run_cleanup.
    config = make_config(emergency_cleanup=True)
    fake_disk.free_bytes = 2 * GiB
    result = run_watch(config)
    assert result["state"] == "emergency"
    assert not result["emergency_cleanup"]["ok"]
    assert "cleanup core" in result["emergency_cleanup"]["error"]


def test_missing_docker_is_reported_and_metrics_still_written(
    make_config, fake_disk, syslog_calls, monkeypatch
):
    monkeypatch.setenv("PATH", "/nonexistent")
    config = make_config(watch_docker=True)
    result = run_watch(config)
    assert result["docker"]["up"] is False
    assert any(e.startswith("docker:") for e in result["errors"])
    samples = read_metrics(config)
    assert metric_value(samples, "runnerkeep_docker_up") == 0
    assert metric_value(samples, "runnerkeep_disk_state", state="ok") == 1
    # The error is logged once, not every cycle.
    logged = [m for s, m in syslog_calls if "docker" in m]
    run_watch(config)
    assert [m for s, m in syslog_calls if "docker" in m] == logged


def test_unreadable_filesystem_is_reported(make_config, fake_disk, syslog_calls, monkeypatch):
    from runnerkeep.disk import usage_report as report

    real = report.filesystem_usage

    def flaky(path):
        if path.endswith("/work"):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(report, "filesystem_usage", flaky)
    config = make_config(work_dirs=["/srv/work"])
    result = run_watch(config)
    assert any("/srv/work" in e for e in result["errors"])
    samples = read_metrics(config)
    assert (
        metric_value(samples, "runnerkeep_disk_path_readable", path="/srv/work", role="work_dir")
        == 0
    )
    assert metric_value(samples, "runnerkeep_disk_path_readable", path="/tmp", role="tmp") == 1


def test_budget_error_keeps_state_and_writes_metrics(make_config, fake_disk, syslog_calls):
    fake_disk.capacity = 10 * GiB  # too small for the 10 GiB floor
    config = make_config()
    result = run_watch(config)
    assert result["state"] == "ok" and not result["changed"]
    assert any("budget cannot be met" in e for e in result["errors"])
    samples = read_metrics(config)
    assert metric_value(samples, "runnerkeep_disk_budget_up") == 0


def test_a_second_watch_skips_while_one_runs(make_config, fake_disk):
    import fcntl

    config = make_config()
    sdir = config["paths"]["state_dir"]
    os.makedirs(sdir, exist_ok=True)
    with open(os.path.join(sdir, "disk-watch.lock"), "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        result = run_watch(config)
    assert result["skipped"]


def test_event_counters_become_metrics(make_config, fake_disk, syslog_calls):
    from runnerkeep import events

    config = make_config()
    sdir = config["paths"]["state_dir"]
    for result in ("hit", "hit", "miss", "corrupt", "saved"):
        events.record_event(sdir, "cache", result=result)
    events.record_event(sdir, "cleanup", cleaner="tmp", bytes_freed=1000)
    events.record_event(sdir, "cleanup", cleaner="tmp", bytes_freed=500)
    events.record_event(sdir, "cleanup", cleaner="docker", bytes_freed=7)
    events.record_event(sdir, "job", job_id="j", peak_bytes=4242, peak_inodes=3)
    run_watch(config)
    samples = read_metrics(config)
    assert metric_value(samples, "runnerkeep_cache_hits_total") == 2
    assert metric_value(samples, "runnerkeep_cache_misses_total") == 1
    assert metric_value(samples, "runnerkeep_cache_corruptions_total") == 1
    assert metric_value(samples, "runnerkeep_cache_saves_total") == 1
    assert metric_value(samples, "runnerkeep_cleanup_bytes_freed_total", cleaner="tmp") == 1500
    assert metric_value(samples, "runnerkeep_cleanup_bytes_freed_total", cleaner="docker") == 7
    assert metric_value(samples, "runnerkeep_disk_last_job_peak_bytes") == 4242
    # Counted once: a second cycle with no new events keeps the totals.
    time.sleep(0.01)
    events.record_event(sdir, "cache", result="hit")
    run_watch(config)
    samples = read_metrics(config)
    assert metric_value(samples, "runnerkeep_cache_hits_total") == 3
    assert metric_value(samples, "runnerkeep_cleanup_bytes_freed_total", cleaner="tmp") == 1500
