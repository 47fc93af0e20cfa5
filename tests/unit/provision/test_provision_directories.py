"""host_layout directories: made with their owner and mode, fixed when wrong, never followed
through a link, refused when a file is in the way; check mode reports and changes nothing."""

from __future__ import annotations

import os
import stat

import pytest
from provisiontest_helpers import (
    JOB_GID,
    JOB_UID,
    NOBODY_UID,
    NOGROUP_GID,
    changes,
    owner_mode,
    snapshot,
    write,
)
from runnerkeep.provision.changes import LayoutError
from runnerkeep.provision.host_files import ensure_directory


def spec(path, mode="0755", owner="root", group="root"):
    return {"path": str(path), "mode": mode, "owner": owner, "group": group}


def test_a_missing_directory_is_made_with_its_owner_and_mode(tmp_path):
    path = tmp_path / "a" / "b" / "store"
    done = changes()
    ensure_directory(spec(path, "0750", "nobody", "nogroup"), done)
    assert stat.S_ISDIR(os.lstat(path).st_mode)
    assert owner_mode(str(path)) == (NOBODY_UID, NOGROUP_GID, 0o750)
    # The parents a run makes are root's, traversable.
    assert owner_mode(str(tmp_path / "a")) == (0, 0, 0o755)
    assert owner_mode(str(tmp_path / "a" / "b")) == (0, 0, 0o755)
    assert done.by_path[str(path)][0] == "created"
    assert done.changed
    # A directory is no content: no unit restarts on it.
    assert done.content_changed == set()


def test_a_sticky_setgid_mode_is_kept_after_the_chown(tmp_path):
    path = tmp_path / "spool"
    os.mkdir(path)
    os.chown(path, JOB_UID, JOB_GID)
    done = changes()
    ensure_directory(spec(path, "01730", group="nogroup"), done)
    assert owner_mode(str(path)) == (0, NOGROUP_GID, 0o1730)
    ensure_directory(spec(tmp_path / "shared", "02770"), done)
    assert owner_mode(str(tmp_path / "shared")) == (0, 0, 0o2770)


def test_an_existing_directory_gets_its_owner_and_mode_fixed(tmp_path):
    path = tmp_path / "state"
    os.mkdir(path)
    os.chown(path, JOB_UID, JOB_GID)
    os.chmod(path, 0o777)
    write(str(path / "kept"), b"data")
    done = changes()
    ensure_directory(spec(path, "0755"), done)
    assert owner_mode(str(path)) == (0, 0, 0o755)
    assert done.by_path == {str(path): ["owner", "mode"]}
    assert os.listdir(path) == ["kept"]


def test_a_right_directory_is_no_change(tmp_path):
    path = tmp_path / "state"
    os.mkdir(path, 0o755)
    done = changes()
    ensure_directory(spec(path, "0755"), done)
    assert not done.changed
    assert done.as_list() == []


def test_only_the_mode_when_only_the_mode_is_wrong(tmp_path):
    path = tmp_path / "state"
    os.mkdir(path)
    os.chmod(path, 0o700)
    done = changes()
    ensure_directory(spec(path, "0755"), done)
    assert done.by_path == {str(path): ["mode"]}
    assert owner_mode(str(path)) == (0, 0, 0o755)


@pytest.mark.parametrize("dangling", [False, True])
def test_a_symlink_where_a_directory_belongs_fails_and_is_not_followed(tmp_path, dangling):
    outside = tmp_path / "outside"
    if not dangling:
        os.mkdir(outside)
        os.chown(outside, JOB_UID, JOB_GID)
        os.chmod(outside, 0o777)
    link = tmp_path / "state"
    os.symlink(outside, link)
    before = snapshot(str(tmp_path))
    with pytest.raises(LayoutError) as raised:
        ensure_directory(spec(link, "0700"), changes())
    assert str(raised.value) == (
        f"{link} is a symlink where a directory belongs: remove it and run again"
    )
    # Neither the link nor what it points at was touched (nor a dangling target made).
    assert snapshot(str(tmp_path)) == before
    assert os.path.lexists(outside) is not dangling


def test_a_file_where_a_directory_belongs_fails_and_is_kept(tmp_path):
    path = write(str(tmp_path / "state"), b"not a dir", JOB_UID, JOB_GID, 0o666)
    before = snapshot(str(tmp_path))
    with pytest.raises(LayoutError, match="exists and is not a directory: move it away"):
        ensure_directory(spec(path), changes())
    assert snapshot(str(tmp_path)) == before


def test_a_fifo_where_a_directory_belongs_fails(tmp_path):
    path = tmp_path / "state"
    os.mkfifo(path)
    with pytest.raises(LayoutError, match="is not a directory"):
        ensure_directory(spec(path), changes())
    assert stat.S_ISFIFO(os.lstat(path).st_mode)


def test_check_mode_reports_a_missing_directory_and_makes_nothing(tmp_path):
    path = tmp_path / "a" / "state"
    before = snapshot(str(tmp_path))
    done = changes(check_mode=True)
    ensure_directory(spec(path, "0700"), done)
    assert done.by_path == {str(path): ["created"]}
    assert snapshot(str(tmp_path)) == before


def test_check_mode_reports_a_wrong_owner_and_mode_and_fixes_nothing(tmp_path):
    path = tmp_path / "state"
    os.mkdir(path)
    os.chown(path, JOB_UID, JOB_GID)
    os.chmod(path, 0o777)
    before = snapshot(str(tmp_path))
    done = changes(check_mode=True)
    ensure_directory(spec(path, "0755"), done)
    assert done.by_path == {str(path): ["owner", "mode"]}
    assert snapshot(str(tmp_path)) == before


def test_check_mode_accepts_an_owner_still_to_be_created(tmp_path):
    path = tmp_path / "state"
    os.mkdir(path, 0o755)
    done = changes(check_mode=True)
    ensure_directory(spec(path, "0755", owner="rk-no-such-user", group="rk-no-such-group"), done)
    assert done.by_path == {str(path): ["owner"]}


def test_an_unknown_owner_fails_outside_check_mode_with_what_to_do(tmp_path):
    path = tmp_path / "state"
    os.mkdir(path, 0o755)
    with pytest.raises(LayoutError, match="user 'rk-no-such-user' does not exist: create it"):
        ensure_directory(spec(path, owner="rk-no-such-user"), changes())
    with pytest.raises(LayoutError, match="group 'rk-no-such-group' does not exist"):
        ensure_directory(spec(path, group="rk-no-such-group"), changes())
    assert owner_mode(str(path)) == (0, 0, 0o755)


@pytest.mark.parametrize(
    ("mode", "message"),
    [("0999", "is not an octal mode such as 0644"), ("17777", "is not an octal mode such as 0644")],
)
def test_a_bad_mode_fails_before_anything_is_made(tmp_path, mode, message):
    path = tmp_path / "state"
    with pytest.raises(LayoutError) as raised:
        ensure_directory(spec(path, mode), changes())
    assert str(raised.value) == f"{path}: mode {mode!r} {message}"
    assert not os.path.lexists(path)


def test_parents_are_0755_whatever_the_umask(tmp_path):
    os.umask(0o077)  # the autouse fixture puts the umask back
    ensure_directory(spec(tmp_path / "a" / "b" / "state", "0750"), changes())
    assert owner_mode(str(tmp_path / "a")) == (0, 0, 0o755)
    assert owner_mode(str(tmp_path / "a" / "b")) == (0, 0, 0o755)
    assert owner_mode(str(tmp_path / "a" / "b" / "state")) == (0, 0, 0o750)


@pytest.mark.parametrize(("mode", "expected"), [("0640", 0o640), ("640", 0o640), ("01730", 0o1730)])
def test_a_mode_is_a_quoted_octal_string(tmp_path, mode, expected):
    path = tmp_path / "state"
    ensure_directory({**spec(path), "mode": mode}, changes())
    assert owner_mode(str(path))[2] == expected


@pytest.mark.parametrize("mode", [416, 755, 0o640])
def test_a_mode_given_as_a_number_is_refused_not_guessed(tmp_path, mode):
    """YAML reads an unquoted 0640 as 416 and an unquoted 755 as 755: no reading of a number
    is right for both (one of them is a world-writable file), so none is taken."""
    path = tmp_path / "state"
    with pytest.raises(LayoutError, match=r"is a number; quote the octal mode"):
        ensure_directory({**spec(path), "mode": mode}, changes())
    assert not os.path.lexists(path)


@pytest.mark.parametrize("mode", [True, 1.5, None])
def test_a_mode_of_another_type_fails(tmp_path, mode):
    with pytest.raises(LayoutError, match="is not an octal mode such as 0644"):
        ensure_directory({**spec(tmp_path / "state"), "mode": mode}, changes())
