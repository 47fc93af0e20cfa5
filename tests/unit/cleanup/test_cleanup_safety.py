"""Safety rails, each on a real temp tree: roots, symlinks, refusals, protected, vanishing files."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from cleanuptest_helpers import age_tree, files_cleaner, make_file
from runnerkeep.cleanup import run_cleanup, walk
from runnerkeep.cleanup.safety import check_root, home_dirs
from runnerkeep.errors import ConfigError


def run(config, **kw):
    kw.setdefault("run_all", True)
    kw.setdefault("cleaner_names", ["t"])
    return run_cleanup("post", config, **kw)


def test_nothing_outside_roots_is_removed(tmp_path, make_config):
    root = tmp_path / "root"
    sibling = tmp_path / "sibling"
    make_file(str(root / "a" / "f1"))
    make_file(str(root / "f2"))
    make_file(str(sibling / "keep"))
    report = run(make_config({"t": files_cleaner([root])}))
    assert os.listdir(root) == []  # entries gone, the root itself stays
    assert root.is_dir()
    assert (sibling / "keep").exists()
    assert report.cleaner("t").items_removed == 2


@pytest.mark.parametrize("pattern", ["../sibling", "/etc", "a/../..", "./x", "a//b"])
def test_patterns_escaping_the_root_are_refused(tmp_path, make_config, pattern):
    (tmp_path / "root").mkdir()
    config = make_config({"t": files_cleaner([tmp_path / "root"], patterns=[pattern])})
    with pytest.raises(ConfigError, match="relative to the root"):
        run(config)


def test_symlinks_are_removed_never_followed(tmp_path, make_config):
    root = tmp_path / "root"
    outside = tmp_path / "etc-like"
    make_file(str(outside / "passwd"))
    make_file(str(outside / "sub" / "deep"))
    root.mkdir()
    os.symlink(outside, root / "link-to-dir")
    os.symlink(outside / "passwd", root / "link-to-file")
    (root / "tree").mkdir()
    os.symlink(outside, root / "tree" / "nested-link")
    os.symlink("/etc", root / "link-to-etc")
    report = run(make_config({"t": files_cleaner([root])}))
    assert os.listdir(root) == []
    assert (outside / "passwd").read_bytes() == b"x" * 1000
    assert (outside / "sub" / "deep").exists()
    assert os.path.exists("/etc/passwd")
    assert report.cleaner("t").items_removed == 4
    assert report.cleaner("t").errors == []


def test_root_through_a_symlink_is_refused(tmp_path, make_config):
    real = tmp_path / "real"
    make_file(str(real / "f"))
    os.symlink(real, tmp_path / "alias")
    report = run(make_config({"t": files_cleaner([tmp_path / "alias"])}))
    assert (real / "f").exists()
    assert report.cleaner("t").refused == [
        {"root": str(tmp_path / "alias"), "reason": "path goes through a symlink"}
    ]


def test_directory_swapped_for_symlink_after_planning_is_not_entered(tmp_path, make_config):
    root = tmp_path / "root"
    outside = tmp_path / "outside"
    make_file(str(outside / "precious"))
    make_file(str(root / "d" / "f"))
    opts = walk.WalkOptions(dev=os.stat(root).st_dev)
    fd = walk.open_root(str(root))
    try:
        # Between plan and removal an attacker replaces d by a symlink to outside.
        subprocess.run(["rm", "-rf", str(root / "d")], check=True)
        os.symlink(outside, root / "d")
        stats = walk.remove_entry(fd, "d", str(root / "d"), opts)
    finally:
        os.close(fd)
    assert (outside / "precious").exists()
    assert not os.path.lexists(root / "d")  # the link went, as a link
    assert stats.inodes == 1


@pytest.mark.parametrize(
    ("root", "reason"),
    [
        ("/", "refusing to clean /"),
        ("/root", "refusing to clean a home directory"),
        ("/home", "refusing to clean a home directory"),
        ("/usr", "refusing to clean a system directory"),
        ("/proc", "refusing to clean a system directory"),
        ("relative/path", "not an absolute path"),
    ],
)
def test_dangerous_roots_are_refused(root, reason):
    assert check_root(root, [], home_dirs()) == reason


def test_home_dir_and_parent_of_homes_refused(tmp_path, make_config, monkeypatch):
    home = tmp_path / "homes" / "runner"
    make_file(str(home / ".bashrc"))
    monkeypatch.setenv("HOME", str(home))
    report = run(
        make_config(
            {"t": files_cleaner([home, tmp_path / "homes"])},
        )
    )
    reasons = {r["root"]: r["reason"] for r in report.cleaner("t").refused}
    assert reasons == {
        str(home): "refusing to clean a home directory",
        str(tmp_path / "homes"): "refusing to clean a parent of home directories",
    }
    assert (home / ".bashrc").exists()


def test_mount_point_root_needs_to_be_named(make_config):
    # /sys/fs/cgroup (or /dev/shm) is a mount point that is not a listed system dir.
    candidates = [p for p in ("/dev/shm", "/sys/fs/cgroup", "/run/lock") if os.path.ismount(p)]
    if not candidates:
        pytest.skip("no mount point to probe")
    mount = candidates[0]
    assert check_root(mount, [], set()) == (
        "is a mount point not named in cleanup.allowed_mount_points"
    )
    assert check_root(mount, [mount], set()) is None


@pytest.fixture
def tmpfs(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=8m", "tmpfs", str(mnt)], capture_output=True
    )
    if proc.returncode != 0:
        pytest.skip(f"cannot mount tmpfs: {proc.stderr.decode()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)


def test_walk_does_not_cross_into_other_filesystems(tmp_path, make_config, tmpfs):
    # tmpfs is mounted at root/... ? no: mount it under the tree being removed.
    root = tmp_path
    make_file(str(tmpfs / "on-other-fs"))
    make_file(str(tmp_path / "mnt-sibling" / "f"))
    report = run(make_config({"t": files_cleaner([root], patterns=["mnt*"])}))
    assert (tmpfs / "on-other-fs").exists()
    assert not (tmp_path / "mnt-sibling").exists()
    assert report.cleaner("t").kept >= 1


def test_mount_point_root_refused_unless_named(tmp_path, make_config, tmpfs):
    make_file(str(tmpfs / "f"))
    report = run(make_config({"t": files_cleaner([tmpfs])}))
    assert (tmpfs / "f").exists()
    assert "mount point" in report.cleaner("t").refused[0]["reason"]
    report = run(make_config({"t": files_cleaner([tmpfs])}, allowed_mount_points=[str(tmpfs)]))
    assert not (tmpfs / "f").exists()


def test_protected_paths_and_cache_store_never_touched(tmp_path, make_config):
    root = tmp_path / "root"
    config = make_config({"t": files_cleaner([root])})
    cache = root / "cache-parent" / "images"
    config["paths"]["cache_dir"] = str(cache)
    make_file(str(cache / "blobs" / "sha256-x"))
    make_file(str(root / "cache-parent" / "junk"))
    make_file(str(root / "runner" / "bin" / "Runner.Listener"))
    config["cleanup"]["protected_paths"] = [str(root / "runner" / "bin")]
    report = run(config)
    assert (cache / "blobs" / "sha256-x").exists()
    assert not (root / "cache-parent" / "junk").exists()
    assert (root / "runner" / "bin" / "Runner.Listener").exists()
    assert report.cleaner("t").kept >= 2
    assert report.cleaner("t").errors == []


def test_swap_files_are_never_touched(tmp_path, make_config):
    root = tmp_path / "root"
    swap = make_file(str(root / "swapfile"), size=4096)
    swaps = tmp_path / "swaps"
    swaps.write_text(
        "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
        f"{swap}                               file\t\t4\t\t0\t\t-2\n"
    )
    make_file(str(root / "other"))
    run(make_config({"t": files_cleaner([root])}, swaps_file=str(swaps)))
    assert os.path.exists(swap)
    assert not (root / "other").exists()


def test_special_files_are_left_alone(tmp_path, make_config):
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    os.mkfifo(root / "d" / "fifo")
    os.mkfifo(root / "fifo2")
    make_file(str(root / "d" / "f"))
    report = run(make_config({"t": files_cleaner([root])}))
    assert (root / "d" / "fifo").exists()
    assert not (root / "d" / "f").exists()
    assert (root / "fifo2").exists()
    assert report.cleaner("t").errors == []


def test_files_vanishing_mid_walk_are_reported_and_skipped(tmp_path, make_config, monkeypatch):
    root = tmp_path / "root"
    for i in range(5):
        make_file(str(root / "tree" / f"f{i}"))
    make_file(str(root / "other"))

    def vanish(path, names):
        if path.endswith("/tree") and "f3" in names and (root / "tree" / "f3").exists():
            # The kernel stamps the directory from a clock that can lag time.time() by a tick:
            # wait past it, so the tree's change always lands after the plan, as on a busy host.
            time.sleep(0.05)
            os.unlink(root / "tree" / "f3")

    monkeypatch.setattr(walk, "_listing_hook", vanish)
    config = make_config({"t": files_cleaner([root])})
    dry = run(config, dry_run=True)
    assert any(e["path"].endswith("tree/f3") for e in dry.cleaner("t").errors)
    make_file(str(root / "tree" / "f3"))
    real = run(config)
    cr = real.cleaner("t")
    assert any(e["path"].endswith("tree/f3") for e in cr.errors)
    # The tree changed after it was planned (f3 went), so it is kept whole, named as changed;
    # the run goes on with the rest.
    assert {"path": str(root / "tree"), "reason": walk.CHANGED} in cr.kept_items
    assert sorted(os.listdir(root / "tree")) == ["f0", "f1", "f2", "f4"]
    assert not (root / "other").exists()


def test_file_vanishing_during_removal_is_reported_not_counted(tmp_path, monkeypatch):
    root = tmp_path / "root"
    for i in range(4):
        make_file(str(root / "tree" / f"f{i}"), size=4096)

    def vanish(path, names):
        if path.endswith("/tree") and (root / "tree" / "f2").exists():
            os.unlink(root / "tree" / "f2")

    monkeypatch.setattr(walk, "_listing_hook", vanish)
    fd = walk.open_root(str(root))
    try:
        stats = walk.remove_entry(
            fd, "tree", str(root / "tree"), walk.WalkOptions(dev=os.fstat(fd).st_dev)
        )
    finally:
        os.close(fd)
    assert stats.errors == [(str(root / "tree" / "f2"), "vanished before it could be removed")]
    assert stats.inodes == 4  # three files and the directory
    assert not (root / "tree").exists()


def test_unreadable_directory_is_reported_and_the_run_goes_on(tmp_path, make_config, monkeypatch):
    root = tmp_path / "root"
    make_file(str(root / "locked" / "f"))
    make_file(str(root / "fine" / "f"))
    real_list = walk._list

    def deny(fd, path):
        if path.endswith("/locked"):
            raise PermissionError(13, "Permission denied")
        return real_list(fd, path)

    monkeypatch.setattr(walk, "_list", deny)
    report = run(make_config({"t": files_cleaner([root])}))
    cr = report.cleaner("t")
    assert any(e["path"].endswith("/locked") for e in cr.errors)
    assert (root / "locked" / "f").exists()
    assert not (root / "fine").exists()


def test_min_age_counts_the_newest_file_in_a_tree(tmp_path, make_config):
    root = tmp_path / "root"
    make_file(str(root / "old" / "a"))
    make_file(str(root / "mixed" / "a"))
    age_tree(str(root / "old"), 10)
    age_tree(str(root / "mixed"), 10)
    make_file(str(root / "mixed" / "fresh"), age_days=0)
    make_file(str(root / "new-file"), age_days=0)
    run(make_config({"t": files_cleaner([root], min_age="2d")}))
    assert sorted(os.listdir(root)) == ["mixed", "new-file"]


def test_files_only_and_exclude(tmp_path, make_config):
    root = tmp_path / "log"
    make_file(str(root / "syslog.1"))
    make_file(str(root / "syslog"))
    make_file(str(root / "apt" / "history.log.2.gz"))
    make_file(str(root / "dir.1" / "x"))
    make_file(str(root / "keep.gz"))
    cleaner = files_cleaner(
        [root], patterns=["*.[0-9]", "*.gz", "*/*.gz"], files_only=True, exclude=["keep*"]
    )
    run(make_config({"t": cleaner}))
    assert not (root / "syslog.1").exists()
    assert not (root / "apt" / "history.log.2.gz").exists()
    assert (root / "syslog").exists()
    assert (root / "dir.1" / "x").exists()
    assert (root / "keep.gz").exists()
