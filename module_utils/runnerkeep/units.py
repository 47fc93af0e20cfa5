"""Parsing and formatting of sizes ("10G", "512MiB", "15%") and durations ("7d", "12h")."""

from __future__ import annotations

import math
import re

from .errors import ConfigError

# Bounds that no real disk or schedule reaches: past them a value is a typo (or an attack),
# and unbounded floats would turn into inf/OverflowError far from where they were written.
MAX_SIZE = 2**63
MAX_DURATION = 100 * 365 * 86400.0

_SIZE_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "ki": 1024,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mi": 1024**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gi": 1024**3,
    "gib": 1024**3,
    "t": 1000**4,
    "tb": 1000**4,
    "ti": 1024**4,
    "tib": 1024**4,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DURATION_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")


def parse_size(text: str | int, what: str = "size") -> int:
    """Return bytes for ``text`` ("10G" = 10**9, "10GiB" = 2**30, plain digits = bytes)."""
    if isinstance(text, bool):
        raise ConfigError(f"{what}: expected a size such as 10G or 512MiB, got {text!r}")
    if isinstance(text, int):
        if text < 0:
            raise ConfigError(f"{what}: a size cannot be negative, got {text}")
        return _bounded_size(text, text, what)
    match = _SIZE_RE.match(str(text))
    unit = match.group(2).lower() if match else None
    if not match or unit not in _SIZE_UNITS:
        raise ConfigError(f"{what}: expected a size such as 10G, 512MiB or 1048576, got {text!r}")
    return _bounded_size(float(match.group(1)) * _SIZE_UNITS[unit], text, what)


def _bounded_size(value: float, text: object, what: str) -> int:
    if not math.isfinite(value) or value > MAX_SIZE:
        raise ConfigError(f"{what}: size out of range (at most 8 EiB), got {str(text)[:40]!r}")
    return int(value)


def parse_size_or_percent(text: str | int, total: int, what: str = "size") -> int:
    """Return bytes for a size, or for a percentage ("15%") of ``total``."""
    raw = str(text).strip()
    if raw.endswith("%"):
        try:
            pct = float(raw[:-1])
        except ValueError:
            raise ConfigError(f"{what}: expected a percentage such as 15%, got {text!r}") from None
        if not 0 <= pct <= 100:
            raise ConfigError(f"{what}: a percentage must be between 0 and 100, got {text!r}")
        return int(total * pct / 100)
    return parse_size(text, what)


def parse_duration(text: str | int | float, what: str = "duration") -> float:
    """Return seconds for "30s", "15m", "12h", "7d", "2w" or a plain number of seconds."""
    if isinstance(text, (int, float)) and not isinstance(text, bool):
        if text < 0:
            raise ConfigError(f"{what}: a duration cannot be negative, got {text}")
        return _bounded_duration(float(text), text, what)
    match = _DURATION_RE.match(str(text))
    if not match:
        raise ConfigError(f"{what}: expected a duration such as 30s, 15m, 12h or 7d, got {text!r}")
    return _bounded_duration(
        float(match.group(1)) * _DURATION_UNITS[match.group(2) or "s"], text, what
    )


def _bounded_duration(value: float, text: object, what: str) -> float:
    if not math.isfinite(value) or value > MAX_DURATION:
        raise ConfigError(
            f"{what}: duration out of range (at most 100 years), got {str(text)[:40]!r}"
        )
    return value


def format_size(num_bytes: int | float) -> str:
    """Human-readable binary size: 1536 -> '1.5 KiB'."""
    value = float(num_bytes)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")
