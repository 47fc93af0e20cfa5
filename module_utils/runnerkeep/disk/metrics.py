"""Prometheus metrics in the node_exporter textfile-collector format, and the event counters.

The file is written atomically (temp file ``.tmp-*`` in the same directory, which the collector
ignores because it does not end in ``.prom``, then rename), so the collector never reads half a
file. ``parse_metrics`` reads the format back (tests and ``runnerkeep disk watch`` output use it).
"""

from __future__ import annotations

import math
import os
import re
from typing import Any

from .. import events
from ..fsutil import atomic_write

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
