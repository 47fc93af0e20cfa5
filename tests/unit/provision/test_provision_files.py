"""host_layout files and secret files: written by renaming a temp file made beside them (owner
and mode set first), a link in the way replaced and never written through, a key made once,
diffs only when asked and never of a secret, and nothing at all written in check mode."""

from __future__ import annotations

import errno
import os
import stat

import pytest
from provisiontest_helpers import (
    JOB_GID,
    JOB_UID,
    NOBODY_UID,
    NOGROUP_GID,
    changes,
    leftovers,
    owner_mode,
    read,
    snapshot,
    write,
)
from runnerkeep.provision import host_files
from runnerkeep.provision.changes import LayoutError
from runnerkeep.provision.host_files import ensure_file


def spec(path, content=None, mode="0644", owner="root", group="root", **more):
    found = {"path": str(path), "mode": mode, "owner": owner, "group": group, **more}
    if content is not None:
        found["content"] = content
    return found


@pytest.fixture
def renames(monkeypatch):
    """Each rename host_files makes: (source, target, lstat of the source at that moment)."""
    seen = []
    real = os.rename

    def recording(src, dst, *args, src_dir_fd=None, dst_dir_fd=None, **kwargs):
        # Names relative to a directory descriptor are shown as the paths they stand for.
        src_path = (
            os.path.join(os.readlink(f"/proc/self/fd/{src_dir_fd}"), src)
            if src_dir_fd is not None
            else str(src)
        )
        dst_path = (
            os.path.join(os.readlink(f"/proc/self/fd/{dst_dir_fd}"), dst)
            if dst_dir_fd is not None
            else str(dst)
        )
        seen.append((src_path, dst_path, os.lstat(src_path)))
        return real(src, dst, *args, src_dir_fd=src_dir_fd, dst_dir_fd=dst_dir_fd, **kwargs)

    monkeypatch.setattr(host_files.os, "rename", recording)
    return seen


def test_a_new_file_is_written_with_its_owner_and_mode(tmp_path):
    path = tmp_path / "config.json"
    done = changes()
    ensure_file(spec(path, "{}\n", "0640", "nobody", "nogroup"), done)
    assert read(str(path)) == b"{}\n"
    assert owner_mode(str(path)) == (NOBODY_UID, NOGROUP_GID, 0o640)
    assert done.by_path == {str(path): ["created"]}
    assert done.content_changed == {str(path)}
    assert leftovers(str(tmp_path)) == []


def test_new_content_replaces_the_file_by_a_rename_of_a_temp_file_beside_it(tmp_path, renames):
    path = write(str(tmp_path / "config.json"), b"old\n", JOB_UID, JOB_GID, 0o666)
    old_inode = os.lstat(path).st_ino
    done = changes()
    ensure_file(spec(path, "new\n", "0600", "nobody", "nogroup"), done)
    assert read(path) == b"new\n"
    assert owner_mode(path) == (NOBODY_UID, NOGROUP_GID, 0o600)
    assert os.lstat(path).st_ino != old_inode  # a new file took the name: never half-written
    [(source, target, info)] = renames
    assert target == path
    assert os.path.dirname(source) == str(tmp_path)
    assert os.path.basename(source).startswith(".rk-layout-")
    # The temp file had its owner and mode before the rename (and before its bytes).
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (
        NOBODY_UID,
        NOGROUP_GID,
        0o600,
    )
    assert done.by_path == {path: ["content"]}
    assert leftovers(str(tmp_path)) == []


def test_a_full_disk_is_a_layout_error_naming_the_file(tmp_path, monkeypatch):
    path = write(str(tmp_path / "config.json"), b"old\n")

    def full(fd, data):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(host_files.os, "write", full)
    with pytest.raises(LayoutError) as raised:
        ensure_file(spec(path, "new\n"), changes())
    assert str(raised.value) == (
        f"writing {path} failed: No space left on device; the file was left as it was"
    )
    monkeypatch.undo()
    assert read(path) == b"old\n"
    assert leftovers(str(tmp_path)) == []


def test_a_failed_write_leaves_the_old_file_and_no_temp_file(tmp_path, monkeypatch):
    path = write(str(tmp_path / "config.json"), b"old\n")

    def failing_fsync(fd):
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(host_files.os, "fsync", failing_fsync)
    with pytest.raises(OSError):
        ensure_file(spec(path, "new\n"), changes())
    assert read(path) == b"old\n"
    assert leftovers(str(tmp_path)) == []


def test_a_symlink_in_the_way_is_replaced_not_written_through(tmp_path):
    target = write(str(tmp_path / "etc" / "shadow"), b"root:secret\n", 0, 0, 0o640)
    before = snapshot(os.path.dirname(target))
    path = tmp_path / "state" / "config.json"
    os.makedirs(path.parent)
    os.symlink(target, path)
    done = changes()
    ensure_file(spec(path, "mine\n", "0644"), done)
    assert not os.path.islink(path)
    assert read(str(path)) == b"mine\n"
    assert owner_mode(str(path)) == (0, 0, 0o644)
    # The link's target: same bytes, owner, mode, inode and times.
    assert snapshot(os.path.dirname(target)) == before
    assert done.by_path == {str(path): ["content"]}


def test_a_dangling_symlink_in_the_way_makes_no_file_at_its_target(tmp_path):
    target = tmp_path / "elsewhere" / "planted"
    os.mkdir(target.parent)
    path = tmp_path / "config.json"
    os.symlink(target, path)
    ensure_file(spec(path, "mine\n"), changes())
    assert read(str(path)) == b"mine\n"
    assert not os.path.lexists(target)


def test_a_fifo_in_the_way_is_replaced_without_blocking(tmp_path):
    path = tmp_path / "config.json"
    os.mkfifo(path)
    ensure_file(spec(path, "mine\n"), changes())
    assert stat.S_ISREG(os.lstat(path).st_mode)
    assert read(str(path)) == b"mine\n"


def test_a_directory_in_the_way_fails_and_is_kept(tmp_path):
    path = tmp_path / "config.json"
    os.mkdir(path)
    with pytest.raises(LayoutError, match="is a directory where a file belongs: move it away"):
        ensure_file(spec(path, "mine\n"), changes())
    assert os.path.isdir(path)


def test_same_content_with_a_wrong_mode_only_gets_its_mode(tmp_path, renames):
    path = write(str(tmp_path / "config.json"), b"same\n", 0, 0, 0o666)
    inode = os.lstat(path).st_ino
    done = changes(want_diff=True)
    ensure_file(spec(path, "same\n", "0644"), done)
    assert owner_mode(path) == (0, 0, 0o644)
    assert os.lstat(path).st_ino == inode
    assert renames == []
    assert done.by_path == {path: ["mode"]}
    assert done.content_changed == set()  # a mode is no reason to restart a unit
    assert done.diffs == []


def test_same_content_with_a_wrong_owner_gets_owner_then_mode(tmp_path):
    path = write(str(tmp_path / "tool"), b"#!/bin/sh\n", JOB_UID, JOB_GID, 0o755)
    done = changes()
    ensure_file(spec(path, "#!/bin/sh\n", "02755"), done)
    # chown clears setgid: the mode is set after it.
    assert owner_mode(path) == (0, 0, 0o2755)
    assert done.by_path == {path: ["owner", "mode"]}


def test_a_setgid_mode_already_right_survives_the_chown(tmp_path):
    # The kernel clears setgid when the owner changes: the mode must be read again after it.
    path = write(str(tmp_path / "tool"), b"#!/bin/sh\n", JOB_UID, JOB_GID, 0o755)
    os.chmod(path, 0o2755)
    done = changes()
    ensure_file(spec(path, "#!/bin/sh\n", "02755"), done)
    assert owner_mode(path) == (0, 0, 0o2755)
    assert done.by_path[path][0] == "owner"


def test_a_right_file_is_no_change(tmp_path, renames):
    path = write(str(tmp_path / "config.json"), b"same\n", 0, 0, 0o644)
    done = changes(want_diff=True)
    ensure_file(spec(path, "same\n", "0644"), done)
    assert not done.changed
    assert renames == []


def test_random_bytes_make_a_key_once_and_never_rewrite_it(tmp_path, renames):
    path = str(tmp_path / "cache.key")
    done = changes(want_diff=True)
    ensure_file(spec(path, mode="0600", random_bytes=32), done)
    key = read(path)
    assert len(key) == 32
    assert owner_mode(path) == (0, 0, 0o600)
    assert done.by_path == {path: ["created"]}
    assert done.diffs == []  # a key's bytes are never shown, secret_files or not
    inode = os.lstat(path).st_ino
    os.chmod(path, 0o644)

    again = changes(want_diff=True)
    ensure_file(spec(path, mode="0600", random_bytes=32), again)
    assert read(path) == key
    assert os.lstat(path).st_ino == inode
    assert len(renames) == 1
    assert again.by_path == {path: ["mode"]}
    assert owner_mode(path) == (0, 0, 0o600)


def test_random_bytes_keep_a_longer_key(tmp_path):
    path = write(str(tmp_path / "cache.key"), b"k" * 64, 0, 0, 0o600)
    done = changes()
    ensure_file(spec(path, mode="0600", random_bytes=32), done)
    assert read(path) == b"k" * 64
    assert not done.changed


@pytest.mark.parametrize("old", [b"", b"k" * 16])
def test_random_bytes_make_again_a_key_shorter_than_asked(tmp_path, old):
    path = write(str(tmp_path / "cache.key"), old, 0, 0, 0o600)
    done = changes(want_diff=True)
    ensure_file(spec(path, mode="0600", random_bytes=32), done)
    key = read(path)
    assert len(key) == 32 and key != b"k" * 32
    assert done.by_path == {path: ["content"]}
    assert done.diffs == []


@pytest.mark.parametrize(
    ("more", "message"),
    [
        ({"random_bytes": 0}, "random_bytes is 0; a key needs 1 to 4096 bytes"),
        ({"random_bytes": 4097}, "random_bytes is 4097; a key needs 1 to 4096 bytes"),
        ({"random_bytes": 32, "content": "x"}, "give content or random_bytes, not both"),
    ],
)
def test_a_bad_key_spec_fails_before_anything_is_written(tmp_path, more, message):
    path = tmp_path / "cache.key"
    with pytest.raises(LayoutError) as raised:
        ensure_file(spec(path, mode="0600", **more), changes())
    assert str(raised.value) == f"{path}: {message}"
    assert os.listdir(tmp_path) == []


def test_two_keys_differ(tmp_path):
    first, second = str(tmp_path / "a.key"), str(tmp_path / "b.key")
    for path in (first, second):
        ensure_file(spec(path, mode="0600", random_bytes=32), changes())
    assert read(first) != read(second)


def test_without_content_a_missing_file_fails_outside_check_mode(tmp_path):
    path = tmp_path / "runner" / ".credentials"
    with pytest.raises(LayoutError) as raised:
        ensure_file(spec(path, mode="0600"), changes())
    assert str(raised.value) == f"{path} does not exist (it is not this task's to create)"
    assert not os.path.lexists(path)
    done = changes(check_mode=True)
    ensure_file(spec(path, mode="0600"), done)
    assert not done.changed


def test_without_content_an_existing_file_only_gets_owner_and_mode(tmp_path):
    path = write(str(tmp_path / ".credentials"), b"token\n", JOB_UID, JOB_GID, 0o666)
    done = changes(want_diff=True)
    ensure_file(spec(path, mode="0600", owner="nobody", group="nogroup"), done)
    assert read(path) == b"token\n"
    assert owner_mode(path) == (NOBODY_UID, NOGROUP_GID, 0o600)
    assert done.by_path == {path: ["owner", "mode"]}
    assert done.diffs == []


def test_a_diff_only_when_asked(tmp_path):
    path = write(str(tmp_path / "config.json"), b"old\n")
    done = changes(want_diff=False)
    ensure_file(spec(path, "new\n"), done)
    assert done.diffs == []

    asked = changes(want_diff=True)
    ensure_file(spec(path, "newer\n"), asked)
    assert asked.diffs == [
        {"before_header": path, "after_header": path, "before": "new\n", "after": "newer\n"}
    ]
    created = changes(want_diff=True)
    ensure_file(spec(tmp_path / "fresh", "hello\n"), created)
    assert created.diffs[0]["before"] == "" and created.diffs[0]["after"] == "hello\n"


def test_a_secret_file_shows_no_diff_and_no_content(tmp_path):
    path = write(str(tmp_path / "token"), b"old-secret-value\n", 0, 0, 0o600)
    done = changes(want_diff=True)
    ensure_file(spec(path, "new-secret-value\n", "0600"), done, secret=True)
    assert read(path) == b"new-secret-value\n"
    assert done.diffs == []
    assert "secret-value" not in repr(done.as_list())
    assert done.by_path == {path: ["content"]}


def test_a_huge_diff_is_shown_by_its_size(tmp_path):
    path = write(str(tmp_path / "big"), b"x" * (100 * 1024))
    done = changes(want_diff=True)
    ensure_file(spec(path, "small\n"), done)
    assert done.diffs[0]["before"] == f"({100 * 1024} bytes)\n"


def test_check_mode_writes_nothing(tmp_path, renames):
    write(str(tmp_path / "changed.json"), b"old\n", JOB_UID, JOB_GID, 0o666)
    write(str(tmp_path / "mode-only"), b"same\n", 0, 0, 0o600)
    target = write(str(tmp_path / "target"), b"precious\n")
    os.symlink(target, tmp_path / "linked.json")
    before = snapshot(str(tmp_path))
    done = changes(check_mode=True, want_diff=True)
    ensure_file(spec(tmp_path / "changed.json", "new\n"), done)
    ensure_file(spec(tmp_path / "mode-only", "same\n", "0644"), done)
    ensure_file(spec(tmp_path / "linked.json", "mine\n"), done)
    ensure_file(spec(tmp_path / "new.json", "fresh\n", owner="rk-no-such-user"), done)
    ensure_file(spec(tmp_path / "new.key", mode="0600", random_bytes=32), done, secret=True)
    assert snapshot(str(tmp_path)) == before
    assert renames == []
    assert done.by_path == {
        str(tmp_path / "changed.json"): ["content"],
        str(tmp_path / "mode-only"): ["mode"],
        str(tmp_path / "linked.json"): ["content"],
        str(tmp_path / "new.json"): ["created"],
        str(tmp_path / "new.key"): ["created"],
    }
    # Check mode shows the same diffs a real run would (none of the key).
    assert [d["after"] for d in done.diffs] == ["new\n", "mine\n", "fresh\n"]


def test_temps_a_killed_run_left_beside_the_file_go_and_nothing_else(tmp_path):
    path = write(str(tmp_path / "config.json"), b"old\n")
    dead = write(str(tmp_path / ".rk-layout-0123456789ab-config.json"), b"half")
    # Look-alikes that are not a dead temp of ours stay: a job's file, a hard link to a file
    # of root's, a symlink, another file's temp, a name off the pattern.
    jobs = write(str(tmp_path / ".rk-layout-aaaaaaaaaaaa-config.json"), b"j", JOB_UID, JOB_GID)
    roots = write(str(tmp_path / "etc-shadow"), b"root:secret\n", 0, 0, 0o640)
    linked = str(tmp_path / ".rk-layout-bbbbbbbbbbbb-config.json")
    os.link(roots, linked)
    symlinked = str(tmp_path / ".rk-layout-cccccccccccc-config.json")
    os.symlink(roots, symlinked)
    other = write(str(tmp_path / ".rk-layout-dddddddddddd-other.json"), b"o")
    off = write(str(tmp_path / ".rk-layout-XYZ-config.json"), b"x")
    ensure_file(spec(path, "new\n"), changes())
    assert read(path) == b"new\n"
    assert not os.path.lexists(dead)
    for kept in (jobs, linked, symlinked, other, off):
        assert os.path.lexists(kept), kept
    assert read(roots) == b"root:secret\n"


def test_check_mode_leaves_a_dead_temp_alone(tmp_path):
    path = write(str(tmp_path / "config.json"), b"old\n")
    dead = write(str(tmp_path / ".rk-layout-0123456789ab-config.json"), b"half")
    ensure_file(spec(path, "new\n"), changes(check_mode=True))
    assert os.path.exists(dead) and read(path) == b"old\n"
