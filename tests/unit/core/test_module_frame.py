"""module_frame, the frame the Ansible modules share: the common options, every error class
as the return values of one failure (the CLI's exit code, never a traceback), check mode, and
work done in a forked child that sends its outcome back, whatever way that child ends (bounded:
each test that forks runs under a hang guard)."""

from __future__ import annotations

import faulthandler
import json
import os
import signal
import subprocess
import sys
import time

import ansible
import pytest
from deadline import must_finish_within
from runnerkeep import errors, module_frame
from runnerkeep.errors import (
    CacheMiss,
    ConfigError,
    DockerCommandError,
    DockerUnavailableError,
    FreeSpaceError,
    LockHeldError,
    RunnerkeepError,
)
from runnerkeep.module_frame import (
    COMMON_OPTIONS,
    Task,
    TaskFailed,
    child_outcome,
    decoded_outcome,
    failure_fields,
    in_child,
    load_task_config,
    module_options,
    run_module,
    task_outcome,
)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
LIBRARY = os.path.join(ROOT, "library")
MODULES = ("runner_cleanup", "image_cache", "disk_budget", "disk_facts")


class ModuleExit(Exception):
    """What AnsibleModule's exit_json/fail_json do: end the module (here: end the call)."""


class FakeModule:
    """The part of AnsibleModule the frame uses, recording what it is given."""

    def __init__(self, params=None, check_mode=False):
        self.params = dict(params or {})
        self.check_mode = check_mode
        self.warnings = []
        self.exited = None
        self.failed = None

    def warn(self, line):
        self.warnings.append(line)

    def exit_json(self, **fields):
        self.exited = fields
        raise ModuleExit()

    def fail_json(self, **fields):
        self.failed = fields
        raise ModuleExit()


def run_fake(work, what="thing failed", defaults=None, check_mode=False, params=None):
    module = FakeModule(params, check_mode)
    with pytest.raises(ModuleExit):
        run_module(module, work, what, defaults)
    return module


def raising(exc):
    def work(_task):
        raise exc

    return work


# --- common options -----------------------------------------------------------------------------


def test_module_options_adds_the_common_options_to_the_modules_own():
    spec = module_options(state={"type": "str", "default": "on"})
    assert spec == {"config_file": {"type": "path"}, "state": {"type": "str", "default": "on"}}
    spec["config_file"]["type"] = "str"  # a module changing its copy changes no other module
    assert COMMON_OPTIONS["config_file"] == {"type": "path"}


def test_load_task_config_reads_the_config_file_option(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"paths": {"state_dir": str(tmp_path / "state")}}))
    config = load_task_config({"config_file": str(path)})
    assert config["paths"]["state_dir"] == str(tmp_path / "state")


def test_load_task_config_lays_a_checked_overlay_over_its_section(tmp_path):
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"disk": {"syslog": False, "reserve": "1G"}}))
    params = {"config_file": str(path), "disk": {"reserve": "2G"}}
    config = load_task_config(params, overlay="disk")
    assert config["disk"]["reserve"] == "2G" and config["disk"]["syslog"] is False
    with pytest.raises(ConfigError, match=r"^option disk: disk\.syslog: expected true or false"):
        load_task_config({"config_file": str(path), "disk": {"syslog": "no"}}, overlay="disk")


# --- every error class -> one failure -----------------------------------------------------------


# Every error class of the core (errors.py may gain or lose one): the CLI exits with its
# exit_code, so the module reports that one.
CORE_ERRORS = sorted(
    (
        value
        for value in vars(errors).values()
        if isinstance(value, type) and issubclass(value, RunnerkeepError)
    ),
    key=lambda cls: cls.__name__,
)


def test_the_error_classes_the_modules_meet_are_all_there():
    assert {RunnerkeepError, ConfigError, CacheMiss, FreeSpaceError, LockHeldError} <= set(
        CORE_ERRORS
    )
    assert {DockerUnavailableError, DockerCommandError} <= set(CORE_ERRORS)


@pytest.mark.parametrize("cls", CORE_ERRORS, ids=lambda cls: cls.__name__)
def test_a_core_error_fails_with_its_message_and_the_clis_exit_code(cls):
    exc = cls("what went wrong, and what to do")
    fields = failure_fields(exc, "thing failed")
    assert fields["msg"] == "what went wrong, and what to do"  # the core's words, as the CLI's
    assert fields["exit_code"] == cls.exit_code and cls.exit_code in errors.EXIT_CODES
    assert fields.get("busy", False) is (cls is LockHeldError)
    assert "exception" not in fields


@pytest.mark.parametrize(
    ("cls", "code"),
    [
        (RunnerkeepError, 1),
        (ConfigError, 2),
        (CacheMiss, 3),
        (FreeSpaceError, 4),
        (DockerUnavailableError, 5),
        (DockerCommandError, 1),
        (LockHeldError, 7),
    ],
)
def test_the_exit_codes_are_the_documented_ones(cls, code):
    assert failure_fields(cls("x"), "y")["exit_code"] == code


def test_a_held_lock_is_busy():
    fields = failure_fields(LockHeldError("the store lock is held"), "image cache failed")
    assert fields == {"msg": "the store lock is held", "exit_code": 7, "busy": True}


@pytest.mark.parametrize(
    ("exc", "msg"),
    [
        (
            PermissionError(13, "Permission denied", "/var/lib/runnerkeep/x"),
            "disk report failed: Permission denied (/var/lib/runnerkeep/x)",
        ),
        (
            OSError(18, "Invalid cross-device link", "/a/tmp", None, "/b/entry"),
            "disk report failed: Invalid cross-device link (/a/tmp -> /b/entry)",
        ),
        (OSError(28, "No space left on device"), "disk report failed: No space left on device"),
        (OSError("a bare message"), "disk report failed: a bare message"),
        (ValueError("option paths: expected absolute paths"), "disk report failed: option paths:"),
    ],
)
def test_an_os_or_value_error_is_one_line_naming_the_path(exc, msg):
    fields = failure_fields(exc, "disk report failed")
    assert fields["msg"].startswith(msg)
    assert "\n" not in fields["msg"] and "None" not in fields["msg"]
    assert set(fields) == {"msg"}


@pytest.mark.parametrize("exc", [KeyError("checks"), RuntimeError("boom"), RecursionError("deep")])
def test_anything_else_is_an_internal_error_with_the_trace_kept_for_verbose(exc):
    try:
        raise exc
    except Exception as raised:  # a raised one, so it has a traceback
        fields = failure_fields(raised, "cleanup failed")
    assert fields["msg"] == f"internal error: {type(exc).__name__}: {exc}"
    assert "test_module_frame.py" in fields["exception"]


def test_task_failed_carries_the_values_the_module_gave():
    exc = TaskFailed("cache verify found problems: k", result="bad", changed=False)
    assert failure_fields(exc, "x") == {"msg": exc.fields["msg"], "result": "bad", "changed": False}


def test_a_failure_carries_the_defaults_unless_it_sets_them():
    module = run_fake(raising(ConfigError("bad")), defaults={"busy": False, "cache_dir": "/c"})
    assert module.failed == {"msg": "bad", "exit_code": 2, "busy": False, "cache_dir": "/c"}
    module = run_fake(raising(LockHeldError("held")), defaults={"busy": False})
    assert module.failed["busy"] is True and module.failed["exit_code"] == 7


# --- the run: results, warnings, check mode -----------------------------------------------------


def test_a_result_is_exited_with_the_warnings_given_first():
    def work(task):
        task.warn("one")
        task.warn(["two", "three"])
        task.warn(None)
        return {"changed": True, "value": task.params["x"]}

    module = run_fake(work, params={"x": 5})
    assert module.exited == {"changed": True, "value": 5} and module.failed is None
    assert module.warnings == ["one", "two", "three"]


def test_warnings_given_before_a_failure_are_still_shown():
    def work(task):
        task.warn("half done")
        raise FreeSpaceError("needs 2 GiB")

    module = run_fake(work)
    assert module.warnings == ["half done"] and module.failed["exit_code"] == 4


def test_the_frame_catches_what_the_modules_used_to_let_escape():
    module = run_fake(raising(RuntimeError("a bug")))  # image_cache let this be a traceback
    assert module.failed["msg"] == "internal error: RuntimeError: a bug"
    assert module.exited is None


@pytest.mark.parametrize("check_mode", [True, False])
def test_check_mode_reaches_the_work_and_withholds_the_event_dir(check_mode):
    seen = {}

    def work(task):
        seen.update(check=task.check_mode, events=task.event_dir("/var/lib/runnerkeep"))
        return {"changed": False}

    run_fake(work, check_mode=check_mode)
    assert seen["check"] is check_mode
    assert seen["events"] == (None if check_mode else "/var/lib/runnerkeep")


def test_task_outcome_is_plain_data():
    task = Task({"a": 1}, check_mode=False)
    assert task_outcome(lambda t: {"a": t.params["a"]}, task, "x") == {
        "result": {"a": 1},
        "warnings": [],
    }
    failed = task_outcome(raising(CacheMiss("miss")), Task({}, False), "x", {"hit": False})
    assert failed == {"failed": {"msg": "miss", "exit_code": 3, "hit": False}, "warnings": []}


# --- the child protocol -------------------------------------------------------------------------

PARENT = os.getpid()
KILLED = "ended without an answer (killed by signal 9)"


def in_a_child(work, become=lambda: None, **kwargs):
    task = Task({"k": "v"}, check_mode=False)
    task.warn("from the parent")
    with must_finish_within(30):
        result = in_child(task, work, become, "image cache failed", "the owner's process", **kwargs)
    return task, result


def test_the_work_runs_in_a_child_after_become_and_its_result_comes_back():
    def become():
        os.environ["RK_FRAME_BECAME"] = str(os.getpid())

    def work(task):
        task.warn("from the child")
        return {"pid": os.getpid(), "became": os.environ.get("RK_FRAME_BECAME"), "k": task.params}

    task, result = in_a_child(work, become)
    assert result["pid"] != PARENT and result["became"] == str(result["pid"])
    assert result["k"] == {"k": "v"}
    assert "RK_FRAME_BECAME" not in os.environ  # become ran in the child only
    assert task.warnings == ["from the parent", "from the child"]


def test_a_core_error_in_the_child_is_the_same_failure_in_the_parent():
    def work(task):
        task.warn("before the miss")
        raise CacheMiss("no entry for key k")

    task = Task({}, False)
    with must_finish_within(30), pytest.raises(TaskFailed) as caught:
        in_child(task, work, lambda: None, "image cache failed", "the owner's process")
    assert caught.value.fields == {"msg": "no entry for key k", "exit_code": 3}
    assert task.warnings == ["before the miss"]
    module = run_fake(lambda t: in_child(t, work, lambda: None, "x", "y"), defaults={"c": 1})
    assert module.failed == {"msg": "no entry for key k", "exit_code": 3, "c": 1}
    assert module.warnings == ["before the miss"]


@pytest.mark.parametrize("where", ["become", "work"])
def test_a_bug_in_the_child_is_an_internal_error_not_a_traceback(where):
    def boom():
        raise RuntimeError("bug in " + where)

    become = boom if where == "become" else (lambda: None)

    def work(_task):
        return boom() if where == "work" else {}

    with must_finish_within(30):
        module = run_fake(lambda t: in_child(t, work, become, "image cache failed", "the child"))
    assert module.failed["msg"] == f"internal error: RuntimeError: bug in {where}"
    assert "boom" in module.failed["exception"]


def abort_quietly():
    faulthandler.disable()  # pytest's stack dump of the child would only be noise
    os.abort()


@pytest.mark.parametrize(
    ("die", "text"),
    [
        (lambda: os._exit(3), "ended without an answer (exit status 3)"),
        (
            lambda: os.kill(os.getpid(), signal.SIGKILL),
            "ended without an answer (killed by signal 9)",
        ),
        (abort_quietly, "ended without an answer (killed by signal 6)"),
    ],
    ids=["exit", "sigkill", "abort"],
)
def test_a_child_that_dies_is_a_clear_failure(die, text):
    def work(_task):
        die()
        return {"never": True}

    with must_finish_within(30):
        module = run_fake(
            lambda t: in_child(t, work, lambda: None, "image cache failed", "the owner's process")
        )
    assert module.failed == {
        "msg": f"image cache failed: the owner's process {text}; see the host's log",
        "exit_code": 1,
    }


def test_a_child_that_hangs_is_stopped_at_the_deadline(tmp_path):
    pid_file = tmp_path / "pid"

    def work(_task):
        pid_file.write_text(str(os.getpid()))
        time.sleep(60)
        return {}

    task = Task({}, False)
    with must_finish_within(20), pytest.raises(RunnerkeepError) as caught:
        in_child(task, work, lambda: None, "image cache failed", "the child", deadline=1)
    assert str(caught.value) == (
        "image cache failed: the child did not finish within 1 s and was stopped; "
        "see the host's log"
    )
    with pytest.raises(ProcessLookupError):  # killed and reaped, not left running
        os.kill(int(pid_file.read_text()), 0)


def test_a_core_module_that_cannot_load_fails_before_the_fork(monkeypatch):
    real_import = module_frame.importlib.import_module

    def import_module(name):
        if name.endswith(".units"):
            raise AttributeError("'builtin_function_or_method' object has no attribute 'sleep'")
        return real_import(name)

    monkeypatch.setattr(module_frame.importlib, "import_module", import_module)
    forked = []
    monkeypatch.setattr(module_frame.os, "fork", lambda: forked.append(1) or 0)
    with pytest.raises(RunnerkeepError, match=r"^cannot load runnerkeep\.units: AttributeError: "):
        in_child(Task({}, False), lambda t: {}, lambda: None, "image cache failed", "the child")
    assert forked == []


def test_a_pipe_held_by_what_the_child_left_behind_does_not_hang_the_parent(tmp_path):
    pid_file = tmp_path / "grandchild"

    def work(_task):
        grandchild = os.fork()
        if grandchild == 0:  # holds the write end of the answer pipe, then goes
            time.sleep(20)
            os._exit(0)
        pid_file.write_text(str(grandchild))
        return {"done": True}

    try:
        with must_finish_within(15):
            outcome = child_outcome(
                lambda: task_outcome(work, Task({}, False), "x"), "x", "the child", grace=0.5
            )
        assert outcome == {"result": {"done": True}, "warnings": []}
    finally:
        if pid_file.exists():
            os.kill(int(pid_file.read_text()), signal.SIGKILL)


def test_an_answer_past_the_bound_is_refused():
    def produce():
        return {"result": {"blob": "x" * 100_000}, "warnings": []}

    with must_finish_within(30), pytest.raises(RunnerkeepError, match="sent more than 1000 bytes"):
        child_outcome(produce, "image cache failed", "the child", max_bytes=1000)


def test_a_result_that_is_not_json_is_a_failure_saying_so():
    with must_finish_within(30):
        outcome = child_outcome(
            lambda: {"result": {"when": object()}, "warnings": ["w"]}, "image cache failed", "c"
        )
    assert outcome["failed"]["msg"].startswith("image cache failed: a result that is not JSON:")
    assert outcome["warnings"] == ["w"]


def test_an_answer_that_is_not_an_outcome_is_refused():
    with must_finish_within(30), pytest.raises(RunnerkeepError, match="not an outcome"):
        child_outcome(lambda: {"result": 1}, "image cache failed", "the child")


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"warnings": []}',
        b'{"result": {}, "failed": {"msg": "x"}, "warnings": []}',
        b'{"result": [], "warnings": []}',
        b'{"failed": {"exit_code": 1}, "warnings": []}',
        b'{"result": {}, "warnings": "w"}',
        b'{"result": {}, "warnings": [1]}',
    ],
)
def test_decoded_outcome_refuses_what_is_not_an_outcome(data):
    assert decoded_outcome(data) is None


def test_decoded_outcome_takes_a_result_or_a_failure():
    assert decoded_outcome(b'{"result": {"a": 1}}') == {"result": {"a": 1}, "warnings": []}
    failed = b'{"failed": {"msg": "m", "exit_code": 3}, "warnings": ["w"]}'
    assert decoded_outcome(failed) == {"failed": {"msg": "m", "exit_code": 3}, "warnings": ["w"]}


def test_the_child_never_writes_to_the_modules_stdout(capfd):
    def work(_task):
        print("noise from the core", flush=True)
        return {"ok": True}

    _task, result = in_a_child(work)
    out, err = capfd.readouterr()
    assert result == {"ok": True}
    assert "noise" not in out and "noise from the core" in err


# --- the modules use the frame ------------------------------------------------------------------

# Map the core under ansible.module_utils (what AnsiballZ does), optionally break something,
# then run the module: argv = module path, args file, what to break.
MODULE_RUNNER = """
import importlib, json, pkgutil, runpy, sys
import ansible.module_utils
import runnerkeep
for found in pkgutil.walk_packages(runnerkeep.__path__, "runnerkeep."):
    importlib.import_module(found.name)
for name, mod in list(sys.modules.items()):
    if name == "runnerkeep" or name.startswith("runnerkeep."):
        sys.modules["ansible.module_utils." + name] = mod
ansible.module_utils.runnerkeep = runnerkeep
breakage = sys.argv[3]
if breakage == "no-frame":
    sys.modules["ansible.module_utils.runnerkeep.module_frame"] = None  # ImportError
elif breakage != "none":
    from runnerkeep import errors, module_frame
    exc = {
        "oserror": PermissionError(13, "Permission denied", "/etc/runnerkeep/config.json"),
        "lock": errors.LockHeldError("a CI job holds the runner lock"),
        "bug": RuntimeError("a bug"),
    }[breakage]
    def load_config(path=None):
        raise exc
    module_frame.load_config = load_config
sys.argv = [sys.argv[1], sys.argv[2]]
runpy.run_path(sys.argv[0], run_name="__main__")
"""

# ansible-core of this interpreter (the one the modules run with here): 2.15 and later.
ANSIBLE_CORE = tuple(int(part) for part in ansible.__version__.split(".")[:2])
REQUIRED = {"runner_cleanup": {"stage": "pre"}, "image_cache": {"key": "k"}}
PREFIX = {
    "runner_cleanup": "cleanup failed",
    "image_cache": "image cache failed",
    "disk_budget": "disk budget failed",
    "disk_facts": "disk report failed",
}


def run_library_module(name, tmp_path, breakage):
    args = {"config_file": str(tmp_path / "config.json"), **REQUIRED.get(name, {})}
    if ANSIBLE_CORE >= (2, 19):  # as -vvv: fail_json keeps the trace (older ones always do)
        args["_ansible_tracebacks_for"] = ["error"]
    argfile = str(tmp_path / "args.json")
    with open(argfile, "w", encoding="utf-8") as handle:
        json.dump({"ANSIBLE_MODULE_ARGS": args}, handle)
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            MODULE_RUNNER,
            os.path.join(LIBRARY, f"{name}.py"),
            argfile,
            breakage,
        ],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=os.path.join(ROOT, "module_utils")),
        timeout=120,
    )
    assert "Traceback" not in done.stderr, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize("name", MODULES)
def test_every_module_fails_the_same_way_on_an_os_error(name, tmp_path):
    result = run_library_module(name, tmp_path, "oserror")
    assert result["failed"] is True
    assert result["msg"] == f"{PREFIX[name]}: Permission denied (/etc/runnerkeep/config.json)"


@pytest.mark.parametrize("name", MODULES)
def test_every_module_reports_a_held_lock_as_busy(name, tmp_path):
    result = run_library_module(name, tmp_path, "lock")
    assert result["failed"] is True and result["busy"] is True and result["exit_code"] == 7
    assert result["msg"] == "a CI job holds the runner lock"


@pytest.mark.parametrize("name", MODULES)
def test_every_module_turns_a_bug_into_one_line(name, tmp_path):
    result = run_library_module(name, tmp_path, "bug")
    assert result["failed"] is True and result["msg"] == "internal error: RuntimeError: a bug"
    assert "in load_config" in result["exception"]  # the trace, for -vvv only


@pytest.mark.parametrize("name", MODULES)
def test_a_module_without_its_core_says_so_and_still_takes_the_common_options(name, tmp_path):
    result = run_library_module(name, tmp_path, "no-frame")
    assert result["failed"] is True
    assert result["msg"].startswith("cannot import the runnerkeep core: "), result["msg"]
