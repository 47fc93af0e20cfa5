"""Everything the fleet report needs from one host, in one read-only pass.

``runnerkeep fleet-facts --json`` prints this, so the fleet report costs one command per host
instead of five (disk report, budget, cache, history, events). Each part is gathered on its
own: a part that fails is ``{"error": "..."}`` and the others are still there, because a host
in trouble is exactly the one the report must show.

Read-only like every reader of state (docs/hardening.md): no lock file, no repair of a damaged
state file, no spool ingestion. The drain record is written by the admission-control part
(``<state_dir>/drain.json``); it is read when present and reported as ``None`` otherwise.

A state file that is there but cannot be read as a whole (not a regular file, past its read
bound, not a JSON object) makes every part read from it ``{"error": ...}`` (``checked``): a
damaged host must never look clean ("0 corruptions", "no cleanup"). Single unusable lines of a
JSON-lines file are counted (``skipped``), the rest still used.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable

from .. import __version__, events, statefile
from ..config import state_dir_of
from ..errors import RunnerkeepError
from ..textutil import escape_text

FACTS_FORMAT = 1
DRAIN_FILE = "drain.json"
QUARANTINE_LOG = os.path.join("quarantine", "log.jsonl")
HISTORY_JOBS = 60  # job peaks sent per host: enough for a sparkline, small for 1000 hosts
# Cleanup events this close to the newest one of the same stage belong to the same run.
CLEANUP_RUN_GAP = 600.0
# Fields of a budget the report uses; the explanation text stays on the host.
BUDGET_FIELDS = (
    "path",
    "capacity_bytes",
    "capacity_inodes",
    "free_bytes",
    "free_inodes",
    "cache_bytes",
    "cache_quota_bytes",
    "job_peak_bytes",
    "job_peak_inodes",
    "job_peak_source",
    "history_jobs",
    "warning_free_bytes",
    "critical_free_bytes",
    "emergency_free_bytes",
    "warning_free_inodes",
    "critical_free_inodes",
    "emergency_free_inodes",
    "warnings",
    "error",
)


class DamagedState(RunnerkeepError):
    """A state file a part needs could not be read as a whole."""


def gather_host_facts(config: dict[str, Any], *, include_docker: bool = True) -> dict[str, Any]:
    """The facts of this host (see the module doc); never raises for one failed part."""
    state_directory = state_dir_of(config)
    facts: dict[str, Any] = {
        "format": FACTS_FORMAT,
        "version": __version__,
        "hostname": socket.gethostname(),
        "time": time.time(),
        "state_dir": state_directory,
    }
    disk = _part(lambda: _disk_report(config, include_docker))
    facts["disk"] = disk
    facts["budget"] = _part(lambda: _budget(config))
    facts["watch"] = _part(lambda: _watch_state(state_directory))
    facts["cache"] = _part(lambda: _cache(config, disk))
    facts["history"] = _part(lambda: _history(state_directory))
    event_list = _part(lambda: _events(state_directory))
    facts["last_cleanup"] = _part(lambda: last_cleanup(_usable(event_list)))
    facts["corruption"] = _part(lambda: _corruption(config, _usable(event_list)))
    facts["drain"] = _part(lambda: read_drain(state_directory))
    return facts


def _part(gather: Callable[[], Any]) -> Any:
    """One part's value, or ``{"error": one line}``: a bug in one part must not cost the rest."""
    try:
        return gather()
    except RunnerkeepError as exc:
        return {"error": escape_text(exc)}
    except OSError as exc:
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        return {"error": escape_text(f"{exc.strerror or exc}{where}")}
    except Exception as exc:  # the guard: one line per part, never a traceback
        return {"error": escape_text(f"internal error: {type(exc).__name__}: {exc}")}


def checked(report: statefile.ReadReport) -> statefile.ReadReport:
    """``report`` when its file was read as a whole (or is absent), else DamagedState: the
    one test of every state-file read here."""
    if report.unreadable or report.skipped_bytes:
        raise DamagedState(report.describe())
    return report


def _usable(part: Any) -> Any:
    """A part gathered earlier that another part builds on; its failure is that part's too."""
    if _failed(part):
        raise DamagedState(part["error"])
    return part


def _failed(value: Any) -> bool:
    return isinstance(value, dict) and set(value) == {"error"}


def _disk_report(config: dict[str, Any], include_docker: bool) -> dict[str, Any]:
    from ..disk.usage_report import disk_report

    # The largest-dirs walk is the expensive part of a disk report: not for a fleet overview.
    return disk_report(config, include_docker=include_docker, include_largest=False)


def _budget(config: dict[str, Any]) -> dict[str, Any]:
    from ..disk.budget import current_budget

    data = current_budget(config).as_dict()
    return {key: data.get(key) for key in BUDGET_FIELDS}


def _watch_state(state_directory: str) -> dict[str, Any] | None:
    """The disk watch's last state (ok/warning/critical/emergency), None before its first run."""
    from ..disk.watch import STATE_FILE, clean_state

    state, report = statefile.read_json_object(
        os.path.join(state_directory, STATE_FILE), clean_state, repair=False
    )
    checked(report)
    if state is None:
        return None
    keep = ("state", "since", "last_run", "emergency_cleanups", "last_emergency_cleanup")
    return {key: state.get(key) for key in keep}


def _cache(config: dict[str, Any], disk: dict[str, Any]) -> dict[str, Any]:
    """Size from the disk report (no store lock taken: this only reads), entries by listing."""
    from ..cache.cache_config import resolve_cache_dir

    directory = resolve_cache_dir(None, config)
    sizes = disk.get("cache") if isinstance(disk.get("cache"), dict) else {}
    try:
        names = os.listdir(os.path.join(directory, "entries"))
        entries: int | None = sum(1 for name in names if name.endswith(".json"))
    except (FileNotFoundError, NotADirectoryError):
        entries = 0
    except OSError:
        entries = None
    return {
        "dir": directory,
        "entries": entries,
        "disk_bytes": sizes.get("disk_bytes"),
        "logical_bytes": sizes.get("logical_bytes"),
    }


def _history(state_directory: str) -> dict[str, Any]:
    from ..disk.history import JOBS_DIR, read_history_report

    records, report = read_history_report(state_directory)
    checked(report)
    keep = ("start_time", "peak_bytes", "peak_inodes", "duration_seconds")
    jobs = [{key: record.get(key) for key in keep} for record in records[-HISTORY_JOBS:]]
    try:
        names = os.listdir(os.path.join(state_directory, JOBS_DIR))
        running = sum(1 for name in names if name.endswith(".json"))
    except OSError:
        running = 0
    return {"count": len(records), "jobs": jobs, "running": running, "skipped": report.skipped}


def _events(state_directory: str) -> dict[str, Any]:
    """The usable events and how many lines were skipped; DamagedState when the file is
    there but cannot be read as a whole."""
    records, report = events.read_events_report(state_directory)
    checked(report)
    return {"records": records, "skipped": report.skipped}


def last_cleanup(found: dict[str, Any] | list[dict[str, Any]]) -> dict[str, Any] | None:
    """The newest cleanup run: its stage, end time and bytes freed over its cleaners.

    A run records one event per cleaner; the events of the newest event's stage that follow
    each other less than CLEANUP_RUN_GAP apart are taken as that run. ``found`` is what
    ``_events`` gave or a plain list of events."""
    event_list = found["records"] if isinstance(found, dict) else found
    cleanups = [e for e in event_list if e.get("kind") == "cleanup"]
    if not cleanups:
        return None
    newest = cleanups[-1]
    stage = newest.get("stage")
    freed, cleaners, previous = 0, 0, newest["time"]
    for event in reversed(cleanups):
        if event.get("stage") != stage or previous - event["time"] > CLEANUP_RUN_GAP:
            break
        amount = event.get("bytes_freed")
        if statefile.plain_int(amount):
            freed += amount
        cleaners += 1
        previous = event["time"]
    return {
        "time": newest["time"],
        "stage": escape_text(stage) if stage is not None else None,
        "bytes_freed": freed,
        "cleaners": cleaners,
    }


def _corruption(config: dict[str, Any], found: dict[str, Any]) -> dict[str, Any]:
    """Corruptions seen on this host: restores that found a corrupt entry or blob, and what
    verify or restore moved to the store's quarantine (its log, one line per item)."""
    from ..cache.cache_config import resolve_cache_dir

    records = found["records"]
    corrupt = [e for e in records if e.get("kind") == "cache" and e.get("result") == "corrupt"]
    path = os.path.join(resolve_cache_dir(None, config), QUARANTINE_LOG)
    quarantined, report = statefile.read_json_lines(path, _quarantine_record, repair=False)
    checked(report)
    times = [e["time"] for e in corrupt] + [q["time"] for q in quarantined]
    return {
        "corrupt_events": len(corrupt),
        "quarantined": len(quarantined),
        "quarantined_blobs": sum(1 for q in quarantined if q.get("what") == "blob"),
        "last_time": max(times) if times else None,
        "skipped": found["skipped"] + report.skipped,
    }


def _quarantine_record(record: Any) -> dict[str, Any] | None:
    if not isinstance(record, dict) or not statefile.timestamp(record.get("time")):
        return None
    return record


def valid_drain(record: Any) -> dict[str, Any] | None:
    """A drain record: ``drained`` (bool) required; ``reason`` (str), ``since`` (a time) and
    ``unit`` (str) when there."""
    if not isinstance(record, dict) or not isinstance(record.get("drained"), bool):
        return None
    drain: dict[str, Any] = {"drained": record["drained"], "reason": None, "since": None}
    if isinstance(record.get("reason"), str):
        drain["reason"] = escape_text(record["reason"])[:300]
    if statefile.timestamp(record.get("since")):
        drain["since"] = record["since"]
    if isinstance(record.get("unit"), str):
        drain["unit"] = escape_text(record["unit"])[:200]
    return drain


def read_drain(state_directory: str) -> dict[str, Any] | None:
    """The drain record, None when absent (no admission control on this host yet); an
    unusable one is an error, not "not drained"."""
    path = os.path.join(state_directory, DRAIN_FILE)
    drain, report = statefile.read_json_object(path, valid_drain, repair=False)
    if drain is None and report.damaged:
        return {"error": escape_text(report.describe())}
    return drain
