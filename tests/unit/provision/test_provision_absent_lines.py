"""host_layout absent (a file or link removed, never its target, a directory refused) and lines
(``NAME=value`` in a runner's .env: the last NAME= line replaced, else appended)."""

from __future__ import annotations

import os

import pytest
from provisiontest_helpers import (
    JOB_GID,
    JOB_UID,
    changes,
    leftovers,
    owner_mode,
    read,
    snapshot,
    write,
)
from runnerkeep.provision.changes import LayoutError
from runnerkeep.provision.host_files import ensure_absent, ensure_lines

# --- absent -----------------------------------------------------------------------------------


def test_absent_removes_a_file(tmp_path):
    path = write(str(tmp_path / "old.conf"), b"x\n")
    done = changes(want_diff=True)
    ensure_absent(path, done)
    assert not os.path.lexists(path)
    assert done.by_path == {path: ["removed"]}
    assert done.content_changed == {path}
    assert done.diffs[0]["before"] == "present\n" and done.diffs[0]["after"] == "absent\n"


@pytest.mark.parametrize("to_directory", [False, True])
def test_absent_removes_a_link_not_its_target(tmp_path, to_directory):
    outside = tmp_path / "outside"
    os.mkdir(outside)
    target = write(str(outside / "precious"), b"keep me\n", JOB_UID, JOB_GID, 0o600)
    before = snapshot(str(outside))
    link = str(tmp_path / "old.conf")
    os.symlink(outside if to_directory else target, link)
    done = changes()
    ensure_absent(link, done)
    assert not os.path.lexists(link)
    assert snapshot(str(outside)) == before
    assert read(target) == b"keep me\n"
    assert done.by_path == {link: ["removed"]}


def test_absent_refuses_a_directory(tmp_path):
    path = tmp_path / "old.conf"
    os.mkdir(path)
    write(str(path / "inside"), b"x")
    with pytest.raises(LayoutError) as raised:
        ensure_absent(str(path), changes())
    assert str(raised.value) == (
        f"{path} is a directory where a file was managed: remove it by hand"
    )
    assert os.listdir(path) == ["inside"]


def test_absent_of_nothing_is_no_change(tmp_path):
    done = changes()
    ensure_absent(str(tmp_path / "gone"), done)
    assert not done.changed
    assert done.content_changed == set()


def test_absent_in_check_mode_removes_nothing(tmp_path):
    path = write(str(tmp_path / "old.conf"), b"x\n")
    os.symlink(path, tmp_path / "link")
    before = snapshot(str(tmp_path))
    done = changes(check_mode=True)
    ensure_absent(path, done)
    ensure_absent(str(tmp_path / "link"), done)
    assert snapshot(str(tmp_path)) == before
    assert done.by_path == {path: ["removed"], str(tmp_path / "link"): ["removed"]}


# --- lines ------------------------------------------------------------------------------------


def test_the_last_name_line_is_replaced(tmp_path):
    path = write(str(tmp_path / ".env"), b"A=1\nB=2\nA=3\n# A=4\n")
    done = changes()
    ensure_lines(path, {"A": "9"}, done)
    assert read(path) == b"A=1\nB=2\nA=9\n# A=4\n"
    assert done.by_path == {path: ["content"]}
    assert done.content_changed == {path}


def test_a_missing_name_is_appended_and_a_longer_name_is_not_a_match(tmp_path):
    path = write(str(tmp_path / ".env"), b"AB=1\nLANG=C.UTF-8")
    ensure_lines(path, {"A": "2", "RUNNERKEEP": "on"}, changes())
    assert read(path) == b"AB=1\nLANG=C.UTF-8\nA=2\nRUNNERKEEP=on\n"


def test_lines_already_there_are_no_change_and_no_write(tmp_path):
    path = write(str(tmp_path / ".env"), b"A=1\nB=2\n")
    inode = os.lstat(path).st_ino
    done = changes(want_diff=True)
    ensure_lines(path, {"B": "2", "A": "1"}, done)
    assert not done.changed
    assert done.diffs == []
    assert os.lstat(path).st_ino == inode


def test_a_new_file_is_roots_0644_in_a_new_directory(tmp_path):
    os.umask(0o077)  # the file's mode does not depend on it (the fixture restores it)
    path = str(tmp_path / "runner" / ".env")
    done = changes()
    ensure_lines(path, {"A": "1"}, done)
    assert read(path) == b"A=1\n"
    assert owner_mode(path) == (0, 0, 0o644)
    assert done.by_path == {path: ["created"]}
    assert leftovers(str(tmp_path / "runner")) == []


def test_an_existing_file_keeps_its_owner_and_mode(tmp_path):
    path = write(str(tmp_path / ".env"), b"A=1\n", JOB_UID, JOB_GID, 0o600)
    ensure_lines(path, {"A": "2"}, changes())
    assert read(path) == b"A=2\n"
    assert owner_mode(path) == (JOB_UID, JOB_GID, 0o600)
    assert leftovers(str(tmp_path)) == []


def test_a_link_at_the_env_is_replaced_not_written_through(tmp_path):
    target = write(str(tmp_path / "etc" / "environment"), b"PATH=/usr/bin\n", 0, 0, 0o644)
    before = snapshot(os.path.dirname(target))
    path = str(tmp_path / ".env")
    os.symlink(target, path)
    done = changes()
    ensure_lines(path, {"A": "1"}, done)
    assert not os.path.islink(path)
    assert read(path) == b"A=1\n"
    assert owner_mode(path) == (0, 0, 0o644)
    assert snapshot(os.path.dirname(target)) == before


def test_a_directory_at_the_env_fails(tmp_path):
    path = tmp_path / ".env"
    os.mkdir(path)
    with pytest.raises(LayoutError, match="is a directory where a file belongs"):
        ensure_lines(str(path), {"A": "1"}, changes())


def test_lines_diff_and_check_mode(tmp_path):
    path = write(str(tmp_path / ".env"), b"A=1\n", JOB_UID, JOB_GID, 0o600)
    before = snapshot(str(tmp_path))
    done = changes(check_mode=True, want_diff=True)
    ensure_lines(path, {"A": "2"}, done)
    ensure_lines(str(tmp_path / "new" / ".env"), {"B": "1"}, done)
    assert snapshot(str(tmp_path)) == before
    assert done.by_path == {path: ["content"], str(tmp_path / "new" / ".env"): ["created"]}
    assert done.diffs[0]["before"] == "A=1\n" and done.diffs[0]["after"] == "A=2\n"
    assert done.diffs[1]["before"] == "" and done.diffs[1]["after"] == "B=1\n"


@pytest.mark.parametrize(
    ("lines", "message"),
    [
        ({"A": "x\nPATH=/evil"}, "the value of A must be one line of text"),
        ({"A": "x\r"}, "the value of A must be one line of text"),
        ({"A B": "1"}, "'A B' is not a variable name (letters, digits, _)"),
        ({"1A": "1"}, "'1A' is not a variable name"),
        ({"": "1"}, "'' is not a variable name"),
    ],
)
def test_a_line_that_is_not_one_name_value_fails_and_writes_nothing(tmp_path, lines, message):
    path = write(str(tmp_path / ".env"), b"A=1\n")
    with pytest.raises(LayoutError) as raised:
        ensure_lines(path, lines, changes())
    assert str(raised.value).startswith(f"{path}: {message}")
    assert read(path) == b"A=1\n"


@pytest.mark.parametrize("what", ["link", "file"])
def test_a_link_or_file_on_the_way_to_the_env_fails_and_nothing_is_followed(tmp_path, what):
    # The runner's directory is the job user's: it may swap a directory on the way for a link.
    outside = tmp_path / "etc"
    os.mkdir(outside)
    before = snapshot(str(outside))
    runner = tmp_path / "home" / "runner"
    os.makedirs(runner)
    if what == "link":
        os.symlink(outside, runner / "actions-runner")
    else:
        write(str(runner / "actions-runner"), b"x")
    path = str(runner / "actions-runner" / ".env")
    with pytest.raises(LayoutError) as raised:
        ensure_lines(path, {"A": "1"}, changes())
    assert str(raised.value).startswith(
        f"{runner / 'actions-runner'}: actions-runner on the way is a link or not a directory"
    )
    assert snapshot(str(outside)) == before


def test_a_link_further_up_the_way_is_not_followed_either(tmp_path):
    outside = tmp_path / "etc"
    os.makedirs(outside / "sub")
    os.symlink(outside, tmp_path / "runner")
    before = snapshot(str(outside))
    with pytest.raises(LayoutError, match="runner on the way is a link"):
        ensure_lines(str(tmp_path / "runner" / "sub" / ".env"), {"A": "1"}, changes())
    assert snapshot(str(outside)) == before


def test_the_env_directories_made_are_0755_whatever_the_umask(tmp_path):
    os.umask(0o077)  # the autouse fixture puts the umask back
    ensure_lines(str(tmp_path / "runner" / "actions-runner" / ".env"), {"A": "1"}, changes())
    assert owner_mode(str(tmp_path / "runner")) == (0, 0, 0o755)
    assert owner_mode(str(tmp_path / "runner" / "actions-runner")) == (0, 0, 0o755)


def test_a_temp_name_planted_in_the_runners_directory_does_not_break_the_update(tmp_path):
    runner = job_owned_dir(tmp_path / "runner")
    path = write(os.path.join(runner, ".env"), b"A=1\n", JOB_UID, JOB_GID, 0o644)
    write(os.path.join(runner, f".rk-layout-{os.getpid()}-.env"), b"", JOB_UID, JOB_GID)
    try:
        ensure_lines(path, {"A": "2"}, changes())
    except LayoutError:
        return  # a clear refusal is acceptable; a raw OSError is not
    assert read(path) == b"A=2\n"


def job_owned_dir(path):
    os.makedirs(path)
    os.chown(path, JOB_UID, JOB_GID)
    return str(path)
