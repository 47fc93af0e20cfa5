"""Job locks, the guard and cleanup.lock on a state dir that cannot be written, and forged locks.

A full disk (ENOSPC) or a read-only one (EROFS) is faked at the system-call boundary for paths
under the state dir (root ignores mode bits, and a unit test cannot mount): ``os.open`` with
O_CREAT of a new file, ``os.mkdir`` and, read-only, every write and unlink fail as the kernel
would. The run dir ($RUNNERKEEP_RUN_DIR) is a temp dir of the test.
"""

from __future__ import annotations

import errno
import json
import os
import time

import pytest
from cleanuptest_helpers import files_cleaner, make_file
from runnerkeep import statefile
from runnerkeep.cleanup import lock, run_cleanup
from runnerkeep.errors import LockHeldError
from runnerkeep.procutil import process_start_time
from runnerkeep_cli.main import main

RUN_DIR_ENV = "RUNNERKEEP_RUN_DIR"  # where state goes when the state dir cannot take it
_WRITE = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND


def refuse_writes(monkeypatch, root: str, err: int = errno.ENOSPC) -> None:
    """Make ``root`` (and what is below it) behave like a full (ENOSPC) or read-only (EROFS)
    filesystem for the calls runnerkeep makes by path."""
    root = os.path.abspath(root)
    real_open, real_mkdir = os.open, os.mkdir
    real_unlink, real_replace = os.unlink, os.replace

    def inside(path) -> bool:
        if not isinstance(path, (str, bytes, os.PathLike)):
            return False
        full = os.path.abspath(os.fsdecode(path))
        return full == root or full.startswith(root + os.sep)

    def refused(path):
        return OSError(err, os.strerror(err), os.fsdecode(path))

    def fake_open(path, flags, mode=0o777, *, dir_fd=None):
        if dir_fd is None and inside(path):
            new = flags & os.O_CREAT and not os.path.lexists(path)
            if new or (err == errno.EROFS and flags & _WRITE):
                raise refused(path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    def fake_mkdir(path, mode=0o777, *, dir_fd=None):
        if dir_fd is None and inside(path) and not os.path.lexists(path):
            raise refused(path)
        return real_mkdir(path, mode, dir_fd=dir_fd)

    def fake_unlink(path, *, dir_fd=None):
        if dir_fd is None and inside(path) and err == errno.EROFS:
            raise refused(path)
        return real_unlink(path, dir_fd=dir_fd)

    def fake_replace(src, dst, **kwargs):
        if inside(dst) and err == errno.EROFS:
            raise refused(dst)
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "open", fake_open)
    monkeypatch.setattr(os, "mkdir", fake_mkdir)
    monkeypatch.setattr(os, "unlink", fake_unlink)
    monkeypatch.setattr(os, "replace", fake_replace)


@pytest.fixture
def run_dir(tmp_path, monkeypatch):
    path = tmp_path / "run"
    monkeypatch.setenv(RUN_DIR_ENV, str(path))
    return path


@pytest.fixture
def sdir(tmp_path):
    return str(tmp_path / "state")


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS, errno.EDQUOT])
def test_a_job_lock_the_state_dir_cannot_take_goes_to_the_run_dir_and_blocks_post(
    sdir, run_dir, monkeypatch, err
):
    refuse_writes(monkeypatch, sdir, err)
    record = lock.take_job_lock(sdir, "j1", pid=os.getpid())
    assert record["lock_file"].startswith(str(run_dir) + os.sep)
    live, _stale = lock.active_jobs(sdir)
    assert [r["job_id"] for r in live] == ["j1"]
    with pytest.raises(LockHeldError, match="j1"):
        lock.check_job_lock(sdir, "post")
    assert lock.release_job_lock(sdir, "j1")["job_id"] == "j1"
    assert lock.active_jobs(sdir) == ([], [])
    assert not os.path.exists(sdir)


def test_a_seeded_read_only_state_dir_uses_its_existing_guard(sdir, run_dir, monkeypatch):
    lock.take_job_lock(sdir, "old", pid=os.getpid())
    lock.release_job_lock(sdir, "old")
    assert os.path.exists(os.path.join(lock.lock_dir(sdir), lock.GUARD))
    refuse_writes(monkeypatch, sdir, errno.EROFS)
    lock.take_job_lock(sdir, "j1", pid=os.getpid())
    assert [r["job_id"] for r in lock.active_jobs(sdir)[0]] == ["j1"]
    lock.release_job_lock(sdir, "j1")
    assert lock.active_jobs(sdir) == ([], [])
    # Only the job lock went to the run dir: the guard was the state dir's own.
    assert os.listdir(lock.fallback_lock_dir(sdir)) == []


def test_a_lock_that_a_read_only_state_dir_keeps_is_a_warning_not_a_failure(
    sdir, run_dir, monkeypatch, capsys
):
    lock.take_job_lock(sdir, "j1", pid=os.getpid())
    refuse_writes(monkeypatch, sdir, errno.EROFS)
    result = lock.release_job_lock(sdir, "j1")
    assert result["released"] is False and "cannot remove" in result["warning"]
    assert capsys.readouterr().err.count("warning") == 1


def test_the_run_lock_falls_back_and_still_excludes_a_second_run(sdir, run_dir, monkeypatch):
    refuse_writes(monkeypatch, sdir)
    with lock.run_lock(sdir):
        fallback = statefile.fallback_path(sdir, "cleanup", ".lock")
        assert os.listdir(run_dir) == [os.path.basename(fallback)]
        with pytest.raises(LockHeldError, match="another cleanup run"), lock.run_lock(sdir):
            pass


def test_the_run_lock_of_a_read_only_state_dir_is_its_existing_file(sdir, run_dir, monkeypatch):
    with lock.run_lock(sdir):
        pass
    refuse_writes(monkeypatch, sdir, errno.EROFS)
    with lock.run_lock(sdir), pytest.raises(LockHeldError), lock.run_lock(sdir):
        pass
    assert not run_dir.exists()


def _files_config(tmp_path, sdir):
    root = tmp_path / "root"
    make_file(str(root / "old" / "junk.bin"), 4096, age_days=3)
    return {
        "paths": {
            "state_dir": sdir,
            "cache_dir": str(tmp_path / "cache"),
            "log_dir": str(tmp_path / "logs"),
        },
        "cleanup": {
            "cleaners": {"t": files_cleaner([root])},
            # Zero targets: a run never touches this machine's real directories.
            "targets": {stage: {"free": 0, "inodes": 0} for stage in ("pre", "post", "emergency")},
        },
    }, root


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EROFS])
def test_emergency_cleanup_runs_on_a_state_dir_that_cannot_be_written(
    tmp_path, sdir, run_dir, monkeypatch, err
):
    config, root = _files_config(tmp_path, sdir)
    refuse_writes(monkeypatch, sdir, err)
    report = run_cleanup("emergency", config, run_all=True, cleaner_names=["t"])
    assert report.items_removed == 1
    assert not (root / "old").exists()


def test_a_dry_run_on_a_full_state_dir_creates_nothing_anywhere(
    tmp_path, sdir, run_dir, monkeypatch
):
    config, root = _files_config(tmp_path, sdir)
    refuse_writes(monkeypatch, sdir)
    report = run_cleanup("post", config, run_all=True, cleaner_names=["t"], dry_run=True)
    assert report.items_removed == 1
    assert not run_dir.exists() and not os.path.exists(sdir)
    assert (root / "old" / "junk.bin").exists()


def test_a_dry_run_sees_a_job_recorded_in_the_run_dir_and_removes_nothing(
    sdir, run_dir, monkeypatch
):
    refuse_writes(monkeypatch, sdir)
    lock.take_job_lock(sdir, "j1", pid=os.getpid())
    before = sorted(os.listdir(lock.fallback_lock_dir(sdir)))
    live, _ = lock.active_jobs(sdir, remove_stale=False)
    assert [r["job_id"] for r in live] == ["j1"]
    assert sorted(os.listdir(lock.fallback_lock_dir(sdir))) == before


def _write_config(tmp_path, sdir) -> str:
    config, _root = _files_config(tmp_path, sdir)
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def test_job_hooks_exit_0_with_one_warning_when_nothing_can_record(
    tmp_path, sdir, monkeypatch, capsys
):
    cfg = _write_config(tmp_path, sdir)
    run = tmp_path / "run"
    monkeypatch.setenv(RUN_DIR_ENV, str(run))
    refuse_writes(monkeypatch, sdir)
    refuse_writes(monkeypatch, str(run))
    pid = str(os.getpid())
    code = main(
        ["cleanup", "job-start", "--job-id", "j1", "--pid", pid, "--no-pre", "--config", cfg]
    )
    out = capsys.readouterr()
    assert code == 0, out
    warnings = [line for line in out.err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "cannot record the job lock of j1" in warnings[0]
    assert "Traceback" not in out.out + out.err
    code = main(["cleanup", "job-end", "--job-id", "j1", "--no-post", "--config", cfg])
    assert code == 0, capsys.readouterr()


def test_job_hooks_and_the_emergency_stage_on_a_full_state_dir_cli(
    tmp_path, sdir, run_dir, monkeypatch, capsys
):
    cfg = _write_config(tmp_path, sdir)
    refuse_writes(monkeypatch, sdir)
    pid = str(os.getpid())
    argv = ["cleanup", "job-start", "--job-id", "j1", "--pid", pid, "--no-pre", "--config", cfg]
    assert main(argv) == 0, capsys.readouterr()
    assert main(["cleanup", "job-end", "--job-id", "j1", "--no-post", "--config", cfg]) == 0
    code = main(["cleanup", "run", "--stage", "emergency", "--all", "--config", cfg])
    out = capsys.readouterr()
    assert code == 0, out
    assert not (tmp_path / "root" / "old").exists()


# --- forged locks ---------------------------------------------------------------------------


def _plant(sdir: str, record: dict) -> str:
    os.makedirs(lock.lock_dir(sdir), exist_ok=True)
    path = os.path.join(lock.lock_dir(sdir), "p.json")
    with open(path, "w") as handle:
        json.dump(record, handle)
    return path


@pytest.mark.parametrize("ahead", [3600, 1e8])
def test_a_lock_started_in_the_future_is_stale(sdir, ahead):
    now = time.time()
    record = {"job_id": "p", "pid": 1, "pid_start": process_start_time(1), "started": now + ahead}
    assert lock.stale_reason(record, 86400, now) == "started in the future"
    _plant(sdir, record)
    assert lock.check_job_lock(sdir, "post") == []


def test_a_start_within_the_clock_skew_is_live():
    now = time.time()
    record = {"job_id": "j", "pid": os.getpid(), "pid_start": process_start_time(os.getpid())}
    assert lock.stale_reason({**record, "started": now + 60}, 86400, now) is None


def test_a_lock_without_a_process_start_time_cannot_block_cleanup(sdir):
    now = time.time()
    record = {"job_id": "p", "pid": 1, "started": now}
    assert lock.stale_reason(record, 86400, now) == "cannot be checked: no process start time"
    assert lock.stale_reason({**record, "pid_start": None}, 86400, now) is not None
    path = _plant(sdir, record)
    live, stale = lock.active_jobs(sdir)
    assert live == [] and stale[0]["stale"].startswith("cannot be checked")
    assert not os.path.exists(path)


@pytest.mark.parametrize("stage", ["post", "emergency"])
def test_a_forged_lock_never_blocks_the_post_or_emergency_stage(tmp_path, sdir, stage):
    config, _root = _files_config(tmp_path, sdir)
    _plant(sdir, {"host": "vm", "job_id": "p", "pid": 1, "started": time.time() + 1e8})
    report = run_cleanup(stage, config, run_all=True, cleaner_names=["t"])
    assert report.items_removed == 1 and report.jobs == []


def test_a_real_job_lock_still_blocks_the_emergency_stage_without_force(tmp_path, sdir):
    config, _root = _files_config(tmp_path, sdir)
    with lock.job_lock(sdir, "real"):
        with pytest.raises(LockHeldError):
            run_cleanup("emergency", config, run_all=True, cleaner_names=["t"])
        assert run_cleanup(
            "emergency", config, run_all=True, cleaner_names=["t"], force=True
        ).items_removed
