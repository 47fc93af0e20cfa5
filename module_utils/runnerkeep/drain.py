"""The drain record and the runner agent's unit: a runner that refused a job stops taking more.

``<state_dir>/drain.json`` (root 0644, written atomically) is the one place the drain state
lives: ``{"drained": bool, "reason": str, "since": unix time, "unit": str}``. Admission control
writes ``drained: true`` when a job cannot fit; the watch stops the agent's systemd unit once
no job holds the job lock, and writes ``drained: false`` when it brings the runner back. The
fleet report (``fleet/host_facts.py``) reads the same file.

A record that is there but cannot be used (not a regular file, a symlink, not JSON, a field of
the wrong type) is an error, never "not drained": a damaged record must not bring a runner
back that was drained for a reason, nor let a full runner take jobs unnoticed.

The agent's unit is driven through ``systemctl`` with a deadline; a unit name is checked
first (a config value handed to a root command line).

The fleet guard (``may_drain``) keeps a fleet from draining itself away: a runner does not
drain while ``max_drained`` runners (as the role counted them) are drained already.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from typing import Any

from . import statefile
from .errors import ConfigError, RunnerkeepError
from .fsutil import atomic_write
from .textutil import escape_text

DRAIN_FILE = "drain.json"
MAX_REASON = 300
BY_ADMISSION = "admission"  # a job could not fit; the watch brings the runner back
BY_OPERATOR = "operator"  # drained by hand; only an undrain brings it back
DRAINERS = (BY_ADMISSION, BY_OPERATOR)
SYSTEMCTL_TIMEOUT = 60.0
# A systemd unit name (optionally a glob such as actions.runner.*.service): no '/', no
# whitespace, no leading '-' (it would read as an option of systemctl), and at least three
# plain characters before any glob character: `systemctl stop '*.service'` (or 'a*.service')
# would stop sshd, docker and every other loaded service of the host.
_UNIT_RE = re.compile(
    r"[A-Za-z0-9:_.@]"  # the first character: plain
    r"(?:[A-Za-z0-9:_.@-]{0,250}"  # a plain name, or
    r"|[A-Za-z0-9:_.@-]{2}[A-Za-z0-9:_.@\\*?\[\]-]{0,248})"  # a glob after 3 plain ones
    r"\.service"
)


class DrainRecordError(RunnerkeepError):
    """drain.json is there but unusable: the drain state is unknown, not "not drained"."""


def drain_path(state_directory: str) -> str:
    return os.path.join(state_directory, DRAIN_FILE)


def valid_record(record: Any) -> dict[str, Any] | None:
    """The record with every field of its type; None when one is missing or wrong."""
    if not isinstance(record, dict) or not isinstance(record.get("drained"), bool):
        return None
    # ``unit`` may be missing (a record written by hand): then no unit was recorded; ``by``
    # is missing in records of runnerkeep before operator drains: admission wrote them.
    if not isinstance(record.get("reason"), str) or not isinstance(record.get("unit", ""), str):
        return None
    if not statefile.timestamp(record.get("since")):
        return None
    if record.get("by", BY_ADMISSION) not in DRAINERS:
        return None
    # A unit name root hands to systemctl: a record naming something else is damaged.
    if record.get("unit") and not _UNIT_RE.fullmatch(record["unit"]):
        return None
    return {
        "drained": record["drained"],
        "reason": record["reason"],
        "since": float(record["since"]),
        "unit": record.get("unit", ""),
        "by": record.get("by", BY_ADMISSION),
    }


def read_drain(state_directory: str) -> dict[str, Any] | None:
    """The drain record; None when there is none (never drained). Raises DrainRecordError when
    the file is there but unusable (a symlink, a FIFO, not JSON, a field of the wrong type)."""
    path = drain_path(state_directory)
    record, report = statefile.read_json_object(path, valid_record, repair=False)
    if record is None and report.damaged:
        raise DrainRecordError(
            f"{escape_text(report.describe())}; the drain state is unknown: fix or remove it "
            f"(`runnerkeep admission status` shows it)"
        )
    return record


def is_drained(state_directory: str) -> bool:
    """True when drained; a damaged record raises (DrainRecordError)."""
    record = read_drain(state_directory)
    return bool(record and record["drained"])


def stored_reason(reason: str) -> str:
    """``reason`` as a record stores it: one escaped line of at most MAX_REASON characters."""
    return escape_text(reason)[:MAX_REASON]


def new_record(
    drained: bool, reason: str, unit: str, now: float | None = None, by: str = BY_ADMISSION
) -> dict[str, Any]:
    return {
        "drained": drained,
        "reason": stored_reason(reason),
        "since": time.time() if now is None else now,
        "unit": unit,
        "by": by,
    }


def write_drain(state_directory: str, record: dict[str, Any]) -> str:
    """Replace drain.json atomically (root 0644: the fleet report and the hooks read it)."""
    clean = valid_record(record)
    if clean is None:
        raise RunnerkeepError(f"refusing to write an invalid drain record: {record!r}")
    path = drain_path(state_directory)
    os.makedirs(state_directory, exist_ok=True)
    atomic_write(path, (json.dumps(clean, sort_keys=True) + "\n").encode(), mode=0o644)
    return path


def short_reason(reason: str) -> str:
    """What was short and where (the metric label): the reason up to its first ': '."""
    return reason.split(": ", 1)[0][:120]


# --- the fleet guard ---------------------------------------------------------------------


def may_drain(max_drained: int | None, fleet_drained: int) -> tuple[bool, str]:
    """(may this runner drain, why not). ``max_drained``: the most runners of the fleet drained
    at once (None: no guard); ``fleet_drained``: how many other runners were drained when the
    role last counted (stale between role runs)."""
    if max_drained is None:
        return True, ""
    if fleet_drained + 1 > max_drained:
        return False, (
            f"fleet guard: {fleet_drained} other runner(s) drained at the last count, at most "
            f"{max_drained} may be"
        )
    return True, ""


# --- the agent's systemd unit --------------------------------------------------------------


def check_unit(unit: Any, what: str = "admission.agent_unit") -> str:
    """A systemd service name (a glob allowed), else ConfigError."""
    if not isinstance(unit, str) or not _UNIT_RE.fullmatch(unit):
        raise ConfigError(
            f"{what}: expected a systemd service name such as gitlab-runner.service or "
            "actions.runner.*.service (a glob needs three plain characters before it, so it "
            f"cannot match every service), got {escape_text(repr(unit))[:80]}"
        )
    return unit


def systemctl(action: str, unit: str, timeout: float = SYSTEMCTL_TIMEOUT) -> tuple[bool, str]:
    """(succeeded, one line) for ``systemctl ACTION UNIT``; never raises."""
    if action not in ("start", "stop", "is-active"):
        raise ValueError(f"unknown systemctl action {action!r}")
    check_unit(unit)
    try:
        proc = subprocess.run(
            ["systemctl", action, "--", unit],
            capture_output=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"systemctl {action} {unit}: no answer within {timeout:g} s"
    except OSError as exc:
        return False, f"systemctl {action} {unit}: {exc.strerror or exc}"
    text = (proc.stdout or proc.stderr or b"").decode("utf-8", "replace").strip()
    line = escape_text(text.splitlines()[-1] if text else f"exit {proc.returncode}")[:200]
    return proc.returncode == 0, line


def unit_active(unit: str, timeout: float = SYSTEMCTL_TIMEOUT) -> bool | None:
    """True active (or activating), False inactive or failed, None when systemd gives no
    answer (no systemd, a timeout)."""
    ok, line = systemctl("is-active", unit, timeout)
    if ok or line in ("activating", "reloading"):
        return True
    if line in ("inactive", "failed", "unknown", "deactivating"):
        return False
    return None
