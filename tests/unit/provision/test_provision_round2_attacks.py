"""Round-2 attacks on b61c4e7 (host_files._remove_dead_temps: temps a killed run left beside a
file go when the file is next written: our name pattern, root's, one link): in a directory a
job owns (the runner's .env), what the job can put at a temp's name, and when. Strict xfails
are breaks still open (they flip when fixed)."""

from __future__ import annotations

import os

from provisiontest_helpers import JOB_GID, JOB_UID, changes, read, snapshot, write
from runnerkeep.provision.changes import LayoutError
from runnerkeep.provision.host_files import ensure_file, ensure_lines

DEAD = ".rk-layout-0123456789ab-"


def job_owned_dir(path) -> str:
    os.makedirs(path)
    os.chown(path, JOB_UID, JOB_GID)
    return str(path)


def test_a_jobs_temp_look_alikes_of_every_kind_stay(tmp_path):
    """In the job's directory: its own file, a FIFO, a directory, a symlink to a root file,
    all under the exact dead-temp name of .env: none is removed, nothing outside changes."""
    runner = job_owned_dir(tmp_path / "runner")
    outside = tmp_path / "outside"
    secret = write(str(outside / "shadow"), b"root:x\n", 0, 0, 0o600)
    before = snapshot(str(outside))
    path = write(os.path.join(runner, ".env"), b"A=1\n", JOB_UID, JOB_GID)
    planted = []
    for index, kind in enumerate(["file", "fifo", "dir", "link"]):
        name = os.path.join(runner, f".rk-layout-{index:012x}-.env")
        if kind == "file":
            write(name, b"mine", JOB_UID, JOB_GID)
        elif kind == "fifo":
            os.mkfifo(name)
        elif kind == "dir":
            os.mkdir(name)
        else:
            os.symlink(secret, name)
        os.lchown(name, JOB_UID, JOB_GID)
        planted.append(name)
    ensure_lines(path, {"A": "2"}, changes())
    assert read(path) == b"A=2\n"
    assert all(os.path.lexists(name) for name in planted)
    assert snapshot(str(outside)) == before


def test_a_dead_temp_with_a_newline_in_its_files_name_goes_and_only_it(tmp_path):
    """The name after the prefix is compared whole: a newline does not end the match early."""
    path = write(str(tmp_path / "a\nb.conf"), b"old\n")
    dead = write(str(tmp_path / (DEAD + "a\nb.conf")), b"half")
    near = write(str(tmp_path / (DEAD + "a")), b"other file's temp")
    ensure_file(
        {"path": path, "content": "new\n", "mode": "0644", "owner": "root", "group": "root"},
        changes(),
    )
    assert read(path) == b"new\n" and not os.path.lexists(dead) and os.path.exists(near)


def test_a_job_swapping_a_directory_in_between_stat_and_unlink_does_not_fail_the_run(
    tmp_path, monkeypatch
):
    runner = job_owned_dir(tmp_path / "runner")
    path = write(os.path.join(runner, ".env"), b"A=1\n", 0, 0)
    # The job renames root's file to the dead-temp name (it owns the directory) ...
    dead = write(os.path.join(runner, DEAD + ".env"), b"A=0\n", 0, 0)
    real_stat = os.stat

    def stat_then_swap(name, *args, **kwargs):
        info = real_stat(name, *args, **kwargs)
        if isinstance(name, str) and name.startswith(".rk-layout-") and "dir_fd" in kwargs:
            # ... and, as the stat returns, puts a directory there (one renameat2 exchange).
            os.rename(dead, dead + ".away")
            os.mkdir(dead)
        return info

    monkeypatch.setattr(os, "stat", stat_then_swap)
    try:
        ensure_lines(path, {"A": "2"}, changes())
    except LayoutError:
        pass  # a clear one-line refusal is acceptable
    finally:
        monkeypatch.undo()
    assert read(path) == b"A=2\n"
