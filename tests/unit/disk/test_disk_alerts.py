"""Syslog channel fallbacks (logger, /dev/log, stderr)."""

from __future__ import annotations

import socket

from runnerkeep.disk import alerts


def test_syslog_falls_back_to_stderr(monkeypatch, capsys):
    monkeypatch.setattr(alerts.shutil, "which", lambda name: None)

    class NoSocket:
        def __init__(self, *a, **k):
            raise OSError("no /dev/log")

    monkeypatch.setattr(alerts.socket, "socket", NoSocket)
    assert alerts.syslog("disk ok -> warning", "warning", "rk-test") == "stderr"
    assert "rk-test: disk ok -> warning" in capsys.readouterr().err


def test_syslog_writes_to_a_dev_log_socket(monkeypatch, tmp_path):
    monkeypatch.setattr(alerts.shutil, "which", lambda name: None)
    path = str(tmp_path / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    real_socket = socket.socket

    class Redirect:
        def __init__(self, *args):
            self._sock = real_socket(*args)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self._sock.close()

        def settimeout(self, value):
            self._sock.settimeout(value)

        def connect(self, address):
            assert address == "/dev/log"
            self._sock.connect(path)

        def send(self, data):
            return self._sock.send(data)

    monkeypatch.setattr(alerts.socket, "socket", Redirect)
    try:
        assert alerts.syslog("disk critical", "critical", "rk") == "/dev/log"
        server.settimeout(2)
        # user facility (1) * 8 + crit (2) = 10
        assert server.recv(4096) == b"<10>rk: disk critical"
    finally:
        server.close()


def test_logger_is_used_when_present(monkeypatch):
    calls = []

    class Done:
        returncode = 0

    monkeypatch.setattr(alerts.shutil, "which", lambda name: "/usr/bin/logger")
    monkeypatch.setattr(alerts.subprocess, "run", lambda cmd, **kw: calls.append(cmd) or Done())
    assert alerts.syslog("hello", "emergency", "rk") == "logger"
    assert calls == [["/usr/bin/logger", "-t", "rk", "-p", "user.alert", "--", "hello"]]
