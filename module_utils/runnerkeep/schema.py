"""The one typed schema of the config file: every section, every key, what it must hold.

``load_config`` checks each file against it as it reads it, so a wrong value fails at once with
the file, the dotted key and what is expected, instead of deep inside a cleanup or a watch
cycle (or never, when ``"false"`` is silently truthy). The Ansible modules check the options
that override config keys with ``check_option``, against the same entries.

The leaf types reuse the parsers of ``units`` (so a value the schema accepts is one the
subsystems can parse) and add what the parsers let through: booleans that are strings,
NaN/Infinity, numbers too large to mean anything, relative paths, URLs without a host.

The keys mirror the subsystems' defaults (``CACHE_DEFAULTS``, ``DISK_DEFAULTS``, the cleanup
``SECTION_DEFAULTS`` and ``CLEANER_KEYS``, ``DEFAULT_PATHS``); a unit test keeps them equal. This
module imports none of them: the config loader imports it, and the subsystems import the loader.
"""

from __future__ import annotations

import math
import os
import re
from typing import Any
from urllib.parse import urlsplit

from .errors import ConfigError
from .units import MAX_DURATION, MAX_SIZE, parse_duration, parse_size

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_DIGITS = re.compile(r"^\s*\d{1,19}\s*$")


class Invalid(Exception):
    """A value does not fit; ``ConfigError`` is built from it once the source is known."""

    def __init__(self, key: str, what: str, got: str):
        super().__init__(f"{key}: expected {what}, got {got}")
        self.key, self.what, self.got = key, what, got


def describe(value: Any) -> str:
    """A short, safe rendering of a value for an error line (never a whole nested structure)."""
    if isinstance(value, dict):
        return "a JSON object"
    if isinstance(value, (list, tuple)):
        return f"a list of {len(value)} item(s)"
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class Type:
    """A leaf type: ``what`` completes "expected ...", ``ok`` says whether a value fits."""

    what = "a value"

    def check(self, value: Any, key: str) -> None:
        if not self.ok(value):
            raise Invalid(key, self.what, self.got(value))

    def ok(self, value: Any) -> bool:
        raise NotImplementedError

    def got(self, value: Any) -> str:
        return describe(value)


class Bool(Type):
    what = "true or false (a JSON boolean, not a string)"

    def ok(self, value: Any) -> bool:
        return isinstance(value, bool)


class Int(Type):
    def __init__(self, minimum: int, maximum: int):
        self.minimum, self.maximum = minimum, maximum
        self.what = f"a whole number from {minimum} to {maximum}"

    def ok(self, value: Any) -> bool:
        return _is_int(value) and self.minimum <= value <= self.maximum


class Number(Type):
    """A finite number in a range; ``above`` excludes the lower bound."""

    def __init__(self, minimum: float, maximum: float, above: bool = False):
        self.minimum, self.maximum, self.above = minimum, maximum, above
        low = f"above {minimum:g}" if above else f"from {minimum:g}"
        self.what = f"a number {low} to {maximum:g}"

    def ok(self, value: Any) -> bool:
        if not _is_number(value) or not self.minimum <= value <= self.maximum:
            return False
        return not (self.above and value == self.minimum)


class Size(Type):
    what = "a size such as 20G, 512MiB or a whole number of bytes"

    def ok(self, value: Any) -> bool:
        return _size_bytes(value) is not None


class SizeOrPercent(Type):
    what = "a size such as 20G or a percentage from 0% to 100% such as 15%"

    def ok(self, value: Any) -> bool:
        if _is_percent_text(value):
            return _percent(value) is not None
        return _size_bytes(value) is not None


class CountOrPercent(Type):
    what = "a whole number such as 50000 or a percentage from 0% to 100% such as 5%"

    def ok(self, value: Any) -> bool:
        if _is_percent_text(value):
            return _percent(value) is not None
        if _is_int(value):
            return 0 <= value <= MAX_SIZE
        return isinstance(value, str) and bool(_DIGITS.match(value))


class Duration(Type):
    def __init__(self, positive: bool = False):
        self.positive = positive
        lead = "a duration above 0" if positive else "a duration"
        self.what = f"{lead} such as 30s, 15m, 12h, 7d or a number of seconds"

    def ok(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            return False
        if isinstance(value, (int, float)) and not _is_number(value):
            return False
        try:
            seconds = parse_duration(value)
        except (ConfigError, ValueError, OverflowError):
            return False
        if not math.isfinite(seconds) or not 0 <= seconds <= MAX_DURATION:
            return False
        return seconds > 0 or not self.positive


class AbsPath(Type):
    def __init__(self, glob: bool = False):
        self.what = "an absolute path or glob" if glob else "an absolute path"

    def ok(self, value: Any) -> bool:
        return _is_clean_text(value) and value.startswith("/")


class FileName(Type):
    what = "a file name without '/'"

    def ok(self, value: Any) -> bool:
        return _is_clean_text(value) and "/" not in value and value not in (".", "..")


class Text(Type):
    """A string; ``nonempty`` and ``no_slash`` for names, ``contains`` for key=value forms."""

    def __init__(self, what: str, nonempty: bool = True, no_slash: bool = False, contains=""):
        self.what, self.nonempty, self.no_slash, self.contains = what, nonempty, no_slash, contains

    def ok(self, value: Any) -> bool:
        if not isinstance(value, str) or "\x00" in value:
            return False
        if self.nonempty and not value.strip():
            return False
        if self.no_slash and "/" in value:
            return False
        return self.contains in value


class RelativePattern(Type):
    """A glob relative to a cleaner's root, one component per level (as ``check_pattern``)."""

    what = "a relative glob such as '*' or '*/*.gz' (no leading '/', no '.', '..' or '//')"

    def ok(self, value: Any) -> bool:
        if not _is_clean_text(value) or value.startswith("/"):
            return False
        return all(part not in ("", ".", "..") for part in value.split("/"))


class Enum(Type):
    def __init__(self, choices: tuple[str, ...]):
        self.choices = choices
        self.what = "one of " + ", ".join(choices)

    def ok(self, value: Any) -> bool:
        return isinstance(value, str) and value in self.choices


class HttpUrl(Type):
    what = "an http:// or https:// URL with a host"

    def ok(self, value: Any) -> bool:
        if not isinstance(value, str) or _CONTROL.search(value) or " " in value:
            return False
        try:
            parts = urlsplit(value)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            return False
        return parts.scheme in ("http", "https") and bool(parts.hostname)

    def got(self, value: Any) -> str:
        # A webhook URL may carry a token: show only where it points.
        if not isinstance(value, str):
            return describe(value)
        try:
            parts = urlsplit(value)
            host = parts.hostname or ""
        except ValueError:
            return "a string that is not a URL"
        if not parts.scheme:
            return "a string without a scheme"
        return f"'{parts.scheme}://{host}...'"


class Optional(Type):
    """``None`` (and ``""`` where the subsystem treats it as unset) or the inner type."""

    def __init__(self, inner: Type, empty_string: bool = False):
        self.inner, self.empty_string = inner, empty_string
        self.what = f"{inner.what}, or null"

    def check(self, value: Any, key: str) -> None:
        if value is None or (self.empty_string and value == ""):
            return
        try:
            self.inner.check(value, key)
        except Invalid as exc:
            raise Invalid(exc.key, self.what if exc.key == key else exc.what, exc.got) from None


class ListOf(Type):
    def __init__(self, item: Type):
        self.item = item
        self.what = f"a list, each item {item.what}"

    def check(self, value: Any, key: str) -> None:
        if not isinstance(value, list):
            raise Invalid(key, self.what, describe(value))
        for index, element in enumerate(value):
            self.item.check(element, f"{key}[{index}]")


class Object(Type):
    """A JSON object with known keys (each optional: the defaults fill the rest)."""

    def __init__(self, fields: dict[str, Type], what: str):
        self.fields, self.what = fields, what

    def check(self, value: Any, key: str) -> None:
        if not isinstance(value, dict):
            raise Invalid(key, self.what, describe(value))
        for name, element in value.items():
            where = _join(key, name)
            field = self.fields.get(name) if isinstance(name, str) else None
            if field is None:
                raise Invalid(
                    where, f"one of the keys {', '.join(sorted(self.fields))}", "an unknown key"
                )
            field.check(element, where)


class MapOf(Type):
    """A JSON object of user-chosen names, each holding the same kind of value."""

    def __init__(self, item: Type, what: str):
        self.item, self.what = item, what

    def check(self, value: Any, key: str) -> None:
        if not isinstance(value, dict):
            raise Invalid(key, self.what, describe(value))
        for name, element in value.items():
            if not _is_clean_text(name) or _CONTROL.search(name) or "/" in name:
                raise Invalid(key, "names without '/' or control characters", describe(name))
            if not name.strip():
                raise Invalid(key, "non-empty names", describe(name))
            self.item.check(element, _join(key, name))


def _join(key: str, name: Any) -> str:
    # A key is printed in a one-line error: anything unprintable is shown as its repr.
    if not isinstance(name, str) or _CONTROL.search(name) or len(name) > 60:
        name = describe(name)
    return f"{key}.{name}" if key else name


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return _is_int(value) or math.isfinite(value)


def _is_clean_text(value: Any) -> bool:
    """A non-empty string the OS can take as a path: no NUL, no lone surrogates but escapes."""
    if not isinstance(value, str) or not value or "\x00" in value:
        return False
    try:
        os.fsencode(value)
    except UnicodeError:
        return False
    return True


def _size_bytes(value: Any) -> int | None:
    if _is_int(value):
        return value if 0 <= value <= MAX_SIZE else None
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        parsed = parse_size(value)
    except (ConfigError, ValueError, OverflowError):
        return None
    return parsed if 0 <= parsed <= MAX_SIZE else None


def _is_percent_text(value: Any) -> bool:
    return isinstance(value, str) and value.strip().endswith("%")


def _percent(value: str) -> float | None:
    try:
        pct = float(value.strip()[:-1])
    except ValueError:
        return None
    return pct if math.isfinite(pct) and 0 <= pct <= 100 else None


STAGES = ("pre", "post", "emergency")
CLEANER_KINDS = (
    "files",
    "toolchains",
    "journald",
    "docker-containers",
    "docker-dangling-images",
    "docker-images",
    "docker-build-cache",
    "docker-volumes",
)
TOOLCHAIN_NAMES = (
    "android",
    "chromium",
    "codeql",
    "dotnet",
    "ghc",
    "ghcup",
    "hostedtoolcache",
    "julia",
    "powershell",
    "swift",
)

_FREE_TARGETS = ("emergency_free", "critical_free", "warning_free", "pre_target_free")
_FREE_TARGETS += ("post_target_free",)

PATHS = Object(
    {
        "cache_dir": AbsPath(),
        "state_dir": AbsPath(),
        "log_dir": AbsPath(),
        "spool_dir": AbsPath(),
    },
    "a JSON object (section paths)",
)

# The fleet cache tier (remote/remote_config.py checks the URL's form and the http rule).
REMOTE = Object(
    {
        "url": Optional(HttpUrl(), empty_string=True),
        "credentials_file": Optional(AbsPath(), empty_string=True),
        "ca_file": Optional(AbsPath(), empty_string=True),
        "push": Bool(),
        "timeout": Duration(positive=True),
        "allow_http": Bool(),
        "max_duration": Duration(positive=True),
    },
    "a JSON object (section cache.remote: url, credentials_file, ca_file, push, timeout, "
    "allow_http, max_duration)",
)

CACHE = Object(
    {
        "reserve": Size(),
        "max_size": Optional(Size(), empty_string=True),
        "max_age": Optional(Duration(), empty_string=True),
        "quarantine_retention": Duration(),
        "verify_workers": Int(1, 64),
        "scrub_period": Duration(positive=True),
        "service_socket": AbsPath(),
        "key_file": AbsPath(),
        "transfer_deadline": Duration(positive=True),
        "remote": Optional(REMOTE),
    },
    "a JSON object (section cache)",
)

STAGE_TARGET = Object(
    {"free": Optional(SizeOrPercent()), "inodes": Optional(CountOrPercent())},
    "a JSON object with free and inodes",
)

CLEANER = Object(
    {
        "kind": Enum(CLEANER_KINDS),
        "description": Text("a string", nonempty=False),
        "stages": ListOf(Enum(STAGES)),
        "cost": Int(0, 1_000_000),
        "enabled": Bool(),
        "roots": ListOf(AbsPath(glob=True)),
        "patterns": ListOf(RelativePattern()),
        "exclude": ListOf(Text("a file name glob such as '*.lock'")),
        "min_age": Duration(),
        "emergency_min_age": Optional(Duration()),
        "files_only": Bool(),
        "max_size": Size(),
        "items": ListOf(Enum(TOOLCHAIN_NAMES)),
        "keep": ListOf(Text("a glob such as 'Python/3.12*'")),
    },
    "a JSON object (a cleaner's settings)",
)

CLEANUP = Object(
    {
        "targets": Object(
            {stage: Optional(STAGE_TARGET) for stage in STAGES},
            "a JSON object with pre, post and emergency",
        ),
        "cleaners": MapOf(CLEANER, "a JSON object of cleaner name -> settings"),
        "allowed_mount_points": ListOf(AbsPath()),
        "protected_paths": ListOf(AbsPath(glob=True)),
        "protected_images": ListOf(Text("an image reference glob such as '*runner*'")),
        "docker_filters": ListOf(Text("a docker filter such as 'label=ci'", contains="=")),
        "cross_filesystems": Bool(),
        "swaps_file": AbsPath(),
        "lock_max_age": Duration(positive=True),
        "report_items_max": Int(1, 10_000_000),
    },
    "a JSON object (section cleanup)",
)

DISK = Object(
    {
        "path": Optional(AbsPath()),
        "docker_root": Optional(AbsPath()),
        "work_dirs": ListOf(AbsPath()),
        "extra_paths": ListOf(AbsPath()),
        "report_roots": Optional(ListOf(AbsPath())),
        "largest_dirs": Int(1, 10_000),
        "largest_dirs_depth": Int(1, 64),
        "history_max_jobs": Int(1, 1_000_000),
        "sample_interval": Duration(positive=True),
        "sampler_max_lifetime": Duration(positive=True),
        "peak_percentile": Number(0, 100, above=True),
        "min_history_jobs": Int(1, 1_000_000),
        "job_peak_floor": Size(),
        "job_peak_floor_inodes": CountOrPercent(),
        "reserve": SizeOrPercent(),
        "reserve_inodes": CountOrPercent(),
        "cache_share": Number(0, 100),
        "cache_quota_min": Size(),
        "hysteresis": SizeOrPercent(),
        "cache_quota": Optional(SizeOrPercent()),
        **{key: Optional(SizeOrPercent()) for key in _FREE_TARGETS},
        **{f"{key}_inodes": Optional(CountOrPercent()) for key in _FREE_TARGETS},
        "textfile_dir": AbsPath(),
        "metrics_file": FileName(),
        "watch_timeout": Duration(positive=True),
        "watch_docker": Bool(),
        "syslog": Bool(),
        "syslog_tag": Text("a syslog tag without '/'", no_slash=True),
        "webhook_url": Optional(HttpUrl(), empty_string=True),
        "webhook_url_file": Optional(AbsPath(), empty_string=True),
        "webhook_auth_header_file": Optional(AbsPath(), empty_string=True),
        "webhook_timeout": Duration(positive=True),
        "webhook_retries": Int(0, 100),
        "emergency_cleanup": Bool(),
        "emergency_force": Bool(),
        "emergency_cleanup_cooldown": Duration(),
    },
    "a JSON object (section disk)",
)

ADMISSION = Object(
    {
        "enabled": Bool(),
        "agent_unit": Optional(
            Text("a systemd service name such as gitlab-runner.service", no_slash=True)
        ),
        "settle_time": Duration(),
        "deadline": Duration(positive=True),
        "run_cleanup": Bool(),
        "max_drained": Optional(Int(0, 1_000_000)),
        "fleet_drained": Int(0, 1_000_000),
        "socket": AbsPath(),
    },
    "a JSON object (section admission)",
)

SECTIONS: dict[str, Object] = {
    "paths": PATHS,
    "cache": CACHE,
    "cleanup": CLEANUP,
    "disk": DISK,
    "admission": ADMISSION,
}

CONFIG = Object(
    {name: Optional(section) for name, section in SECTIONS.items()},
    "a JSON object with the sections " + ", ".join(sorted(SECTIONS)),
)


def validate_config(data: dict[str, Any], source: str) -> None:
    """Check a whole config, or one file of it (every key is optional); ConfigError names
    ``source``, the dotted key and what is expected."""
    try:
        CONFIG.check(data, "")
    except Invalid as exc:
        raise ConfigError(_message(source, exc)) from None


def check_option(section: str, key: str, value: Any, source: str) -> Any:
    """Check one value for ``<section>.<key>`` (``key`` may be dotted: ``targets.pre.free``,
    ``cleaners.tmp.min_age``) and return it unchanged. Unknown sections or keys are a
    programming error (KeyError): callers name keys of this schema."""
    node: Type = SECTIONS[section]
    for part in key.split("."):
        node = _child(node, part)
    try:
        node.check(value, f"{section}.{key}")
    except Invalid as exc:
        raise ConfigError(_message(source, exc)) from None
    return value


def _child(node: Type, part: str) -> Type:
    if isinstance(node, Optional):
        node = node.inner
    if isinstance(node, Object):
        return node.fields[part]
    if isinstance(node, MapOf):
        return node.item
    raise KeyError(part)


def _message(source: str, exc: Invalid) -> str:
    key = exc.key or "top level"
    return f"{source}: {key}: expected {exc.what}, got {exc.got}"
