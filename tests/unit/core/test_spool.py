"""The spool: root reads what job hooks leave there only fd-relative, never following, never
blocking, size-bounded, and with the file's owner uid; nothing else of a record is trusted.

Runs as root (files are chowned to a test uid to stand for the CI user)."""

from __future__ import annotations

import json
import os

import pytest
from runnerkeep import spool, statefile

JOB_UID = 65534
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to chown to a job uid")


def write(path, data: str | bytes, uid: int = JOB_UID) -> None:
    with open(path, "wb") as handle:
        handle.write(data.encode() if isinstance(data, str) else data)
    os.chown(path, uid, uid)


def record(job_id="j1", pid=123):
    return json.dumps({"job_id": job_id, "pid": pid, "pid_start": "1", "started": 1.0})


@pytest.fixture
def sp(tmp_path):
    directory = tmp_path / "spool"
    directory.mkdir(mode=0o1733)
    return str(directory)


def by_name(entries):
    return {e.name: e for e in entries}


def test_a_record_comes_back_with_its_owner_uid(sp):
    write(os.path.join(sp, "job-j1.json"), record())
    (entry,) = spool.read_spool(sp, "job")
    assert entry.usable and entry.uid == JOB_UID and entry.record["job_id"] == "j1"


def test_planted_shapes_are_unusable_and_nothing_is_followed_or_blocked_on(sp, tmp_path):
    secret = tmp_path / "root-only"
    secret.write_text(record("stolen"))
    os.chmod(secret, 0o600)
    os.symlink(str(secret), os.path.join(sp, "job-link.json"))
    os.symlink("/dev/zero", os.path.join(sp, "job-zero.json"))
    os.mkfifo(os.path.join(sp, "job-fifo.json"))
    os.mkdir(os.path.join(sp, "job-dir.json"))
    os.link(str(secret), os.path.join(sp, "job-hard.json"))
    write(os.path.join(sp, "job-huge.json"), b" " * (spool.RECORD_BOUND + 10))
    write(os.path.join(sp, "job-deep.json"), "[" * 20000)
    write(os.path.join(sp, "job-ok.json"), record("ok"))
    entries = by_name(spool.read_spool(sp, "job", lambda r: r))
    assert entries["job-link.json"].problem == "a symlink"
    assert entries["job-zero.json"].problem == "a symlink"
    assert entries["job-fifo.json"].problem == "a FIFO"
    assert entries["job-dir.json"].problem == "a directory"
    assert entries["job-hard.json"].problem == "a hard link"
    assert "larger than" in entries["job-huge.json"].problem
    assert entries["job-deep.json"].problem == "not a usable record"
    assert entries["job-ok.json"].usable
    assert not any(e.record and e.record.get("job_id") == "stolen" for e in entries.values())


def test_the_size_bound_applies_to_every_record(sp, monkeypatch):
    write(os.path.join(sp, "job-grow.json"), record())
    monkeypatch.setattr(spool, "RECORD_BOUND", 16)
    (entry,) = spool.read_spool(sp, "job")
    assert not entry.usable


def test_a_spool_not_owned_by_root_is_not_read(sp, capsys):
    write(os.path.join(sp, "job-j1.json"), record())
    os.chown(sp, JOB_UID, JOB_UID)
    assert spool.read_spool(sp, "job") == []
    assert "not root" in capsys.readouterr().err


def test_a_spool_that_is_a_symlink_is_not_read(sp, tmp_path):
    write(os.path.join(sp, "job-j1.json"), record())
    link = str(tmp_path / "link")
    os.symlink(sp, link)
    assert spool.read_spool(link, "job") == []


def test_remove_is_relative_to_the_directory_fd_and_never_follows(sp, tmp_path):
    target = tmp_path / "keep"
    target.write_text("x")
    os.symlink(str(target), os.path.join(sp, "done-x.json"))
    with spool.opened(sp) as opened:
        (entry,) = opened.read("done")
        assert entry.problem == "a symlink"
        assert opened.remove(entry.name)
    assert target.read_text() == "x" and os.listdir(sp) == []


def test_names_outside_the_kinds_are_not_looked_at(sp):
    write(os.path.join(sp, "job-j1.json.tmp"), record())
    write(os.path.join(sp, ".tmp-job-j1.json.1.2"), record())
    write(os.path.join(sp, "events-abc.jsonl"), "{}")
    assert spool.read_spool(sp, "job") == [] and spool.read_spool(sp, "events") == []


def test_event_lines_are_validated_one_by_one(sp):
    lines = [json.dumps({"time": 1.0, "kind": "cache"}), "garbage", '{"time": 1e999}']
    write(os.path.join(sp, f"events-{JOB_UID}.jsonl"), "\n".join(lines))
    (entry,) = spool.read_spool(sp, "events", lambda e: e if isinstance(e, dict) else None)
    assert entry.uid == JOB_UID and entry.key == str(JOB_UID)
    assert len(entry.record) == 1 and entry.skipped == 2


def test_the_job_side_writes_private_records_and_replaces_a_planted_symlink(sp, tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("root data")
    os.symlink(str(outside), os.path.join(sp, "job-j1.json"))
    path = spool.write_record(sp, "job-j1.json", {"job_id": "j1"})
    assert outside.read_text() == "root data"
    assert not os.path.islink(path)
    assert os.stat(path).st_mode & 0o777 == 0o600
    with open(path, "rb") as handle:
        assert statefile.loads_strict(handle.read()) == {"job_id": "j1"}
    assert [n for n in os.listdir(sp) if n.startswith(".tmp-")] == []


def test_the_job_side_appends_events_but_not_through_a_symlink(sp, tmp_path):
    outside = tmp_path / "outside"
    outside.write_text("")
    os.symlink(str(outside), os.path.join(sp, f"events-{os.geteuid()}.jsonl"))
    with pytest.raises(OSError):
        spool.append_event(sp, b'{"kind": "x"}\n')
    assert outside.read_text() == ""


def test_process_real_uid(tmp_path):
    assert spool.process_real_uid(os.getpid()) == os.getuid()
    assert spool.process_real_uid(1) == 0
    assert spool.process_real_uid(2**22 + 12345) is None


def test_use_spool_only_for_a_process_that_does_not_own_the_state_dir(tmp_path):
    assert spool.use_spool(str(tmp_path)) is False  # root keeps its own state
    pid = os.fork()
    if pid == 0:  # the job user: the state dir is root's
        code = 1
        try:
            os.setgid(JOB_UID)
            os.setuid(JOB_UID)
            code = 0 if spool.use_spool(str(tmp_path)) else 3
        finally:
            os._exit(code)
    _pid, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
