"""The spool: root reads what job hooks leave there only fd-relative, never following, never
blocking, size-bounded, and with the file's owner uid; nothing else of a record is trusted.

Runs as root (files are chowned to a test uid to stand for the CI user)."""

from __future__ import annotations

import json
import os
import time

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


# --- ingest: root moves done records and event lines into its own state ---------------------


def done_record(job_id="j1", **over):
    now = time.time()
    record = {
        "job_id": job_id,
        "start_time": now - 110,
        "end_time": now - 10,
        "start_used_bytes": 100,
        "peak_used_bytes": 600,
        "end_used_bytes": 200,
        "start_used_inodes": 10,
        "peak_used_inodes": 15,
        "end_used_inodes": 12,
        "peak_bytes": 1,
    }
    record.update(over)
    return json.dumps(record)


@pytest.fixture
def host_config(tmp_path, sp):
    state = tmp_path / "state"
    state.mkdir()
    return {
        "paths": {"state_dir": str(state), "spool_dir": sp, "cache_dir": str(tmp_path)},
        "disk": {"path": str(tmp_path)},
    }


def test_done_records_are_ingested_validated_and_removed(host_config, sp):
    from runnerkeep.disk import history

    write(os.path.join(sp, "done-j1-1.json"), done_record())
    write(os.path.join(sp, "done-big-1.json"), done_record("big", peak_used_bytes=2**61))
    write(os.path.join(sp, "done-inf-1.json"), done_record("inf").replace("600", "1e999"))
    write(os.path.join(sp, "done-fut-1.json"), done_record("fut", end_time=4102444800.0))
    write(os.path.join(sp, "done-neg-1.json"), done_record("neg", start_used_bytes=-5))
    write(os.path.join(sp, "done-esc-1.json"), done_record("a\x1b[2Jb"))
    os.symlink("/etc/passwd", os.path.join(sp, "done-link-1.json"))
    result = history.ingest_spool(host_config)
    assert sorted(r["job_id"] for r in result["ingested"]) == ["a\\x1b[2Jb", "big", "j1"]
    assert len(result["rejected"]) == 4
    assert [n for n in os.listdir(sp)] == []
    records = {r["job_id"]: r for r in history.read_history(host_config["paths"]["state_dir"])}
    assert records["j1"]["peak_bytes"] == 500 and records["j1"]["uid"] == JOB_UID
    capacity = os.statvfs(sp).f_blocks * os.statvfs(sp).f_frsize
    assert records["big"]["peak_bytes"] <= capacity
    assert records["j1"]["path"] == host_config["disk"]["path"]
    from runnerkeep import events

    jobs = list(events.read_events(host_config["paths"]["state_dir"], "job"))
    assert {e["job_id"] for e in jobs} == set(records) and all(e["uid"] == JOB_UID for e in jobs)


def test_a_dry_ingest_changes_nothing(host_config, sp):
    from runnerkeep import events
    from runnerkeep.disk import history

    write(os.path.join(sp, "done-j1-1.json"), done_record())
    write(os.path.join(sp, f"events-{JOB_UID}.jsonl"), json.dumps({"time": 1.0, "kind": "x"}))
    before = sorted(os.listdir(sp))
    assert len(history.ingest_spool(host_config, dry_run=True)["ingested"]) == 1
    assert events.ingest_spool(host_config["paths"]["state_dir"], sp, dry_run=True) == 0
    assert sorted(os.listdir(sp)) == before
    assert os.listdir(host_config["paths"]["state_dir"]) == []


def test_spooled_events_are_stamped_by_root_and_reduced(host_config, sp):
    from runnerkeep import events

    lines = [
        {"time": 4102444800.0, "kind": "cache", "result": "hit", "n": 3, "o": {"x": 1}},
        {"time": 5.0, "kind": "cache", "result": "x" * 5000, "uid": 0},
    ]
    write(os.path.join(sp, f"events-{JOB_UID}.jsonl"), "\n".join(map(json.dumps, lines)))
    sdir = host_config["paths"]["state_dir"]
    assert events.ingest_spool(sdir, sp) == 2
    got = list(events.read_events(sdir))
    assert all(e["time"] < 4102444800.0 and e["uid"] == JOB_UID for e in got)
    assert got[0]["job_time"] == 4102444800.0 and "o" not in got[0] and got[0]["n"] == 3
    assert len(got[1]["result"]) == events.SPOOL_TEXT
    assert os.listdir(sp) == []


def test_a_job_users_disk_hooks_write_the_spool_and_the_watch_ingests_them(tmp_path):
    import shutil
    import tempfile

    from runnerkeep.disk import history

    top = tempfile.mkdtemp(prefix="rk-spool-", dir="/tmp")
    try:
        os.chmod(top, 0o755)
        state = os.path.join(top, "state")
        os.mkdir(state, 0o755)
        sp = os.path.join(state, "spool")
        os.mkdir(sp)
        os.chmod(sp, 0o1733)
        config = {
            "paths": {"state_dir": state, "spool_dir": sp, "cache_dir": top},
            "disk": {"path": top},
        }
        pid = os.fork()
        if pid == 0:  # the CI user's hooks
            code = 1
            try:
                os.setgroups([])
                os.setgid(JOB_UID)
                os.setuid(JOB_UID)
                history.job_start(config, "gh-1", spawn=False)
                record = history.job_end(config, "gh-1")
                code = 0 if record.get("spooled") else 3
            finally:
                os._exit(code)
        _pid, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
        assert sorted(os.listdir(state)) == ["spool"]  # nothing of root's written by the job
        (done,) = spool.read_spool(sp, "done")
        assert done.uid == JOB_UID
        assert [r["job_id"] for r in history.ingest_spool(config)["ingested"]] == ["gh-1"]
        assert [r["uid"] for r in history.read_history(state)] == [JOB_UID]
    finally:
        shutil.rmtree(top, ignore_errors=True)


# --- ingest: what forged done records can do to root's history is bounded --------------------


def spool_names(sp):
    return sorted(os.listdir(sp))


def test_a_flood_of_done_records_trickles_in_a_few_per_uid_and_cycle(host_config, sp, capsys):
    from runnerkeep.disk import history

    now = time.time()
    for i in range(10):
        forged = done_record(f"p{i}", peak_used_bytes=10**18, end_time=now - 60 + i)
        write(os.path.join(sp, f"done-p{i}-{i}.json"), forged)
    write(os.path.join(sp, "done-other-1.json"), done_record("other"), uid=JOB_UID + 1)
    first = history.ingest_spool(host_config)
    taken = sorted(r["job_id"] for r in first["ingested"])
    assert taken == ["other", "p0", "p1", "p2", "p3"]  # the oldest ends first
    assert first["deferred"] == {JOB_UID: 6} and first["rejected"] == []
    assert len(spool_names(sp)) == 6  # the rest wait, untouched
    assert f"uid {JOB_UID} left more than 4" in capsys.readouterr().err
    second = history.ingest_spool(host_config)
    assert [r["job_id"] for r in second["ingested"]] == ["p4", "p5", "p6", "p7"]
    assert len(history.read_history(host_config["paths"]["state_dir"])) == 9


def test_a_peak_is_clamped_to_the_room_root_measures_not_to_capacity(host_config, sp, monkeypatch):
    from runnerkeep.disk import history
    from runnerkeep.fsutil import FilesystemUsage

    usage = FilesystemUsage("/x", "/", 10**12, 3 * 10**9, 10**8, 5 * 10**6)
    monkeypatch.setattr(history, "filesystem_usage", lambda path: usage)
    write(os.path.join(sp, "done-big-1.json"), done_record("big", peak_used_bytes=10**18))
    write(os.path.join(sp, "done-ok-1.json"), done_record("ok"))
    records = {r["job_id"]: r for r in history.ingest_spool(host_config)["ingested"]}
    assert records["big"]["peak_bytes"] == 3 * 10**9  # the free space, not the 1 TB capacity
    assert records["big"]["peak_inodes"] == 5  # 15 - 10: under the room, kept
    assert records["ok"]["peak_bytes"] == 500


def test_without_a_measure_nothing_is_ingested_and_records_wait(host_config, sp, monkeypatch):
    from runnerkeep.disk import history

    def broken(path):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(history, "filesystem_usage", broken)
    write(os.path.join(sp, "done-j1-1.json"), done_record(peak_used_bytes=10**18))
    assert history.ingest_spool(host_config)["ingested"] == []
    assert spool_names(sp) == ["done-j1-1.json"]


def test_old_and_back_filled_records_are_rejected(host_config, sp):
    from runnerkeep.disk import history

    now = time.time()
    host_config["cleanup"] = {"lock_max_age": "1h"}
    write(os.path.join(sp, "done-old-1.json"), done_record("old", start_time=now - 7200))
    write(os.path.join(sp, "done-new-1.json"), done_record("new", end_time=now - 5))
    assert [r["job_id"] for r in history.ingest_spool(host_config)["ingested"]] == ["new"]
    # Later, a record claiming to end before the newest recorded job of its owner: back-fill.
    write(os.path.join(sp, "done-back-1.json"), done_record("back", end_time=now - 50))
    result = history.ingest_spool(host_config)
    assert result["ingested"] == []
    problems = {r["file"]: r["problem"] for r in result["rejected"]}
    assert problems == {"done-back-1.json": "ends before the last recorded job of its owner"}
    assert spool_names(sp) == []


def test_overlapping_jobs_of_one_user_are_all_recorded(host_config, sp):
    from runnerkeep.disk import history

    now = time.time()
    # Two runners of one user: the long job started first and ends after the short one.
    short = done_record("short", start_time=now - 100, end_time=now - 90)
    write(os.path.join(sp, "done-short-1.json"), short)
    assert [r["job_id"] for r in history.ingest_spool(host_config)["ingested"]] == ["short"]
    write(os.path.join(sp, "done-long-1.json"), done_record("long", start_time=now - 3000))
    assert [r["job_id"] for r in history.ingest_spool(host_config)["ingested"]] == ["long"]
