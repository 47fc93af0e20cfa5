"""Mount IDs: what tells a same-filesystem bind mount apart when st_dev cannot."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest
from runnerkeep import mounts

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))


def _open_dir(path):
    return os.open(path, os.O_RDONLY | os.O_DIRECTORY)


def test_statx_and_fdinfo_agree(tmp_path):
    fd = _open_dir(str(tmp_path))
    try:
        via_statx = mounts._mount_id_statx(fd)
        assert via_statx is None or via_statx == mounts._mount_id_fdinfo(fd)
        assert mounts.mount_id(fd) == mounts._mount_id_fdinfo(fd)
    finally:
        os.close(fd)


def test_slash_is_a_mount_root_and_a_plain_directory_is_not(tmp_path):
    (tmp_path / "sub").mkdir()
    for path, expected in (("/", True), (str(tmp_path / "sub"), False)):
        fd = _open_dir(path)
        try:
            assert mounts.is_mount_root(fd) is expected, path
        finally:
            os.close(fd)


def test_mount_id_at_does_not_follow_a_symlink(tmp_path):
    os.symlink("/proc", tmp_path / "link")
    fd = _open_dir(str(tmp_path))
    try:
        # The link itself lives on tmp_path's mount, not on /proc's.
        assert mounts.mount_id_at(fd, "link") == mounts.mount_id(fd)
    finally:
        os.close(fd)


@pytest.mark.skipif(os.geteuid() != 0, reason="bind mounts need root (CI runs as root)")
def test_same_filesystem_bind_mount_has_same_st_dev_but_another_mount_id(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    script = textwrap.dedent(
        f"""
        import os, sys
        sys.path.insert(0, {os.path.join(ROOT, "module_utils")!r})
        from runnerkeep import mounts
        a = os.open({str(tmp_path / "a")!r}, os.O_RDONLY | os.O_DIRECTORY)
        b = os.open({str(tmp_path / "b")!r}, os.O_RDONLY | os.O_DIRECTORY)
        print(os.fstat(a).st_dev == os.fstat(b).st_dev,
              mounts.mount_id(a) != mounts.mount_id(b),
              mounts.is_mount_root(b), mounts.is_mount_root(a))
        """
    )
    proc = subprocess.run(
        [
            "unshare",
            "-m",
            "--propagation",
            "private",
            "sh",
            "-c",
            'mount --bind "$1" "$2" && exec "$3" -c "$4"',
            "sh",
            str(tmp_path / "a"),
            str(tmp_path / "b"),
            sys.executable,
            script,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["True", "True", "True", "False"]
