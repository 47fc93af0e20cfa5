import os

import pytest
from runnerkeep.fsutil import atomic_write, filesystem_usage, mount_point_of, same_filesystem


def test_atomic_write_replaces_content_and_leaves_no_temp(tmp_path):
    target = tmp_path / "entry.json"
    atomic_write(str(target), b"old")
    atomic_write(str(target), b"new", mode=0o600)
    assert target.read_bytes() == b"new"
    assert oct(target.stat().st_mode & 0o777) == "0o600"
    assert os.listdir(tmp_path) == ["entry.json"]


def test_atomic_write_failure_keeps_old_file_and_removes_temp(tmp_path, monkeypatch):
    target = tmp_path / "entry.json"
    atomic_write(str(target), b"old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        atomic_write(str(target), b"new")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["entry.json"]


def test_filesystem_usage_of_a_missing_path_uses_nearest_parent(tmp_path):
    usage = filesystem_usage(str(tmp_path / "not" / "yet"))
    assert usage.total_bytes > 0
    assert 0 <= usage.free_bytes <= usage.total_bytes
    assert usage.free_inodes <= usage.total_inodes
    assert os.path.ismount(usage.mount_point)


def test_mount_point_and_same_filesystem(tmp_path):
    assert mount_point_of("/") == "/"
    assert same_filesystem(str(tmp_path), str(tmp_path / "child-not-created"))
    assert not same_filesystem("/proc", str(tmp_path))
