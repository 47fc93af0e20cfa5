"""systemd units after their files: a daemon-reload when a unit file changed, then enable or
disable, start, restart (when a file the unit reads changed) or stop, each only when needed.
One ``systemctl show`` reads every unit's state first."""

from __future__ import annotations

import os
from typing import Any, Callable

from .changes import Changes, LayoutError

Run = Callable[[list[str]], tuple[int, str, str]]
SYSTEMD_RUN_DIR = "/run/systemd/system"


def systemd_runs() -> bool:
    return os.path.isdir(SYSTEMD_RUN_DIR)


def apply_units(
    units: list[dict[str, Any]], reload: bool, changes: Changes, run: Run
) -> list[dict[str, Any]]:
    """What was done to each unit (``actions``); changes are noted as ``unit:NAME``."""
    if reload or changes.unit_files_changed():
        changes.note("systemd", "daemon-reload")
        if not changes.check_mode:
            _systemctl(run, ["daemon-reload"])
    if not units:
        return []
    states = _states(run, [u["name"] for u in units])
    done = []
    for unit in units:
        actions = _actions(unit, states.get(unit["name"], {}), changes.content_changed)
        for action in actions:
            changes.note(f"unit:{unit['name']}", action)
            if not changes.check_mode:
                _systemctl(run, [action, unit["name"]])
        done.append({"name": unit["name"], "actions": actions})
    return done


def _actions(unit: dict[str, Any], state: dict[str, str], changed: set[str]) -> list[str]:
    loaded = state.get("LoadState") not in (None, "not-found")
    enabled = state.get("UnitFileState") in ("enabled", "enabled-runtime", "static", "alias")
    active = state.get("ActiveState") in ("active", "activating", "reloading")
    actions = []
    if unit.get("enabled") is True and not enabled:
        actions.append("enable")
    elif unit.get("enabled") is False and loaded and state.get("UnitFileState") == "enabled":
        actions.append("disable")
    if unit.get("state") == "started":
        if not active:
            actions.append("start")
        elif changed.intersection(unit.get("restart_on") or []):
            actions.append("restart")
    elif unit.get("state") == "stopped" and active:
        actions.append("stop")
    return actions


def _states(run: Run, names: list[str]) -> dict[str, dict[str, str]]:
    rc, out, err = run(
        ["systemctl", "show", "--property=Id,LoadState,UnitFileState,ActiveState", "--", *names]
    )
    if rc != 0:
        raise LayoutError(f"systemctl show failed (rc={rc}): {(err or out).strip()[:300]}")
    states: list[dict[str, str]] = []
    for block in out.strip().split("\n\n"):
        fields = dict(line.split("=", 1) for line in block.splitlines() if "=" in line)
        states.append(fields)
    if len(states) != len(names):
        raise LayoutError(
            f"systemctl show answered for {len(states)} of {len(names)} units; run it by hand"
        )
    # systemctl answers in the order asked; Id is the unit's real name (an alias resolves).
    return dict(zip(names, states))


def _systemctl(run: Run, args: list[str]) -> None:
    rc, out, err = run(["systemctl", *args])
    if rc != 0:
        text = (err or out).strip().splitlines()
        raise LayoutError(
            f"systemctl {' '.join(args)} failed (rc={rc}): {text[-1] if text else 'no output'}"
        )
