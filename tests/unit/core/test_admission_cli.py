"""``runnerkeep admission``: the hook's check fails open, a refusal is exit 4 with one line,
status shows the drain record (a damaged one is an error)."""

from __future__ import annotations

import argparse
import json
import socket
import threading

import pytest
from runnerkeep import drain
from runnerkeep_cli import commands_admission
from runnerkeep_cli.options import common_options


def parse(argv):
    parser = argparse.ArgumentParser(prog="runnerkeep")
    groups = parser.add_subparsers(dest="group")
    commands_admission.register(groups, common_options(), "")
    return parser.parse_args(["admission", *argv])


def write_config(tmp_path, **admission_keys):
    path = tmp_path / "config.json"
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    config = {"paths": {"state_dir": str(state)}, "admission": admission_keys}
    path.write_text(json.dumps(config))
    return str(path), state


@pytest.fixture
def as_job_user(monkeypatch):
    monkeypatch.setattr(commands_admission.os, "geteuid", lambda: 1000)


def one_answer(path, answer):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.bind(path)
    sock.listen(1)

    def run():
        conn, _ = sock.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(json.dumps(answer).encode() + b"\n")
        sock.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_no_service_fails_open_with_one_stderr_line(tmp_path, capsys, as_job_user):
    config, _state = write_config(tmp_path, socket=str(tmp_path / "none.sock"))
    args = parse(["check", "--config", config, "--job-id", "gh-1"])
    result = args.handler(args)
    assert result.exit_code == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert err[0].startswith("runnerkeep: admission check unavailable: cannot reach")
    assert err[0].endswith("; the job runs")


def test_a_refusal_is_exit_4_with_the_services_line(tmp_path, as_job_user):
    sock_path = str(tmp_path / "a.sock")
    line = "runnerkeep: this runner cannot fit the job: needs 9.0 GiB free on /, has 1 GiB"
    thread = one_answer(
        sock_path,
        {"exit_code": 0, "data": {"admitted": False, "line": line}, "error": None},
    )
    config, _state = write_config(tmp_path, socket=sock_path)
    args = parse(["check", "--config", config])
    result = args.handler(args)
    thread.join(5)
    assert result.exit_code == 4 and result.text == line


def test_a_service_error_fails_open(tmp_path, capsys, as_job_user):
    sock_path = str(tmp_path / "a.sock")
    thread = one_answer(sock_path, {"exit_code": 1, "data": None, "error": "drain.json damaged"})
    config, _state = write_config(tmp_path, socket=sock_path)
    args = parse(["check", "--config", config])
    assert args.handler(args).exit_code == 0
    thread.join(5)
    assert "drain.json damaged; the job runs" in capsys.readouterr().err


def test_a_bad_config_fails_open(tmp_path, capsys, as_job_user):
    config, _state = write_config(tmp_path, agent_unit="not a unit")
    args = parse(["check", "--config", config])
    assert args.handler(args).exit_code == 0
    assert "admission.agent_unit" in capsys.readouterr().err


def test_disabled_asks_nobody(tmp_path, as_job_user):
    config, _state = write_config(tmp_path, enabled=False, socket=str(tmp_path / "none.sock"))
    args = parse(["check", "--config", config])
    result = args.handler(args)
    assert result.exit_code == 0 and result.data["admitted"] is True


def test_status_shows_the_drain_record(tmp_path):
    config, state = write_config(tmp_path, agent_unit="gitlab-runner.service", max_drained=2)
    drain.write_drain(str(state), drain.new_record(True, "free bytes on /: short", "g.service"))
    args = parse(["status", "--config", config])
    result = args.handler(args)
    assert result.data["drain"]["drained"] is True
    assert "DRAINED for 0 min: free bytes on /: short" in result.text
    assert "at most 2 runner(s) drained" in result.text


def test_status_of_a_damaged_record_is_an_error(tmp_path):
    config, state = write_config(tmp_path)
    (state / "drain.json").write_text("{}")
    args = parse(["status", "--config", config])
    with pytest.raises(drain.DrainRecordError):
        args.handler(args)
