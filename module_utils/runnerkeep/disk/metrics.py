"""Prometheus metrics in the node_exporter textfile-collector format, the watch's metric table,
and the event counters.

The file is written atomically (temp file ``.tmp-*`` in the same directory, which the collector
ignores because it does not end in ``.prom``, then rename), so the collector never reads half a
file. ``parse_metrics`` reads the format back (tests and ``runnerkeep disk watch`` output use it).

``WATCH_METRICS`` is every metric the watch writes, as data: name, type, help, labels and how
its samples are taken from a cycle's ``WatchReadings``. ``watch_metric_set`` turns one cycle's
readings into a ``MetricSet``. ``PLANNED_METRICS`` are the metrics the Prometheus rules
(monitoring/) already use that other parts of runnerkeep are to write; their names and labels
are fixed here. docs/metrics.md is generated from both tables (tools/metrics_doc.py).
"""

from __future__ import annotations

import math
import os
import re
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Callable

from .. import __version__, events
from ..fsutil import atomic_write
from .budget import LEVELS, Budget, BudgetInputs

_NAME_RE = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")


def _escape(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _format_value(value: float) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(float(value))


class MetricSet:
    """Collects samples grouped by metric family, each family with one HELP and TYPE line."""

    def __init__(self) -> None:
        self._families: dict[str, dict[str, Any]] = {}

    def add(
        self,
        name: str,
        value: float,
        labels: dict[str, str] | None = None,
        *,
        help: str = "",
        kind: str = "gauge",
    ) -> None:
        if not _NAME_RE.match(name):
            raise ValueError(f"invalid metric name {name!r}")
        family = self._families.setdefault(name, {"help": help, "kind": kind, "samples": []})
        if help and not family["help"]:
            family["help"] = help
        family["samples"].append((dict(labels or {}), value))

    def render(self) -> str:
        lines: list[str] = []
        for name in sorted(self._families):
            family = self._families[name]
            help_text = family["help"].replace("\\", "\\\\").replace("\n", "\\n")
            lines.append(f"# HELP {name} {help_text or name}")
            lines.append(f"# TYPE {name} {family['kind']}")
            for labels, value in family["samples"]:
                if labels:
                    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in sorted(labels.items()))
                    lines.append(f"{name}{{{inner}}} {_format_value(value)}")
                else:
                    lines.append(f"{name} {_format_value(value)}")
        return "\n".join(lines) + "\n"


_SAMPLE_RE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$")
_LABEL_RE = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"\s*,?\s*')


def parse_metrics(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(name, sorted label pairs): value}; raises ValueError on a malformed line."""
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    types: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        if line.startswith("#"):
            parts = line.split(None, 3)
            if len(parts) >= 4 and parts[1] == "TYPE":
                if parts[3] not in ("counter", "gauge", "untyped", "histogram", "summary"):
                    raise ValueError(f"line {number}: unknown type {parts[3]!r}")
                types[parts[2]] = parts[3]
            continue
        match = _SAMPLE_RE.match(line)
        if not match:
            raise ValueError(f"line {number}: not a sample: {line!r}")
        name, raw_labels, raw_value = match.groups()
        labels: list[tuple[str, str]] = []
        if raw_labels:
            pos = 0
            for label in _LABEL_RE.finditer(raw_labels):
                if label.start() != pos:
                    raise ValueError(f"line {number}: bad labels {raw_labels!r}")
                value = (
                    label.group(2).replace('\\"', '"').replace("\\n", "\n").replace("\\\\", "\\")
                )
                labels.append((label.group(1), value))
                pos = label.end()
            if pos != len(raw_labels):
                raise ValueError(f"line {number}: bad labels {raw_labels!r}")
        key = (name, tuple(sorted(labels)))
        if key in samples:
            raise ValueError(f"line {number}: duplicate sample {name}{raw_labels or ''}")
        samples[key] = float(raw_value)
    return samples


def metric_value(samples: dict, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


def write_textfile(directory: str, filename: str, text: str) -> str:
    """Atomically replace ``directory/filename`` (created with the directory if missing)."""
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, filename)
    atomic_write(path, text.encode(), mode=0o644)
    return path


def event_totals(counters: dict[str, Any]) -> dict[str, Any]:
    """The running totals kept in the watch state, every key present (a copy)."""
    return {
        "events_time": float(counters.get("events_time") or 0.0),
        "cache": dict(counters.get("cache") or {}),
        "cleanup_bytes": dict(counters.get("cleanup_bytes") or {}),
        "cleanup_runs": dict(counters.get("cleanup_runs") or {}),
        "last_job_peak_bytes": counters.get("last_job_peak_bytes"),
        "last_job_peak_inodes": counters.get("last_job_peak_inodes"),
    }


def fold_events(state_dir: str, counters: dict[str, Any]) -> dict[str, Any]:
    """Add the events newer than ``counters['events_time']`` to running totals.

    Totals live in the watch state, so they keep growing when the bounded event log drops its
    oldest half (Prometheus counters must not go down except on a real reset). Raises OSError
    when the event log cannot be read.
    """
    totals = event_totals(counters)
    newest = totals["events_time"]
    new_events = list(events.read_events(state_dir))
    for event in new_events:
        when = event.get("time")
        if not isinstance(when, (int, float)) or when <= totals["events_time"]:
            continue
        newest = max(newest, when)
        kind = event.get("kind")
        if kind == "cache":
            result = str(event.get("result") or "unknown")
            totals["cache"][result] = totals["cache"].get(result, 0) + 1
        elif kind == "cleanup":
            cleaner = str(event.get("cleaner") or "unknown")
            freed = event.get("bytes_freed") or 0
            if isinstance(freed, (int, float)) and freed >= 0:
                totals["cleanup_bytes"][cleaner] = totals["cleanup_bytes"].get(cleaner, 0) + int(
                    freed
                )
            totals["cleanup_runs"][cleaner] = totals["cleanup_runs"].get(cleaner, 0) + 1
        elif kind == "job":
            totals["last_job_peak_bytes"] = event.get("peak_bytes")
            totals["last_job_peak_inodes"] = event.get("peak_inodes")
    totals["events_time"] = newest
    return totals


# --- the watch's metrics, as a table ----------------------------------------------------------

GAUGE = "gauge"
COUNTER = "counter"

# One sample: its labels and its value.
Sample = tuple[dict[str, str], float]


@dataclass
class WatchReadings:
    """What one watch cycle measured and decided: the metric table takes its values from here."""

    state: dict[str, Any]  # the watch state as this cycle leaves it
    counters: dict[str, Any]  # running event totals (``fold_events``)
    budget: Budget | None = None  # None: nothing measured (the state is the last one known)
    inputs: BudgetInputs | None = None
    webhook_configured: bool = False
    docker: dict[str, Any] = field(default_factory=dict)  # {"checked", "up", "kinds", "error"}
    filesystems: list[dict[str, Any]] = field(default_factory=list)  # ``filesystems()`` entries
    # (role, path, readable) for every watched path.
    watched_paths: list[tuple[str, str, bool]] = field(default_factory=list)
    spool: dict[str, Any] | None = None  # ``history.ingest_spool``'s result; None: it failed
    records_skipped: dict[str, int] = field(default_factory=dict)  # per state file, this cycle
    # The drain step's result (``admission.watch_drain``): None when the step did not run (no
    # drain state reported), with ``error`` when drain.json could not be used (state unknown).
    drain: dict[str, Any] | None = None
    # The cache scrub's summary (``cache.scrub.read_scrub_status``, handed in by the front door
    # as ``runnerkeep.wiring.scrub_status``): None when the store was never scrubbed.
    cache_scrub: dict[str, Any] | None = None
    errors: int = 0  # problems met before the metrics were written
    duration_seconds: float = 0.0
    run_time: float = 0.0  # when the cycle started (time.time())


@dataclass(frozen=True)
class MetricDef:
    """One metric family: what the reference documents, and how its samples are taken."""

    name: str
    kind: str
    help: str
    labels: tuple[str, ...]
    samples: Callable[[WatchReadings], Iterable[Sample]]
    # What writes it (the metric reference says so).
    writer: str = "disk watch"


def _one(value: float) -> list[Sample]:
    return [({}, value)]


def _when(present: bool, value: Callable[[], float]) -> list[Sample]:
    """One sample when ``present``, else none (the family is left out of the file)."""
    return [({}, value())] if present else []


def _budget_ok(readings: WatchReadings) -> bool:
    return readings.budget is not None and readings.budget.error is None


def _state_samples(readings: WatchReadings) -> list[Sample]:
    return [({"state": level}, 1 if level == readings.state["state"] else 0) for level in LEVELS]


def _watermark_samples(readings: WatchReadings, unit: str) -> list[Sample]:
    if readings.budget is None:
        return []
    return [({"level": level}, mark[unit]) for level, mark in readings.budget.watermarks().items()]


def _watermark_source(readings: WatchReadings) -> list[Sample]:
    source = (
        "none" if readings.budget is None else ("fallback" if readings.budget.error else "budget")
    )
    return [({"source": source}, 1)]


def _cache_size_samples(readings: WatchReadings) -> list[Sample]:
    if readings.inputs is None:
        return []
    return [
        ({"kind": "disk"}, readings.inputs.cache_bytes),
        ({"kind": "logical"}, readings.inputs.cache_logical_bytes or 0),
    ]


def _cache_counter(result: str, name: str) -> MetricDef:
    return MetricDef(
        f"runnerkeep_cache_{name}_total",
        COUNTER,
        f"image cache {name} recorded in the event log",
        (),
        lambda readings: _one(readings.counters["cache"].get(result, 0)),
    )


def _cleanup_freed_samples(readings: WatchReadings) -> list[Sample]:
    return [
        ({"cleaner": cleaner}, freed)
        for cleaner, freed in sorted(readings.counters["cleanup_bytes"].items())
    ]


def _alert_samples(readings: WatchReadings) -> list[Sample]:
    samples: list[Sample] = []
    for key, count in sorted((readings.state.get("alert_counts") or {}).items()):
        channel, result = key.split(":", 1)
        samples.append(({"channel": channel, "result": result}, count))
    return samples


def _docker_kind_samples(readings: WatchReadings, key: str) -> list[Sample]:
    return [
        ({"kind": kind}, usage[key]) for kind, usage in readings.docker.get("kinds", {}).items()
    ]


def _filesystem_samples(readings: WatchReadings, key: str) -> list[Sample]:
    return [({"mountpoint": fs["mount_point"]}, fs[key]) for fs in readings.filesystems]


def _path_samples(readings: WatchReadings) -> list[Sample]:
    return [
        ({"role": role, "path": path}, 1 if ok else 0) for role, path, ok in readings.watched_paths
    ]


def _spool_samples(readings: WatchReadings, key: str) -> list[Sample]:
    return [] if readings.spool is None else _one(len(readings.spool[key]))


def _skipped_samples(readings: WatchReadings) -> list[Sample]:
    return [({"file": name}, count) for name, count in sorted(readings.records_skipped.items())]


def _build_info_samples(_readings: WatchReadings) -> list[Sample]:
    python = "{}.{}.{}".format(*sys.version_info[:3])
    return [({"version": __version__, "python": python}, 1)]


def _drain_known(readings: WatchReadings) -> bool:
    return readings.drain is not None and not readings.drain.get("error")


def _drained_samples(readings: WatchReadings) -> list[Sample]:
    """1 with what was short while drained, 0 with an empty reason; none when unknown (a
    damaged drain.json is not "not drained")."""
    if not _drain_known(readings):
        return []
    if not readings.drain["drained"]:
        return [({"reason": ""}, 0)]
    reason = str(readings.drain.get("reason") or "").split(": ", 1)[0][:120]
    return [({"reason": reason}, 1)]


def _drained_seconds(readings: WatchReadings) -> list[Sample]:
    if not _drain_known(readings):
        return []
    since = readings.drain.get("since")
    if not readings.drain["drained"] or not isinstance(since, (int, float)):
        return _one(0)
    return _one(round(max(0.0, readings.run_time - since), 3))


def _not_written_here(_readings: WatchReadings) -> list[Sample]:
    return []


def _scrub_samples(readings: WatchReadings, key: str) -> list[Sample]:
    """One sample from the cache scrub's summary; none when never scrubbed (or no value)."""
    scrub = readings.cache_scrub
    if scrub is None or scrub.get(key) is None:
        return []
    return _one(scrub[key])


def _scrub_counter(name: str, key: str, help_text: str) -> MetricDef:
    return MetricDef(
        name,
        COUNTER,
        help_text,
        (),
        lambda readings: _scrub_samples(readings, key),
        writer="disk watch (the cache scrub's status)",
    )


WATCH_METRICS: tuple[MetricDef, ...] = (
    # Which runnerkeep wrote the file (a fleet mid-upgrade shows both versions).
    MetricDef(
        "runnerkeep_build_info",
        GAUGE,
        "always 1; the runnerkeep version and the Python running the watch",
        ("version", "python"),
        _build_info_samples,
    ),
    # The state machine.
    MetricDef(
        "runnerkeep_disk_state",
        GAUGE,
        "watermark state of the budget filesystem (1 = current)",
        ("state",),
        _state_samples,
    ),
    MetricDef(
        "runnerkeep_disk_state_level",
        GAUGE,
        "0 ok, 1 warning, 2 critical, 3 emergency",
        (),
        lambda readings: _one(LEVELS.index(readings.state["state"])),
    ),
    MetricDef(
        "runnerkeep_disk_state_since_timestamp_seconds",
        GAUGE,
        "when the current state was entered",
        (),
        lambda readings: _when(
            bool(readings.state.get("since")), lambda: round(readings.state["since"], 3)
        ),
    ),
    MetricDef(
        "runnerkeep_disk_state_watermarks",
        GAUGE,
        "where the state's watermarks came from: budget, fallback (budget error), "
        "none (nothing measured: the state is the last one known)",
        ("source",),
        _watermark_source,
    ),
    # The budget.
    MetricDef(
        "runnerkeep_disk_budget_up",
        GAUGE,
        "1 when the disk budget could be computed",
        (),
        lambda readings: _one(1 if _budget_ok(readings) else 0),
    ),
    MetricDef(
        "runnerkeep_disk_budget_error",
        GAUGE,
        "1 when the disk budget could not be computed (see the log)",
        (),
        lambda readings: _one(0 if _budget_ok(readings) else 1),
    ),
    MetricDef(
        "runnerkeep_disk_watermark_free_bytes",
        GAUGE,
        "free bytes below which the level is entered",
        ("level",),
        lambda readings: _watermark_samples(readings, "bytes"),
    ),
    MetricDef(
        "runnerkeep_disk_watermark_free_inodes",
        GAUGE,
        "free inodes below which the level is entered (0 = none)",
        ("level",),
        lambda readings: _watermark_samples(readings, "inodes"),
    ),
    MetricDef(
        "runnerkeep_disk_budget_free_bytes",
        GAUGE,
        "free bytes on the budget filesystem",
        (),
        lambda readings: _when(readings.budget is not None, lambda: readings.inputs.free_bytes),
    ),
    MetricDef(
        "runnerkeep_disk_budget_free_inodes",
        GAUGE,
        "free inodes on the budget filesystem",
        (),
        lambda readings: _when(readings.budget is not None, lambda: readings.inputs.free_inodes),
    ),
    MetricDef(
        "runnerkeep_disk_cache_quota_bytes",
        GAUGE,
        "image cache quota",
        (),
        lambda readings: _when(_budget_ok(readings), lambda: readings.budget.cache_quota_bytes),
    ),
    MetricDef(
        "runnerkeep_disk_job_peak_budget_bytes",
        GAUGE,
        "job peak P used by the budget (percentile or floor)",
        (),
        lambda readings: _when(_budget_ok(readings), lambda: readings.budget.job_peak_bytes),
    ),
    MetricDef(
        "runnerkeep_disk_cache_size_bytes",
        GAUGE,
        "image cache size (logical and on disk)",
        ("kind",),
        _cache_size_samples,
    ),
    # Totals from the event log.
    _cache_counter("hit", "hits"),
    _cache_counter("miss", "misses"),
    _cache_counter("corrupt", "corruptions"),
    _cache_counter("saved", "saves"),
    _cache_counter("pushed", "pushes"),
    _cache_counter("push_failed", "push_failures"),
    _cache_counter("push_refused", "pushes_refused"),
    _cache_counter("pulled", "pulls"),
    _cache_counter("pull_failed", "pull_failures"),
    _cache_counter("repaired", "repairs"),
    MetricDef(
        "runnerkeep_cleanup_bytes_freed_total",
        COUNTER,
        "bytes freed by cleanup, per cleaner",
        ("cleaner",),
        _cleanup_freed_samples,
    ),
    MetricDef(
        "runnerkeep_disk_last_job_peak_bytes",
        GAUGE,
        "disk growth during the last finished job",
        (),
        lambda readings: _when(
            readings.counters.get("last_job_peak_bytes") is not None,
            lambda: readings.counters["last_job_peak_bytes"],
        ),
    ),
    MetricDef(
        "runnerkeep_disk_last_job_peak_inodes",
        GAUGE,
        "inode growth during the last finished job",
        (),
        lambda readings: _when(
            readings.counters.get("last_job_peak_inodes") is not None,
            lambda: readings.counters["last_job_peak_inodes"],
        ),
    ),
    # Alerts.
    MetricDef(
        "runnerkeep_disk_alerts_total",
        COUNTER,
        "alerts sent or failed, per channel",
        ("channel", "result"),
        _alert_samples,
    ),
    MetricDef(
        "runnerkeep_disk_webhook_up",
        GAUGE,
        "0 when the last webhook delivery failed",
        (),
        lambda readings: _when(
            readings.webhook_configured, lambda: 1 if readings.state.get("webhook_ok", True) else 0
        ),
    ),
    MetricDef(
        "runnerkeep_disk_webhook_pending",
        GAUGE,
        "alerts the webhook failed to take, to be sent again next cycle",
        (),
        lambda readings: _when(
            readings.webhook_configured, lambda: len(readings.state.get("webhook_pending") or [])
        ),
    ),
    # The emergency cleanup.
    MetricDef(
        "runnerkeep_disk_emergency_cleanups_total",
        COUNTER,
        "emergency cleanup runs started by the watch",
        (),
        lambda readings: _one(readings.state.get("emergency_cleanups", 0)),
    ),
    MetricDef(
        "runnerkeep_disk_emergency_cleanup_freed_bytes",
        GAUGE,
        "bytes the last emergency cleanup freed",
        (),
        lambda readings: _when(
            "last_emergency_cleanup_freed_bytes" in readings.state,
            lambda: readings.state["last_emergency_cleanup_freed_bytes"],
        ),
    ),
    MetricDef(
        "runnerkeep_disk_emergency_cleanup_ok",
        GAUGE,
        "1 when the last emergency cleanup ran without error",
        (),
        lambda readings: _when(
            "last_emergency_cleanup_freed_bytes" in readings.state,
            lambda: 1 if readings.state.get("last_emergency_cleanup_ok") else 0,
        ),
    ),
    # Docker (only when the watch checks it).
    MetricDef(
        "runnerkeep_docker_up",
        GAUGE,
        "1 when the Docker engine answered this watch cycle",
        (),
        lambda readings: _when(
            bool(readings.docker.get("checked")), lambda: 1 if readings.docker["up"] else 0
        ),
    ),
    MetricDef(
        "runnerkeep_docker_usage_bytes",
        GAUGE,
        "docker system df size by kind",
        ("kind",),
        lambda readings: _docker_kind_samples(readings, "size_bytes"),
    ),
    MetricDef(
        "runnerkeep_docker_reclaimable_bytes",
        GAUGE,
        "docker system df reclaimable bytes by kind",
        ("kind",),
        lambda readings: _docker_kind_samples(readings, "reclaimable_bytes"),
    ),
    # The filesystems of the watched paths.
    MetricDef(
        "runnerkeep_disk_filesystem_size_bytes",
        GAUGE,
        "filesystem size",
        ("mountpoint",),
        lambda readings: _filesystem_samples(readings, "size_bytes"),
    ),
    MetricDef(
        "runnerkeep_disk_filesystem_free_bytes",
        GAUGE,
        "bytes available to unprivileged users",
        ("mountpoint",),
        lambda readings: _filesystem_samples(readings, "free_bytes"),
    ),
    MetricDef(
        "runnerkeep_disk_filesystem_size_inodes",
        GAUGE,
        "inodes in total",
        ("mountpoint",),
        lambda readings: _filesystem_samples(readings, "size_inodes"),
    ),
    MetricDef(
        "runnerkeep_disk_filesystem_free_inodes",
        GAUGE,
        "free inodes",
        ("mountpoint",),
        lambda readings: _filesystem_samples(readings, "free_inodes"),
    ),
    MetricDef(
        "runnerkeep_disk_path_readable",
        GAUGE,
        "1 when the filesystem holding the path could be measured",
        ("role", "path"),
        _path_samples,
    ),
    # The spool and the state files.
    MetricDef(
        "runnerkeep_spool_records_ingested",
        GAUGE,
        "finished-job records taken from the spool this cycle",
        (),
        lambda readings: _spool_samples(readings, "ingested"),
    ),
    MetricDef(
        "runnerkeep_spool_records_rejected",
        GAUGE,
        "spool records that could not be used this cycle (removed)",
        (),
        lambda readings: _spool_samples(readings, "rejected"),
    ),
    MetricDef(
        "runnerkeep_state_records_skipped",
        GAUGE,
        "state-file records (or whole files) this cycle could not use",
        ("file",),
        _skipped_samples,
    ),
    # Admission control: the drain state (drain.json) as this cycle leaves it.
    MetricDef(
        "runnerkeep_runner_drained",
        GAUGE,
        "1 while the runner is drained (a job could not fit, or an operator drained it: its "
        "agent is stopped or stops when the job ends), else 0; reason: what was short (free "
        "bytes or free inodes, and where), or operator. Absent when the drain record cannot "
        "be read",
        ("reason",),
        _drained_samples,
        writer="disk watch (admission control's drain state)",
    ),
    MetricDef(
        "runnerkeep_runner_drained_seconds",
        GAUGE,
        "how long the runner has been drained (0 when it is not)",
        (),
        _drained_seconds,
        writer="disk watch (admission control's drain state)",
    ),
    # The cache scrub (cache verify --max-duration), from its status in the store. The age is
    # computed each cycle, so it keeps growing when the scrub stops running.
    MetricDef(
        "runnerkeep_cache_oldest_unverified_seconds",
        GAUGE,
        "seconds since the least recently verified blob of the image cache was last verified "
        "(or stored, for a blob the scrub has not read yet); absent until the first scrub",
        (),
        lambda readings: _scrub_samples(readings, "oldest_unverified_seconds"),
        writer="disk watch (the cache scrub's status)",
    ),
    _scrub_counter(
        "runnerkeep_cache_scrub_blobs_verified_total",
        "blobs_verified_total",
        "blobs the cache scrub re-hashed and found good",
    ),
    _scrub_counter(
        "runnerkeep_cache_scrub_bytes_verified_total",
        "bytes_verified_total",
        "bytes of the blobs the cache scrub re-hashed and found good",
    ),
    _scrub_counter(
        "runnerkeep_cache_scrub_corruptions_total",
        "corruptions_total",
        "bad blobs the cache scrub found (quarantined with their entries under --repair)",
    ),
    MetricDef(
        "runnerkeep_cache_scrub_last_run_timestamp_seconds",
        GAUGE,
        "when the cache scrub last ran",
        (),
        lambda readings: _scrub_samples(readings, "last_run"),
        writer="disk watch (the cache scrub's status)",
    ),
    # The cycle itself.
    MetricDef(
        "runnerkeep_disk_watch_duration_seconds",
        GAUGE,
        "time this watch cycle took",
        (),
        lambda readings: _one(round(readings.duration_seconds, 3)),
    ),
    MetricDef(
        "runnerkeep_disk_watch_errors",
        GAUGE,
        "problems met in the last watch cycle (see the log)",
        (),
        lambda readings: _one(readings.errors),
    ),
    MetricDef(
        "runnerkeep_disk_watch_last_run_timestamp_seconds",
        GAUGE,
        "when the watch last ran",
        (),
        lambda readings: _one(round(readings.run_time, 3)),
    ),
)

# Used by monitoring/prometheus/runnerkeep-rules.yml, written by parts of issue 13 not built yet.
# When a part is built, its row moves from here to the table of the code that writes it, with
# the same name, type and labels (a unit test keeps every metric the rules use in one table).
PLANNED_METRICS: tuple[MetricDef, ...] = ()


def watch_metric_set(readings: WatchReadings) -> MetricSet:
    """Every metric of ``WATCH_METRICS`` with its samples for one cycle's readings."""
    metrics = MetricSet()
    for metric in WATCH_METRICS:
        for labels, value in metric.samples(readings):
            metrics.add(metric.name, value, labels, help=metric.help, kind=metric.kind)
    return metrics
