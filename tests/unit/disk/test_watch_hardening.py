"""The watch and the job hooks can never hang or crash.

- a webhook that drips one byte a second cannot stretch a cycle past ``watch_timeout``;
- the emergency cleanup runs before any alert is sent;
- a state dir that cannot be written does not re-alert or re-clean within the cooldowns,
  across ``--loop`` cycles and across separate runs;
- damaged state (garbage, FIFOs, symlinks) never stops ``disk budget/watch/history`` or
  ``cleanup job-start/job-end/status``;
- a guard lock held forever turns into LockHeldError, not a hang; a dry run of the job locks
  removes and creates nothing.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import threading
import time

import pytest
from deadline import must_finish_within
from runnerkeep.cleanup import lock
from runnerkeep.disk import history, watch
from runnerkeep.disk.watch import run_watch
from runnerkeep.errors import LockHeldError
from runnerkeep_cli.main import main

GiB = 1024**3


class DripServer:
    """Loopback HTTP server that answers one byte a second (for at most ``max_seconds``)."""

    def __init__(self, max_seconds: float = 20.0) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.sock.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"
        self.max_seconds = max_seconds
        self.accepted: list[float] = []
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted.append(time.monotonic())
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        reply = b"HTTP/1.1 200 OK\r\nX-Slow: " + b"a" * 1000
        ends = time.monotonic() + self.max_seconds
        with conn, contextlib.suppress(OSError):
            conn.settimeout(1)
            conn.recv(65536)
            for byte in reply:
                if self.stop.is_set() or time.monotonic() > ends:
                    break
                conn.sendall(bytes([byte]))
                self.stop.wait(1.0)

    def close(self) -> None:
        self.stop.set()
        self.thread.join(2)
        self.sock.close()


@pytest.fixture
def drip():
    server = DripServer()
    yield server
    server.close()


def test_a_dripping_webhook_cannot_stretch_the_cycle(make_config, fake_disk, syslog_calls, drip):
    config = make_config(
        webhook_url=drip.url, watch_timeout="3s", webhook_timeout="2s", webhook_retries=2
    )
    fake_disk.free_bytes = 14 * GiB
    started = time.monotonic()
    with must_finish_within(30):
        result = run_watch(config)
    took = time.monotonic() - started
    assert took < 3 + 2, f"the cycle took {took:.1f}s with watch_timeout 3s"
    assert result["state"] == "critical"
    hook = result["alerts"][0]["webhook"]
    assert not hook["ok"] and hook["attempts"] >= 1
    assert os.path.exists(os.path.join(config["disk"]["textfile_dir"], "runnerkeep_disk.prom"))
    # the alert is kept for the next cycle, which is bounded the same way
    with open(os.path.join(config["paths"]["state_dir"], watch.STATE_FILE)) as handle:
        state = json.load(handle)
    assert len(state["webhook_pending"]) == 1


def test_the_emergency_cleanup_runs_before_any_alert(make_config, fake_disk, syslog_calls, drip):
    config = make_config(
        webhook_url=drip.url,
        watch_timeout="2s",
        webhook_timeout="1s",
        webhook_retries=0,
        emergency_cleanup=True,
    )
    fake_disk.free_bytes = 2 * GiB
    cleaned: list[float] = []
    alerts_before_cleanup: list[int] = []

    def cleanup(stage, cfg, **kw):
        cleaned.append(time.monotonic())
        alerts_before_cleanup.append(len(syslog_calls) + len(drip.accepted))
        return {}

    with must_finish_within(60):
        result = run_watch(config, cleanup_func=cleanup)
    assert result["state"] == "emergency" and result["emergency_cleanup"]["ok"]
    assert alerts_before_cleanup == [0]
    assert drip.accepted and cleaned[0] < drip.accepted[0]
    assert [a["event"] for a in result["alerts"]] == ["disk_state_change", "emergency_cleanup"]


def _refuse_state_dir(monkeypatch, sdir: str) -> None:
    """The state dir's filesystem is read-only (root ignores mode bits, so fake the errno)."""
    real = watch.atomic_write

    def read_only(path, data, mode=0o644):
        if os.path.abspath(path).startswith(os.path.abspath(sdir) + os.sep):
            raise OSError(errno.EROFS, "Read-only file system")
        return real(path, data, mode)

    monkeypatch.setattr(watch, "atomic_write", read_only)


def _state_changes(calls) -> list[str]:
    return [m for _, m in calls if " -> " in m]


def test_read_only_state_dir_two_runs_do_not_alert_twice(
    make_config, fake_disk, syslog_calls, monkeypatch, tmp_path
):
    monkeypatch.setenv(watch.RUN_DIR_ENV, str(tmp_path / "run"))
    config = make_config(emergency_cleanup=True, emergency_cleanup_cooldown="1h")
    _refuse_state_dir(monkeypatch, config["paths"]["state_dir"])
    fake_disk.free_bytes = 2 * GiB
    cleanups = []
    for _run in range(2):
        watch._unsaved.clear()  # a separate run: nothing kept in memory
        result = run_watch(config, cleanup_func=lambda *a, **k: cleanups.append(1) or {})
        assert any("cannot save watch state" in e for e in result["errors"])
    assert len(_state_changes(syslog_calls)) == 1
    assert len(cleanups) == 1
    assert os.path.exists(watch.fallback_path(config["paths"]["state_dir"]))
    assert not os.path.exists(os.path.join(config["paths"]["state_dir"], watch.STATE_FILE))


def test_read_only_state_and_run_dirs_loop_keeps_cooldowns_in_memory(
    make_config, fake_disk, syslog_calls, monkeypatch, tmp_path
):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv(watch.RUN_DIR_ENV, str(blocker / "run"))
    config = make_config(emergency_cleanup=True, emergency_cleanup_cooldown="1h")
    _refuse_state_dir(monkeypatch, config["paths"]["state_dir"])
    fake_disk.free_bytes = 2 * GiB
    cleanups = []
    for _cycle in range(3):  # the cycles of one --loop process
        result = run_watch(config, cleanup_func=lambda *a, **k: cleanups.append(1) or {})
        assert result["state"] == "emergency"
    assert len(_state_changes(syslog_calls)) == 1
    assert len(cleanups) == 1
    watch._unsaved.clear()


def test_state_saved_again_wins_over_an_older_fallback(
    make_config, fake_disk, syslog_calls, monkeypatch, tmp_path
):
    monkeypatch.setenv(watch.RUN_DIR_ENV, str(tmp_path / "run"))
    config = make_config()
    sdir = config["paths"]["state_dir"]
    fake_disk.free_bytes = 14 * GiB
    with monkeypatch.context() as patch:
        _refuse_state_dir(patch, sdir)
        run_watch(config)
    watch._unsaved.clear()
    assert os.path.exists(watch.fallback_path(sdir))
    fake_disk.free_bytes = 60 * GiB
    assert run_watch(config)["state"] == "ok"  # critical -> ok, saved in the state dir
    assert not os.path.exists(watch.fallback_path(sdir))
    assert run_watch(config)["changed"] is False
    assert len(_state_changes(syslog_calls)) == 2


def _write_config(tmp_path) -> str:
    config = {
        "paths": {
            "cache_dir": str(tmp_path / "cache"),
            "state_dir": str(tmp_path / "state"),
            "log_dir": str(tmp_path / "log"),
        },
        "disk": {
            "textfile_dir": str(tmp_path / "tf"),
            "watch_docker": False,
            "syslog": False,
            "job_peak_floor": "1MiB",
            "cache_quota_min": 0,
        },
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config))
    return str(path)


def _damage_every_state_file(sdir, kind: str) -> None:
    os.makedirs(os.path.join(sdir, lock.LOCK_DIR), exist_ok=True)
    os.makedirs(os.path.join(sdir, history.JOBS_DIR), exist_ok=True)
    files = [
        "events.jsonl",
        history.HISTORY_FILE,
        watch.STATE_FILE,
        os.path.join(lock.LOCK_DIR, "other.json"),
        os.path.join(history.JOBS_DIR, "j-2.json"),
        os.path.join(history.JOBS_DIR, "j-2.pid"),
    ]
    contents = {
        "garbage": b'\xff\xfe\x00garbage\n{"peak_bytes": 1e999}\n[1, 2\n',
        "types": b'{"peak_bytes": "12", "start_time": [], "time": "x", "kind": 3, '
        b'"state": 5, "pid": -1, "started": "yesterday", "job_id": {}}\n',
        "numbers": b'{"time": 1e999, "kind": "cache", "peak_bytes": 1e999, "pid": 1e999, '
        b'"started": 1e999, "state": "ok", "since": 1e999, "start_time": 1e99}\n',
    }
    for name in files:
        path = os.path.join(sdir, name)
        if kind == "fifo":
            os.mkfifo(path)
        elif kind == "symlink":
            os.symlink("/etc/shadow" if os.path.exists("/etc/shadow") else "/etc/passwd", path)
        else:
            with open(path, "wb") as handle:
                handle.write(contents[kind])


@pytest.mark.parametrize("kind", ["garbage", "types", "numbers", "fifo", "symlink"])
def test_damaged_state_never_stops_the_hooks_and_disk_commands(tmp_path, capsys, kind):
    cfg = _write_config(tmp_path)
    sdir = str(tmp_path / "state")
    os.makedirs(sdir)
    _damage_every_state_file(sdir, kind)
    commands = [
        ["disk", "budget"],
        ["disk", "watch"],
        ["disk", "history"],
        ["disk", "job-start", "--job-id", "j-1", "--no-sampler"],
        ["disk", "job-end", "--job-id", "j-1"],
        ["cleanup", "job-start", "--job-id", "j-1", "--pid", str(os.getpid()), "--no-pre"],
        ["cleanup", "job-end", "--job-id", "j-1", "--no-post"],
        ["cleanup", "status"],
    ]
    with must_finish_within(60):
        for argv in commands:
            code = main([*argv, "--config", cfg])
            out = capsys.readouterr()
            assert code == 0, (argv, out.out, out.err)
            assert "Traceback" not in out.out + out.err
    if kind == "symlink":
        for name in ("events.jsonl", history.HISTORY_FILE, watch.STATE_FILE):
            assert not os.path.islink(os.path.join(sdir, name))


def test_a_guard_held_forever_is_a_lock_error_not_a_hang(tmp_path, monkeypatch):
    sdir = str(tmp_path)
    os.makedirs(lock.lock_dir(sdir))
    monkeypatch.setattr(lock, "GUARD_WAIT", 0.5)
    holder = os.open(os.path.join(lock.lock_dir(sdir), lock.GUARD), os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(holder, fcntl.LOCK_EX)  # another open file description: a real conflict
        started = time.monotonic()
        with must_finish_within(10), pytest.raises(LockHeldError, match="job lock guard"):
            lock.take_job_lock(sdir, "j1", os.getpid())
        assert time.monotonic() - started < 3
    finally:
        os.close(holder)
    assert lock.take_job_lock(sdir, "j1", os.getpid())["job_id"] == "j1"


def test_a_dry_run_of_the_job_locks_removes_and_creates_nothing(tmp_path):
    sdir = str(tmp_path)
    assert lock.active_jobs(sdir, remove_stale=False) == ([], [])
    assert os.listdir(sdir) == []
    os.makedirs(lock.lock_dir(sdir))
    dead = {"job_id": "gone", "pid": 2**22 + 12345, "pid_start": "1", "started": time.time()}
    path = os.path.join(lock.lock_dir(sdir), "gone.json")
    with open(path, "w") as handle:
        json.dump(dead, handle)
    live, stale = lock.active_jobs(sdir, remove_stale=False)
    assert live == [] and [s["job_id"] for s in stale] == ["gone"]
    assert os.listdir(lock.lock_dir(sdir)) == ["gone.json"]  # no .guard, lock kept
    live, stale = lock.active_jobs(sdir)
    assert [s["job_id"] for s in stale] == ["gone"] and not os.path.exists(path)
