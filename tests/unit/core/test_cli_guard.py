"""The CLI front door, run as a subprocess like on a host: no input and no output channel may
turn into a Python traceback (internal errors, bad configs, a closed pipe, names that are not
UTF-8 on a strict stdout)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
PYTHONPATH = os.pathsep.join(os.path.join(ROOT, d) for d in ("module_utils", "cli"))

# The handler of `self-check` replaced by one that fails the way a bug would.
BOOM = (
    "import sys\n"
    "import runnerkeep_cli.commands_host as host\n"
    "def boom(config):\n"
    "    raise KeyError('checks')\n"
    "host.run_self_check = boom\n"
    "from runnerkeep_cli.main import main\n"
    "sys.exit(main(sys.argv[1:]))\n"
)


def _env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in ("RUNNERKEEP_DEBUG", "LANG", "LC_ALL")}
    env.update(PYTHONPATH=PYTHONPATH, **extra)
    return env


def _cli(args, env=None, timeout=60, **kwargs):
    return subprocess.run(
        [sys.executable, "-m", "runnerkeep_cli", *args],
        capture_output=True,
        timeout=timeout,
        env=_env(**(env or {})),
        **kwargs,
    )


def _boom(args, **env):
    return subprocess.run(
        [sys.executable, "-c", BOOM, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(**env),
    )


@pytest.fixture
def config(tmp_path):
    """A config whose paths are all under tmp_path, and one old file with a non-UTF-8 name."""
    root = tmp_path / "root"
    root.mkdir()
    odd = os.path.join(os.fsencode(root), b"caf\xe9-\xff.log")
    with open(odd, "wb") as handle:
        handle.write(b"x" * 4096)
    os.utime(odd, (1, 1))
    data = {
        "paths": {d: str(tmp_path / d) for d in ("cache_dir", "state_dir", "log_dir")},
        "cleanup": {"cleaners": {"mine": {"roots": [str(root)], "min_age": "0s"}}},
    }
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return str(path)


def test_an_internal_error_is_one_line_pointing_to_debug():
    done = _boom(["self-check"])
    assert done.returncode == 1
    assert done.stderr == (
        "runnerkeep: error: internal error: KeyError: 'checks' "
        "(run again with --debug for the traceback)\n"
    )
    assert "Traceback" not in done.stdout + done.stderr


def test_an_internal_error_with_json_is_a_json_error_too():
    done = _boom(["self-check", "--json"])
    assert done.returncode == 1
    assert json.loads(done.stdout) == {
        "error": "internal error: KeyError: 'checks' (run again with --debug for the traceback)",
        "exit_code": 1,
    }


@pytest.mark.parametrize(
    ("args", "env"),
    [
        (["--debug", "self-check"], {}),
        (["self-check", "--debug"], {}),
        (["self-check"], {"RUNNERKEEP_DEBUG": "1"}),
    ],
)
def test_debug_shows_the_traceback(args, env):
    done = _boom(args, **env)
    assert done.returncode == 1
    assert "Traceback (most recent call last)" in done.stderr
    assert "in boom" in done.stderr
    assert done.stderr.rstrip().endswith("runnerkeep: error: internal error: KeyError: 'checks'")


def test_debug_is_accepted_by_a_subcommand_of_a_group():
    done = _cli(["cleanup", "status", "--debug", "--json", "--config", "/nonexistent.json"])
    assert done.returncode == 2, done.stderr
    assert b"unrecognized arguments" not in done.stderr


def test_a_bad_config_value_is_exit_2_and_one_line(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"disk": {"syslog": "false"}}))
    done = _cli(["cleanup", "list-cleaners", "--config", str(path)], text=True)
    assert done.returncode == 2
    assert done.stderr == (
        f"runnerkeep: error: {path}: disk.syslog: expected true or false "
        "(a JSON boolean, not a string), got 'false'\n"
    )


@pytest.mark.parametrize("make", ["fifo", "dev-zero", "not-utf8", "deep"])
def test_a_config_that_is_no_json_file_is_exit_2_within_the_deadline(tmp_path, make):
    path = str(tmp_path / "config.json")
    if make == "fifo":
        os.mkfifo(path)
    elif make == "dev-zero":
        path = "/dev/zero"
    elif make == "not-utf8":
        with open(path, "wb") as handle:
            handle.write(b'{"paths": {"state_dir": "/tmp/\xff"}}')
    else:
        with open(path, "w") as handle:
            handle.write("[" * 200000)
    done = _cli(["cleanup", "status", "--config", path], text=True, timeout=20)
    assert done.returncode == 2
    assert done.stderr.startswith(f"runnerkeep: error: config file {path} ")
    assert done.stderr.count("\n") == 1 and "Traceback" not in done.stderr


def _into_closed_pipe(args):
    """Run with stdout a pipe whose reader is already gone: every write gets EPIPE."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "runnerkeep_cli", *args],
            stdout=write_end,
            stderr=subprocess.PIPE,
            timeout=60,
            env=_env(),
        )
    finally:
        os.close(write_end)
    return done


@pytest.mark.parametrize("args", [["list-cleaners", "--json"], ["list-cleaners"]])
def test_output_into_a_closed_pipe_exits_quietly(args, config):
    done = _into_closed_pipe(["cleanup", *args, "--config", config])
    assert done.stderr == b""
    assert done.returncode == 141


@pytest.mark.parametrize(
    "env", [{"PYTHONIOENCODING": "utf-8:strict"}, {"LANG": "C", "PYTHONIOENCODING": "ascii"}]
)
def test_file_names_that_are_not_utf8_print_as_escapes(config, env):
    run = ["cleanup", "--stage", "post", "--dry-run", "--all", "--cleaner", "mine"]
    done = _cli([*run, "--show-items", "5", "--config", config], env=env)
    assert done.returncode == 0, done.stderr
    assert b"caf\\xe9-\\xff.log" in done.stdout
    assert b"Traceback" not in done.stderr
