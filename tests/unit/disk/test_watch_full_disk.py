"""The watch on a disk that is full: a budget that cannot be computed, a state dir that cannot
be written. Neither may hide the full disk or stop the emergency cleanup."""

from __future__ import annotations

import errno
import json
import os

import pytest
from runnerkeep.cleanup import run_cleanup
from runnerkeep.cleanup.catalog import BUILTIN_CLEANERS
from runnerkeep.disk import watch as watch_mod
from runnerkeep.disk.budget import BudgetInputs, compute_budget
from runnerkeep.disk.disk_config import DISK_DEFAULTS
from runnerkeep.disk.metrics import metric_value, parse_metrics
from runnerkeep.disk.watch import run_watch
from runnerkeep.errors import EXIT_CHECK_FAILED
from runnerkeep_cli.main import main

GiB = 1024**3
MiB = 1024**2
RUN_DIR_ENV = "RUNNERKEEP_RUN_DIR"


def settings(**over):
    return {**DISK_DEFAULTS, **over}


def inputs(capacity, free=None):
    return BudgetInputs(
        path="/data",
        capacity_bytes=capacity,
        capacity_inodes=10_000_000,
        cache_bytes=0,
        free_bytes=free,
        free_inodes=9_000_000,
    )


def read_metrics(config):
    path = os.path.join(config["disk"]["textfile_dir"], "runnerkeep_disk.prom")
    with open(path, encoding="utf-8") as handle:
        return parse_metrics(handle.read())


# --- (a) the arithmetic degrades ------------------------------------------------------------


def test_a_fleet_wide_quota_minimum_that_does_not_fit_a_small_disk_is_clamped():
    small = settings(
        job_peak_floor="1MiB", job_peak_floor_inodes=10, reserve="10%", cache_quota_min="1GiB"
    )
    b = compute_budget(inputs(50 * MiB), small)
    room = b.capacity_bytes - b.post_target_free_bytes
    assert 0 < b.cache_quota_bytes == room
    assert any("does not fit" in w for w in b.warnings)
    assert "Warning: " in b.explain() and "clamped" in b.explain()
    assert b.error is None


def test_a_quota_minimum_that_fits_raises_the_quota_with_a_warning():
    # 30 GiB: post target 21.8 GiB, 50% of the 8.2 GiB above it is 4.1 GiB < 8 GiB minimum.
    b = compute_budget(inputs(30 * GiB), settings(cache_quota_min="8GiB"))
    assert b.cache_quota_bytes == 8 * GiB
    assert any("raised to that minimum" in w for w in b.warnings)


# --- (b) the watch on a budget that cannot be computed --------------------------------------


@pytest.fixture
def small_disk(monkeypatch):
    """A 50 MiB filesystem measured by the watch; the 10 GiB default job peak cannot fit it."""
    disk = {"free": 0}

    def measure(config):
        return BudgetInputs(
            path="/fake",
            capacity_bytes=50 * MiB,
            capacity_inodes=10_000,
            cache_bytes=0,
            cache_logical_bytes=0,
            free_bytes=disk["free"],
            free_inodes=9_000,
        )

    monkeypatch.setattr(watch_mod, "measure_inputs", measure)
    return disk


def test_a_full_disk_whose_budget_fails_is_an_emergency_and_is_cleaned(
    make_config, small_disk, syslog_calls
):
    config = make_config(emergency_cleanup=True, job_peak_floor="10GiB")
    calls = []

    def cleanup(stage, cfg, **kw):
        calls.append((stage, kw))
        return {}

    result = run_watch(config, cleanup_func=cleanup)
    assert result["state"] == "emergency" and result["changed"]
    assert result["budget_error"] and "cannot be met" in result["budget_error"]
    assert [stage for stage, _ in calls] == ["emergency"]
    target = calls[0][1]["target_free_bytes"]
    assert 0 < target < 50 * MiB
    assert result["emergency_cleanup"]["ok"]
    samples = read_metrics(config)
    assert metric_value(samples, "runnerkeep_disk_state", state="emergency") == 1
    assert metric_value(samples, "runnerkeep_disk_budget_error") == 1
    assert metric_value(samples, "runnerkeep_disk_budget_up") == 0
    assert metric_value(samples, "runnerkeep_disk_state_watermarks", source="fallback") == 1
    assert metric_value(samples, "runnerkeep_disk_watch_errors") >= 1


def test_fallback_watermarks_leave_a_disk_with_room_ok(make_config, small_disk, syslog_calls):
    small_disk["free"] = 40 * MiB
    config = make_config(emergency_cleanup=True)
    result = run_watch(config, cleanup_func=lambda *a, **k: pytest.fail("cleaned"))
    assert result["state"] == "ok" and result["budget_error"]
    # Built-in: 1% or 100 MiB, at most 10% of the disk: 5 MiB on 50 MiB.
    assert result["watermarks"]["emergency"]["bytes"] == 5 * MiB


def test_overrides_that_do_not_fit_fall_back_to_built_in_marks(
    make_config, fake_disk, syslog_calls
):
    # 100 GiB: warning below 100% can never be left; the built-ins are 1/2/3 GiB.
    config = make_config(
        emergency_cleanup=True, warning_free="100%", critical_free="99%", emergency_free="1%"
    )
    fake_disk.free_bytes = 50 * GiB
    result = run_watch(config)
    assert result["state"] == "ok" and result["budget_error"]
    assert result["watermarks"]["emergency"]["bytes"] == 1 * GiB
    fake_disk.free_bytes = GiB // 2
    cleaned = []
    result = run_watch(config, cleanup_func=lambda *a, **k: cleaned.append(1) or {})
    assert result["state"] == "emergency" and cleaned == [1]


def test_overrides_that_fit_are_kept_as_fallback_marks(make_config, small_disk, syslog_calls):
    config = make_config(warning_free="30%", critical_free="20%", emergency_free="10%")
    small_disk["free"] = 12 * MiB  # below 30% (15 MiB), above 20% (10 MiB)
    result = run_watch(config)
    assert result["state"] == "warning" and result["budget_error"]
    assert result["watermarks"]["warning"]["bytes"] == 15 * MiB


def _cli_config(tmp_path, **disk) -> str:
    config = {
        "paths": {
            "cache_dir": str(tmp_path / "cache"),
            "state_dir": str(tmp_path / "state"),
            "log_dir": str(tmp_path / "log"),
        },
        "disk": {
            "path": str(tmp_path),
            "textfile_dir": str(tmp_path / "tf"),
            "watch_docker": False,
            "syslog": False,
            "emergency_cleanup": False,
            **disk,
        },
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_watch_check_fails_and_says_so_when_the_budget_fails(tmp_path, capsys):
    cfg = _cli_config(tmp_path, warning_free="100%", critical_free="99%", emergency_free="1%")
    assert main(["disk", "watch", "--check", "--config", cfg]) == EXIT_CHECK_FAILED
    out = capsys.readouterr().out
    assert "BUDGET ERROR" in out and "None" not in out.splitlines()[0]
    assert main(["disk", "watch", "--json", "--config", cfg]) == 0
    data = json.loads(capsys.readouterr().out)
    assert "warning watermark" in data["budget_error"] and data["free_bytes"] > 0


def test_watch_check_passes_when_the_budget_is_computed_and_ok(tmp_path, capsys):
    cfg = _cli_config(tmp_path, job_peak_floor="1MiB", reserve="1MiB", cache_quota_min=0)
    code = main(["disk", "watch", "--check", "--json", "--config", cfg])
    data = json.loads(capsys.readouterr().out)
    assert data["budget_error"] is None
    assert code == (0 if data["state"] == "ok" else EXIT_CHECK_FAILED)


# --- a state dir that cannot be written -----------------------------------------------------


def _refuse_creation(monkeypatch, root: str) -> None:
    """``root`` behaves like a full filesystem: no new file or directory below it (ENOSPC)."""
    root = os.path.abspath(root)
    real_open, real_mkdir = os.open, os.mkdir

    def inside(path) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        full = os.path.abspath(os.fsdecode(path))
        return (full == root or full.startswith(root + os.sep)) and not os.path.lexists(full)

    def fake_open(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is None and flags & os.O_CREAT and inside(path):
            raise OSError(errno.ENOSPC, "No space left on device", os.fsdecode(path))
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def fake_mkdir(path, mode=0o777, *, dir_fd=None):
        if dir_fd is None and inside(path):
            raise OSError(errno.ENOSPC, "No space left on device", os.fsdecode(path))
        return real_mkdir(path, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)


def test_the_watch_cleans_a_full_disk_whose_state_dir_cannot_be_written(
    tmp_path, make_config, syslog_calls, monkeypatch
):
    monkeypatch.setenv(RUN_DIR_ENV, str(tmp_path / "run"))
    root = tmp_path / "root"
    (root / "old").mkdir(parents=True)
    (root / "old" / "junk").write_bytes(b"x" * 4096)
    config = make_config(emergency_cleanup=True, emergency_force=False)
    cleaners = {name: {"enabled": False} for name in BUILTIN_CLEANERS}
    cleaners["t"] = {"kind": "files", "roots": [str(root)], "patterns": ["*"], "min_age": "0s"}
    config["cleanup"] = {"cleaners": cleaners}
    # A huge disk that is nearly full: the post-stage target lies far above real free space,
    # so the cleanup really runs (on this test's root only).
    monkeypatch.setattr(
        watch_mod,
        "measure_inputs",
        lambda cfg: BudgetInputs(
            path=str(tmp_path),
            capacity_bytes=1 << 50,
            capacity_inodes=0,
            free_bytes=1 * GiB,
            free_inodes=0,
        ),
    )

    def cleanup(stage, cfg, **kw):
        return run_cleanup(stage, cfg, cleaner_names=["t"], **kw)

    _refuse_creation(monkeypatch, config["paths"]["state_dir"])
    result = run_watch(config, cleanup_func=cleanup)
    assert result["state"] == "emergency"
    assert result["emergency_cleanup"]["ok"], result["emergency_cleanup"]
    assert not (root / "old").exists()
    assert not os.path.exists(config["paths"]["state_dir"])
    assert os.path.exists(watch_mod.fallback_path(config["paths"]["state_dir"]))
