"""Attacks on an operator's drain and undrain (``runnerkeep admission drain|undrain``): hostile
reasons through argv, damaged or planted drain.json, bad config types, a held admission lock,
check mode, a user who is not root, SIGKILL mid-write, and drain / undrain / the watch's
bring-back racing each other. The real CLI runs in a subprocess wherever a traceback could
reach the user. Strict xfails are breaks still open (they flip when fixed)."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import stat
import subprocess
import sys
import tempfile
import threading
import time

import pytest
from runnerkeep import admission, drain
from runnerkeep.errors import ConfigError, LockHeldError

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(__file__))))
PYTHONPATH = os.pathsep.join(os.path.join(ROOT, d) for d in ("module_utils", "cli"))


class Units:
    """A fake systemd, shared by threads: the unit's state and every call."""

    def __init__(self, active: bool = True) -> None:
        self.active = active
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def __call__(self, action: str, unit: str) -> tuple[bool, str]:
        with self.lock:
            self.calls.append((action, unit))
            if action == "is-active":
                return self.active, "active" if self.active else "inactive"
            self.active = action == "start"
            return True, ""


def config_of(tmp_path, **admission_keys):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return {"paths": {"state_dir": str(state)}, "admission": admission_keys}


def no_jobs(config):
    return []


def write_config(directory, config) -> str:
    path = os.path.join(str(directory), "config.json")
    with open(path, "w") as handle:
        json.dump(config, handle)
    return path


def cli(args, run_dir, timeout=30, user=None):
    """The real CLI in a subprocess: (exit code, stdout, stderr). Another user runs the
    system's python3 (the test's venv is root's)."""
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, RUNNERKEEP_RUN_DIR=str(run_dir))
    env.pop("RUNNERKEEP_DEBUG", None)
    extra = {"user": user, "group": user, "extra_groups": []} if user is not None else {}
    proc = subprocess.run(
        [sys.executable if user is None else "/usr/bin/python3", "-m", "runnerkeep_cli", *args],
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=timeout,
        check=False,
        **extra,
    )
    return proc.returncode, proc.stdout, proc.stderr


EXIT_CONFIG = ConfigError.exit_code
EXIT_LOCKED = LockHeldError.exit_code
WARNING = "runnerkeep: warning: state file "


def assert_one_error_line(code, out, err, *words, exit_code=1):
    text = err.decode("utf-8", "replace")
    assert code == exit_code, (code, out, err)
    assert b"Traceback" not in err + out and "internal error" not in text, text
    # statefile's one warning per damaged file may come first; the error is one line.
    lines = [line for line in text.strip().splitlines() if not line.startswith(WARNING)]
    assert len(lines) == 1 and lines[0].startswith("runnerkeep: error: "), text
    for word in words:
        assert word in lines[0], lines[0]


def tree_digest(path) -> dict[str, str]:
    """Every entry under ``path`` (not followed): its kind and content hash."""
    found = {}
    for directory, dirs, files in os.walk(path):
        for name in dirs + files:
            full = os.path.join(directory, name)
            info = os.lstat(full)
            if stat.S_ISREG(info.st_mode):
                with open(full, "rb") as handle:
                    found[full] = hashlib.sha256(handle.read()).hexdigest()
            elif stat.S_ISLNK(info.st_mode):
                found[full] = "link:" + os.readlink(full)
            else:
                found[full] = oct(stat.S_IFMT(info.st_mode))
    return found


# --- races between drain, undrain and the watch ---------------------------------------------


def test_an_undrain_cannot_land_between_a_drains_record_and_its_stop(tmp_path):
    """The drain writes its record and stops the agent under one hold of the admission lock:
    an undrain that tries to come in between waits (here: gives up after the 1 s deadline)
    and the runner ends consistent, drained with its agent stopped."""
    config = config_of(tmp_path, agent_unit="a.service", deadline="1s")
    units = Units(active=True)
    refused = []

    def jobs_then_undrain(cfg):
        try:
            admission.undrain_by_operator(config, control=units)
        except LockHeldError as exc:
            refused.append(str(exc))
        return []

    admission.drain_by_operator(config, "patch", jobs=jobs_then_undrain, control=units)
    assert refused and "the admission lock" in refused[0]
    record = drain.read_drain(config["paths"]["state_dir"])
    assert record["drained"] is True and not units.active
    # Once the drain is done, the undrain goes through and the agent runs again.
    admission.undrain_by_operator(config, control=units)
    assert drain.read_drain(config["paths"]["state_dir"])["drained"] is False and units.active


def test_the_watch_does_not_stop_an_agent_an_operator_just_brought_back(tmp_path, monkeypatch):
    config = config_of(tmp_path, agent_unit="a.service")
    state = config["paths"]["state_dir"]
    drain.write_drain(state, drain.new_record(True, "free bytes on /: x", "a.service", 5.0))
    units = Units(active=False)
    real_read = drain.read_drain
    first = []

    def undrain_after_the_watchs_read(path):
        record = real_read(path)
        if not first:  # between the cycle's read and its stop
            first.append(record)
            admission.undrain_by_operator(config, control=units)
        return record

    monkeypatch.setattr(drain, "read_drain", undrain_after_the_watchs_read)
    result = admission.watch_drain(config, {"state": "warning"}, 100.0, jobs=no_jobs, control=units)
    assert result["action"] == admission.CHANGED_MEANWHILE
    assert real_read(state)["drained"] is False
    assert units.active, f"runner recorded as back but its agent is stopped: {units.calls}"


def race_bring_back_and_drain(config) -> Units:
    """One round: the watch's bring-back of an admission drain and an operator's drain
    started together on two threads; the fake systemd they shared."""
    units = Units(active=False)
    start = threading.Barrier(2, timeout=10)
    errors: list[BaseException] = []

    def run(call):
        try:
            start.wait()
            call()
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    def watch():
        admission.watch_drain(
            config, {"state": "ok", "since": 0.0}, 1000.0, jobs=no_jobs, control=units
        )

    def operator():
        admission.drain_by_operator(config, "hold", jobs=no_jobs, control=units, now=2000.0)

    threads = [threading.Thread(target=run, args=(call,)) for call in (watch, operator)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not errors, errors
    return units


def test_the_bring_back_never_undoes_an_operator_drain_racing_it(tmp_path):
    """Threads, bounded: the watch's bring-back of an admission drain against an operator's
    drain, 25 rounds. Whatever the order, the runner ends drained by the operator, agent
    stopped (the bring-back re-reads the record under the lock)."""
    config = config_of(tmp_path, agent_unit="a.service", settle_time="1s")
    state = config["paths"]["state_dir"]
    for _round in range(25):
        drain.write_drain(state, drain.new_record(True, "free bytes on /: x", "a.service", 1.0))
        units = race_bring_back_and_drain(config)
        record = drain.read_drain(state)
        assert record["drained"] is True and record["by"] == "operator"
        assert units.active is False, units.calls


def test_admit_drain_and_undrain_in_processes_leave_a_valid_record(tmp_path):
    """Real processes, bounded: 3 operators draining and undraining in a loop while jobs are
    admitted; drain.json is a valid record at every read and at the end."""
    config = config_of(tmp_path)  # no unit: nothing to start or stop for real
    path = write_config(tmp_path, config)
    script = (
        "import sys, json\n"
        "from runnerkeep import admission\n"
        "config = json.load(open(sys.argv[1]))\n"
        "for i in range(15):\n"
        "    if sys.argv[2] == 'drain':\n"
        "        admission.drain_by_operator(config, f'r{i}', jobs=lambda c: [])\n"
        "    elif sys.argv[2] == 'undrain':\n"
        "        admission.undrain_by_operator(config)\n"
        "    else:\n"
        "        tools = admission.Tools(run_cleanup=None)\n"
        "        admission.admit_locked(config, [], tools)\n"
    )
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, RUNNERKEEP_RUN_DIR=str(tmp_path / "run"))
    procs = [
        subprocess.Popen([sys.executable, "-c", script, path, role], env=env)
        for role in ("drain", "undrain", "admit")
    ]
    deadline = time.monotonic() + 60
    reads = 0
    while any(p.poll() is None for p in procs) and time.monotonic() < deadline:
        drain.read_drain(config["paths"]["state_dir"])  # raises on a torn or damaged record
        reads += 1
        time.sleep(0.005)
    for proc in procs:
        assert proc.wait(max(1, deadline - time.monotonic())) == 0
    assert reads > 0
    assert drain.read_drain(config["paths"]["state_dir"]) is not None


def test_sigkill_mid_drain_leaves_the_old_or_the_new_record(tmp_path):
    config = config_of(tmp_path)
    state = config["paths"]["state_dir"]
    path = write_config(tmp_path, config)
    script = (
        "import sys, json\n"
        "from runnerkeep import admission\n"
        "config = json.load(open(sys.argv[1]))\n"
        "print('go', flush=True)\n"
        "for i in range(100000):\n"
        "    admission.drain_by_operator(config, f'r{i}', jobs=lambda c: [])\n"
        "    admission.undrain_by_operator(config)\n"
    )
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, RUNNERKEEP_RUN_DIR=str(tmp_path / "run"))
    for delay in (0.05, 0.11, 0.17, 0.23, 0.31):
        proc = subprocess.Popen(
            [sys.executable, "-c", script, path], env=env, stdout=subprocess.PIPE
        )
        assert proc.stdout.readline() == b"go\n"
        time.sleep(delay)
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
        proc.stdout.close()
        record = drain.read_drain(state)  # never torn: raises on damage
        assert record is not None and isinstance(record["drained"], bool)
    # The operator can go on at once: no lock is left behind by the dead writer.
    result = admission.drain_by_operator(config, "after the kills", jobs=no_jobs)
    assert drain.read_drain(state)["reason"] == result["reason"]


# --- reasons from argv ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "reason",
    [
        "disk\nreplacement\r\n",
        "\x1b[31mred\x1b[0m \x07bell",
        "\u202eevil bidi",
        "x" * 100_000,
    ],
    ids=["newlines", "escapes", "bidi", "huge"],
)
def test_a_hostile_reason_through_the_real_cli_is_one_escaped_line(tmp_path, reason):
    config = config_of(tmp_path)
    path = write_config(tmp_path, config)
    code, out, err = cli(["admission", "drain", "--reason", reason, "--config", path], tmp_path)
    assert code == 0 and b"Traceback" not in err, err
    text = out.decode()
    assert len(text.strip().splitlines()) == 1 and "\x1b" not in text and "\u202e" not in text
    record = drain.read_drain(config["paths"]["state_dir"])
    assert len(record["reason"]) <= drain.MAX_REASON and record["reason"].isprintable()
    refused = admission.admit(config, [], admission.Tools(run_cleanup=None))
    assert "\n" not in refused.line and refused.line.isprintable()
    code, out, err = cli(["admission", "status", "--config", path], tmp_path)
    assert code == 0 and "\x1b" not in out.decode() and b"Traceback" not in err


def test_a_reason_of_bytes_that_are_not_utf8_through_the_real_cli(tmp_path):
    config = config_of(tmp_path)
    path = write_config(tmp_path, config)
    reason = os.fsdecode(b"bad \xff\xfe bytes")
    for extra in ([], ["--json"]):
        code, out, err = cli(
            ["admission", "drain", "--reason", reason, "--config", path, *extra], tmp_path
        )
        assert code == 0 and b"Traceback" not in err, err
        assert b"\xff" not in out
    record = drain.read_drain(config["paths"]["state_dir"])
    assert record["reason"] == "operator: bad \\xff\\xfe bytes"
    json.dumps(record, ensure_ascii=False).encode()  # storable as UTF-8: no lone surrogate


@pytest.mark.parametrize("reason", ["x" * 400, "C:\\disks\\3", "tab\x1bstop"])
def test_draining_again_with_the_same_reason_is_not_a_change(tmp_path, reason):
    config = config_of(tmp_path)
    admission.drain_by_operator(config, reason, jobs=no_jobs)
    again = admission.drain_by_operator(config, reason, jobs=no_jobs)
    assert again["changed"] is False


def test_the_drain_event_is_bounded_like_the_record(tmp_path):
    config = config_of(tmp_path)
    admission.drain_by_operator(config, "x" * 100_000, jobs=no_jobs)
    with open(os.path.join(config["paths"]["state_dir"], "events.jsonl"), "rb") as handle:
        lines = handle.read().splitlines()
    assert lines and max(len(line) for line in lines) < 4096


# --- drain.json and the state dir -------------------------------------------------------------


def plant(state, kind):
    path = os.path.join(state, "drain.json")
    if kind == "symlink":
        secret = os.path.join(os.path.dirname(state), "secret.json")
        with open(secret, "w") as handle:
            json.dump({"drained": False, "reason": "", "since": 1.0, "unit": ""}, handle)
        os.symlink(secret, path)
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "huge":
        with open(path, "wb") as handle:
            handle.write(b'{"drained": true, "reason": "' + b"x" * (2 << 20) + b'"}')
    elif kind == "directory":
        os.mkdir(path)
    elif kind == "garbage":
        with open(path, "wb") as handle:
            handle.write(b"\xff\x00" * 100)
    elif kind == "infinite-since":
        with open(path, "w") as handle:
            handle.write('{"drained": true, "reason": "r", "since": 1e999, "unit": ""}')
    elif kind == "unknown-by":
        with open(path, "w") as handle:
            json.dump({"drained": True, "reason": "r", "since": 1.0, "by": "job"}, handle)


@pytest.mark.parametrize(
    "kind",
    ["symlink", "fifo", "huge", "directory", "garbage", "infinite-since", "unknown-by"],
)
def test_a_damaged_drain_record_is_one_error_line_and_left_alone(tmp_path, kind):
    config = config_of(tmp_path, agent_unit="a.service")
    state = config["paths"]["state_dir"]
    path = write_config(tmp_path, config)
    plant(state, kind)
    before = tree_digest(tmp_path)
    for argv in (
        ["drain", "--reason", "x"],
        ["drain", "--reason", "x", "--check"],
        ["undrain"],
        ["undrain", "--check"],
        ["status"],
    ):
        code, out, err = cli(["admission", *argv, "--config", path], tmp_path, timeout=20)
        assert_one_error_line(code, out, err, "drain state is unknown")
    after = tree_digest(tmp_path)
    after.pop(os.path.join(state, "admission.lock"), None)
    assert after == before


def test_check_mode_creates_nothing_not_even_a_missing_state_dir(tmp_path):
    state = tmp_path / "absent" / "state"
    config = {"paths": {"state_dir": str(state)}, "admission": {"agent_unit": "a.service"}}
    path = write_config(tmp_path, config)
    before = tree_digest(tmp_path)
    for argv in (["drain", "--reason", "x", "--check"], ["undrain", "--check"]):
        code, out, err = cli(["admission", *argv, "--config", path, "--json"], tmp_path)
        assert code == 0, err
        assert json.loads(out)["action"]
    assert not os.path.exists(tmp_path / "absent")
    assert tree_digest(tmp_path) == before


def test_a_state_dir_that_is_a_file_is_one_error_line(tmp_path):
    state = tmp_path / "state-file"
    state.write_text("not a dir")
    config = {"paths": {"state_dir": str(state)}, "admission": {}}
    path = write_config(tmp_path, config)
    for argv in (["drain", "--reason", "x"], ["undrain"]):
        code, out, err = cli(["admission", *argv, "--config", path], tmp_path)
        assert_one_error_line(code, out, err)
    assert state.read_text() == "not a dir"


def test_a_full_state_disk_keeps_the_old_record_and_says_so(tmp_path):
    """The state dir on a 1 MiB tmpfs filled to the last byte (a private mount namespace):
    the drain fails with one line, the earlier record is intact, nothing half-written stays."""
    state = tmp_path / "state"
    state.mkdir()
    config = {"paths": {"state_dir": str(state)}, "admission": {}}
    path = write_config(tmp_path, config)
    old = json.dumps(drain.new_record(False, "back: earlier", "", 5.0), sort_keys=True)
    script = (
        'set -e; mount -t tmpfs -o size=1m tmpfs "$1"; printf "%s\\n" "$4" > "$1/drain.json"; '
        'dd if=/dev/zero of="$1/fill" bs=4k 2>/dev/null || true; '
        'set +e; "$2" -m runnerkeep_cli admission drain --reason full --config "$3"; '
        'echo "rc=$?"; cat "$1/drain.json"; ls -a "$1"'
    )
    env = dict(os.environ, PYTHONPATH=PYTHONPATH, RUNNERKEEP_RUN_DIR=str(tmp_path / "run"))
    proc = subprocess.run(
        [
            *("unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh"),
            *(str(state), sys.executable, path, old),
        ],
        capture_output=True,
        env=env,
        cwd=ROOT,
        timeout=60,
        check=False,
    )
    out = proc.stdout.decode()
    assert "rc=1" in out, (out, proc.stderr)
    assert_one_error_line(1, b"", proc.stderr, "No space left")
    assert old in out  # the old record as it was
    names = out.split(old, 1)[1].split()
    assert sorted(names) == [".", "..", "admission.lock", "drain.json", "fill"], names


# --- config ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "section",
    [
        {"enabled": "false"},
        {"agent_unit": 5},
        {"agent_unit": "-x.service"},
        {"agent_unit": "a b.service"},
        {"agent_unit": "../../x.service"},
        {"settle_time": "soon"},
        {"settle_time": -1},
        {"settle_time": 1e999},
        {"deadline": 0},
        {"deadline": "0s"},
        {"deadline": True},
        {"deadline": []},
        {"max_drained": "3"},
        {"max_drained": -1},
        {"max_drained": 1.5},
        {"fleet_drained": None},
        {"socket": 5},
        {"socket": "relative.sock"},
        {"drained": True},
        [],
        "on",
    ],
    ids=repr,
)
def test_a_bad_admission_section_is_one_error_line_and_writes_nothing(tmp_path, section):
    state = tmp_path / "state"
    state.mkdir()
    path = write_config(tmp_path, {"paths": {"state_dir": str(state)}, "admission": section})
    for argv in (["drain", "--reason", "x"], ["undrain"], ["drain", "--reason", "x", "--check"]):
        code, out, err = cli(["admission", *argv, "--config", path], tmp_path)
        assert_one_error_line(code, out, err, "admission", exit_code=EXIT_CONFIG)
    assert os.listdir(state) == []


@pytest.mark.parametrize("state_dir", [5, "", None, ["a"]], ids=repr)
def test_a_bad_state_dir_value_is_one_error_line(tmp_path, state_dir):
    path = write_config(tmp_path, {"paths": {"state_dir": state_dir}, "admission": {}})
    code, out, err = cli(["admission", "drain", "--reason", "x", "--config", path], tmp_path)
    if code == 0:  # a default state dir was taken: then it must not be this test's cwd
        assert not os.path.exists(os.path.join(ROOT, "drain.json"))
        pytest.fail(f"a state_dir of {state_dir!r} was accepted: {out!r}")
    assert_one_error_line(code, out, err, "paths.state_dir", exit_code=EXIT_CONFIG)


# --- the admission lock --------------------------------------------------------------------


@pytest.fixture
def held_lock(tmp_path):
    """The admission lock held by another process (a hung admission, a stuck run)."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    lock = os.path.join(str(state), admission.LOCK_FILE)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import fcntl, os, sys, time\n"
            "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
            "fcntl.flock(fd, fcntl.LOCK_EX)\n"
            "print('held', flush=True)\n"
            "time.sleep(120)\n",
            lock,
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout.readline() == b"held\n"
        yield lock
    finally:
        holder.kill()
        holder.wait(10)
        holder.stdout.close()


def test_a_held_lock_stops_a_drain_after_the_deadline_with_one_line(tmp_path, held_lock):
    config = config_of(tmp_path, deadline="1s")
    path = write_config(tmp_path, config)
    for argv in (["drain", "--reason", "x"], ["undrain"]):
        started = time.monotonic()
        code, out, err = cli(["admission", *argv, "--config", path], tmp_path)
        assert_one_error_line(code, out, err, "admission lock", exit_code=EXIT_LOCKED)
        assert time.monotonic() - started < 20  # bounded by admission.deadline, not forever
    assert not os.path.exists(os.path.join(config["paths"]["state_dir"], "drain.json"))
    # Check mode takes no lock: it answers at once.
    code, out, err = cli(
        ["admission", "drain", "--reason", "x", "--check", "--config", path], tmp_path
    )
    assert code == 0 and b"would refuse jobs" in out, err


def test_a_held_lock_delays_the_bring_back_to_a_later_cycle(tmp_path, held_lock, monkeypatch):
    monkeypatch.setattr(admission, "BRING_BACK_LOCK_WAIT", 0.3)
    config = config_of(tmp_path, agent_unit="a.service", settle_time="1s")
    state = config["paths"]["state_dir"]
    drain.write_drain(state, drain.new_record(True, "free bytes on /: x", "a.service", 1.0))
    units = Units(active=False)
    result = admission.watch_drain(config, {"state": "ok", "since": 0.0}, 500.0, control=units)
    assert result["error"] is None and "later cycle" in result["action"]
    assert units.calls == [] and drain.read_drain(state)["drained"] is True


def test_a_lock_file_planted_as_a_fifo_or_symlink_is_not_followed(tmp_path):
    config = config_of(tmp_path)
    state = config["paths"]["state_dir"]
    target = tmp_path / "target"
    target.write_text("keep")
    os.symlink(str(target), os.path.join(state, admission.LOCK_FILE))
    admission.drain_by_operator(config, "one", jobs=no_jobs)
    assert target.read_text() == "keep"
    os.unlink(os.path.join(state, admission.LOCK_FILE))
    os.mkfifo(os.path.join(state, admission.LOCK_FILE))
    done = threading.Event()
    worker = threading.Thread(
        target=lambda: (admission.undrain_by_operator(config), done.set()), daemon=True
    )
    worker.start()
    worker.join(15)
    assert done.is_set(), "the undrain hung on a FIFO lock file"
    assert drain.read_drain(state)["drained"] is False
    info = os.lstat(os.path.join(state, admission.LOCK_FILE))
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o600


# --- who runs it ------------------------------------------------------------------------------


@pytest.fixture
def shared_dir():
    """A directory user nobody can read (pytest's tmp_path is root's, 0700)."""
    directory = tempfile.mkdtemp(prefix="rk-drain-attack-")
    os.chmod(directory, 0o755)
    try:
        yield directory
    finally:
        subprocess.run(["rm", "-rf", "--one-file-system", directory], check=False, timeout=30)


def test_a_user_who_is_not_root_changes_nothing(shared_dir):
    state = os.path.join(shared_dir, "state")
    os.mkdir(state, 0o755)
    drain.write_drain(state, drain.new_record(True, "operator: hold", "", 5.0, by="operator"))
    path = write_config(shared_dir, {"paths": {"state_dir": state}, "admission": {}})
    os.chmod(path, 0o644)
    run_dir = os.path.join(shared_dir, "run")
    before = tree_digest(state)
    for argv in (["drain", "--reason", "x"], ["undrain"]):
        code, out, err = cli(["admission", *argv, "--config", path], run_dir, user=65534)
        assert_one_error_line(code, out, err, "run it as root")
    code, out, err = cli(["admission", "undrain", "--check", "--config", path], run_dir, user=65534)
    assert code == 0 and b"check: " in out and b"Traceback" not in err, err
    assert tree_digest(state) == before


def test_an_undrain_check_without_a_unit_says_jobs_would_be_admitted(tmp_path):
    config = config_of(tmp_path)
    admission.drain_by_operator(config, "hold", jobs=no_jobs)
    result = admission.undrain_by_operator(config, check=True)
    assert result["changed"] is True
    assert "admit" in result["action"] and "refused" not in result["action"]


# --- records written by older runnerkeeps or by hand ----------------------------------------------


@pytest.mark.parametrize("unit", ["a b.service", "-x.service", "x.service; reboot", "../x"])
def test_a_bad_unit_name_in_an_old_record_never_reaches_systemctl(tmp_path, unit, monkeypatch):
    """A record naming something that is not a unit is damaged: the drain state is unknown,
    nothing is started or stopped, the record is left for the operator to fix."""
    config = config_of(tmp_path)
    state = config["paths"]["state_dir"]
    with open(os.path.join(state, "drain.json"), "w") as handle:
        json.dump({"drained": True, "reason": "r", "since": 1.0, "unit": unit}, handle)
    ran = []

    class NoSystemctl:
        TimeoutExpired = subprocess.TimeoutExpired

        @staticmethod
        def run(argv, **kwargs):
            ran.append(argv)
            pytest.fail(f"systemctl ran: {argv}")

    monkeypatch.setattr(drain, "subprocess", NoSystemctl)
    result = admission.watch_drain(config, {"state": "ok", "since": 0.0}, 10_000.0, jobs=no_jobs)
    assert "drain state is unknown" in result["error"] and "drain.json" in result["error"]
    with pytest.raises(drain.DrainRecordError, match=r"drain\.json"):
        admission.undrain_by_operator(config)
    assert ran == []
    path = write_config(tmp_path, config)
    code, out, err = cli(["admission", "undrain", "--config", path], tmp_path)
    assert_one_error_line(code, out, err, "drain.json", exit_code=1)
    with open(os.path.join(state, "drain.json")) as handle:
        assert json.load(handle)["unit"] == unit  # left as it was


def test_a_bad_unit_name_in_the_record_is_blamed_on_the_record(tmp_path):
    config = config_of(tmp_path)
    state = config["paths"]["state_dir"]
    with open(os.path.join(state, "drain.json"), "w") as handle:
        json.dump({"drained": True, "reason": "r", "since": 1.0, "unit": "a b.service"}, handle)
    with pytest.raises(drain.RunnerkeepError) as caught:
        admission.undrain_by_operator(config)
    assert "drain.json" in str(caught.value)


def test_the_watch_alone_never_brings_back_an_operator_drain(tmp_path):
    config = config_of(tmp_path, agent_unit="a.service", settle_time="1s")
    units = Units()
    admission.drain_by_operator(config, "hold", jobs=no_jobs, control=units, now=10.0)
    for now in (20.0, 1e6, 1e9):
        result = admission.watch_drain(config, {"state": "ok", "since": 0.0}, now, control=units)
        assert result["drained"] is True and result["by"] == "operator"
    assert ("start", "a.service") not in units.calls
    assert drain.read_drain(config["paths"]["state_dir"])["by"] == "operator"
