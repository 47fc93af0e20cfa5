"""``runnerkeep disk watch``: one cycle of measuring, metrics, alerts and emergency cleanup.

The watermark state machine (ok < warning < critical < emergency) lives in
``<state_dir>/disk-watch.json``. A state is entered as soon as free bytes *or* free inodes
of the budget filesystem drop below its watermark; it is left only when free space is the
budget's hysteresis above the watermark. Alerts go out on state changes only: syslog/journal
always, the webhook when ``disk.webhook_url`` or ``disk.webhook_url_file`` (a root-only file,
read here and nowhere else) is set (timeout, bounded retries, all inside
``disk.watch_timeout``; alerts it failed to take are kept in the state, the newest 20, and
sent again, oldest first and marked ``resent``, at the start of later cycles). Entering
emergency runs the cleanup core's emergency stage (its ``run_cleanup`` is handed in by the
front door: disk/ does not import cleanup/) towards the post-stage target (again at
most every ``disk.emergency_cleanup_cooldown`` while the state stays emergency) and alerts
what it freed; the state returns to ok on the next cycle that measures enough free space.

Every part fails on its own: no budget, no Docker, an unreadable path, a dead webhook or a
failing cleanup are reported in the metrics (``runnerkeep_disk_watch_errors``, ``*_up``) and
the log, and the rest of the cycle still runs and the metrics file is still written.

A budget that cannot be computed (a config that does not fit this disk) must not hide a full
disk: the cycle measures free space anyway and decides the state and the emergency cleanup on
fallback watermarks (``budget.fallback_budget``), and reports ``budget_error`` (result,
``runnerkeep_disk_budget_error``, ``runnerkeep_disk_state_watermarks{source="fallback"}``).

Order and deadline: measurement, the state machine and the emergency cleanup come first;
alerts (syslog and webhook) are sent after them, so protecting the disk never waits on a
receiver. Every webhook POST of a cycle runs in a child process killed at the cycle's deadline
(``disk.watch_timeout``, plus the emergency cleanup's own time), name lookup included.

Damaged state: ``disk-watch.json`` is read through ``statefile`` (no symlink followed, no FIFO
blocked on); a file that is not a JSON object with a known state is moved aside and the watch
starts again from ok; fields of the wrong type are dropped one by one.

A state dir that cannot be written (read-only, full): the cooldowns must still hold, or every
cycle would alert and clean again. When ``disk-watch.json`` cannot be saved, the state is kept
in this process (``--loop``) and written to ``$RUNNERKEEP_RUN_DIR`` (default ``/run/runnerkeep``,
a tmpfs that is writable when the state disk is not) as ``disk-watch-<hash of state dir>.json``;
the next run takes whichever of the two is newer. Only when both are unwritable can separate
runs (not ``--loop``) alert again.

Job hooks running as the CI user leave their records in the spool: each cycle first ingests
finished jobs' records into the history (before the budget, which uses them) and their event
lines into the event log (``history.ingest_spool``, ``events.ingest_spool``).

Secrets: the webhook URL may carry a token, and the auth header (``disk.webhook_auth_header_file``)
is one. Both are resolved together as one ``alerts.WebhookTarget`` and posted whole. Every
message, syslog line, state field and ``--json`` field of the cycle goes through
``secrets.redact_text`` with the target's secrets; the URL itself is shown only as
``secrets.redact_url``.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from typing import Any, Callable

from .. import events, statefile
from ..config import state_dir_of
from ..docker_cli import DEFAULT_DOCKER_ROOT, docker_root_of, engine_info
from ..errors import ConfigError, LockHeldError, RunnerkeepError
from ..fsutil import atomic_write, filesystem_usage
from ..secrets import redact_data, redact_text, redact_url, url_secrets
from ..spool import spool_dir_of
from ..textutil import escape_text
from ..units import format_size
from . import alerts, history
from .budget import (
    LEVELS,
    Budget,
    BudgetInputs,
    compute_budget,
    fallback_budget,
    measure_inputs,
)
from .disk_config import as_int, disk_settings, seconds
from .metrics import WatchReadings, event_totals, fold_events, watch_metric_set, write_textfile
from .usage_report import docker_usage, filesystems, watched_paths

STATE_FILE = "disk-watch.json"
LOCK_FILE = "disk-watch.lock"
PENDING_WEBHOOK_ALERTS = 20  # failed webhook alerts kept to send again (the newest)
RUN_DIR_ENV = statefile.RUN_DIR_ENV
DEFAULT_RUN_DIR = statefile.DEFAULT_RUN_DIR
STATE_READ_BOUND = 4 * 1024 * 1024
# The watch's latest state per state dir, kept only while it cannot be saved there (--loop).
_unsaved: dict[str, dict[str, Any]] = {}
# The secrets of the last cycle's webhook URL: the CLI redacts what it prints with them.
last_secrets: list[str] = []


# --- the state machine (pure) -------------------------------------------------------------


def level_of(
    free_bytes: int, free_inodes: int | None, watermarks: dict[str, dict[str, int]]
) -> int:
    """Index in LEVELS of the worst watermark that free bytes or free inodes are below."""
    level = 0
    for index, name in enumerate(LEVELS[1:], 1):
        mark = watermarks[name]
        low_bytes = free_bytes < mark["bytes"]
        low_inodes = (
            bool(mark.get("inodes")) and free_inodes is not None and free_inodes < mark["inodes"]
        )
        if low_bytes or low_inodes:
            level = index
    return level


def next_state(
    previous: str,
    free_bytes: int,
    free_inodes: int | None,
    watermarks: dict[str, dict[str, int]],
    hysteresis_bytes: int = 0,
    hysteresis_inodes: int = 0,
) -> str:
    """Up at once; down only as far as free space clears the watermarks plus hysteresis."""
    prev = LEVELS.index(previous) if previous in LEVELS else 0
    raw = level_of(free_bytes, free_inodes, watermarks)
    if raw >= prev:
        return LEVELS[raw]
    cleared = level_of(
        free_bytes - hysteresis_bytes,
        None if free_inodes is None else free_inodes - hysteresis_inodes,
        watermarks,
    )
    return LEVELS[min(prev, cleared)]


# --- persistence ----------------------------------------------------------------------------


def _time_field(value: Any, now: float) -> bool:
    # A time from the future would hold a cooldown forever: not usable.
    return statefile.timestamp(value) and value <= now + 60


def _count_map(value: Any) -> dict[str, int]:
    if not isinstance(value, dict):
        return {}
    return {k: v for k, v in value.items() if isinstance(k, str) and statefile.plain_int(v)}


def _clean_counters(value: Any, now: float) -> dict[str, Any]:
    value = value if isinstance(value, dict) else {}
    counters: dict[str, Any] = {
        "events_time": value["events_time"] if _time_field(value.get("events_time"), now) else 0,
        "cache": _count_map(value.get("cache")),
        "cleanup_bytes": _count_map(value.get("cleanup_bytes")),
        "cleanup_runs": _count_map(value.get("cleanup_runs")),
    }
    for key in ("last_job_peak_bytes", "last_job_peak_inodes"):
        counters[key] = value[key] if statefile.plain_int(value.get(key)) else None
    return counters


def _pending_alert(body: Any) -> bool:
    return (
        isinstance(body, dict)
        and isinstance(body.get("message"), str)
        and isinstance(body.get("event"), str)
    )


def clean_state(data: Any, now: float | None = None) -> dict[str, Any] | None:
    """The state with every field of the type the cycle computes with; None when unusable.

    Fields of the wrong type are dropped one by one (the cycle starts them afresh): one bad
    field must not cost the alert counters or the cooldowns.
    """
    if not isinstance(data, dict) or data.get("state") not in LEVELS:
        return None
    now = time.time() if now is None else now
    state: dict[str, Any] = {"state": data["state"], "since": None}
    for key in ("since", "last_run", "last_emergency_cleanup"):
        if _time_field(data.get(key), now):
            state[key] = data[key]
    for key in ("emergency_cleanups", "last_emergency_cleanup_freed_bytes"):
        if statefile.plain_int(data.get(key)):
            state[key] = data[key]
    for key in ("webhook_ok", "last_emergency_cleanup_ok"):
        if isinstance(data.get(key), bool):
            state[key] = data[key]
    counts = {k: v for k, v in _count_map(data.get("alert_counts")).items() if ":" in k}
    if counts:
        state["alert_counts"] = counts
    pending = data.get("webhook_pending")
    if isinstance(pending, list):
        state["webhook_pending"] = [b for b in pending if _pending_alert(b)][
            -PENDING_WEBHOOK_ALERTS:
        ]
    errors = data.get("errors")
    if isinstance(errors, list):
        state["errors"] = [e for e in errors if isinstance(e, str)]
    if "counters" in data:
        state["counters"] = _clean_counters(data["counters"], now)
    return state


def run_dir() -> str:
    return statefile.run_dir()


def fallback_path(state_directory: str) -> str:
    """Where the state goes when the state dir cannot take it (one file per state dir)."""
    return statefile.fallback_path(state_directory, "disk-watch", ".json")


def _read_state(path: str) -> dict[str, Any] | None:
    state, _report = statefile.read_json_object(path, clean_state, max_bytes=STATE_READ_BOUND)
    return state


def load_state(state_directory: str) -> dict[str, Any]:
    """The newest usable state: the state dir's, the fallback file's, or this process's."""
    candidates = [
        _read_state(os.path.join(state_directory, STATE_FILE)),
        _read_state(fallback_path(state_directory)),
        clean_state(_unsaved.get(os.path.abspath(state_directory))),
    ]
    usable = [c for c in candidates if c is not None]
    if not usable:
        return {"state": "ok", "since": None}
    # max() keeps the first of equals: the state dir's file wins a tie.
    return max(usable, key=lambda c: c.get("last_run") or 0)


def _state_bytes(state: dict[str, Any]) -> bytes:
    return (json.dumps(state, sort_keys=True, indent=1) + "\n").encode()


def save_state(state_directory: str, state: dict[str, Any]) -> None:
    atomic_write(os.path.join(state_directory, STATE_FILE), _state_bytes(state))


def persist_state(state_directory: str, state: dict[str, Any]) -> str | None:
    """Save the state; when the state dir refuses, keep it in memory and the fallback file.

    Returns an error line when the state dir could not take it, else None.
    """
    key = os.path.abspath(state_directory)
    try:
        os.makedirs(state_directory, exist_ok=True)
        save_state(state_directory, state)
    except OSError as exc:
        _unsaved[key] = json.loads(json.dumps(state, default=str))
        where = _save_fallback(state_directory, state)
        return f"cannot save watch state in {state_directory}: {exc.strerror or exc}; " + (
            f"kept in {where} so cooldowns hold" if where else "kept in memory only"
        )
    _unsaved.pop(key, None)
    with contextlib.suppress(OSError):
        os.unlink(fallback_path(state_directory))
    return None


def _save_fallback(state_directory: str, state: dict[str, Any]) -> str | None:
    path = fallback_path(state_directory)
    try:
        os.makedirs(os.path.dirname(path), mode=0o700, exist_ok=True)
        atomic_write(path, _state_bytes(state), mode=0o600)
    except OSError:
        return None
    return path


# --- the emergency stage: the watch's one way into the cleanup core --------------------------


def emergency_stage(run_cleanup: Callable[..., Any]) -> Callable[..., Any]:
    """The cleanup core's emergency stage, as ``stage(config, budget, force) -> report``.

    ``run_cleanup`` is the cleanup core's (the front door passes it in, wired to the budget's
    targets: ``runnerkeep.wiring.run_cleanup``; tests pass a fake): the watch does not import
    cleanup/, and every call it makes into the cleanup core goes through here.
    """

    def stage(config: dict[str, Any], budget: Budget, force: bool) -> Any:
        target_bytes, target_inodes = budget.stage_targets("emergency")
        return run_cleanup(
            "emergency",
            config,
            target_free_bytes=target_bytes,
            target_free_inodes=target_inodes or None,
            paths=[budget.path],
            force=force,
        )

    return stage


# --- one cycle ------------------------------------------------------------------------------


class WatchCycle:
    """One watch cycle. ``run`` reads as its list of steps; a step that fails adds a line to
    ``errors`` and the cycle goes on, so the metrics file is always written."""

    def __init__(
        self,
        config: dict[str, Any],
        cleanup_func: Callable | None,
        drain_func: Callable | None = None,
        scrub_status: Callable[[float], dict[str, Any] | None] | None = None,
    ) -> None:
        self.config = config
        self.drain_func = drain_func
        self.scrub_status = scrub_status
        self.drain_result: dict[str, Any] | None = None
        self.settings = disk_settings(config)
        self.state_directory = state_dir_of(config)
        self.started = time.monotonic()
        self.deadline = self.started + seconds(self.settings, "watch_timeout")
        self.errors: list[str] = []
        self.alerts: list[dict[str, Any]] = []
        self.cleanup_func = cleanup_func
        self.tag = str(self.settings["syslog_tag"])
        self.queued: list[tuple[dict[str, Any], str]] = []
        self.skipped_before = statefile.skipped_totals()
        self.spool_result: dict[str, Any] | None = None
        self.secrets = url_secrets(self.settings.get("webhook_url"))
        self.target: alerts.WebhookTarget | None = None
        try:
            self.target = alerts.webhook_target(self.settings)
        except ConfigError as exc:
            # The disk still needs watching: the cycle runs, without the webhook, and says so.
            self.errors.append(f"webhook: {redact_text(exc, self.secrets)}")
        if self.target:
            self.secrets = sorted(set(self.secrets) | set(self.target.secrets()), key=len)[::-1]
        last_secrets[:] = self.secrets

    # the cycle, step by step
    def run(self) -> dict[str, Any]:
        state = load_state(self.state_directory)
        previous = state.get("state", "ok")
        now = time.time()
        self.ingest_spool()
        inputs, budget = self.measure()
        docker, docker_root = self.check_docker()
        fs_list, watched = self.measure_filesystems(docker_root)
        new = self.advance_state(state, previous, budget, inputs, now)
        changed = new != previous
        cleanup = self.emergency_step(state, budget, changed, now)
        self.drain_step(state, now)
        # Alerts only now: protecting the disk never waits on a receiver.
        self.send_alerts(state)
        counters = self.count_events(state)
        self.log_error_changes(state)
        state["last_run"] = now
        readings = WatchReadings(
            state=state,
            counters=counters,
            budget=budget,
            inputs=inputs,
            webhook_configured=self.target is not None,
            docker=docker,
            filesystems=fs_list,
            watched_paths=watched,
            spool=self.spool_result,
            records_skipped=self.records_skipped(),
            drain=self.drain_result,
            cache_scrub=self.scrub_status(now) if self.scrub_status else None,
            run_time=now,
        )
        metrics_path = self.write_metrics(readings)
        self.save(state)
        return self._result(
            previous, new, changed, budget, inputs, docker, fs_list, cleanup, metrics_path
        )

    def ingest_spool(self) -> None:
        """Finished jobs' records and event lines the CI user's hooks left in the spool."""
        try:
            done = history.ingest_spool(self.config)
            events.ingest_spool(self.state_directory, spool_dir_of(self.config))
        except (RunnerkeepError, OSError) as exc:
            self.errors.append(f"spool: {exc}")
            return
        self.spool_result = done
        for bad in done["rejected"][:5]:
            statefile.warn(
                f"spool record {escape_text(bad['file'])} (uid {bad['uid']}) rejected: "
                f"{bad['problem']}"
            )

    def measure(self) -> tuple[BudgetInputs | None, Budget | None]:
        """The budget; when it cannot be computed, fallback watermarks (``budget.error`` set):
        a config that does not fit this disk must not hide that the disk is full."""
        try:
            inputs = measure_inputs(self.config)
        except ConfigError as exc:
            self.errors.append(f"budget: {exc}")
            return None, None
        try:
            return inputs, compute_budget(inputs, self.settings)
        except ConfigError as exc:
            self.errors.append(f"budget: {exc}; fallback watermarks in use")
            return inputs, fallback_budget(inputs, self.settings, str(exc))

    def check_docker(self) -> tuple[dict[str, Any], str | None]:
        """(Docker's usage by kind, or why not; Docker's root dir when known)."""
        root = self.settings["docker_root"]
        docker: dict[str, Any] = {"checked": bool(self.settings["watch_docker"])}
        if not docker["checked"]:
            return docker, root
        try:
            info = engine_info(timeout=self.remaining(10))
            root = root or docker_root_of(info)
            docker.update(up=True, kinds=docker_usage(timeout=self.remaining(30)))
        # Not RunnerkeepError alone: engine_info and docker_usage parse docker's JSON with
        # json.loads (ValueError), and the docker binary can fail to start (OSError).
        except (RunnerkeepError, ValueError, OSError) as exc:
            docker.update(up=False, error=str(exc))
            self.errors.append(f"docker: {exc}")
        return docker, root

    def measure_filesystems(
        self, docker_root: str | None
    ) -> tuple[list[dict[str, Any]], list[tuple[str, str, bool]]]:
        """(the filesystems of the watched paths, (role, path, readable) per watched path)."""
        pairs = watched_paths(self.config, docker_root or DEFAULT_DOCKER_ROOT)
        fs_list, fs_errors = filesystems(pairs)
        unreadable = {(e["role"], e["path"]) for e in fs_errors}
        for err in fs_errors:
            self.errors.append(f"filesystem of {err['path']} ({err['role']}): {err['error']}")
        watched = [(role, path, (role, path) not in unreadable) for role, path in pairs]
        return fs_list, watched

    def advance_state(
        self,
        state: dict[str, Any],
        previous: str,
        budget: Budget | None,
        inputs: BudgetInputs | None,
        now: float,
    ) -> str:
        """The state machine's step; a change is queued as an alert. Nothing measured: the
        state stays the last one known."""
        if budget is None or inputs is None or inputs.free_bytes is None:
            state["state"] = previous
            return previous
        new = next_state(
            previous,
            inputs.free_bytes,
            inputs.free_inodes if budget.capacity_inodes else None,
            budget.watermarks(),
            budget.hysteresis_bytes,
            budget.hysteresis_inodes,
        )
        if new != previous:
            state["since"] = now
            self.queue(self.state_change_alert(previous, new, budget, inputs), new)
        state["state"] = new
        return new

    def state_change_alert(
        self, previous: str, new: str, budget: Budget, inputs: BudgetInputs
    ) -> dict[str, Any]:
        message = (
            f"disk {previous} -> {new} on {budget.path}: "
            f"{format_size(inputs.free_bytes)} free ({inputs.free_inodes or 0:,} inodes); "
            f"warning/critical/emergency below {format_size(budget.warning_free_bytes)}/"
            f"{format_size(budget.critical_free_bytes)}/{format_size(budget.emergency_free_bytes)}"
        )
        return self.body(
            "disk_state_change",
            message,
            previous=previous,
            state=new,
            path=budget.path,
            free_bytes=inputs.free_bytes,
            free_inodes=inputs.free_inodes,
            watermarks=budget.watermarks(),
        )

    def emergency_step(
        self, state: dict[str, Any], budget: Budget | None, changed: bool, now: float
    ) -> dict[str, Any] | None:
        """In emergency: the cleanup core's emergency stage, on entering the state and again
        once the cooldown has passed; what it did is queued as an alert."""
        if state["state"] != "emergency" or not self.settings["emergency_cleanup"]:
            return None
        if budget is None:
            return None
        cooldown = seconds(self.settings, "emergency_cleanup_cooldown")
        last = state.get("last_emergency_cleanup") or 0
        if not changed and now - last < cooldown:
            return None
        cleanup = self.emergency_cleanup(budget)
        state["last_emergency_cleanup"] = time.time()
        state["emergency_cleanups"] = state.get("emergency_cleanups", 0) + 1
        state["last_emergency_cleanup_ok"] = cleanup["ok"]
        if cleanup["ok"]:
            state["last_emergency_cleanup_freed_bytes"] = cleanup["freed_bytes"]
            message = (
                f"disk emergency on {budget.path}: emergency cleanup freed "
                f"{format_size(cleanup['freed_bytes'])} "
                f"({cleanup['freed_inodes']:,} inodes); "
                f"{format_size(cleanup['free_bytes_after'])} free now, target "
                f"{format_size(cleanup['target_free_bytes'])}"
            )
        else:
            state["last_emergency_cleanup_freed_bytes"] = 0
            message = f"disk emergency on {budget.path}: {cleanup['error']}"
            self.errors.append(cleanup["error"])
        summary = {k: v for k, v in cleanup.items() if k != "report"}
        self.queue(
            self.body(
                "emergency_cleanup", message, state="emergency", path=budget.path, cleanup=summary
            ),
            "emergency" if cleanup["ok"] else "error",
        )
        return cleanup

    def emergency_cleanup(self, budget: Budget) -> dict[str, Any]:
        """Run the emergency stage and measure what it freed; never raises."""
        if self.cleanup_func is None:
            return {
                "ok": False,
                "error": "no cleanup core was given to this watch (the front door passes "
                "runnerkeep.cleanup's run_cleanup): emergency cleanup skipped",
            }
        stage = emergency_stage(self.cleanup_func)
        try:
            before = filesystem_usage(budget.path)
        except OSError as exc:
            return {"ok": False, "error": f"cannot measure {budget.path}: {exc.strerror}"}
        started = time.monotonic()
        try:
            report = stage(self.config, budget, bool(self.settings["emergency_force"]))
        except RunnerkeepError as exc:
            return {"ok": False, "error": f"emergency cleanup failed: {exc}"}
        except Exception as exc:
            return {
                "ok": False,
                "error": f"emergency cleanup crashed: {exc.__class__.__name__}: {exc}",
            }
        duration = time.monotonic() - started
        # The cleanup's time is its own: the watch's timeout covers the watch's work.
        self.deadline += duration
        try:
            after = filesystem_usage(budget.path)
        except OSError:
            after = before  # freed bytes unknown: report 0 rather than fail the cycle
        return _cleanup_outcome(budget, before, after, duration, report)

    def drain_step(self, state: dict[str, Any], now: float) -> None:
        """Admission control's drain state (``admission.watch_drain``, handed in by the front
        door): stop a drained runner's agent once no job holds the job lock, bring it back once
        the state has been ok for the settle time. A stop or start is queued as an alert."""
        if self.drain_func is None:
            return
        try:
            result = self.drain_func(self.config, state, now)
        except (RunnerkeepError, OSError) as exc:
            self.errors.append(f"drain: {exc}")
            return
        self.drain_result = result
        if result.get("error"):
            self.errors.append(f"drain: {result['error']}")
        if result.get("alert"):
            body = self.body(
                "runner_drain",
                result["alert"],
                drained=result["drained"],
                unit=result.get("unit"),
                reason=result.get("reason"),
            )
            self.queue(body, "warning" if result["drained"] else "ok")

    def count_events(self, state: dict[str, Any]) -> dict[str, Any]:
        """The event log's running totals, kept in the state (Prometheus counters)."""
        old_counters = state.get("counters") or {}
        try:
            counters = fold_events(self.state_directory, old_counters)
        except OSError as exc:
            counters = event_totals(old_counters)
            self.errors.append(
                f"cannot read the event log in {self.state_directory}: {exc.strerror}"
            )
        state["counters"] = counters
        return counters

    def log_error_changes(self, state: dict[str, Any]) -> None:
        """Errors are logged when they appear and when they clear, not every cycle."""
        previous_errors = set(state.get("errors") or [])
        current = [e for e in self.errors if not e.startswith("disk watch: webhook")]
        if self.settings["syslog"]:
            for err in current:
                if err not in previous_errors:
                    self.syslog(f"disk watch: {err}", "error")
            if previous_errors and not current:
                self.syslog("disk watch: all checks answer again", "info")
        state["errors"] = [self.redact(e) for e in current]

    def records_skipped(self) -> dict[str, int]:
        """State-file records this cycle could not use, per file (0 for the watch's own)."""
        totals = statefile.skipped_totals()
        return {
            name: totals.get(name, 0) - self.skipped_before.get(name, 0)
            for name in sorted({STATE_FILE, "events.jsonl", *totals})
        }

    def write_metrics(self, readings: WatchReadings) -> str | None:
        """The textfile for node_exporter (``metrics.WATCH_METRICS``); its path, or None."""
        readings.duration_seconds = time.monotonic() - self.started
        readings.errors = len(self.errors)
        text = watch_metric_set(readings).render()
        directory = self.settings["textfile_dir"]
        try:
            return write_textfile(directory, self.settings["metrics_file"], text)
        except OSError as exc:
            message = f"cannot write metrics to {directory}: {exc.strerror}"
            self.errors.append(message)
            if self.settings["syslog"]:
                self.syslog(f"disk watch: {message}", "error")
            return None

    def save(self, state: dict[str, Any]) -> None:
        unsaved = persist_state(self.state_directory, state)
        if unsaved:
            self.errors.append(unsaved)

    def _result(
        self, previous, new, changed, budget, inputs, docker, fs_list, cleanup, metrics_path
    ) -> dict[str, Any]:
        """What the cycle returns (``--json``), every string redacted."""
        result = {
            "previous": previous,
            "state": new,
            "changed": changed,
            "path": budget.path if budget else None,
            "free_bytes": inputs.free_bytes if inputs else None,
            "free_inodes": inputs.free_inodes if inputs else None,
            "watermarks": budget.watermarks() if budget else None,
            "docker": docker,
            "filesystems": fs_list,
            "alerts": self.alerts,
            "emergency_cleanup": cleanup,
            "drain": self.drain_result,
            "errors": self.errors,
            "budget_error": _budget_error(budget, self.errors),
            "metrics_file": metrics_path,
            "duration_seconds": round(time.monotonic() - self.started, 3),
        }
        return redact_data(result, self.secrets)

    # helpers of the steps
    def redact(self, text: Any) -> str:
        return redact_text(text, self.secrets)

    def syslog(self, message: str, severity: str) -> str:
        return alerts.syslog(self.redact(message), severity, self.tag)

    def remaining(self, cap: float) -> float:
        return max(1.0, min(cap, self.deadline - time.monotonic()))

    def body(self, event: str, message: str, **fields: Any) -> dict[str, Any]:
        return {
            "source": "runnerkeep",
            "event": event,
            "host": socket.gethostname(),
            "time": time.time(),
            "message": message,
            **fields,
        }

    # alerts
    def queue(self, body: dict[str, Any], severity: str) -> None:
        """Alerts wait until the disk is protected: sent by ``send_alerts`` at the end."""
        self.queued.append((body, severity))

    def send_alerts(self, state: dict[str, Any]) -> None:
        # Alerts a dead webhook missed go first, so the receiver sees them in order.
        self.resend_pending(state)
        for body, severity in self.queued:
            self.alert(body, severity, state)
        self.queued = []

    def alert(self, body: dict[str, Any], severity: str, state: dict[str, Any]) -> dict[str, Any]:
        counts = state.setdefault("alert_counts", {})
        sent: dict[str, Any] = {"message": body["message"], "event": body["event"]}
        if self.settings["syslog"]:
            sent["syslog"] = self.syslog(body["message"], severity)
            key = "syslog:sent"
            counts[key] = counts.get(key, 0) + 1
        target = self.target
        if target:
            result = self._post(
                target, body, as_int(self.settings["webhook_retries"], "disk.webhook_retries")
            )
            sent["webhook"] = result
            key = "webhook:sent" if result["ok"] else "webhook:failed"
            counts[key] = counts.get(key, 0) + 1
            state["webhook_ok"] = bool(result["ok"])
            if not result["ok"]:
                pending = state.setdefault("webhook_pending", [])
                pending.append(body)
                del pending[:-PENDING_WEBHOOK_ALERTS]
                message = self.redact(
                    f"disk watch: webhook {redact_url(target.url)} failed after "
                    f"{result['attempts']} attempt(s): {result['error']}; "
                    "kept to send again next cycle"
                )
                self.errors.append(message)
                if self.settings["syslog"]:
                    self.syslog(message, "error")
        self.alerts.append(sent)
        return sent

    def resend_pending(self, state: dict[str, Any]) -> None:
        """Send again, oldest first, the alerts a webhook failed to take in earlier cycles.

        One attempt each (the cycle's own alerts keep the retries); the first failure stops
        the round so a dead receiver costs one timeout per cycle, not one per alert.
        """
        pending = state.get("webhook_pending") or []
        target = self.target
        if not pending or not target:
            return
        counts = state.setdefault("alert_counts", {})
        while pending:
            body = dict(pending[0], resent=True, resent_time=time.time())
            result = self._post(target, body, retries=0)
            if not result["ok"]:
                self.errors.append(
                    self.redact(
                        f"disk watch: webhook {redact_url(target.url)} still failing "
                        f"({result['error']}); {len(pending)} alert(s) waiting"
                    )
                )
                state["webhook_ok"] = False
                return
            pending.pop(0)
            counts["webhook:resent"] = counts.get("webhook:resent", 0) + 1
            state["webhook_ok"] = True
            self.alerts.append({"message": body["message"], "event": body["event"], "resent": True})

    def _post(
        self, target: alerts.WebhookTarget, body: dict[str, Any], retries: int
    ) -> dict[str, Any]:
        """POST ``body`` to the webhook target (URL with its header) within the cycle's
        deadline (``alerts.post_to``)."""
        result = alerts.post_to(
            target,
            body,
            timeout=seconds(self.settings, "webhook_timeout"),
            retries=retries,
            deadline=self.deadline,
        )
        return redact_data(result, self.secrets)


def _cleanup_outcome(
    budget: Budget, before: Any, after: Any, duration: float, report: Any
) -> dict[str, Any]:
    """What an emergency stage that ran did: freed space by statvfs, and its own report."""
    target_bytes, target_inodes = budget.stage_targets("emergency")
    data = report.as_dict() if hasattr(report, "as_dict") else report
    return {
        "ok": True,
        "freed_bytes": max(0, after.free_bytes - before.free_bytes),
        "freed_inodes": max(0, after.free_inodes - before.free_inodes),
        "free_bytes_before": before.free_bytes,
        "free_bytes_after": after.free_bytes,
        "target_free_bytes": target_bytes,
        "target_free_inodes": target_inodes,
        "duration_seconds": round(duration, 3),
        "report": data,
    }


def _budget_error(budget: Budget | None, errors: list[str]) -> str | None:
    """Why the budget failed (None when it did not): the watch must not call such a state ok."""
    if budget is not None:
        return budget.error
    failed = (e[len("budget: ") :] for e in errors if e.startswith("budget: "))
    return next(failed, "the disk budget was not computed")


def run_watch(
    config: dict[str, Any],
    *,
    cleanup_func: Callable | None = None,
    drain_func: Callable | None = None,
    scrub_status: Callable[[float], dict[str, Any] | None] | None = None,
) -> dict[str, Any]:
    """One watch cycle. Skips (returns ``skipped``) when another cycle holds the lock.

    ``cleanup_func`` is the cleanup core's ``run_cleanup`` the emergency step calls (the front
    door passes ``runnerkeep.wiring.run_cleanup``; tests a fake); None: no emergency cleanup,
    the cycle says so. ``drain_func`` is admission control's drain step
    (``runnerkeep.admission.watch_drain``); None: no drain state handled or reported.
    ``scrub_status(now)`` is the cache scrub's summary (``runnerkeep.wiring.scrub_status``;
    it only reads); None: no scrub metrics."""
    state_directory = state_dir_of(config)
    fd = _open_watch_lock(state_directory)
    try:
        if fd is not None:
            try:
                statefile.take_owned_lock(fd, f"the watch lock in {state_directory}", 0.0)
            except LockHeldError:
                return {
                    "skipped": True,
                    "reason": "another disk watch cycle is running",
                    "state": None,
                }
        return WatchCycle(config, cleanup_func, drain_func, scrub_status).run()
    finally:
        if fd is not None:
            with contextlib.suppress(OSError):
                os.close(fd)


def _open_watch_lock(state_directory: str) -> int | None:
    """The cycle lock: in the state dir, else in the run dir (``statefile.open_lock_fallback``);
    else none (the watch still runs: an unwritable disk is when it is needed most)."""
    return statefile.open_lock_fallback(
        os.path.join(state_directory, LOCK_FILE),
        statefile.fallback_path(state_directory, "disk-watch", ".lock"),
    )
