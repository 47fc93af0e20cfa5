"""The host configuration file, ``/etc/runnerkeep/config.json``.

JSON because runner hosts may run Python 3.9 (no tomllib) and PyYAML is not in the standard
library; the Ansible roles render it with ``to_nice_json``. Each subsystem (cache, cleanup, disk)
owns one top-level section and its defaults; ``paths`` is shared.
"""

from __future__ import annotations

import copy
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
    """Read the config file; a missing default file means "all defaults", a bad one is an error."""
    chosen = config_path(path)
    try:
        with open(chosen, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError:
        if path or os.environ.get(CONFIG_ENV):
            raise ConfigError(
                f"config file {chosen} does not exist; create it or drop --config/${CONFIG_ENV}"
            ) from None
        data = {}
    except json.JSONDecodeError as exc:
        raise ConfigError(f"config file {chosen} is not valid JSON: {exc}") from None
    except OSError as exc:
        raise ConfigError(f"config file {chosen} cannot be read: {exc.strerror}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {chosen} must hold a JSON object at the top level")
    data.setdefault("paths", {})
    data["paths"] = merge_section(data, "paths", DEFAULT_PATHS, source=chosen)
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
