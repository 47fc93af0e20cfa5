"""Syslog channel fallbacks (logger, /dev/log, stderr)."""

from __future__ import annotations

import json
import os
import socket
import sys

import pytest
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


@pytest.fixture
def fake_logger(tmp_path, monkeypatch):
    """A ``logger`` first on PATH that records its argv and its stdin."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    record = tmp_path / "logger.json"
    script = bindir / "logger"
    script.write_text(
        f"#!{sys.executable}\n"
        "import json, sys\n"
        f"with open({str(record)!r}, 'w') as out:\n"
        "    json.dump({'argv': sys.argv[1:], 'stdin': sys.stdin.read()}, out)\n"
    )
    script.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    return lambda: json.loads(record.read_text())


def test_logger_gets_the_message_on_stdin_never_on_its_argv(fake_logger):
    message = "webhook https://h.example/api/webhooks/1/SLACKSECRETTOKEN123 failed"
    assert alerts.syslog(message, "emergency", "rk") == "logger"
    seen = fake_logger()
    assert seen["argv"] == ["-t", "rk", "-p", "user.alert"]
    assert "SLACKSECRETTOKEN123" not in " ".join(seen["argv"])
    assert seen["stdin"] == message


def test_a_multi_line_message_is_one_logger_entry(fake_logger):
    assert alerts.syslog("disk critical\nsecond line", "critical", "rk") == "logger"
    assert fake_logger()["stdin"] == "disk critical second line"
