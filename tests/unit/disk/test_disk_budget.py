"""The budget arithmetic on fixed inputs."""

from __future__ import annotations

import pytest
from runnerkeep.disk.budget import BudgetInputs, compute_budget, percentile
from runnerkeep.disk.disk_config import DISK_DEFAULTS
from runnerkeep.errors import ConfigError

GiB = 1024**3
MiB = 1024**2


def settings(**over):
    return {**DISK_DEFAULTS, **over}


def inputs(capacity=100 * GiB, inodes=1_000_000, peaks=(), cache=0, **kw):
    return BudgetInputs(
        path="/data",
        capacity_bytes=capacity,
        capacity_inodes=inodes,
        peaks_bytes=list(peaks),
        peaks_inodes=[1000] * len(peaks),
        cache_bytes=cache,
        **kw,
    )


def test_percentile_nearest_rank():
    assert percentile([], 95) == 0
    assert percentile([5], 95) == 5
    assert percentile(list(range(1, 101)), 95) == 95
    assert percentile(list(range(1, 21)), 95) == 19
    assert percentile([3, 1, 2], 100) == 3


def test_short_history_uses_floor():
    b = compute_budget(inputs(peaks=[1 * GiB, 2 * GiB]), settings())
    # R = 5 GiB, P = floor 10 GiB, H = 1 GiB.
    assert b.reserve_bytes == 5 * GiB
    assert b.job_peak_bytes == 10 * GiB
    assert b.job_peak_source == "floor"
    assert b.emergency_free_bytes == 5 * GiB
    assert b.critical_free_bytes == 15 * GiB
    assert b.warning_free_bytes == 25 * GiB
    assert b.pre_target_free_bytes == 16 * GiB
    assert b.post_target_free_bytes == 26 * GiB
    # quota = 50% of (100 - 26) GiB = 37 GiB
    assert b.cache_quota_bytes == 37 * GiB
    words = b.explain()
    assert "only 2 job(s) recorded, fewer than 10, so the floor 10.0 GiB applies" in words
    assert "Cache quota = 50% of what lies above the post target" in words
    assert "= 37.0 GiB" in words


def test_short_history_peak_above_floor_wins():
    b = compute_budget(inputs(peaks=[12 * GiB]), settings())
    assert b.job_peak_bytes == 12 * GiB
    assert "exceeds the floor" in b.explain()


def test_long_history_uses_p95():
    peaks = [i * GiB for i in range(1, 21)]  # 1..20 GiB, p95 (nearest rank) = 19 GiB
    b = compute_budget(inputs(capacity=200 * GiB, peaks=peaks), settings())
    assert b.job_peak_source == "percentile"
    assert b.job_peak_bytes == 19 * GiB
    assert b.history_jobs == 20
    r, h = 10 * GiB, 2 * GiB
    assert b.critical_free_bytes == r + 19 * GiB
    assert b.warning_free_bytes == r + 38 * GiB
    assert b.cache_quota_bytes == int((200 * GiB - (r + 38 * GiB + h)) * 0.5)
    assert "p95 of the last 20 job peaks is 19.0 GiB" in b.explain()


def test_long_history_small_peaks_go_below_floor():
    b = compute_budget(inputs(peaks=[100 * MiB] * 12), settings())
    assert b.job_peak_bytes == 100 * MiB


def test_tiny_disk_is_a_clear_error_not_a_negative_quota():
    with pytest.raises(ConfigError) as err:
        compute_budget(inputs(capacity=20 * GiB), settings())
    message = str(err.value)
    assert "disk budget cannot be met on /data" in message
    assert "capacity 20.0 GiB" in message
    assert "larger disk" in message


def test_quota_below_minimum_is_raised_to_it_with_a_warning():
    # 30 GiB: post target = 1.5 + 20 + 0.3 = 21.8 GiB, quota = 4.1 GiB < 8 GiB: a fleet-wide
    # minimum that fits this host raises the quota (and says so) instead of failing the budget.
    b = compute_budget(inputs(capacity=30 * GiB), settings(cache_quota_min="8GiB"))
    assert b.cache_quota_bytes == 8 * GiB and b.warnings
    b = compute_budget(inputs(capacity=30 * GiB), settings(cache_quota_min="1GiB"))
    assert b.cache_quota_bytes > 0


def test_overrides_pin_values():
    b = compute_budget(
        inputs(),
        settings(cache_quota="10GiB", warning_free="30%", critical_free="20G", emergency_free="5%"),
    )
    assert b.cache_quota_bytes == 10 * GiB
    assert b.warning_free_bytes == 30 * GiB
    assert b.critical_free_bytes == 20 * 10**9
    assert b.emergency_free_bytes == 5 * GiB
    assert set(b.overrides) >= {"cache_quota", "warning_free", "critical_free", "emergency_free"}
    assert "Override: disk.warning_free = 30%" in b.explain()


def test_overrides_out_of_order_are_rejected():
    with pytest.raises(ConfigError, match="emergency < critical < warning"):
        compute_budget(inputs(), settings(warning_free="10G", critical_free="20G"))


def test_inode_watermarks():
    b = compute_budget(inputs(inodes=1_000_000), settings(job_peak_floor_inodes=50_000))
    assert b.emergency_free_inodes == 50_000
    assert b.critical_free_inodes == 100_000
    assert b.warning_free_inodes == 150_000
    assert b.post_target_free_inodes == 150_000 + 10_000


def test_filesystem_without_inode_limit():
    b = compute_budget(inputs(inodes=0), settings())
    assert b.warning_free_inodes == b.critical_free_inodes == b.emergency_free_inodes == 0
    assert "no inode limit" in b.explain()


def test_too_few_inodes_is_an_error():
    with pytest.raises(ConfigError, match="inodes"):
        compute_budget(inputs(inodes=100_000), settings())


def test_bad_settings_are_named():
    with pytest.raises(ConfigError, match=r"disk\.reserve"):
        compute_budget(inputs(), settings(reserve="lots"))
    with pytest.raises(ConfigError, match="peak_percentile"):
        compute_budget(inputs(), settings(peak_percentile=0))


def test_stage_targets_for_cleanup():
    b = compute_budget(inputs(), settings())
    assert b.stage_targets("pre") == (b.pre_target_free_bytes, b.pre_target_free_inodes)
    assert b.stage_targets("emergency") == (b.post_target_free_bytes, b.post_target_free_inodes)
    with pytest.raises(ConfigError):
        b.stage_targets("nightly")


def test_current_budget_measures(make_config, tmp_path):
    from runnerkeep.disk import current_budget

    config = make_config(job_peak_floor="1MiB", reserve="1%")
    (tmp_path / "cache").mkdir()
    (tmp_path / "cache" / "blob").write_bytes(b"x" * 100_000)
    b = current_budget(config)
    assert b.capacity_bytes > 0
    assert b.cache_bytes >= 100_000
    assert b.free_bytes is not None
    assert b.as_dict()["explanation"] == b.explanation
