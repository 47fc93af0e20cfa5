"""host_layout reclaim: root's state dir taken back from a job (root:root, no group/other write),
links, FIFOs and forged job locks moved aside, never followed; the service store given to the
service user, its links moved aside. The job is played by uid/gid 1000 (the tests run as root)."""

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
    owner_mode,
    read,
    snapshot,
    write,
)
from runnerkeep.provision import reclaim as reclaim_module
from runnerkeep.provision.changes import LayoutError
from runnerkeep.provision.reclaim import reclaim


def aside_name(aside, path):
    return os.path.join(str(aside), str(path).lstrip("/").replace("/", "%"))


def job_dir(path, mode=0o777):
    os.makedirs(path)
    os.chown(path, JOB_UID, JOB_GID)
    os.chmod(path, mode)
    return str(path)


@pytest.fixture
def state(tmp_path):
    """An older layout's state dir a job could write, and a tree outside it a link points at."""
    root = tmp_path / "state"
    os.mkdir(root, 0o755)
    os.mkdir(root / "aside", 0o700)
    outside = tmp_path / "outside"
    job_dir(outside)
    write(str(outside / "theirs"), b"outside\n", JOB_UID, JOB_GID, 0o666)
    return root, outside


def root_state_spec(root, skip=()):
    return {
        "path": str(root),
        "policy": "root_state",
        "aside_dir": str(root / "aside"),
        "skip": [str(p) for p in skip],
    }


def test_job_owned_directories_and_files_are_taken_back(state):
    root, _ = state
    job_dir(root / "registry")
    write(str(root / "registry" / "job-1.json"), b"{}", JOB_UID, JOB_GID, 0o666)
    os.mkdir(root / "registry" / "sub")
    os.chown(root / "registry" / "sub", 0, JOB_GID)
    os.chmod(root / "registry" / "sub", 0o775)
    write(str(root / "registry" / "sub" / "deep"), b"d", 0, 0, 0o620)
    write(str(root / "roots"), b"r", 0, 0, 0o600)
    job_file = str(root / "registry" / "job-1.json")
    inode = os.lstat(job_file).st_ino
    done = changes()
    reclaim(root_state_spec(root), done)
    assert owner_mode(str(root / "registry")) == (0, 0, 0o755)
    assert owner_mode(job_file) == (0, 0, 0o644)
    assert owner_mode(str(root / "registry" / "sub")) == (0, 0, 0o755)
    assert owner_mode(str(root / "registry" / "sub" / "deep")) == (0, 0, 0o600)
    assert read(job_file) == b"{}"
    # A job's file is not chowned but replaced by root's copy (a new inode, same bytes).
    assert os.lstat(job_file).st_ino != inode
    assert done.by_path == {
        str(root / "registry"): ["taken back by root"],
        job_file: ["replaced by root's copy"],
        str(root / "registry" / "sub"): ["taken back by root"],
        str(root / "registry" / "sub" / "deep"): ["taken back by root"],
    }
    assert [n for n in os.listdir(root / "registry") if n.startswith(".rk-")] == []
    assert owner_mode(str(root / "roots")) == (0, 0, 0o600)


def test_a_link_to_a_directory_outside_is_moved_aside_never_followed(state):
    root, outside = state
    job_dir(root / "logs")
    os.symlink(outside, root / "logs" / "planted")
    os.symlink(outside / "theirs", root / "file-link")
    before = snapshot(str(outside))
    done = changes()
    reclaim(root_state_spec(root), done)
    assert snapshot(str(outside)) == before  # still the job's, 0777, 0666
    moved = aside_name(root / "aside", root / "logs" / "planted")
    assert os.readlink(moved) == str(outside)
    assert os.readlink(aside_name(root / "aside", root / "file-link")) == str(outside / "theirs")
    assert not os.path.lexists(root / "logs" / "planted")
    assert not os.path.lexists(root / "file-link")
    assert done.by_path[str(root / "logs" / "planted")] == [f"moved aside to {moved}"]
    assert "%" in os.path.basename(moved) and "/" not in os.path.basename(moved)


def test_fifos_and_forged_job_locks_are_moved_aside(state):
    root, _ = state
    os.mkfifo(root / "pipe")
    os.chown(root / "pipe", JOB_UID, JOB_GID)
    os.mkdir(root / "job-locks", 0o755)
    write(str(root / "job-locks" / "forged.lock"), b"start=9999999999", JOB_UID, JOB_GID)
    write(str(root / "job-locks" / "real.lock"), b"start=1", 0, 0, 0o644)
    # A job-owned file elsewhere is taken back, not moved: only job-locks hold off cleanups.
    write(str(root / "other.lock"), b"x", JOB_UID, JOB_GID, 0o644)
    reclaim(root_state_spec(root), changes())
    assert sorted(os.listdir(root / "job-locks")) == ["real.lock"]
    forged = aside_name(root / "aside", root / "job-locks" / "forged.lock")
    assert read(forged) == b"start=9999999999"
    assert stat.S_ISFIFO(os.lstat(aside_name(root / "aside", root / "pipe")).st_mode)
    assert not os.path.lexists(root / "pipe")
    assert owner_mode(str(root / "other.lock")) == (0, 0, 0o644)


def test_skipped_subtrees_and_the_aside_dir_are_left_alone(state):
    root, outside = state
    spool = job_dir(root / "spool", 0o1733)
    write(os.path.join(spool, "events-1000.jsonl"), b"e", JOB_UID, JOB_GID, 0o666)
    os.symlink(outside, os.path.join(spool, "link"))
    write(str(root / "aside" / "earlier"), b"x", JOB_UID, JOB_GID, 0o666)
    before_spool = snapshot(spool)
    before_aside = snapshot(str(root / "aside"))
    done = changes()
    # A skip given with a trailing slash still matches (paths are normalized).
    reclaim(root_state_spec(root, skip=[spool + "/"]), done)
    assert snapshot(spool) == before_spool
    assert snapshot(str(root / "aside")) == before_aside
    assert not done.changed


def test_a_job_still_writing_its_old_file_writes_to_a_file_nobody_reads(state):
    root, _ = state
    path = write(str(root / "watch-state.json"), b"{}", JOB_UID, JOB_GID, 0o644)
    with open(path, "r+b") as held:
        reclaim(root_state_spec(root), changes())
        held.write(b'{"forged": true}')
    assert read(path) == b"{}"


def test_an_aside_name_already_taken_is_numbered(state):
    root, outside = state
    planted = root / "planted"
    taken = aside_name(root / "aside", planted)
    write(taken, b"made by a job", 0, 0, 0o600)
    os.symlink(outside, planted)
    reclaim(root_state_spec(root), changes())
    assert read(taken) == b"made by a job"
    assert os.readlink(taken + ".1") == str(outside)


def test_a_name_a_job_made_not_utf8_is_reported_with_escapes(state):
    root, outside = state
    os.symlink(outside, os.fsencode(str(root)) + b"/bad-\xff")
    done = changes()
    reclaim(root_state_spec(root), done)
    assert list(done.by_path) == [str(root) + "/bad-\\xff"]
    assert os.listdir(os.fsencode(str(root))) == [b"aside"]


def test_a_failing_move_is_a_layout_error_naming_the_entry(state, monkeypatch):
    root, outside = state
    os.symlink(outside, root / "planted")

    def refused(src, dst, *args, **kwargs):
        raise OSError(errno.EPERM, "Operation not permitted", src, dst)

    monkeypatch.setattr(reclaim_module.os, "rename", refused)
    with pytest.raises(LayoutError) as raised:
        reclaim(root_state_spec(root), changes())
    message = str(raised.value)
    assert message.startswith(f"reclaiming {root} failed: Operation not permitted ({root}/planted")
    assert message.endswith("fix or remove that entry and run again")


def test_a_missing_aside_dir_does_not_leave_a_link_reported_as_moved(state):
    root, outside = state
    os.symlink(outside, root / "planted")
    spec = {**root_state_spec(root), "aside_dir": str(root.parent / "no-aside-dir")}
    done = changes()
    try:
        reclaim(spec, done)
    except LayoutError:
        return  # failing the task is right
    assert not os.path.lexists(root / "planted"), done.by_path


def test_check_mode_reports_and_changes_nothing(state):
    root, outside = state
    job_dir(root / "registry")
    write(str(root / "registry" / "job.json"), b"{}", JOB_UID, JOB_GID, 0o666)
    os.symlink(outside, root / "planted")
    before = snapshot(str(root.parent))
    done = changes(check_mode=True)
    reclaim(root_state_spec(root), done)
    assert snapshot(str(root.parent)) == before
    assert set(done.by_path) == {
        str(root / "registry"),
        str(root / "registry" / "job.json"),
        str(root / "planted"),
    }


def test_a_missing_tree_or_a_link_at_its_root_is_left_alone(state, tmp_path):
    root, outside = state
    done = changes()
    reclaim(root_state_spec(tmp_path / "not-there"), done)
    link = tmp_path / "linked-state"
    os.symlink(outside, link)
    before = snapshot(str(outside))
    reclaim({**root_state_spec(root), "path": str(link)}, done)
    assert snapshot(str(outside)) == before
    assert not done.changed


@pytest.mark.parametrize("mode", [0o4755, 0o2755, 0o4777], ids=["setuid", "setgid", "setuid-o+w"])
@pytest.mark.parametrize("uid", [JOB_UID, 0], ids=["job's", "root's-job-writable"])
def test_a_job_written_program_does_not_become_setuid_root(state, mode, uid):
    root, _ = state
    path = write(str(root / "tool"), b"#!/bin/sh\nid\n", uid, uid, 0o644)
    os.chmod(path, mode if uid else mode | 0o002)  # root's own: only when a job could write it
    reclaim(root_state_spec(root), changes())
    uid, gid, now = owner_mode(path)
    assert (uid, gid) == (0, 0)
    assert not now & (stat.S_ISUID | stat.S_ISGID), oct(now)


# --- service_store ----------------------------------------------------------------------------


def store_spec(store, aside):
    return {
        "path": str(store),
        "policy": "service_store",
        "aside_dir": str(aside),
        "owner": "nobody",
        "group": "nogroup",
    }


@pytest.fixture
def store(tmp_path):
    root = tmp_path / "images"
    os.mkdir(root, 0o750)
    os.chown(root, NOBODY_UID, NOGROUP_GID)
    aside = tmp_path / "aside"
    os.mkdir(aside, 0o700)
    outside = tmp_path / "outside-the-store"
    os.mkdir(outside)
    write(str(outside / "root-file"), b"root's\n", 0, 0, 0o600)
    return root, aside, outside


def test_the_store_goes_to_the_service_user_and_its_links_aside(store):
    root, aside, outside = store
    os.mkdir(root / "entries", 0o750)
    write(str(root / "entries" / "a.tar"), b"a", JOB_UID, JOB_GID, 0o640)
    write(str(root / "index.json"), b"{}", 0, 0, 0o600)
    os.symlink(outside, root / "entries" / "dir-link")
    os.symlink(outside / "root-file", root / "file-link")
    before = snapshot(str(outside))
    done = changes()
    reclaim(store_spec(root, aside), done)
    for path in (root / "entries", root / "entries" / "a.tar", root / "index.json"):
        assert os.lstat(path)[4:6] == (NOBODY_UID, NOGROUP_GID), path
    # Modes are not the store's business: kept.
    assert owner_mode(str(root / "entries" / "a.tar"))[2] == 0o640
    assert snapshot(str(outside)) == before
    assert os.readlink(aside_name(aside, root / "entries" / "dir-link")) == str(outside)
    assert os.readlink(aside_name(aside, root / "file-link")) == str(outside / "root-file")
    assert not os.path.lexists(root / "file-link")
    assert done.by_path[str(root / "index.json")] == ["given to the service user"]


def test_store_content_loses_group_other_write_and_a_files_set_id_bits(store):
    root, aside, _ = store
    shared = write(str(root / "shared"), b"x", JOB_UID, JOB_GID, 0o666)
    tool = write(str(root / "tool"), b"x", NOBODY_UID, NOGROUP_GID, 0o755)
    os.chmod(tool, 0o4755)
    os.mkdir(root / "setgid-dir")
    os.chown(root / "setgid-dir", NOBODY_UID, NOGROUP_GID)
    os.chmod(root / "setgid-dir", 0o2770)
    reclaim(store_spec(root, aside), changes())
    assert owner_mode(shared) == (NOBODY_UID, NOGROUP_GID, 0o644)
    assert owner_mode(tool) == (NOBODY_UID, NOGROUP_GID, 0o755)
    # A directory's setgid only passes its group on: kept.
    assert owner_mode(str(root / "setgid-dir")) == (NOBODY_UID, NOGROUP_GID, 0o2750)


def test_hard_links_are_moved_aside_from_both_trees(state, store):
    root, outside = state
    store_root, store_aside, _ = store
    os.link(outside / "theirs", root / "second-name")
    os.link(outside / "theirs", store_root / "second-name")
    before = snapshot(str(outside))
    reclaim(root_state_spec(root), changes())
    reclaim(store_spec(store_root, store_aside), changes())
    assert not os.path.lexists(root / "second-name")
    assert not os.path.lexists(store_root / "second-name")
    # The file outside is still the job's: not chowned through its second name.
    assert {p: v[:3] for p, v in snapshot(str(outside)).items()} == {
        p: v[:3] for p, v in before.items()
    }
    assert os.path.samefile(aside_name(root / "aside", root / "second-name"), outside / "theirs")


def test_the_store_in_check_mode_changes_nothing(store):
    root, aside, outside = store
    write(str(root / "a.tar"), b"a", JOB_UID, JOB_GID, 0o640)
    os.symlink(outside, root / "link")
    before = snapshot(str(root.parent))
    done = changes(check_mode=True)
    reclaim(store_spec(root, aside), done)
    assert snapshot(str(root.parent)) == before
    assert set(done.by_path) == {str(root / "a.tar"), str(root / "link")}


def test_a_right_store_is_no_change(store):
    root, aside, _ = store
    write(str(root / "a.tar"), b"a", NOBODY_UID, NOGROUP_GID, 0o640)
    done = changes()
    reclaim(store_spec(root, aside), done)
    assert not done.changed


def test_a_link_is_recreated_aside_when_the_store_is_another_filesystem(store, monkeypatch):
    root, aside, outside = store
    os.symlink(outside, root / "link")
    real = os.rename

    def cross_device(src, dst, *args, **kwargs):
        if str(src).startswith(str(root)):
            raise OSError(errno.EXDEV, "Invalid cross-device link")
        return real(src, dst, *args, **kwargs)

    monkeypatch.setattr(reclaim_module.os, "rename", cross_device)
    reclaim(store_spec(root, aside), changes())
    assert not os.path.lexists(root / "link")
    assert os.readlink(aside_name(aside, root / "link")) == str(outside)
    assert os.listdir(outside) == ["root-file"]
