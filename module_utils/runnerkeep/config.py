"""The host configuration file, ``/etc/runnerkeep/config.json``.

JSON because runner hosts may run Python 3.9 (no tomllib) and PyYAML is not in the standard
library; the Ansible roles render it with ``to_nice_json``. Each subsystem (cache, cleanup, disk)
owns one top-level section and its defaults; ``paths`` is shared.

Fragments in ``config.d/*.json`` beside the file are read after it in name order and override it
key by key within each section, so every role can own its fragment instead of sharing one file.
"""

from __future__ import annotations

import copy
import glob
import json
import os
import re
import stat
from typing import Any

from .errors import ConfigError
from .schema import validate_config

DEFAULT_CONFIG_PATH = "/etc/runnerkeep/config.json"
CONFIG_ENV = "RUNNERKEEP_CONFIG"

# A config is a few kilobytes; these bound what a damaged or hostile file can cost.
MAX_CONFIG_BYTES = 1 << 20
MAX_DEPTH = 32
MAX_INT_DIGITS = 30

DEFAULT_PATHS = {
    "cache_dir": "/var/cache/runnerkeep/images",
    "state_dir": "/var/lib/runnerkeep",
    "log_dir": "/var/log/runnerkeep",
    # Where job hooks running as the CI user leave their records; root reads them with the
    # safe readers and never trusts what they claim (see docs/threat-model.md).
    "spool_dir": "/var/lib/runnerkeep/spool",
}


def paths_of(config: dict[str, Any]) -> dict[str, Any]:
    """The ``paths`` section over ``DEFAULT_PATHS``, an empty value counting as unset
    (``load_config`` merged the defaults in already; a config built in code may lack some)."""
    given = {key: value for key, value in (config.get("paths") or {}).items() if value}
    return {**DEFAULT_PATHS, **given}


def state_dir_of(config: dict[str, Any]) -> str:
    """``paths.state_dir``: root's own state (job locks, disk history, events, watch state)."""
    return paths_of(config)["state_dir"]


def config_path(explicit: str | None = None) -> str:
    """The config file to read: ``--config``, else ``$RUNNERKEEP_CONFIG``, else the default."""
    return explicit or os.environ.get(CONFIG_ENV) or DEFAULT_CONFIG_PATH


def load_config(path: str | None = None) -> dict[str, Any]:
    """Read the config file and its fragments; a missing default file means "all defaults"."""
    chosen = config_path(path)
    data = _read_json_object(chosen, required=bool(path or os.environ.get(CONFIG_ENV)))
    fragment_dir = os.path.join(os.path.dirname(os.path.abspath(chosen)), "config.d")
    for fragment in sorted(glob.glob(os.path.join(fragment_dir, "*.json"))):
        for section, value in _read_json_object(fragment, required=True).items():
            if isinstance(value, dict) and isinstance(data.get(section), dict):
                data[section] = {**data[section], **value}
            else:
                data[section] = value
    data["paths"] = merge_section(data, "paths", DEFAULT_PATHS, source=chosen)
    return data


def _read_json_object(path: str, required: bool) -> dict[str, Any]:
    """One config file, parsed and checked against the schema; ``{}`` for an absent optional one."""
    raw = _read_bounded(path, required)
    if raw is None:
        return {}
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(
            f"config file {path} is not UTF-8 text (invalid byte at offset {exc.start}); "
            "expected UTF-8 JSON"
        ) from None
    text = text[1:] if text.startswith("\ufeff") else text
    _check_nesting(text, path)
    try:
        data = json.loads(text, parse_int=_bounded_int)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    except RecursionError:
        raise ConfigError(
            f"config file {path} is nested too deeply; expected at most {MAX_DEPTH} levels"
        ) from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object at the top level")
    validate_config(data, path)
    return data


def _read_bounded(path: str, required: bool) -> bytes | None:
    """The file's bytes, or None when it is absent and optional.

    O_NONBLOCK so that opening a FIFO does not wait for a writer; then only a regular file of
    at most MAX_CONFIG_BYTES is read (a FIFO, /dev/zero or a device would hang or never end).
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        if required:
            raise ConfigError(
                f"config file {path} does not exist; create it or drop --config/${CONFIG_ENV}"
            ) from None
        return None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(
                f"config file {path} is {_file_kind(info.st_mode)}; expected a regular JSON file"
            )
        chunks = []
        left = MAX_CONFIG_BYTES + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(
            f"config file {path} is larger than {MAX_CONFIG_BYTES} bytes; "
            "expected a small JSON file"
        )
    return raw


def _file_kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
    ):
        if test(mode):
            return name
    return "not a regular file"


# A backslash and the character after it (so an escaped quote is skipped), or a quote or bracket.
_STRUCTURE = re.compile(r'\\.|["\[\]{}]', re.DOTALL)


def _check_nesting(text: str, path: str) -> None:
    """Refuse absurd nesting before parsing (the parser recurses once per level)."""
    depth = 0
    in_string = False
    for match in _STRUCTURE.finditer(text):
        token = match.group()
        if token == '"':
            in_string = not in_string
        elif in_string or token[0] == "\\":
            continue
        elif token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"config file {path} is nested too deeply; expected at most {MAX_DEPTH} levels"
                )
        else:
            depth -= 1


class _HugeNumber:
    """Stands in for an integer literal too long to be any setting; no schema type accepts it."""

    def __init__(self, digits: int):
        self.digits = digits

    def __repr__(self) -> str:
        return f"a number of {self.digits} digits"


def _bounded_int(text: str) -> Any:
    # Python 3.9 converts any length, in quadratic time: a megabyte of digits takes seconds.
    if len(text.lstrip("-")) > MAX_INT_DIGITS:
        return _HugeNumber(len(text.lstrip("-")))
    return int(text)


def merge_section(
    config: dict[str, Any], name: str, defaults: dict[str, Any], source: str = "config"
) -> dict[str, Any]:
    """Defaults overlaid with ``config[name]``; unknown keys are an error naming the key."""
    given = config.get(name) or {}
    if not isinstance(given, dict):
        raise ConfigError(f"{source}: section '{name}' must be a JSON object")
    unknown = sorted(set(given) - set(defaults))
    if unknown:
        raise ConfigError(
            f"{source}: unknown key(s) in section '{name}': {', '.join(unknown)}; "
            f"known keys: {', '.join(sorted(defaults))}"
        )
    merged = copy.deepcopy(defaults)
    for key, value in given.items():
        if isinstance(merged.get(key), dict) and isinstance(value, dict):
            merged[key] = {**merged[key], **value}
        else:
            merged[key] = value
    return merged
