"""The disk watch on a real, small tmpfs on this machine (needs root for mount, and Docker).

A 64 MiB tmpfs is the budget filesystem; files written into it step by step move the watch
through warning -> critical -> emergency. Each watch cycle runs the real CLI in a subprocess.
The emergency cycle runs the cleanup core's emergency stage (only its ``tmp`` cleaner, rooted
in the tmpfs) and the next cycle returns to ok. A webhook receiver on 127.0.0.1 counts alerts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from harness.webhook_sink import dead_url as _dead_url
from harness.webhook_sink import webhook_sink

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
MiB = 1024**2
SIZE = 64 * MiB


def _can_mount() -> bool:
    return os.geteuid() == 0 and shutil.which("mount") is not None


@pytest.fixture
def small_disk(tmp_path):
    """A 64 MiB tmpfs mounted for the test and unmounted afterwards, whatever happens."""
    if not _can_mount():
        pytest.skip("needs root and mount(8) for a tmpfs")
    mount_dir = tmp_path / "disk"
    mount_dir.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={SIZE // MiB}m", "tmpfs", str(mount_dir)],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {proc.stderr.strip()}")
    try:
        (mount_dir / "junk").mkdir()
        (mount_dir / "cache").mkdir()
        yield mount_dir
    finally:
        if subprocess.run(["umount", str(mount_dir)], check=False).returncode != 0:
            subprocess.run(["umount", "-l", str(mount_dir)], check=False)


@pytest.fixture
def receiver():
    with webhook_sink() as server:
        yield server


def _config(tmp_path: Path, disk_dir: Path, webhook_url: str) -> Path:
    from runnerkeep.cleanup.catalog import builtin_cleaners

    # Only the tmp cleaner runs, and only inside the tmpfs; every other cleaner is off, so the
    # test never touches this machine's /tmp, logs or Docker images.
    cleaners = {name: {"enabled": False} for name in builtin_cleaners()}
    cleaners["tmp"] = {
        "enabled": True,
        "roots": [str(disk_dir / "junk")],
        "patterns": ["*"],
        "exclude": [],
        "min_age": "0s",
        "emergency_min_age": "0s",
    }
    config = {
        "paths": {
            "cache_dir": str(disk_dir / "cache"),
            "state_dir": str(tmp_path / "state"),
            "log_dir": str(tmp_path / "log"),
        },
        "disk": {
            "path": str(disk_dir),
            "textfile_dir": str(tmp_path / "textfile"),
            # 64 MiB: R = 10% = 6.4 MiB, P = floor 8 MiB, H = 1% = 0.64 MiB.
            # emergency < 6.4 MiB, critical < 14.4 MiB, warning < 22.4 MiB free.
            "reserve": "10%",
            "job_peak_floor": "8MiB",
            "job_peak_floor_inodes": 1000,
            "cache_quota_min": 0,
            "report_roots": [str(disk_dir)],
            "webhook_url": webhook_url,
            "webhook_timeout": "1s",
            "webhook_retries": 1,
            "watch_timeout": "10s",
            "emergency_cleanup": True,
            "sample_interval": "0.1s",
        },
        "cleanup": {"cleaners": cleaners},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config, indent=1))
    return path


def _cli(config: Path, *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=f"{REPO / 'module_utils'}:{REPO / 'cli'}")
    return subprocess.run(
        [sys.executable, "-m", "runnerkeep_cli", *args, "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )


def _watch(config: Path) -> dict:
    proc = _cli(config, "disk", "watch", "--json")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def _metrics(tmp_path: Path) -> dict:
    from runnerkeep.disk.metrics import parse_metrics

    return parse_metrics((tmp_path / "textfile" / "runnerkeep_disk.prom").read_text())


def _state_in_metrics(samples: dict) -> list[str]:
    from runnerkeep.disk.metrics import metric_value

    return [
        s
        for s in ("ok", "warning", "critical", "emergency")
        if metric_value(samples, "runnerkeep_disk_state", state=s) == 1
    ]


def _fill_to(disk_dir: Path, free_target: int, counter: list[int]) -> None:
    """Write one more file so that about ``free_target`` bytes stay free."""
    free = os.statvfs(disk_dir).f_bavail * os.statvfs(disk_dir).f_frsize
    need = free - free_target
    assert need > 0, (free, free_target)
    counter[0] += 1
    with open(disk_dir / "junk" / f"fill-{counter[0]}.bin", "wb") as handle:
        chunk = b"\xa5" * MiB
        while need > 0:
            handle.write(chunk[: min(need, MiB)])
            need -= MiB


def _walk_to_emergency_and_back(tmp_path: Path, disk_dir: Path, config: Path) -> list[dict]:
    from runnerkeep.disk.metrics import metric_value

    results = []
    counter = [0]
    first = _watch(config)
    assert first["state"] == "ok", first
    assert first["path"] == str(disk_dir)
    for free_mib, expected in ((18, "warning"), (10, "critical"), (3, "emergency")):
        _fill_to(disk_dir, free_mib * MiB, counter)
        result = _watch(config)
        results.append(result)
        assert result["state"] == expected, result
        assert result["changed"], result
        samples = _metrics(tmp_path)
        assert _state_in_metrics(samples) == [expected]
        free = metric_value(
            samples, "runnerkeep_disk_filesystem_free_bytes", mountpoint=str(disk_dir)
        )
        assert free is not None and free < (free_mib + 1) * MiB
    emergency = results[-1]
    assert emergency["emergency_cleanup"]["ok"], emergency["emergency_cleanup"]
    assert emergency["emergency_cleanup"]["freed_bytes"] >= 40 * MiB
    # The stage stops at the post-stage target (cheapest first), not when everything is gone.
    cleanup = emergency["emergency_cleanup"]
    assert cleanup["free_bytes_after"] >= cleanup["target_free_bytes"]
    assert len(list((disk_dir / "junk").iterdir())) < counter[0]
    samples = _metrics(tmp_path)
    assert metric_value(samples, "runnerkeep_disk_emergency_cleanups_total") == 1
    assert metric_value(samples, "runnerkeep_disk_emergency_cleanup_freed_bytes") >= 40 * MiB
    assert metric_value(samples, "runnerkeep_cleanup_bytes_freed_total", cleaner="tmp") is not None
    back = _watch(config)
    results.append(back)
    assert back["state"] == "ok" and back["changed"], back
    assert _state_in_metrics(_metrics(tmp_path)) == ["ok"]
    again = _watch(config)
    assert again["state"] == "ok" and not again["changed"] and not again["alerts"]
    return results


def test_filling_a_small_disk_walks_the_watermarks_with_one_alert_each(
    tmp_path, small_disk, receiver
):
    config = _config(tmp_path, small_disk, receiver.url)
    _walk_to_emergency_and_back(tmp_path, small_disk, config)
    changes = [b for b in receiver.received if b["event"] == "disk_state_change"]
    assert [(b["previous"], b["state"]) for b in changes] == [
        ("ok", "warning"),
        ("warning", "critical"),
        ("critical", "emergency"),
        ("emergency", "ok"),
    ]
    cleanups = [b for b in receiver.received if b["event"] == "emergency_cleanup"]
    assert len(cleanups) == 1
    assert cleanups[0]["cleanup"]["freed_bytes"] >= 40 * MiB
    assert len(receiver.received) == 5
    from runnerkeep.disk.metrics import metric_value

    samples = _metrics(tmp_path)
    assert metric_value(samples, "runnerkeep_disk_webhook_up") == 1
    assert metric_value(samples, "runnerkeep_docker_up") == 1  # the engine on this machine


def test_dead_webhook_does_not_stop_metrics_or_cleanup(tmp_path, small_disk):
    config = _config(tmp_path, small_disk, _dead_url())
    started = time.monotonic()
    results = _walk_to_emergency_and_back(tmp_path, small_disk, config)
    assert time.monotonic() - started < 120
    for result in results:
        hook = result["alerts"][0]["webhook"]
        assert not hook["ok"]
        assert result["duration_seconds"] < 10 + 5  # the watch timeout, plus cleanup time
    from runnerkeep.disk.metrics import metric_value

    samples = _metrics(tmp_path)
    assert metric_value(samples, "runnerkeep_disk_webhook_up") == 0
    assert (
        metric_value(samples, "runnerkeep_disk_alerts_total", channel="webhook", result="failed")
        == 5
    )


def test_job_peak_is_sampled_on_the_small_disk_and_feeds_the_budget(tmp_path, small_disk):
    config = _config(tmp_path, small_disk, _dead_url())
    start = _cli(config, "disk", "job-start", "--job-id", "gh-123", "--json")
    assert start.returncode == 0, start.stderr
    pid = json.loads(start.stdout)["sampler_pid"]
    assert pid
    try:
        blob = small_disk / "junk" / "build-output.bin"
        blob.write_bytes(b"\x01" * (20 * MiB))
        time.sleep(0.6)  # a few sampler intervals
        blob.unlink()
    finally:
        end = _cli(config, "disk", "job-end", "--job-id", "gh-123", "--json")
    assert end.returncode == 0, end.stderr
    record = json.loads(end.stdout)
    assert 20 * MiB <= record["peak_bytes"] < 21 * MiB
    assert record["end_used_bytes"] - record["start_used_bytes"] < MiB
    assert not os.path.exists(f"/proc/{pid}") or "Z" in Path(f"/proc/{pid}/stat").read_text()
    hist = json.loads(_cli(config, "disk", "history", "--json").stdout)
    assert hist["count"] == 1 and hist["jobs"][0]["job_id"] == "gh-123"
    # One 20 MiB job is above the 8 MiB floor: the budget now uses it, and the quota shrinks to
    # 50% x (64 - (6.4 + 2 x 20 + 0.64)) MiB, still positive.
    budget = _cli(config, "disk", "budget", "--json")
    assert budget.returncode == 0, budget.stderr
    data = json.loads(budget.stdout)
    assert data["job_peak_bytes"] == record["peak_bytes"]
    assert 0 < data["cache_quota_bytes"] < 10 * MiB


def test_report_and_budget_text_on_the_small_disk(tmp_path, small_disk):
    config = _config(tmp_path, small_disk, _dead_url())
    (small_disk / "junk" / "a").mkdir()
    (small_disk / "junk" / "a" / "f").write_bytes(b"\x02" * (3 * MiB))
    report = _cli(config, "disk", "report", "--json", "--docker-details")
    assert report.returncode == 0, report.stderr
    data = json.loads(report.stdout)
    mounts = {fs["mount_point"]: fs for fs in data["filesystems"]}
    assert str(small_disk) in mounts
    assert mounts[str(small_disk)]["size_bytes"] == SIZE
    assert "budget" in mounts[str(small_disk)]["roles"]
    assert data["docker"]["available"] is True
    assert set(data["docker"]["kinds"]) >= {"images", "containers", "volumes", "build_cache"}
    assert "largest_images" in data["docker"]["details"]
    top = data["largest_dirs"][0]["dirs"][0]
    assert top["path"] == str(small_disk / "junk") and top["disk_bytes"] >= 3 * MiB
    text = _cli(config, "disk", "budget")
    assert text.returncode == 0, text.stderr
    assert "Reserve R = 10% of C = 6.4 MiB" in text.stdout
    assert "so the floor 8.0 MiB applies" in text.stdout
    assert "warning below R + 2P = 22.4 MiB" in text.stdout
