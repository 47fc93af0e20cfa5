"""The job registry root trusts: its own job locks plus spool records, each spool record judged
by its file's owner and the process it names (alive, same start time, same real uid), never by
what it claims. Runs as root; uid 65534 stands for the CI user."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time

import pytest
from runnerkeep import spool
from runnerkeep.cleanup import lock
from runnerkeep.procutil import process_start_time
from runnerkeep_cli.main import main

JOB_UID = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as a job uid")


@pytest.fixture
def host():
    """A state dir root:root 0755 with a spool 1733 (root-owned), in a tree a job user can
    traverse (pytest's own temp dirs are private to root)."""
    top = tempfile.mkdtemp(prefix="rk-registry-", dir="/tmp")
    os.chmod(top, 0o755)
    state = os.path.join(top, "state")
    os.mkdir(state, 0o755)
    spool_dir = os.path.join(state, "spool")
    os.mkdir(spool_dir)
    os.chmod(spool_dir, 0o1733)
    try:
        yield state, spool_dir
    finally:
        shutil.rmtree(top, ignore_errors=True)


def plant(spool_dir, name, record, uid=JOB_UID):
    path = os.path.join(spool_dir, name)
    with open(path, "w") as handle:
        json.dump(record, handle)
    os.chown(path, uid, uid)
    return path


def forged(pid, started=None, pid_start="auto", job_id="forged"):
    return {
        "job_id": job_id,
        "pid": pid,
        "pid_start": process_start_time(pid) if pid_start == "auto" else pid_start,
        "started": time.time() if started is None else started,
    }


def as_job_user(func, uid=JOB_UID, keep_alive=False):
    """Run ``func()`` in a forked child that has become ``uid`` (real and effective). Returns
    (pid, what it printed, a write fd: closing it ends a ``keep_alive`` child)."""
    out_r, out_w = os.pipe()
    hold_r, hold_w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the job user: never returns into pytest
        code = 1
        try:
            os.close(out_r)
            os.close(hold_w)
            os.setgroups([])
            os.setgid(uid)
            os.setuid(uid)
            os.write(out_w, (repr(func()) + "\n").encode())
            os.close(out_w)
            if keep_alive:
                os.read(hold_r, 1)
            code = 0
        finally:
            os._exit(code)
    os.close(out_w)
    os.close(hold_r)
    with os.fdopen(out_r) as reader:
        line = reader.readline().strip()
    return pid, line, hold_w


def finish(pid, hold_w):
    os.close(hold_w)
    os.waitpid(pid, 0)


@pytest.fixture
def job_process(host):
    """A real process of the job uid that writes its own lock through ``take_job_lock`` (as the
    CI user it goes to the spool) and lives until the test ends."""
    state, _spool = host
    pid, line, hold = as_job_user(
        lambda: lock.take_job_lock(state, "real-job", os.getpid()).get("lock_file"), keep_alive=True
    )
    try:
        yield pid, line.strip("'")
    finally:
        finish(pid, hold)


def test_a_job_users_own_living_process_holds_the_lock(host, job_process):
    state, spool_dir = host
    proc, where = job_process
    assert where == os.path.join(spool_dir, "job-real-job.json")
    assert os.stat(where).st_uid == JOB_UID
    assert not os.path.exists(lock.lock_dir(state))  # root's own dir untouched by the job
    live, stale = lock.active_jobs(state)
    assert [(r["job_id"], r["pid"], r["uid"]) for r in live] == [("real-job", proc, JOB_UID)]
    assert stale == []


def test_the_same_record_owned_by_root_is_stale(host, job_process):
    state, _spool = host
    _proc, where = job_process
    os.chown(where, 0, 0)
    live, stale = lock.active_jobs(state)
    assert live == [] and "does not run as the record's owner" in stale[0]["stale"]
    assert not os.path.exists(where)


def test_a_record_naming_pid_1_is_stale_and_removed(host):
    state, spool_dir = host
    path = plant(spool_dir, "job-pid1.json", forged(1))
    live, stale = lock.active_jobs(state)
    assert live == [] and stale[0]["job_id"] == "forged"
    assert not os.path.exists(path)


def test_a_record_naming_a_process_of_another_uid_is_stale(host):
    state, spool_dir = host
    plant(spool_dir, "job-root.json", forged(os.getpid()))  # root's process, file of the job
    live, stale = lock.active_jobs(state)
    assert live == [] and "owner" in stale[0]["stale"]


@pytest.mark.parametrize(
    "record, reason",
    [
        (forged(os.getpid(), started=4102444800), "future"),
        (forged(os.getpid(), started=1.0), "older than"),
        (forged(os.getpid(), pid_start=None), "no process start time"),
        (forged(os.getpid(), pid_start="1"), "gone"),
        ({"job_id": "x", "pid": "1", "started": 1}, "not a usable record"),
    ],
)
def test_forged_claims_are_stale(host, record, reason):
    state, spool_dir = host
    plant(spool_dir, "job-x.json", record, uid=0)
    live, stale = lock.active_jobs(state)
    assert live == [] and reason in stale[0]["stale"]


def test_a_dry_run_changes_nothing_in_the_spool(host):
    state, spool_dir = host
    plant(spool_dir, "job-pid1.json", forged(1))
    os.symlink("/etc/passwd", os.path.join(spool_dir, "job-link.json"))
    before = sorted(os.listdir(spool_dir))
    live, stale = lock.active_jobs(state, remove_stale=False)
    assert live == [] and len(stale) == 2
    assert sorted(os.listdir(spool_dir)) == before
    assert sorted(os.listdir(state)) == ["spool"]


def test_planted_shapes_in_the_spool_hold_nothing_off(host):
    state, spool_dir = host
    os.symlink("/etc/shadow", os.path.join(spool_dir, "job-link.json"))
    os.mkfifo(os.path.join(spool_dir, "job-fifo.json"))
    plant(spool_dir, "job-big.json", {"job_id": "x" * 100000, "pid": 1, "started": 1})
    live, stale = lock.active_jobs(state)
    assert live == [] and len(stale) == 3
    assert os.path.exists("/etc/shadow")


def test_root_stages_are_not_held_off_by_forged_spool_records(host):
    state, spool_dir = host
    plant(spool_dir, "job-pid1.json", forged(1, started=4102444800))
    assert lock.check_job_lock(state, "emergency") == []


def test_the_cli_status_shows_spool_jobs_and_the_hooks_of_a_job_user_use_the_spool(
    host, job_process, tmp_path, capsys
):
    state, spool_dir = host
    _proc, _where = job_process
    cfg = tmp_path / "config.json"
    cfg.write_text(json.dumps({"paths": {"state_dir": state, "spool_dir": spool_dir}}))
    assert main(["cleanup", "status", "--json", "--config", str(cfg)]) == 7
    data = json.loads(capsys.readouterr().out)
    assert [j["job_id"] for j in data["jobs"]] == ["real-job"]
    assert data["jobs"][0]["uid"] == JOB_UID


def test_job_end_of_the_job_user_removes_its_own_record(host, job_process):
    state, _spool_dir = host
    _proc, where = job_process
    pid, line, hold = as_job_user(lambda: lock.release_job_lock(state, "real-job"))
    finish(pid, hold)
    assert "real-job" in line
    assert not os.path.exists(where)
    assert lock.active_jobs(state) == ([], [])


def test_a_job_cannot_remove_another_users_record(host):
    state, spool_dir = host
    other = plant(spool_dir, "job-other.json", forged(1), uid=1234)
    pid, _line, hold = as_job_user(lambda: lock.release_job_lock(state, "other"))
    finish(pid, hold)
    assert os.path.exists(other)  # the sticky bit: only root judges it (and removes it stale)
    assert spool.read_spool(spool_dir, "job")[0].uid == 1234


def test_a_cleanup_reads_the_spool_the_config_names(host):
    # paths.spool_dir moved away from <state>/spool: the stages must still see the job there.
    from runnerkeep.cleanup import run_cleanup
    from runnerkeep.errors import LockHeldError

    state, _default_spool = host
    spool_dir = os.path.join(os.path.dirname(state), "elsewhere-spool")
    os.mkdir(spool_dir)
    os.chmod(spool_dir, 0o1733)
    pid, _line, hold = as_job_user(lambda: 1, keep_alive=True)
    try:
        plant(spool_dir, "job-live.json", forged(pid, job_id="live"))
        config = {
            "paths": {"state_dir": state, "spool_dir": spool_dir},
            "cleanup": {"cleaners": {}},
        }
        with pytest.raises(LockHeldError, match="live"):
            run_cleanup("post", config)
        report = run_cleanup("post", config, dry_run=True)
        assert [j["job_id"] for j in report.jobs] == ["live"]
    finally:
        finish(pid, hold)
