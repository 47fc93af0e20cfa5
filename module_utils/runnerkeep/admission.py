"""Admission control: a runner refuses a job it cannot finish, drains, and comes back.

At job start the hook (the CI user) asks the root-side admission service
(``admission_service``); the service runs ``admit`` here:

1. the job's need on each of its filesystems: on the budget filesystem the budget's critical
   watermark (reserve R + job peak P: the job fits without eating the reserve), on every other
   filesystem of the job (``disk.work_dirs``, the Docker root when set in ``disk.docker_root``)
   the job peak P (the peaks are measured on the budget filesystem only; a job that writes
   elsewhere is assumed to need its whole peak there), in bytes and in inodes;
2. short anywhere: the pre stage, then (when no other job holds the job lock) the emergency
   stage, forced past this job's own lock (the job has not written anything yet), then measure
   again;
3. still short: the job is refused with one line saying what is missing and where, and the
   runner is drained (``drain.json``) unless the fleet guard forbids it. A drained runner
   refuses every job at once until the watch brings it back.

The watch (``watch_drain``, handed to ``disk.watch`` by the front door) stops the agent's unit
of a drained runner once no job holds the job lock (after the refused job ended), and brings
the runner back (unit started, ``drained: false``) once the watch state has been ``ok`` (free
space above the warning watermark plus hysteresis) for ``admission.settle_time``.

This module imports cleanup/ and disk/ both (as ``wiring`` does): it is not a subsystem.
"""

from __future__ import annotations

import contextlib
import os
import time
from dataclasses import dataclass
from typing import Any, Callable

from . import drain, events, statefile
from .cleanup.lock import active_jobs
from .config import merge_section, state_dir_of
from .disk.budget import Budget, current_budget
from .disk.disk_config import disk_settings, expand
from .errors import ConfigError, LockHeldError, RunnerkeepError
from .fsutil import FilesystemUsage, filesystem_usage, nearest_existing
from .jobs import max_age_of
from .spool import spool_dir_of
from .units import format_size, parse_duration

ADMISSION_DEFAULTS: dict[str, Any] = {
    # Check jobs at start at all (the hooks ask only when the role installs the service).
    "enabled": True,
    # The runner agent's systemd unit, stopped while drained (None: jobs are refused, but the
    # runner is not drained).
    "agent_unit": None,
    # How long free space must stay above the warning watermark before a drained runner
    # takes jobs again.
    "settle_time": "10m",
    # The whole check, cleanup included: the hook gives up (the job runs) a little after it.
    "deadline": "5m",
    # Run the pre and the emergency stage when a job does not fit.
    "run_cleanup": True,
    # Fleet guard (set by the role from the inventory): at most this many runners drained at
    # once (None: no guard), and how many others were drained when the role last counted.
    "max_drained": None,
    "fleet_drained": 0,
    # The service's socket (runnerkeep-admission.socket).
    "socket": "/run/runnerkeep/admission.sock",
}

EVENT_KIND = "admission"
LOCK_FILE = "admission.lock"


def admission_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The ``admission`` section over its defaults, every value checked (ConfigError)."""
    settings = merge_section(config, "admission", ADMISSION_DEFAULTS)
    for key in ("enabled", "run_cleanup"):
        if not isinstance(settings[key], bool):
            raise ConfigError(f"admission.{key}: expected true or false, got {settings[key]!r}")
    if settings["agent_unit"] is not None:
        drain.check_unit(settings["agent_unit"])
    for key in ("settle_time", "deadline"):
        settings[key] = parse_duration(settings[key], f"admission.{key}")
        if settings[key] < 0 or (key == "deadline" and settings[key] == 0):
            raise ConfigError(f"admission.{key}: expected a duration above 0, got 0 or less")
    for key in ("max_drained", "fleet_drained"):
        value = settings[key]
        if value is None and key == "max_drained":
            continue
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ConfigError(f"admission.{key}: expected a whole number from 0, got {value!r}")
    socket_path = settings["socket"]
    if not isinstance(socket_path, str) or not socket_path.startswith("/"):
        raise ConfigError(f"admission.socket: expected an absolute path, got {socket_path!r}")
    return settings


# --- what a job needs, and what is short (pure) ---------------------------------------------


@dataclass
class Need:
    """What a job needs free on one filesystem, and what is free there."""

    role: str  # "budget", "work dir", "docker root"
    mount_point: str
    need_bytes: int
    need_inodes: int
    free_bytes: int
    free_inodes: int

    def short(self) -> list[str]:
        """One phrase per unit that is short ("needs 9.0 GiB free on /x, has 4.1 GiB")."""
        found = []
        if self.free_bytes < self.need_bytes:
            found.append(
                f"needs {format_size(self.need_bytes)} free on {self.mount_point}, "
                f"has {format_size(self.free_bytes)}"
            )
        if self.need_inodes and self.free_inodes < self.need_inodes:
            found.append(
                f"needs {self.need_inodes:,} free inodes on {self.mount_point}, "
                f"has {self.free_inodes:,}"
            )
        return found

    def kinds(self) -> list[str]:
        """What is short, as a metric label: "free bytes on /x", "free inodes on /x"."""
        kinds = []
        if self.free_bytes < self.need_bytes:
            kinds.append(f"free bytes on {self.mount_point}")
        if self.need_inodes and self.free_inodes < self.need_inodes:
            kinds.append(f"free inodes on {self.mount_point}")
        return kinds


def job_paths(config: dict[str, Any], budget: Budget) -> list[tuple[str, str]]:
    """(role, path) of the filesystems a job writes: the budget's first."""
    settings = disk_settings(config)
    paths = [("budget", budget.path)]
    paths += [("work dir", expand(p)) for p in settings["work_dirs"]]
    if settings["docker_root"]:
        paths.append(("docker root", expand(settings["docker_root"])))
    return paths


def needs_of(
    budget: Budget,
    paths: list[tuple[str, str]],
    probe: Callable[[str], FilesystemUsage] = filesystem_usage,
) -> list[Need]:
    """One Need per distinct filesystem of ``paths`` (the first role naming it wins)."""
    found: dict[str, Need] = {}
    for role, path in paths:
        usage = probe(nearest_existing(path))
        if usage.mount_point in found:
            continue
        if role == "budget":
            need_bytes, need_inodes = budget.critical_free_bytes, budget.critical_free_inodes
        else:
            need_bytes, need_inodes = budget.job_peak_bytes, budget.job_peak_inodes
        found[usage.mount_point] = Need(
            role, usage.mount_point, need_bytes, need_inodes, usage.free_bytes, usage.free_inodes
        )
    return list(found.values())


def shortfalls(needs: list[Need]) -> list[str]:
    return [phrase for need in needs for phrase in need.short()]


def refusal_line(short: list[str], after_cleanup: bool, drained_note: str) -> str:
    """The one line the job prints: what is missing and where, and what became of the runner."""
    phrases = [p + (" after cleanup" if after_cleanup else "") for p in short]
    return f"runnerkeep: this runner cannot fit the job: {'; '.join(phrases)}; {drained_note}"


def drain_reason(needs: list[Need]) -> str:
    """The drain record's reason: "free bytes on /x: needs 9.0 GiB free on /x, has 4.1 GiB"
    (the part before ': ' is the metric label)."""
    kinds = [k for need in needs for k in need.kinds()]
    return f"{', '.join(kinds)}: {'; '.join(shortfalls(needs))}"


# --- the admission of one job (root side) ---------------------------------------------------


@dataclass
class Outcome:
    """What ``admit`` decided; ``line`` is what the hook prints."""

    admitted: bool
    line: str = ""
    drained: bool = False
    cleanup: list[str] | None = None
    short: list[str] | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "admitted": self.admitted,
            "line": self.line,
            "drained": self.drained,
            "cleanup": self.cleanup or [],
            "short": self.short or [],
        }


@dataclass
class Tools:
    """What ``admit`` acts through: the real ones by default, fakes in tests."""

    run_cleanup: Callable[..., Any]
    budget: Callable[[dict[str, Any]], Budget] = current_budget
    probe: Callable[[str], FilesystemUsage] = filesystem_usage
    other_jobs: Callable[[dict[str, Any], list[int]], list[dict[str, Any]]] | None = None
    clock: Callable[[], float] = time.monotonic


def admit(
    config: dict[str, Any],
    requester: list[int],
    tools: Tools,
    now: float | None = None,
) -> Outcome:
    """Admit or refuse the job whose hook asked; ``requester`` is the asking process and its
    ancestors (from the kernel's peer credentials): their job lock is the job's own. Raises
    RunnerkeepError when the answer cannot be known (the hook then lets the job run)."""
    settings = admission_settings(config)
    now = time.time() if now is None else now
    if not settings["enabled"]:
        return Outcome(True, "admission control is off (admission.enabled)")
    refused = _refused_if_drained(config, now)
    if refused:
        return refused
    budget = tools.budget(config)
    paths = job_paths(config, budget)
    needs = needs_of(budget, paths, tools.probe)
    if not shortfalls(needs):
        return Outcome(True)
    end = tools.clock() + settings["deadline"]
    cleanup = []
    if settings["run_cleanup"]:
        cleanup, needs = _clean_up(config, budget, paths, requester, tools, end)
    short = shortfalls(needs)
    if not short:
        return Outcome(
            True, f"runnerkeep: job fits after cleanup ({', '.join(cleanup)})", False, cleanup
        )
    return _refuse(config, settings, needs, cleanup, now)


def admit_locked(
    config: dict[str, Any], requester: list[int], tools: Tools, now: float | None = None
) -> Outcome:
    """``admit`` one job at a time per host: two jobs starting together must not both run the
    cleanup stages, nor both decide on what the other is about to free. The wait is bounded
    by ``admission.deadline`` (then LockHeldError: the hook lets the job run).

    A drained runner refuses without waiting: a drain holds the lock through its systemctl
    stop (up to a minute), and a job that gave up waiting must not run on a runner that was
    drained meanwhile, so drain.json is read before the wait and again after it fails."""
    refused = _refused_if_drained(config, now)
    if refused:
        return refused
    try:
        with _admission_lock(config, admission_settings(config)["deadline"]):
            return admit(config, requester, tools, now)
    except LockHeldError:
        refused = _refused_if_drained(config, now)
        if refused:
            return refused
        raise


def _refused_if_drained(config: dict[str, Any], now: float | None) -> Outcome | None:
    """The refusal of a drained runner, or None (admission off, or not drained)."""
    if not admission_settings(config)["enabled"]:
        return None
    record = drain.read_drain(state_dir_of(config))
    if record and record["drained"]:
        now = time.time() if now is None else now
        return Outcome(False, _drained_line(record, now), drained=True)
    return None


def _drained_line(record: dict[str, Any], now: float) -> str:
    minutes = max(0, int((now - record["since"]) // 60))
    if record["by"] == drain.BY_OPERATOR:
        return (
            f"runnerkeep: this runner is drained by an operator ({minutes} min): "
            f"{record['reason']}; it takes jobs again after `runnerkeep admission undrain`"
        )
    return (
        f"runnerkeep: this runner is drained ({minutes} min): {record['reason']}; it takes "
        "jobs again once the disk watch sees enough free space"
    )


def _clean_up(
    config: dict[str, Any],
    budget: Budget,
    paths: list[tuple[str, str]],
    requester: list[int],
    tools: Tools,
    end: float,
) -> tuple[list[str], list[Need]]:
    """The pre stage, then the emergency stage while still short; (what ran, needs after)."""
    done = []
    fs_paths = [p for _role, p in paths]
    target_bytes = max(n.need_bytes for n in needs_of(budget, paths, tools.probe))
    for stage in ("pre", "emergency"):
        if tools.clock() >= end:
            done.append(f"{stage} stage skipped: admission.deadline passed")
            break
        note = _run_stage(stage, config, fs_paths, target_bytes, requester, tools)
        done.append(note)
        if not shortfalls(needs_of(budget, paths, tools.probe)):
            break
    return done, needs_of(budget, paths, tools.probe)


def _run_stage(
    stage: str,
    config: dict[str, Any],
    paths: list[str],
    target_bytes: int,
    requester: list[int],
    tools: Tools,
) -> str:
    """Run one stage; a one-phrase note of what it did (a failure is a note, not a raise)."""
    force = False
    if stage == "emergency":
        others = (tools.other_jobs or other_jobs)(config, requester)
        if others:
            return f"emergency stage skipped: {len(others)} other job(s) running"
        force = True  # only this job's own lock is held, and it has not written anything yet
    try:
        tools.run_cleanup(stage, config, paths=paths, target_free_bytes=target_bytes, force=force)
    except RunnerkeepError as exc:
        return f"{stage} stage failed: {exc}"
    except OSError as exc:
        return f"{stage} stage failed: {exc.strerror or exc}"
    return f"{stage} stage ran"


def other_jobs(config: dict[str, Any], requester: list[int]) -> list[dict[str, Any]]:
    """Live jobs holding the job lock that are not the requester's (its pid or an ancestor)."""
    live, _stale = active_jobs(
        state_dir_of(config), max_age_of(config), spool_dir=spool_dir_of(config)
    )
    return [job for job in live if job.get("pid") not in requester]


def _refuse(
    config: dict[str, Any],
    settings: dict[str, Any],
    needs: list[Need],
    cleanup: list[str],
    now: float,
) -> Outcome:
    """Refuse the job; drain the runner unless there is no unit or the fleet guard says no."""
    short = shortfalls(needs)
    unit = settings["agent_unit"]
    allowed, why_not = drain.may_drain(settings["max_drained"], settings["fleet_drained"])
    if unit is None:
        note = "runner not drained: no agent unit configured (admission.agent_unit)"
    elif not allowed:
        note = f"runner not drained: {why_not}"
    else:
        record = drain.new_record(True, drain_reason(needs), unit, now)
        drain.write_drain(state_dir_of(config), record)
        note = "runner drained"
    with contextlib.suppress(OSError, RunnerkeepError):
        events.record_event(
            state_dir_of(config),
            EVENT_KIND,
            spool_dir=spool_dir_of(config),
            result="refused",
            short=short,
            drained=unit,
        )
    # A stage that failed or was skipped is part of why: said on the same line.
    trouble = [c for c in cleanup if not c.endswith(" ran")]
    line = refusal_line(short, bool(cleanup), "; ".join([note, *trouble]))
    return Outcome(False, line, note == "runner drained", cleanup, short)


# --- the watch's step: stop a drained runner's agent, bring it back ---------------------------


def watch_drain(
    config: dict[str, Any],
    watch_state: dict[str, Any],
    now: float,
    jobs: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    control: Callable[[str, str], tuple[bool, str]] = drain.systemctl,
) -> dict[str, Any]:
    """One watch cycle's drain step. Returns ``{"drained", "reason", "since", "unit", "by",
    "action", "alert", "error"}``: ``alert`` a message for the watch to send on a change,
    ``error`` a problem (a damaged drain.json: the drain state is unknown, nothing is done).
    A runner an operator drained is never brought back here (only ``undrain`` does)."""
    result: dict[str, Any] = {"drained": False, "reason": "", "since": None, "unit": ""}
    result.update(by=None, action=None, alert=None, error=None)
    try:
        settings = admission_settings(config)
        record = drain.read_drain(state_dir_of(config))
    except RunnerkeepError as exc:
        result["error"] = str(exc)
        return result
    if record is None or not record["drained"]:
        return result
    result.update(drained=True, reason=record["reason"], since=record["since"], by=record["by"])
    unit = record["unit"] or settings["agent_unit"] or ""
    result["unit"] = unit
    by_admission = record["by"] == drain.BY_ADMISSION
    if by_admission and _settled(watch_state, record, settings["settle_time"], now):
        return _bring_back(config, record, result, unit, now, control)
    return _stop_if_unchanged(config, record, result, jobs or _live_jobs, control)


def _stop_if_unchanged(
    config: dict[str, Any],
    record: dict[str, Any],
    result: dict[str, Any],
    jobs: Callable[[dict[str, Any]], list[dict[str, Any]]],
    control: Callable[[str, str], tuple[bool, str]],
) -> dict[str, Any]:
    """``_stop_when_idle`` under the admission lock, and only while drain.json still holds
    the record this cycle read: an undrain written meanwhile must not be undone by a late
    stop. A held lock is not an error: the next cycle tries again."""
    try:
        with _admission_lock(config, BRING_BACK_LOCK_WAIT):
            if drain.read_drain(state_dir_of(config)) != record:
                result["action"] = CHANGED_MEANWHILE
                return result
            return _stop_when_idle(config, record, result, jobs, control)
    except LockHeldError:
        result["action"] = "the admission lock is held: the agent is stopped on a later cycle"
    except RunnerkeepError as exc:
        result["error"] = str(exc)
    return result


def _stop_when_idle(
    config: dict[str, Any],
    record: dict[str, Any],
    result: dict[str, Any],
    jobs: Callable[[dict[str, Any]], list[dict[str, Any]]],
    control: Callable[[str, str], tuple[bool, str]],
) -> dict[str, Any]:
    """Stop the drained runner's agent unless a job still runs (it finishes first)."""
    unit = result["unit"]
    live = jobs(config)
    if live:
        result["action"] = f"waiting for {len(live)} job(s) to end before stopping {unit}"
        return result
    if unit and _is_active(control, unit) is not False:
        ok, line = control("stop", unit)
        if not ok:
            result["error"] = f"cannot stop the drained runner's agent: {line}"
            return result
        result["action"] = f"stopped {unit}"
        result["alert"] = f"runner drained: agent {unit} stopped ({record['reason']})"
    return result


def _settled(
    watch_state: dict[str, Any], record: dict[str, Any], settle: float, now: float
) -> bool:
    """The watch state has been ok for ``settle`` seconds, counted from the drain at least."""
    if watch_state.get("state") != "ok":
        return False
    ok_since = max(watch_state.get("since") or 0.0, record["since"])
    return now - ok_since >= settle


def _bring_back(
    config: dict[str, Any],
    record: dict[str, Any],
    result: dict[str, Any],
    unit: str,
    now: float,
    control: Callable[[str, str], tuple[bool, str]],
) -> dict[str, Any]:
    """Start the agent and record the runner as back, under the admission lock and only if
    the record is still the one this cycle read: an operator's drain written meanwhile must
    not be undone. A held lock is not an error: the next cycle tries again."""
    settle = admission_settings(config)["settle_time"]
    try:
        with _admission_lock(config, BRING_BACK_LOCK_WAIT):
            if drain.read_drain(state_dir_of(config)) != record:
                result["action"] = CHANGED_MEANWHILE
                return result
            if unit:
                ok, line = control("start", unit)
                if not ok:
                    result["error"] = f"cannot start the runner's agent again: {line}"
                    return result
            reason = f"back: free space above the warning watermark for {int(settle)} s"
            drain.write_drain(state_dir_of(config), drain.new_record(False, reason, unit, now))
    except LockHeldError:
        result["action"] = "the admission lock is held: the runner comes back on a later cycle"
        return result
    except RunnerkeepError as exc:
        result["error"] = str(exc)
        return result
    result.update(drained=False, reason="", since=now, action=f"started {unit or 'nothing'}")
    result["alert"] = f"runner back: agent {unit or '(none)'} started, {reason}"
    return result


def _is_active(control: Callable[[str, str], tuple[bool, str]], unit: str) -> bool | None:
    """True active, False stopped or failed, None when systemd gives no answer (then the
    watch tries to stop it anyway: a stop of a stopped unit does no harm)."""
    ok, line = control("is-active", unit)
    if ok or line in ("activating", "reloading"):
        return True
    if line in ("inactive", "failed", "unknown", "deactivating"):
        return False
    return None


# --- an operator's drain and undrain ------------------------------------------------------


def drain_by_operator(
    config: dict[str, Any],
    reason: str,
    check: bool = False,
    now: float | None = None,
    jobs: Callable[[dict[str, Any]], list[dict[str, Any]]] | None = None,
    control: Callable[[str, str], tuple[bool, str]] = drain.systemctl,
) -> dict[str, Any]:
    """Drain this runner by hand (maintenance, a suspect disk): jobs are refused from now on,
    the agent's unit is stopped at once when no job runs (else by the watch once the jobs
    end), and only ``undrain_by_operator`` brings it back. The fleet guard does not apply:
    an operator decides. ``check``: say what would be done, change nothing."""
    settings = admission_settings(config)
    raw = _operator_reason(reason)
    text = drain.stored_reason(raw)  # what the record will hold: compared, shown, logged
    now = time.time() if now is None else now
    # The record's write and the stop are one step under the lock: an undrain cannot land
    # between them and be undone by the stop.
    with _admission_lock(config, settings["deadline"], check):
        record = drain.read_drain(state_dir_of(config))
        unit = settings["agent_unit"] or (record["unit"] if record else "") or ""
        result: dict[str, Any] = {"drained": True, "reason": text, "since": now, "unit": unit}
        result.update(by=drain.BY_OPERATOR, action=None, alert=None, error=None)
        already = record is not None and record["drained"] and record["by"] == drain.BY_OPERATOR
        result["changed"] = not (already and record["reason"] == text)
        if check:
            result["action"] = _drain_plan(record, unit, already)
            return result
        if already:
            result["since"] = record["since"]  # drained since the first time, not since now
        new = drain.new_record(True, raw, unit, result["since"], by=drain.BY_OPERATOR)
        drain.write_drain(state_dir_of(config), new)
        result = _stop_when_idle(config, new, result, jobs or _live_jobs, control)
    _record_operator_event(config, "drained", text)
    if result["action"] is None:
        result["action"] = f"{unit} already stopped" if unit else _NO_UNIT
    return result


def undrain_by_operator(
    config: dict[str, Any],
    check: bool = False,
    now: float | None = None,
    control: Callable[[str, str], tuple[bool, str]] = drain.systemctl,
) -> dict[str, Any]:
    """Bring a drained runner back (whoever drained it): the agent's unit is started and jobs
    are admitted again. A runner still short of disk is drained again by its next job."""
    settings = admission_settings(config)
    now = time.time() if now is None else now
    with _admission_lock(config, settings["deadline"], check):
        record = drain.read_drain(state_dir_of(config))
        result: dict[str, Any] = {"drained": False, "reason": "", "since": now, "unit": ""}
        result.update(by=None, action=None, alert=None, error=None, changed=False)
        if record is None or not record["drained"]:
            result["action"] = "not drained: nothing to do"
            return result
        unit = record["unit"] or settings["agent_unit"] or ""
        result.update(unit=unit, changed=True, was=record["reason"], was_by=record["by"])
        if check:
            result["action"] = (
                f"would start {unit} and admit jobs again"
                if unit
                else "would admit jobs again (no agent unit to start)"
            )
            return result
        if unit:
            ok, line = control("start", unit)
            if not ok:
                raise RunnerkeepError(
                    f"cannot start the runner's agent {unit}: {line}; the runner stays drained"
                )
        # The old reason is in the result and the event, not in the new record: it is stored
        # escaped already, and a reason of a reason would grow with every cycle.
        reason = "back: undrained by an operator"
        drain.write_drain(state_dir_of(config), drain.new_record(False, reason, unit, now))
    _record_operator_event(config, "undrained", record["reason"])
    result["action"] = f"started {unit}" if unit else "jobs are admitted again"
    return result


CHANGED_MEANWHILE = "the drain record changed during this cycle: left as it is"
_NO_UNIT = "no agent unit configured (admission.agent_unit): jobs are refused, nothing stopped"
BRING_BACK_LOCK_WAIT = 10.0  # the watch's wait for the admission lock, per cycle


def _operator_reason(reason: Any) -> str:
    """``operator: TEXT``, whitespace runs made one space (the part before ': ' is the metric
    label); the record stores it with ``drain.stored_reason``."""
    if not isinstance(reason, str) or not reason.strip():
        raise ConfigError("a drain needs a reason: say why, e.g. --reason 'disk replacement'")
    return f"{drain.BY_OPERATOR}: {' '.join(reason.split())}"


def _drain_plan(record: dict[str, Any] | None, unit: str, already: bool) -> str:
    if already:
        return "already drained by an operator: the reason would be updated"
    stop = f"stop {unit} once no job runs" if unit else "stop nothing (no agent unit)"
    if record is not None and record["drained"]:
        return f"would turn the admission drain into an operator drain and {stop}"
    return f"would refuse jobs from now on and {stop}"


@contextlib.contextmanager
def _admission_lock(config: dict[str, Any], wait: float, check: bool = False) -> Any:
    """The admission lock (admit, drain, undrain and the bring-back take turns); none in check
    mode, which writes nothing, not even the lock file."""
    if check:
        yield None
        return
    os.makedirs(state_dir_of(config), mode=0o755, exist_ok=True)
    path = os.path.join(state_dir_of(config), LOCK_FILE)
    with statefile.locked(path, "the admission lock", wait) as fd:
        yield fd


def _record_operator_event(config: dict[str, Any], result: str, reason: str) -> None:
    with contextlib.suppress(OSError, RunnerkeepError):
        events.record_event(
            state_dir_of(config),
            EVENT_KIND,
            spool_dir=spool_dir_of(config),
            result=result,
            reason=reason,
            by=drain.BY_OPERATOR,
        )


def _live_jobs(config: dict[str, Any]) -> list[dict[str, Any]]:
    live, _stale = active_jobs(
        state_dir_of(config), max_age_of(config), spool_dir=spool_dir_of(config)
    )
    return live


def requester_pids(chain: list[tuple[int, str]]) -> list[int]:
    """The pids of a peer's ancestry (``cache.service.ancestry``), init left out."""
    return [pid for pid, _start in chain if pid > 1]
