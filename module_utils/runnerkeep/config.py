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
from typing import Any

from .errors import ConfigError

DEFAULT_CONFIG_PATH = "/etc/runnerkeep/config.json"
CONFIG_ENV = "RUNNERKEEP_CONFIG"

DEFAULT_PATHS = {
    "cache_dir": "/var/cache/runnerkeep/images",
    "state_dir": "/var/lib/runnerkeep",
    "log_dir": "/var/log/runnerkeep",
}


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
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        if required:
            raise ConfigError(
                f"config file {path} does not exist; create it or drop --config/${CONFIG_ENV}"
            ) from None
        return {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a JSON object at the top level")
    return data


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
