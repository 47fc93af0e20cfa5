"""The frame the Ansible modules of ``library/`` share: their common options, how every error
becomes one ``fail_json`` (never a traceback), check mode, and work done in a forked child that
drops privileges and sends its outcome back to the root parent, which reports it.

Nothing here imports Ansible: a module hands in its ``AnsibleModule`` (used only through
``params``, ``check_mode``, ``warn``, ``fail_json`` and ``exit_json``) and its work as a plain
callable, so the frame is tested like any core module. A module's work is
``work(task) -> dict`` (the return values of a success) and raises to fail:
``TaskFailed(msg, **values)`` for a failure it words itself, a core error otherwise.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import pkgutil
import select
import signal
import sys
import time
import traceback
from typing import Any, Callable

from .config import load_config
from .errors import LockHeldError, RunnerkeepError
from .schema import validate_config

# The options every module that reads the host's config takes (fleet_report, which runs on the
# controller, reads none). The default is the core's: $RUNNERKEEP_CONFIG, else the file in /etc.
COMMON_OPTIONS: dict[str, dict[str, Any]] = {"config_file": {"type": "path"}}

# What a forked child may send back: a report is kilobytes, a big verify or cleanup report a
# few megabytes; past this the answer is refused, not read into the root parent's memory.
MAX_ANSWER_BYTES = 64 * 1024 * 1024
# How long the parent still reads the pipe after the child has exited: only a process the child
# started and left behind can hold it open that long.
EXIT_GRACE_SECONDS = 5.0
_POLL_SECONDS = 0.2

Outcome = dict[str, Any]  # {"result": {...}} or {"failed": {"msg": ...}}, with "warnings"
Work = Callable[["Task"], dict[str, Any]]


def module_options(**own: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """A module's argument_spec: its own options and the common ones (copies, never shared)."""
    spec = {name: dict(settings) for name, settings in COMMON_OPTIONS.items()}
    spec.update(own)
    return spec


class TaskFailed(Exception):
    """The task fails with ``msg`` and these return values (a failure the module words)."""

    def __init__(self, msg: str, **values: Any) -> None:
        super().__init__(msg)
        self.fields = dict(values, msg=msg)


class Task:
    """What a module's work gets: its parameters, check mode and a place for warnings."""

    def __init__(self, params: dict[str, Any], check_mode: bool) -> None:
        self.params = params
        self.check_mode = bool(check_mode)
        self.warnings: list[str] = []

    def warn(self, lines: Any) -> None:
        """Add one warning or a list of them (a core report's ``warnings``; None is none)."""
        if isinstance(lines, str):
            lines = [lines]
        self.warnings.extend(str(line) for line in lines or [])

    def event_dir(self, state_dir: str | None) -> str | None:
        """The state dir to record events and job data in: none in check mode, which must
        leave no trace (an event is a write)."""
        return None if self.check_mode else state_dir


def load_task_config(params: dict[str, Any], overlay: str | None = None) -> dict[str, Any]:
    """The host's config (O(config_file)); with ``overlay``, the option of that name (a dict
    standing for that config section) checked against the schema and laid over the section."""
    given = params.get(overlay) if overlay else None
    if given:
        validate_config({overlay: given}, f"option {overlay}")
    config = load_config(params.get("config_file"))
    if given:
        config[overlay] = dict(config.get(overlay) or {}, **given)
    return config


# --- errors -> return values ------------------------------------------------------------------


def failure_fields(exc: BaseException, what: str) -> dict[str, Any]:
    """The return values of a task that ended in ``exc``; ``what`` words the failure
    ("cleanup failed"). A core error keeps the exit code the CLI gives for it."""
    if isinstance(exc, TaskFailed):
        return dict(exc.fields)
    if isinstance(exc, RunnerkeepError):
        fields: dict[str, Any] = {"msg": str(exc), "exit_code": exc.exit_code}
        if isinstance(exc, LockHeldError):
            fields["busy"] = True  # another run or a CI job holds the lock: try again later
        return fields
    if isinstance(exc, OSError):
        return {"msg": f"{what}: {os_error_text(exc)}"}
    if isinstance(exc, ValueError):
        return {"msg": f"{what}: {exc}"}
    return internal_error(exc)


def os_error_text(exc: OSError) -> str:
    """An OSError the core did not anticipate, as its reason and the path(s) it names."""
    text = exc.strerror or str(exc) or type(exc).__name__
    paths = [str(p) for p in (exc.filename, exc.filename2) if p is not None]
    return f"{text} ({' -> '.join(paths)})" if paths else text


def internal_error(exc: BaseException) -> dict[str, Any]:
    """A bug: one line for the user, the traceback where Ansible shows it (-vvv)."""
    return {
        "msg": f"internal error: {type(exc).__name__}: {exc}",
        "exception": "".join(traceback.format_exception(type(exc), exc, exc.__traceback__)),
    }


def task_outcome(
    work: Work, task: Task, what: str, defaults: dict[str, Any] | None = None
) -> Outcome:
    """Every way ``work(task)`` ends, as data; ``defaults`` are return values every failure
    carries unless the failure sets them (a module's "returned: always" values)."""
    try:
        return {"result": work(task), "warnings": task.warnings}
    except Exception as exc:  # the guard: every failure becomes return values
        failed = dict(defaults or {}, **failure_fields(exc, what))
    return {"failed": failed, "warnings": task.warnings}


def report(module: Any, outcome: Outcome) -> None:
    """Hand ``outcome`` to Ansible: warnings, then fail_json or exit_json (neither returns)."""
    for line in outcome.get("warnings") or []:
        module.warn(line)
    if "failed" in outcome:
        module.fail_json(**outcome["failed"])
    module.exit_json(**outcome["result"])


def run_module(module: Any, work: Work, what: str, defaults: dict[str, Any] | None = None) -> None:
    """The whole life of a module after AnsibleModule(): run ``work`` and report how it ended."""
    task = Task(module.params, module.check_mode)
    report(module, task_outcome(work, task, what, defaults))


# --- work in a child that drops privileges ----------------------------------------------------


def in_child(
    task: Task,
    work: Work,
    become: Callable[[], Any],
    what: str,
    who: str,
    deadline: float | None = None,
) -> dict[str, Any]:
    """``work(task)``'s result, the work done in a forked child that first calls ``become``
    (drops to another user for good). The child's warnings join ``task``'s; its failure is
    raised here as TaskFailed. ``who`` names the child in a message ("the process working as
    the owner of /srv/cache").

    Why a child: a module that dropped for good could not report, since ansible-core's
    exit_json reads its own code from the AnsiballZ payload, which only root may read. So the
    whole core is imported first, the child drops and works, and this root parent reports."""
    preload_core()

    def dropped(child_task: Task) -> dict[str, Any]:
        become()
        return work(child_task)

    child_task = Task(task.params, task.check_mode)
    outcome = child_outcome(
        lambda: task_outcome(dropped, child_task, what), what, who, deadline=deadline
    )
    task.warn(outcome["warnings"])
    if "failed" in outcome:
        fields = dict(outcome["failed"])
        raise TaskFailed(str(fields.pop("msg")), **fields)
    return outcome["result"]


def preload_core() -> None:
    """Import every module of this package now, while the payload can be read (some of the
    core import lazily, which would fail after the drop)."""
    package = importlib.import_module(__package__ or "runnerkeep")
    for found in pkgutil.walk_packages(package.__path__, package.__name__ + "."):
        try:
            importlib.import_module(found.name)
        except Exception as exc:  # any module that fails to load: one line, before the fork
            raise RunnerkeepError(
                f"cannot load {found.name}: {type(exc).__name__}: {exc}"
            ) from None


def child_outcome(
    produce: Callable[[], Outcome],
    what: str,
    who: str,
    deadline: float | None = None,
    grace: float = EXIT_GRACE_SECONDS,
    max_bytes: int = MAX_ANSWER_BYTES,
) -> Outcome:
    """``produce()``'s outcome, computed in a forked child and sent back as JSON. A child that
    dies, sends nothing usable, or outlives ``deadline`` (seconds; None: no limit) raises
    RunnerkeepError naming ``who``; a pipe kept open by what the child left behind is given
    up ``grace`` seconds after the child exits. Never returns in the child."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        _child_main(read_end, write_end, produce, what)
    os.close(write_end)
    try:
        answer = _read_answer(pid, read_end, deadline, grace, max_bytes)
    finally:
        os.close(read_end)
    if answer.problem:
        raise RunnerkeepError(f"{what}: {who} {answer.problem}; see the host's log")
    outcome = decoded_outcome(answer.data)
    if outcome is None:
        raise RunnerkeepError(f"{what}: {who} sent an answer that is not an outcome")
    return outcome


def _child_main(read_end: int, write_end: int, produce: Callable[[], Outcome], what: str) -> None:
    """In the child: produce, send, exit. Never returns into the module, never writes to its
    stdout (that is the module's JSON, the parent's alone)."""
    status = 1
    try:
        os.close(read_end)
        os.dup2(2, 1)
        sys.stdout = sys.stderr
        try:
            outcome = produce()
        except BaseException as exc:  # a bug or a signal: still an answer the parent can show
            outcome = {"failed": internal_error(exc), "warnings": []}
        _write_all(write_end, encoded_outcome(outcome, what))
        status = 0
    finally:
        os._exit(status)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    os.close(fd)


def encoded_outcome(outcome: Outcome, what: str) -> bytes:
    """``outcome`` as JSON; one that is not JSON becomes a failure saying so."""
    try:
        return json.dumps(outcome).encode("utf-8")
    except (TypeError, ValueError) as exc:
        failed = {"msg": f"{what}: a result that is not JSON: {exc}"}
        warnings = [str(w) for w in outcome.get("warnings") or []]
        return json.dumps({"failed": failed, "warnings": warnings}).encode("utf-8")


def decoded_outcome(data: bytes) -> Outcome | None:
    """The outcome a child sent, or None when it is not one: an object with a list of string
    warnings and either a result object or a failure object with a string msg."""
    try:
        outcome = json.loads(data.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError and JSONDecodeError alike
        return None
    if not isinstance(outcome, dict) or ("result" in outcome) == ("failed" in outcome):
        return None
    warnings = outcome.get("warnings", [])
    if not isinstance(warnings, list) or not all(isinstance(w, str) for w in warnings):
        return None
    body = outcome.get("result", outcome.get("failed"))
    if not isinstance(body, dict):
        return None
    if "failed" in outcome and not isinstance(body.get("msg"), str):
        return None
    return {**outcome, "warnings": warnings}


class _Answer:
    """What the parent got: the bytes the child sent, or why there is no usable answer."""

    def __init__(self, data: bytes = b"", problem: str = "") -> None:
        self.data = data
        self.problem = problem


def _read_answer(
    pid: int, fd: int, deadline: float | None, grace: float, max_bytes: int
) -> _Answer:
    """Read the child's answer until end of file and reap the child, bounded by ``deadline``
    while it runs, by ``grace`` around its end (exited with the pipe still held by something it
    left behind, or answered without exiting) and by ``max_bytes``. A child given up on is
    killed."""
    reading = _Reading(pid, time.monotonic())
    while not (reading.eof and reading.exit):
        now = time.monotonic()
        reading.poll_exit(now)
        if reading.exit is None and deadline is not None and now - reading.started > deadline:
            _kill(pid)
            return _Answer(problem=f"did not finish within {deadline:g} s and was stopped")
        if reading.exit is not None and not reading.eof and now - reading.exited_at > grace:
            break  # a process the child left behind holds the pipe: what was sent is all
        if reading.eof:
            if now - reading.eof_at > grace:
                _kill(pid)
                return _Answer(problem="answered but did not exit and was stopped")
            time.sleep(0.02)  # it closed its end and is exiting
            continue
        if select.select([fd], [], [], _POLL_SECONDS)[0]:
            reading.take(os.read(fd, 1 << 16), now)
        if reading.size > max_bytes:
            if reading.exit is None:
                _kill(pid)
            return _Answer(problem=f"sent more than {max_bytes} bytes")
    if not reading.exit.ok:
        return _Answer(problem=f"ended without an answer ({reading.exit.text})")
    return _Answer(b"".join(reading.chunks))


class _Reading:
    """The parent's view of a child while reading its answer."""

    def __init__(self, pid: int, started: float) -> None:
        self.pid = pid
        self.started = started
        self.chunks: list[bytes] = []
        self.size = 0
        self.eof = False
        self.eof_at = 0.0
        self.exit: _Exit | None = None
        self.exited_at = 0.0

    def poll_exit(self, now: float) -> None:
        if self.exit is None:
            self.exit = _reap(self.pid, wait=False)
            self.exited_at = now

    def take(self, chunk: bytes, now: float) -> None:
        if not chunk:
            self.eof, self.eof_at = True, now
        self.chunks.append(chunk)
        self.size += len(chunk)


class _Exit:
    """How a child ended."""

    def __init__(self, status: int) -> None:
        self.code = os.waitstatus_to_exitcode(status)

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def text(self) -> str:
        if self.code < 0:
            return f"killed by signal {-self.code}"
        return f"exit status {self.code}"


def _reap(pid: int, wait: bool) -> _Exit | None:
    waited, status = os.waitpid(pid, 0 if wait else os.WNOHANG)
    return _Exit(status) if waited else None


def _kill(pid: int) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    _reap(pid, wait=True)
