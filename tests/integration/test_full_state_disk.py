"""A really full (ENOSPC) or read-only state dir, and a budget that does not fit the disk
(root, a private mount namespace with a 50 MiB tmpfs, no Docker).

The tmpfs holds the state dir, the cache and a cleanup root full of old junk, as on a runner
whose one disk a job has filled. Whatever runnerkeep cannot write there, the watch must still
run the emergency cleanup, the job hooks must exit 0 and the cleanup must still see a job, and
a budget that cannot be computed must not read as "ok".
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
EXIT_LOCKED = 7
EXIT_CHECK_FAILED = 6

# Runs inside the mount namespace, with the tmpfs mounted. argv: disk, config, output, steps.
DRIVER = textwrap.dedent(
    """
    import json, os, subprocess, sys, time
    disk, config, out, steps = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4].split(",")
    env = {**os.environ, "PYTHONPATH": os.environ["REPO"] + "/module_utils:"
           + os.environ["REPO"] + "/cli"}
    root = os.path.join(disk, "root")
    results = []

    def fill():
        junk = os.path.join(root, "junk")
        os.makedirs(junk, exist_ok=True)
        old = time.time() - 3 * 86400
        for i in range(100):
            path = os.path.join(junk, f"f{i}")
            try:
                with open(path, "wb") as handle:
                    handle.write(b"x" * (4 << 20))
            except OSError:
                break
            finally:
                if os.path.exists(path):
                    os.utime(path, (old, old))
        os.utime(junk, (old, old))

    def free():
        st = os.statvfs(disk)
        return st.f_bavail * st.f_frsize

    for step in steps:
        if step == "fill":
            fill()
            results.append({"step": step, "free": free()})
            continue
        if step == "ro":
            sdir = os.path.join(disk, "state")
            subprocess.run(["mount", "--bind", sdir, sdir], check=True)
            subprocess.run(["mount", "-o", "remount,bind,ro", sdir], check=True)
            results.append({"step": step})
            continue
        args = step.split()
        if args[0] == "cleanup" and args[1] == "job-start":
            args += ["--pid", str(os.getpid())]
        proc = subprocess.run(
            [sys.executable, "-m", "runnerkeep_cli", *args, "--config", config],
            env=env, capture_output=True, text=True, timeout=120,
        )
        results.append({"step": step, "rc": proc.returncode, "out": proc.stdout,
                        "err": proc.stderr, "free": free()})
    json.dump(results, open(out, "w"))
    """
)

WRAPPER = """
set -e
mount -t tmpfs -o size=50m tmpfs "$DISK"
mkdir -p "$DISK/root"
"$PYTHON" "$DRIVER" "$DISK" "$CONFIG" "$OUT" "$STEPS"
"""


def _can_unshare() -> bool:
    return os.geteuid() == 0 and all(shutil.which(p) for p in ("unshare", "mount"))


def _builtin_cleaners() -> list[str]:
    sys.path.insert(0, str(REPO / "module_utils"))
    from runnerkeep.cleanup.catalog import BUILTIN_CLEANERS

    return list(BUILTIN_CLEANERS)


@pytest.fixture
def full_disk(tmp_path):
    """run(steps, **disk settings) -> one result per step, run in a private mount namespace."""
    if not _can_unshare():
        pytest.skip("needs root, unshare(1) and mount(8)")
    disk = tmp_path / "disk"
    disk.mkdir()
    driver = tmp_path / "driver.py"
    driver.write_text(DRIVER)

    def run(steps: list[str], **settings) -> list[dict]:
        cleaners = {name: {"enabled": False} for name in _builtin_cleaners()}
        root = str(disk / "root")
        cleaners["junk"] = {
            "kind": "files",
            "roots": [root],
            "patterns": ["*"],
            "min_age": "1d",
            "stages": ["post", "emergency"],
        }
        config = {
            "paths": {
                "state_dir": str(disk / "state"),
                "cache_dir": str(disk / "cache"),
                "log_dir": str(disk / "log"),
            },
            "cleanup": {"cleaners": cleaners, "allowed_mount_points": [root]},
            "disk": {
                "textfile_dir": str(tmp_path / "prom"),
                "syslog": False,
                "watch_docker": False,
                "job_peak_floor": "1MiB",
                "job_peak_floor_inodes": 10,
                "reserve": "10%",
                "cache_quota_min": "1MiB",
                **settings,
            },
        }
        config_path = tmp_path / "config.json"
        config_path.write_text(json.dumps(config))
        out = tmp_path / "out.json"
        environ = {
            **os.environ,
            "DISK": str(disk),
            "PYTHON": sys.executable,
            "DRIVER": str(driver),
            "CONFIG": str(config_path),
            "OUT": str(out),
            "STEPS": ",".join(steps),
            "REPO": str(REPO),
            "RUNNERKEEP_RUN_DIR": str(tmp_path / "run"),
        }
        proc = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", WRAPPER],
            env=environ,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        results = json.loads(out.read_text())
        for result in results:
            assert "Traceback" not in result.get("err", ""), result
        return results

    return run


MiB = 1024**2


def test_a_full_disk_whose_state_dir_was_never_written_is_cleaned_and_hooks_work(full_disk):
    filled, watch, refilled, start, status, end, emergency = full_disk(
        [
            "fill",
            "disk watch --json",
            "fill",
            "cleanup job-start --job-id j1 --no-pre",
            "cleanup status",
            "cleanup job-end --job-id j1 --no-post",
            "cleanup run --stage emergency",
        ]
    )
    assert filled["free"] < MiB and refilled["free"] < MiB
    assert watch["rc"] == 0, watch
    data = json.loads(watch["out"])
    assert data["state"] == "emergency" and data["emergency_cleanup"]["ok"], data
    assert watch["free"] > 40 * MiB
    assert start["rc"] == 0, start
    assert start["err"].count("warning") == 1  # the job lock went to the run dir
    assert status["rc"] == EXIT_LOCKED and "j1" in status["out"], status  # a cleanup sees it
    assert end["rc"] == 0, end
    assert emergency["rc"] == 0, emergency
    assert emergency["free"] > 40 * MiB


def test_a_seeded_state_dir_gone_read_only_keeps_hooks_and_emergency_working(full_disk):
    steps = [
        "cleanup job-start --job-id j0 --no-pre",
        "cleanup job-end --job-id j0",
        "disk watch",
        "ro",
        "fill",
        "cleanup job-start --job-id j1 --no-pre",
        "cleanup status",
        "cleanup job-end --job-id j1 --no-post",
        "cleanup run --stage emergency",
        "cleanup run --stage post --dry-run",
    ]
    results = dict(zip(steps, full_disk(steps)))
    for step in steps[5:]:
        expected = EXIT_LOCKED if step == "cleanup status" else 0
        assert results[step]["rc"] == expected, results[step]
    assert "j1" in results["cleanup status"]["out"]
    assert results["cleanup run --stage emergency"]["free"] > 40 * MiB


def test_a_budget_that_does_not_fit_still_cleans_and_fails_the_check(full_disk):
    _filled, watch, again = full_disk(
        ["fill", "disk watch --json", "disk watch --check"],
        cache_quota_min="1GiB",
        warning_free="100%",
        critical_free="99%",
        emergency_free="1%",
    )
    data = json.loads(watch["out"])
    assert data["state"] == "emergency" and data["budget_error"], data
    assert data["emergency_cleanup"]["ok"] and watch["free"] > 40 * MiB
    assert again["rc"] == EXIT_CHECK_FAILED and "BUDGET ERROR" in again["out"], again


def test_a_quota_minimum_that_does_not_fit_is_clamped_not_silent(full_disk):
    _filled, watch = full_disk(["fill", "disk watch --json"], cache_quota_min="1GiB")
    data = json.loads(watch["out"])
    assert data["budget_error"] is None
    assert data["state"] == "emergency" and data["emergency_cleanup"]["ok"], data
