"""The fleet report's data: every host's facts (or why there are none) reduced to one shape,
scored for risk and sorted, riskiest first. The HTML, Markdown and JSON outputs all render this.

Hosts report their own facts (``host_facts``), so nothing here trusts a value's type: a field
that is missing or of the wrong type is ``None`` ("n/a" on the page), never an exception. Host
names and strings stay raw here; each renderer escapes for its own format.
"""

from __future__ import annotations

import json
import math
import time
from typing import Any, Callable

from .. import statefile
from ..textutil import escape_text
from .host_facts import FACTS_FORMAT

MODEL_FORMAT = 1
TASK_FAILED = "Task failed: "
LEVELS = ("ok", "warning", "critical", "emergency")
# Corruptions on one host from which repeated rot points at its disk rather than at chance.
SUSPECT_DISK_CORRUPTIONS = 3
# What each finding adds to a host's risk score; the sum orders the hosts.
WEIGHTS = {
    "emergency": 100,
    "critical": 80,
    "unreachable": 70,
    "no facts": 60,
    "drained": 60,
    "warning": 50,
    "suspect disk": 40,
    "budget error": 30,
    "over quota": 20,
    "near warning": 15,
    "corruption": 10,
    "part error": 10,
}
# Score from which a host's risk is shown as this level (first match).
RISK_LEVELS = ((90, "critical"), (60, "high"), (30, "medium"), (1, "low"), (0, "ok"))
# The largest figure taken from a host: what an int64 counter can hold (a disk is far smaller).
MAX_INT = 2**63 - 1
# fleet-facts prints a few KiB (HISTORY_JOBS job peaks); more is not facts.
MAX_FACTS_CHARS = 4 * 1024 * 1024
# Characters of a failed task's stderr/msg looked at for its one-line message.
MESSAGE_TAIL = 64 * 1024
FACTS_UNUSABLE = "facts unusable"


def _int(value: Any) -> int | None:
    """A non-negative int from host data up to MAX_INT, else None (bool is not a number here).

    The bound keeps every later sum, ratio and float conversion (the HTML bars) in range."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    if (isinstance(value, float) and math.isnan(value)) or not 0 <= value <= MAX_INT:
        return None
    return int(value)


def _time(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if 0 < value < 1e11 else None


def _str(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _failed(value: Any) -> bool:
    """A part that could not be gathered is ``{"error": "..."}`` and nothing else."""
    return isinstance(value, dict) and set(value) == {"error"}


def _dict(value: Any) -> dict[str, Any]:
    """A part of the facts; a part that failed or is missing is {}."""
    return value if isinstance(value, dict) and not _failed(value) else {}


def guarded(build: Callable[[], dict[str, Any]], make_error: Callable[[str], Any]) -> Any:
    """``build()``, or ``make_error(one line)`` when it raises: the per-host guard, so one
    host's data can cost its own row and never the fleet's report."""
    try:
        return build()
    except Exception as exc:  # host data is hostile: any failure is that host's
        try:
            why = f"{type(exc).__name__}: {exc}"
        except Exception:  # even the exception's text may fail to print
            why = type(exc).__name__
        return make_error(escape_text(f"{FACTS_UNUSABLE}: internal error: {why}")[:300])


def host_input(result: Any) -> dict[str, Any]:
    """What one host's registered ``runnerkeep fleet-facts --json`` task gave, classified:
    ``{"status": "ok", "facts": {...}}``, or a status of ``unreachable``, ``error`` or
    ``not gathered`` with a one-line ``message``. Never raises, whatever the host sent."""
    return guarded(lambda: _classify(result), _error_input)


def _error_input(message: str) -> dict[str, Any]:
    return {"status": "error", "message": message}


def parse_facts(stdout: str) -> dict[str, Any]:
    """One host's fleet-facts stdout, read with the core's strict parser (no NaN/Infinity,
    bounded size, deep nesting a ValueError); raises ValueError with the one-line reason."""
    if len(stdout) > MAX_FACTS_CHARS:
        raise ValueError(f"fleet-facts printed more than {MAX_FACTS_CHARS} characters")
    try:
        facts = statefile.loads_strict(stdout)
        _check_ints(facts)
    except ValueError as exc:
        raise ValueError(f"fleet-facts printed no usable JSON ({exc})"[:300]) from None
    if not isinstance(facts, dict) or facts.get("format") != FACTS_FORMAT:
        raise ValueError(f"fleet-facts format is not {FACTS_FORMAT}")
    return facts


def _check_ints(value: Any) -> None:
    """ValueError for any integer beyond int64 anywhere in ``value``: no counter a host keeps
    is that large, so such facts are forged or broken, not one field to drop. Walked with a
    list, not recursion: the parser already allows nesting near the recursion limit."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, dict):
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
        elif isinstance(item, int) and not isinstance(item, bool) and abs(item) > MAX_INT:
            raise ValueError(f"a number above {MAX_INT}")


def _classify(result: Any) -> dict[str, Any]:
    if not isinstance(result, dict) or not result:
        return {"status": "not gathered", "message": "no result: the host was not run"}
    if result.get("unreachable"):
        message = _first_line(result.get("msg"))
        # ansible-core 2.19 puts this before every task error: it says nothing here.
        message = message[len(TASK_FAILED) :] if message.startswith(TASK_FAILED) else message
        return {"status": "unreachable", "message": message}
    if result.get("skipped"):
        return {"status": "not gathered", "message": "skipped"}
    rc = result.get("rc")
    stdout = result.get("stdout")
    if rc != 0 or not isinstance(stdout, str):
        detail = result.get("stderr") or result.get("msg") or f"exit code {rc}"
        return {"status": "error", "message": _first_line(detail, last=True)}
    try:
        facts = parse_facts(stdout)
    except ValueError as exc:
        return {"status": "error", "message": escape_text(exc)[:300]}
    return {"status": "ok", "facts": facts}


def _first_line(value: Any, last: bool = False) -> str:
    found = value if isinstance(value, str) else str(value or "")
    found = found[-MESSAGE_TAIL:] if last else found[:MESSAGE_TAIL]
    lines = [line.strip() for line in found.splitlines() if line.strip()]
    if not lines:
        return "no message"
    return (lines[-1] if last else lines[0])[:300]


def build_model(
    hosts: dict[str, Any], *, title: str = "runnerkeep fleet report", now: float | None = None
) -> dict[str, Any]:
    """The report: ``hosts`` maps each inventory name to a ``host_input`` result."""
    now = time.time() if now is None else now
    rows = [checked_row(str(name), entry, now) for name, entry in hosts.items()]
    rows.sort(key=lambda row: (-row["risk"]["score"], row["name"]))
    for rank, row in enumerate(rows, 1):
        row["rank"] = rank
    return {
        "format": MODEL_FORMAT,
        "title": title,
        "generated_at": now,
        "summary": summarize(rows),
        "hosts": rows,
    }


def summarize(rows: list[dict[str, Any]]) -> dict[str, Any]:
    by_risk = {level: 0 for _score, level in RISK_LEVELS}
    for row in rows:
        by_risk[row["risk"]["level"]] += 1
    return {
        "hosts": len(rows),
        "reachable": sum(1 for r in rows if r["status"] == "ok"),
        "unreachable": sum(1 for r in rows if r["status"] == "unreachable"),
        "without_facts": sum(1 for r in rows if r["status"] in ("error", "not gathered")),
        "drained": sum(1 for r in rows if r["drain"]["drained"]),
        "suspect_disks": sum(1 for r in rows if r["corruption"]["suspect_disk"]),
        "by_risk": by_risk,
    }


def checked_row(name: str, entry: Any, now: float) -> dict[str, Any]:
    """``host_row`` built and rendered once (HTML, Markdown, JSON) under the per-host guard:
    a row that fails anywhere is that host's error row ("facts unusable: ...")."""

    def build() -> dict[str, Any]:
        row = host_row(name, entry, now)
        _render_probe(row, now)
        return row

    def error_row(message: str) -> dict[str, Any]:
        return host_row(name, _error_input(message), now)

    return guarded(build, error_row)


def _render_probe(row: dict[str, Any], now: float) -> None:
    """Render the row as every output will, so a value a renderer cannot take fails here."""
    from .render_html import host_row_html
    from .render_markdown import host_row_markdown, why_line

    probe = dict(row, rank=0)
    host_row_html(probe, now)
    host_row_markdown(probe, now)
    why_line(probe)
    json.dumps(probe, allow_nan=False)


def host_row(name: str, entry: Any, now: float) -> dict[str, Any]:
    """One host's row; every key is there whatever the host sent."""
    entry = entry if isinstance(entry, dict) else {}
    status = entry.get("status") if entry.get("status") in _STATUSES else "not gathered"
    facts = entry.get("facts") if status == "ok" and isinstance(entry.get("facts"), dict) else {}
    row = {
        "name": name,
        "status": status,
        "message": _str(entry.get("message")),
        "version": _str(facts.get("version")),
        "facts_time": _time(facts.get("time")),
        "disk": disk_part(facts),
        "cache": cache_part(facts),
        "job_peaks": job_peaks_part(facts),
        "corruption": corruption_part(facts),
        "drain": drain_part(facts),
        "last_cleanup": last_cleanup_part(facts),
        "errors": part_errors(facts),
    }
    row["risk"] = risk_of(row)
    return row


_STATUSES = ("ok", "unreachable", "error", "not gathered")


def disk_part(facts: dict[str, Any]) -> dict[str, Any]:
    budget = _dict(facts.get("budget"))
    marks = {
        level: _int(budget.get(f"{level}_free_bytes"))
        for level in ("warning", "critical", "emergency")
    }
    inode_marks = {
        level: _int(budget.get(f"{level}_free_inodes"))
        for level in ("warning", "critical", "emergency")
    }
    part = {
        "path": _str(budget.get("path")),
        "capacity_bytes": _int(budget.get("capacity_bytes")),
        "free_bytes": _int(budget.get("free_bytes")),
        "capacity_inodes": _int(budget.get("capacity_inodes")),
        "free_inodes": _int(budget.get("free_inodes")),
        "watermarks": marks,
        "inode_watermarks": inode_marks,
        "watch_state": _watch_state(facts),
        "budget_error": _budget_error(facts),
        "filesystems": _filesystems(facts),
    }
    part["level"] = disk_level(part)
    return part


def _watch_state(facts: dict[str, Any]) -> str | None:
    state = _dict(facts.get("watch")).get("state")
    return state if state in LEVELS else None


def _budget_error(facts: dict[str, Any]) -> str | None:
    budget = facts.get("budget")
    if not isinstance(budget, dict):
        return "no budget" if facts else None
    return _str(budget.get("error"))


def _filesystems(facts: dict[str, Any]) -> list[dict[str, Any]]:
    found = _dict(facts.get("disk")).get("filesystems")
    rows = []
    for fs in found if isinstance(found, list) else []:
        if isinstance(fs, dict):
            rows.append(
                {
                    "mount_point": _str(fs.get("mount_point")),
                    "size_bytes": _int(fs.get("size_bytes")),
                    "free_bytes": _int(fs.get("free_bytes")),
                    "roles": [r for r in fs.get("roles") or [] if isinstance(r, str)],
                }
            )
    return rows


def disk_level(part: dict[str, Any]) -> str | None:
    """The worst of what free space says now (bytes and inodes against the budget's
    watermarks) and the watch's last state; None when neither is known."""
    level = None
    free = part["free_bytes"]
    if free is not None and all(v is not None for v in part["watermarks"].values()):
        level = 0
        for index, name in enumerate(LEVELS[1:], 1):
            low_bytes = free < part["watermarks"][name]
            mark_inodes = part["inode_watermarks"][name]
            free_inodes = part["free_inodes"]
            low_inodes = bool(mark_inodes) and free_inodes is not None and free_inodes < mark_inodes
            if low_bytes or low_inodes:
                level = index
    watch = part["watch_state"]
    if watch is not None:
        level = max(level or 0, LEVELS.index(watch))
    return None if level is None else LEVELS[level]


def cache_part(facts: dict[str, Any]) -> dict[str, Any]:
    cache = _dict(facts.get("cache"))
    budget = _dict(facts.get("budget"))
    return {
        "dir": _str(cache.get("dir")),
        "bytes": _int(cache.get("disk_bytes")),
        "logical_bytes": _int(cache.get("logical_bytes")),
        "entries": _int(cache.get("entries")),
        "quota_bytes": _int(budget.get("cache_quota_bytes")),
    }


def job_peaks_part(facts: dict[str, Any]) -> dict[str, Any]:
    history = _dict(facts.get("history"))
    budget = _dict(facts.get("budget"))
    jobs = history.get("jobs") if isinstance(history.get("jobs"), list) else []
    values = [_int(job.get("peak_bytes")) for job in jobs if isinstance(job, dict)]
    return {
        "values": [v for v in values if v is not None],
        "count": _int(history.get("count")),
        "running": _int(history.get("running")),
        "budget_peak_bytes": _int(budget.get("job_peak_bytes")),
        "source": _str(budget.get("job_peak_source")),
    }


def corruption_part(facts: dict[str, Any]) -> dict[str, Any]:
    found = facts.get("corruption")
    if not isinstance(found, dict) or _failed(found):
        return {"count": None, "quarantined": None, "suspect_disk": None, "last_time": None}
    events = _int(found.get("corrupt_events"))
    quarantined = _int(found.get("quarantined"))
    known = [v for v in (events, quarantined) if v is not None]
    # A corrupt restore quarantines what it found: the larger count, not the sum.
    count = max(known) if known else None
    return {
        "count": count,
        "quarantined": quarantined,
        "suspect_disk": None if count is None else count >= SUSPECT_DISK_CORRUPTIONS,
        "last_time": _time(found.get("last_time")),
    }


def drain_part(facts: dict[str, Any]) -> dict[str, Any]:
    """``drained`` None: the host has no drain record (admission control not there) or it
    could not be read; the page says n/a."""
    drain = facts.get("drain")
    if not isinstance(drain, dict) or not isinstance(drain.get("drained"), bool):
        return {"drained": None, "reason": None, "since": None}
    return {
        "drained": drain["drained"],
        "reason": _str(drain.get("reason")),
        "since": _time(drain.get("since")),
    }


def last_cleanup_part(facts: dict[str, Any]) -> dict[str, Any] | None:
    cleanup = facts.get("last_cleanup")
    if not isinstance(cleanup, dict) or _failed(cleanup):
        return None
    return {
        "time": _time(cleanup.get("time")),
        "stage": _str(cleanup.get("stage")),
        "bytes_freed": _int(cleanup.get("bytes_freed")),
    }


def part_errors(facts: dict[str, Any]) -> list[str]:
    errors = []
    # A failed budget is a finding of its own (budget error), not counted twice.
    parts = ("disk", "watch", "cache", "history", "last_cleanup", "corruption", "drain")
    for part in parts:
        value = facts.get(part)
        if _failed(value) and isinstance(value["error"], str):
            errors.append(f"{part}: {value['error']}")
    return errors


def risk_of(row: dict[str, Any]) -> dict[str, Any]:
    """Score (the sum of WEIGHTS of what was found), level and the reasons in words."""
    found = list(_findings(row))
    score = sum(WEIGHTS[kind] for kind, _text in found)
    level = next(name for floor, name in RISK_LEVELS if score >= floor)
    return {"score": score, "level": level, "reasons": [text for _kind, text in found]}


def _findings(row: dict[str, Any]):
    """(kind, reason) for each finding of one host."""
    if row["status"] == "unreachable":
        yield "unreachable", f"unreachable: {row['message'] or 'no message'}"
        return
    if row["status"] != "ok":
        yield "no facts", f"no facts ({row['status']}): {row['message'] or 'no message'}"
        return
    disk = row["disk"]
    if disk["level"] in ("warning", "critical", "emergency"):
        yield disk["level"], f"disk {disk['level']}: free space below the {disk['level']} mark"
    elif _near_warning(disk, row["job_peaks"]["budget_peak_bytes"]):
        yield "near warning", "one more job peak would reach the warning mark"
    if row["drain"]["drained"]:
        yield "drained", f"drained: {row['drain']['reason'] or 'no reason recorded'}"
    corruption = row["corruption"]
    if corruption["suspect_disk"]:
        yield "suspect disk", f"suspect disk: {corruption['count']} corruptions found"
    elif corruption["count"]:
        yield "corruption", f"{corruption['count']} cache corruption(s) found"
    if disk["budget_error"]:
        yield "budget error", f"budget error: {disk['budget_error']}"
    cache = row["cache"]
    if (
        cache["bytes"] is not None
        and cache["quota_bytes"]
        and cache["bytes"] > cache["quota_bytes"]
    ):
        yield "over quota", "cache larger than its quota"
    for error in row["errors"][:2]:
        yield "part error", error


def _near_warning(disk: dict[str, Any], peak: int | None) -> bool:
    warning = disk["watermarks"]["warning"]
    if disk["free_bytes"] is None or warning is None or not peak:
        return False
    return disk["free_bytes"] - peak < warning


def model_json(model: dict[str, Any]) -> str:
    return json.dumps(model, indent=2, sort_keys=True) + "\n"
