"""Cleanup against real free space: a small tmpfs gives real statvfs bytes and inodes.

Seeded with realistic junk (temp files old and new, rotated logs, a fake toolchain tree, many
tiny files to exhaust inodes), the stages must stop at their targets as measured by statvfs,
free what the dry run predicted, and leave symlink targets alone. Each tmpfs is unmounted in
teardown.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest
from runnerkeep.cleanup import run_cleanup
from runnerkeep.fsutil import filesystem_usage

pytestmark = pytest.mark.integration

DAY = 86400.0
MIB = 1024 * 1024


def make_file(path, size, age_days):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as handle:
        handle.write(os.urandom(size) if size else b"")
    t = time.time() - age_days * DAY
    os.utime(path, (t, t))


@pytest.fixture
def mount_tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mounted = []

    def _mount(name="mnt", size="64m", nr_inodes=None):
        mnt = tmp_path / name
        mnt.mkdir()
        opts = f"size={size}" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(mnt)], capture_output=True
        )
        if proc.returncode != 0:
            pytest.skip(f"cannot mount tmpfs: {proc.stderr.decode()}")
        mounted.append(mnt)
        return mnt

    try:
        yield _mount
    finally:
        for mnt in reversed(mounted):
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def config_for(tmp_path, mnt):
    return {
        "paths": {
            "state_dir": str(tmp_path / "state"),
            "cache_dir": str(mnt / "image-cache"),
            "log_dir": str(tmp_path / "logs"),
        },
        "cleanup": {
            "cleaners": {
                "t-temp": {
                    "kind": "files",
                    "roots": [str(mnt / "tmp")],
                    "min_age": "2d",
                    "cost": 1,
                    "stages": ["pre", "post", "emergency"],
                },
                "t-logs": {
                    "kind": "files",
                    "roots": [str(mnt / "log")],
                    "patterns": ["*.[0-9]", "*.gz", "*/*.gz"],
                    "files_only": True,
                    "min_age": "1d",
                    "cost": 2,
                    "stages": ["post", "emergency"],
                },
                "t-toolchain": {
                    "kind": "files",
                    "roots": [str(mnt / "opt")],
                    "patterns": ["dotnet", "android"],
                    "min_age": "0s",
                    "cost": 3,
                    "stages": ["emergency"],
                },
            }
        },
    }


ONLY = ["t-temp", "t-logs", "t-toolchain"]


def settle_dir_mtimes(top):
    """Give each directory the mtime of its newest entry (as if written back then)."""
    for dirpath, dirnames, filenames in os.walk(top, topdown=False):
        names = [os.path.join(dirpath, n) for n in dirnames + filenames]
        if names:
            newest = max(os.lstat(n).st_mtime for n in names)
            os.utime(dirpath, (newest, newest))


def seed(mnt):
    for i in range(10):  # 10 x 2 MiB of old temp, i=0 the oldest
        make_file(str(mnt / "tmp" / f"build-{i}" / "obj.o"), 2 * MIB, 20 - i)
    make_file(str(mnt / "tmp" / "fresh" / "current.o"), 2 * MIB, 0)
    for i in range(5):
        make_file(str(mnt / "log" / f"syslog.{i + 1}"), MIB, 3 + i)
    make_file(str(mnt / "log" / "apt" / "history.log.1.gz"), MIB, 5)
    make_file(str(mnt / "log" / "syslog"), MIB, 0)
    make_file(str(mnt / "opt" / "dotnet" / "sdk" / "lib.dll"), 6 * MIB, 100)
    make_file(str(mnt / "image-cache" / "blobs" / "sha256-abc"), MIB, 100)
    for sub in ("tmp", "log", "opt"):
        settle_dir_mtimes(mnt / sub)


def test_post_stage_stops_at_real_target(tmp_path, mount_tmpfs):
    mnt = mount_tmpfs()
    seed(mnt)
    config = config_for(tmp_path, mnt)
    before = filesystem_usage(str(mnt))
    target = before.free_bytes + 5 * MIB
    report = run_cleanup(
        "post",
        config,
        target_free_bytes=target,
        target_free_inodes=0,
        paths=[str(mnt)],
        cleaner_names=ONLY,
    )
    after = filesystem_usage(str(mnt))
    assert after.free_bytes >= target
    assert report.target_met
    temp = report.cleaner("t-temp")
    assert temp.status == "stopped: target met"
    # 2 MiB each: the three oldest build dirs, nothing fresher, no logs, no toolchain.
    assert [i["path"].split("/")[-1] for i in temp.items] == ["build-0", "build-1", "build-2"]
    assert report.cleaner("t-logs").status == "skipped: target met"
    assert (mnt / "tmp" / "build-3").exists() and (mnt / "tmp" / "fresh").exists()
    assert (mnt / "log" / "syslog.1").exists()
    assert report.filesystems[str(mnt)]["after"]["free_bytes"] == after.free_bytes


def test_emergency_goes_deeper_until_target(tmp_path, mount_tmpfs):
    mnt = mount_tmpfs()
    seed(mnt)
    config = config_for(tmp_path, mnt)
    before = filesystem_usage(str(mnt))
    target = before.free_bytes + 28 * MIB  # all old temp (20) + all rotated logs (6) + more
    report = run_cleanup(
        "emergency",
        config,
        target_free_bytes=target,
        target_free_inodes=0,
        paths=[str(mnt)],
        cleaner_names=ONLY,
    )
    assert [c.name for c in report.cleaners] == ONLY
    assert report.cleaner("t-temp").status == "done"
    assert report.cleaner("t-logs").status == "done"
    assert report.cleaner("t-toolchain").items_removed == 1
    assert filesystem_usage(str(mnt)).free_bytes >= target
    assert (mnt / "tmp" / "fresh" / "current.o").exists()
    assert (mnt / "log" / "syslog").exists()
    assert (mnt / "image-cache" / "blobs" / "sha256-abc").exists()


def test_dry_run_predicts_real_statvfs_change_within_1_percent(tmp_path, mount_tmpfs):
    mnt = mount_tmpfs()
    seed(mnt)
    for i in range(300):  # small files too: block rounding must be counted right
        make_file(str(mnt / "tmp" / "build-0" / "small" / f"s{i}"), 100 + i * 37, 30)
    settle_dir_mtimes(mnt / "tmp")
    config = config_for(tmp_path, mnt)
    kwargs = {"run_all": True, "paths": [str(mnt)], "cleaner_names": ONLY}
    dry = run_cleanup("emergency", config, dry_run=True, **kwargs)
    before = filesystem_usage(str(mnt))
    real = run_cleanup("emergency", config, **kwargs)
    after = filesystem_usage(str(mnt))
    measured = after.free_bytes - before.free_bytes
    assert dry.bytes_freed > 20 * MIB
    assert abs(measured - dry.bytes_freed) <= 0.01 * dry.bytes_freed
    assert abs(real.bytes_freed - dry.bytes_freed) <= 0.01 * dry.bytes_freed
    assert after.free_inodes - before.free_inodes == dry.inodes_freed == real.inodes_freed
    assert sorted(dry.removed_paths()) == sorted(real.removed_paths())


def test_inode_exhaustion_is_relieved_to_the_inode_target(tmp_path, mount_tmpfs):
    mnt = mount_tmpfs(size="64m", nr_inodes=3000)
    config = config_for(tmp_path, mnt)
    config["cleanup"]["cleaners"]["t-temp"]["min_age"] = "0s"
    n = 0
    try:
        while True:
            d = mnt / "tmp" / f"job{n // 100:03d}"
            if n % 100 == 0:
                d.mkdir(parents=True)
            (d / f"f{n}").write_bytes(b"x")
            n += 1
    except OSError:
        pass
    assert filesystem_usage(str(mnt)).free_inodes == 0
    report = run_cleanup(
        "pre",
        config,
        target_free_bytes=0,
        target_free_inodes=1000,
        paths=[str(mnt)],
        cleaner_names=ONLY,
    )
    free_inodes = filesystem_usage(str(mnt)).free_inodes
    assert 1000 <= free_inodes < 1200  # stopped soon after the target, not everything
    assert report.target_met
    assert report.cleaner("t-temp").status == "stopped: target met"


def test_symlink_escape_attempts_leave_targets_intact(tmp_path, mount_tmpfs):
    mnt = mount_tmpfs()
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious").write_text("keep me")
    os.makedirs(mnt / "tmp" / "evil")
    os.symlink(outside, mnt / "tmp" / "evil" / "to-outside")
    os.symlink(outside / "precious", mnt / "tmp" / "link-file")
    os.symlink("/etc", mnt / "tmp" / "etc")
    for path in ("evil/to-outside", "link-file", "etc", "evil"):
        t = time.time() - 10 * DAY
        os.utime(mnt / "tmp" / path, (t, t), follow_symlinks=False)
    report = run_cleanup(
        "post", config_for(tmp_path, mnt), run_all=True, paths=[str(mnt)], cleaner_names=["t-temp"]
    )
    assert os.listdir(mnt / "tmp") == []
    assert (outside / "precious").read_text() == "keep me"
    assert os.path.isfile("/etc/hostname") or os.path.isdir("/etc")
    assert report.cleaner("t-temp").errors == []


def test_cli_post_stage_on_a_path(tmp_path, mount_tmpfs):
    mnt = mount_tmpfs()
    seed(mnt)
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps(config_for(tmp_path, mnt)))
    free = filesystem_usage(str(mnt)).free_bytes
    env = {**os.environ, "RUNNERKEEP_CONFIG": str(cfg)}
    env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
    base = [sys.executable, "-m", "runnerkeep_cli", "cleanup", "--stage", "post"]
    args = ["--path", str(mnt), "--target-free", str(free + 3 * MIB), "--target-inodes", "0"]
    for name in ONLY:
        args += ["--cleaner", name]
    dry = subprocess.run(
        [*base, *args, "--dry-run", "--json"], env=env, capture_output=True, text=True
    )
    assert dry.returncode == 0, dry.stderr
    dry_data = json.loads(dry.stdout)
    assert dry_data["items_removed"] == 2
    real = subprocess.run([*base, *args], env=env, capture_output=True, text=True)
    assert real.returncode == 0, real.stderr
    assert "t-temp" in real.stdout and "stopped: target met" in real.stdout
    assert filesystem_usage(str(mnt)).free_bytes >= free + 3 * MIB
