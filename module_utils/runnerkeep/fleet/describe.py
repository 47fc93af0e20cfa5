"""The words both renderers use for a host's figures (plain text: each renderer escapes it).

"n/a" means the host did not report the figure (an older runnerkeep, a part that failed, or a
part another runnerkeep feature writes and this host does not have yet).
"""

from __future__ import annotations

import time
from typing import Any

from ..units import format_size

NA = "n/a"


def size(value: int | None) -> str:
    return NA if value is None else format_size(value)


def when(value: float | None) -> str:
    if value is None:
        return NA
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(value))


def age(value: float | None, now: float) -> str:
    """How long before ``now``: '40 s', '12 min', '5 h', '3 d'."""
    if value is None:
        return NA
    seconds = max(0.0, now - value)
    for limit, unit, divisor in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if seconds < limit:
            return f"{seconds / divisor:.0f} {unit} ago"
    return f"{seconds / 86400:.0f} d ago"


def percent(part: int | None, whole: int | None) -> str:
    if part is None or not whole:
        return NA
    return f"{100.0 * part / whole:.0f}%"


def free_text(disk: dict[str, Any]) -> str:
    if disk["free_bytes"] is None:
        return NA
    text = f"{size(disk['free_bytes'])} free"
    if disk["capacity_bytes"]:
        share = percent(disk["free_bytes"], disk["capacity_bytes"])
        text += f" of {size(disk['capacity_bytes'])} ({share})"
    return text


def marks_text(disk: dict[str, Any]) -> str:
    marks = disk["watermarks"]
    if any(v is None for v in marks.values()):
        return NA
    return (
        f"warning {size(marks['warning'])}, critical {size(marks['critical'])}, "
        f"emergency {size(marks['emergency'])}"
    )


def cache_text(cache: dict[str, Any]) -> str:
    if cache["bytes"] is None:
        return NA
    text = size(cache["bytes"])
    if cache["quota_bytes"]:
        share = percent(cache["bytes"], cache["quota_bytes"])
        text += f" of {size(cache['quota_bytes'])} quota ({share})"
    if cache["entries"] is not None:
        text += f", {cache['entries']} entries"
    return text


def peaks_text(peaks: dict[str, Any]) -> str:
    if peaks["budget_peak_bytes"] is None and peaks["count"] is None:
        return NA
    parts = []
    if peaks["budget_peak_bytes"] is not None:
        source = f" ({peaks['source']})" if peaks["source"] else ""
        parts.append(f"budget peak {size(peaks['budget_peak_bytes'])}{source}")
    if peaks["count"] is not None:
        parts.append(f"{peaks['count']} jobs recorded")
    if peaks["values"]:
        parts.append(f"largest shown {size(max(peaks['values']))}")
    if peaks["running"]:
        parts.append(f"{peaks['running']} running")
    return ", ".join(parts)


def drain_text(drain: dict[str, Any], now: float) -> str:
    if drain["drained"] is None:
        return NA
    if not drain["drained"]:
        return "no"
    text = "DRAINED"
    if drain["since"] is not None:
        text += f" since {age(drain['since'], now)}"
    if drain["reason"]:
        text += f": {drain['reason']}"
    return text


def corruption_text(corruption: dict[str, Any]) -> str:
    if corruption["count"] is None:
        return NA
    text = str(corruption["count"])
    if corruption["suspect_disk"]:
        text += " (SUSPECT DISK)"
    return text


def cleanup_text(cleanup: dict[str, Any] | None, now: float) -> str:
    if cleanup is None:
        return "none recorded"
    stage = cleanup["stage"] or "?"
    return f"{stage} {age(cleanup['time'], now)}, freed {size(cleanup['bytes_freed'])}"


def state_text(row: dict[str, Any]) -> str:
    if row["status"] != "ok":
        return row["status"]
    return row["disk"]["level"] or NA
