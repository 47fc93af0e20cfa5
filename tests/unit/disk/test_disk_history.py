"""Job peaks: bounded history, job-start/job-end records, the detached sampler."""

from __future__ import annotations

import json
import os
import time

import pytest
from runnerkeep import events
from runnerkeep.disk import history
from runnerkeep.errors import ConfigError


def test_history_is_bounded(tmp_path):
    sdir = str(tmp_path)
    for i in range(25):
        history.append_history(sdir, {"job_id": f"j{i}", "peak_bytes": i}, max_jobs=10)
    records = history.read_history(sdir)
    assert [r["job_id"] for r in records] == [f"j{i}" for i in range(15, 25)]
    with open(history.history_path(sdir)) as handle:
        assert len(handle.readlines()) == 10


def test_torn_lines_are_skipped(tmp_path):
    sdir = str(tmp_path)
    history.append_history(sdir, {"job_id": "a", "peak_bytes": 1}, max_jobs=10)
    with open(history.history_path(sdir), "a") as handle:
        handle.write('{"job_id": "b", "peak_by\n')
    history.append_history(sdir, {"job_id": "c", "peak_bytes": 3}, max_jobs=10)
    assert [r["job_id"] for r in history.read_history(sdir)] == ["a", "c"]


def test_job_start_and_end_without_sampler(make_config, tmp_path):
    config = make_config(history_max_jobs=3)
    result = history.job_start(config, "build-1", spawn=False)
    assert result["sampler_pid"] is None
    big = tmp_path / "cache" / "big"
    big.parent.mkdir(exist_ok=True)
    big.write_bytes(os.urandom(2 * 1024 * 1024))
    record = history.job_end(config, "build-1")
    assert record["job_id"] == "build-1"
    assert record["peak_bytes"] >= 0
    assert record["end_used_bytes"] == record["peak_used_bytes"] or record["peak_bytes"] >= 0
    assert history.read_history(config["paths"]["state_dir"])[-1]["job_id"] == "build-1"
    assert not history.running_jobs(config["paths"]["state_dir"])
    job_events = list(events.read_events(config["paths"]["state_dir"], "job"))
    assert job_events[-1]["job_id"] == "build-1"


def test_sampler_records_a_peak_between_start_and_end(make_config, tmp_path, monkeypatch):
    # The measurement reads a number from a file: deterministic on a shared, busy filesystem.
    # The forked sampler inherits the patched function.
    used = tmp_path / "used"
    used.write_text("1000")

    def fake_sample(path):
        value = int(used.read_text() or 0)
        return {"used_bytes": value, "used_inodes": value // 100, "free_bytes": 0, "free_inodes": 0}

    monkeypatch.setattr(history, "sample", fake_sample)
    config = make_config(sample_interval="0.02s", sampler_max_lifetime="30s")
    result = history.job_start(config, "job-2")
    pid = result["sampler_pid"]
    job_file = os.path.join(config["paths"]["state_dir"], "disk-jobs", "job-2.json")
    try:
        assert pid and history._proc_start_time(pid) is not None
        used.write_text("9000")
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with open(job_file) as handle:
                if json.load(handle)["peak_used_bytes"] == 9000:
                    break
            time.sleep(0.02)
        used.write_text("2000")
        record = history.job_end(config, "job-2")
    finally:
        history._stop_sampler(job_file[: -len(".json")] + ".pid")
    assert record["start_used_bytes"] == 1000
    assert record["peak_used_bytes"] == 9000
    assert record["end_used_bytes"] == 2000
    assert record["peak_bytes"] == 8000
    assert record["peak_inodes"] == 80
    assert record["samples"] >= 2
    assert history._proc_start_time(pid) is None  # the sampler is gone


def test_sampler_ends_itself_after_its_lifetime(make_config):
    config = make_config(sample_interval="0.05s", sampler_max_lifetime="0.3s")
    pid = history.job_start(config, "short")["sampler_pid"]
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline and history._proc_start_time(pid) is not None:
        time.sleep(0.05)
    assert history._proc_start_time(pid) is None
    history.job_end(config, "short")


def test_stale_pid_file_never_signals_another_process(tmp_path):
    pid_file = tmp_path / "x.pid"
    pid_file.write_text(json.dumps({"pid": os.getpid(), "start_time": "1"}))
    assert history._stop_sampler(str(pid_file)) is False  # start time differs: not signalled


def test_bad_job_ids_and_unknown_jobs(make_config):
    config = make_config()
    with pytest.raises(ConfigError, match="job id"):
        history.job_start(config, "../../etc/passwd", spawn=False)
    with pytest.raises(ConfigError, match="no running job"):
        history.job_end(config, "never-started")


def test_jobs_never_ended_are_forgotten_after_twice_the_sampler_lifetime(make_config):
    config = make_config(sampler_max_lifetime="1h")
    sdir = config["paths"]["state_dir"]
    history.job_start(config, "crashed", spawn=False)
    job_file = os.path.join(sdir, "disk-jobs", "crashed.json")
    with open(job_file) as handle:
        job = json.load(handle)
    job["start_time"] -= 3 * 3600
    with open(job_file, "w") as handle:
        json.dump(job, handle)
    history.job_start(config, "fresh", spawn=False)
    assert [j["job_id"] for j in history.running_jobs(sdir)] == ["fresh"]
