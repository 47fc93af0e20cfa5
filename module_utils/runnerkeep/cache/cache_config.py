"""The ``cache`` section of the config file (defaults, parsed values) and where the store lives.

Named cache_config, not settings: disk/disk_config.py is the disk section's, and a module
named after the function it exports (cache_settings) would be shadowed by it in the package.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Optional

from ..config import merge_section, paths_of
from ..errors import ConfigError
from ..units import parse_duration, parse_size

CACHE_DIR_ENV = "RUNNERKEEP_CACHE_DIR"

# The store's quota when ``cache.max_size`` is unset: config -> bytes, None for no quota. The
# front doors pass the disk budget's (disk.budget.cache_quota, runnerkeep.wiring); the cache
# does not import disk/.
BudgetQuota = Callable[[dict[str, Any]], Optional[int]]

CACHE_DEFAULTS: dict[str, Any] = {
    # Left free on every filesystem a save writes to (cache dir, Docker root).
    "reserve": "512MiB",
    # Save and the weekly prune keep the store under this many bytes. None: the disk budget's
    # cache quota on a monitored host (config has a `disk` section), else no quota.
    "max_size": None,
    # Entries not used (restored or saved) for this long are pruned (None: keep).
    "max_age": None,
    # Quarantined files are kept this long for inspection, then pruned.
    "quarantine_retention": "7d",
    # Threads hashing blobs in verify (the machine has 2 cores; hashlib releases the GIL).
    "verify_workers": 2,
    # The scrub (cache verify --max-duration, the role's nightly timer) re-reads every blob at
    # least this often.
    "scrub_period": "7d",
    # The cache service's socket: CI jobs that cannot write the store go through it.
    "service_socket": "/run/runnerkeep/cache.sock",
    # HMAC key of the entries (readable by the store's owner only); absent: entries unsigned.
    "key_file": "/etc/runnerkeep/cache.key",
    # The longest a job's import or export through the service may take (it is also cut after
    # a minute without a byte): a job cannot hold the store's locks for longer.
    "transfer_deadline": "2h",
    # The fleet cache tier (remote/remote_config.py): {url, credentials_file, ca_file, push,
    # timeout, allow_http}; None or no url: no remote.
    "remote": None,
}


def cache_settings(
    config: dict[str, Any], budget_quota: BudgetQuota | None = None
) -> dict[str, Any]:
    """The merged ``cache`` section with sizes and durations parsed; without ``max_size`` the
    quota is ``budget_quota(config)`` (None given: no quota)."""
    section = merge_section(config, "cache", CACHE_DEFAULTS)
    if section["max_size"] in (None, ""):
        max_size = budget_quota(config) if budget_quota is not None else None
        max_size_source = "disk budget"
        if max_size is None:
            max_size_source = "none"
    else:
        max_size = parse_size(section["max_size"], "cache.max_size")
        max_size_source = "config"
    return {
        "reserve": parse_size(section["reserve"], "cache.reserve"),
        "max_size": max_size,
        "max_size_source": max_size_source,
        "max_age": None
        if section["max_age"] in (None, "")
        else parse_duration(section["max_age"], "cache.max_age"),
        "quarantine_retention": parse_duration(
            section["quarantine_retention"], "cache.quarantine_retention"
        ),
        "verify_workers": _workers(section["verify_workers"]),
        "scrub_period": _period(section["scrub_period"]),
        "transfer_deadline": parse_duration(
            section["transfer_deadline"], "cache.transfer_deadline"
        ),
        **access_settings(config),
    }


def access_settings(config: dict[str, Any]) -> dict[str, Any]:
    """``key_file`` and ``service_socket``: what opening the store or reaching the service
    needs, without ``cache_settings``' quota (which may measure the disk budget)."""
    section = merge_section(config, "cache", CACHE_DEFAULTS)
    return {
        "service_socket": section["service_socket"] or None,
        "key_file": section["key_file"] or None,
    }


def _workers(value: Any) -> int:
    """A thread count: an integer 1..64 (the JSON number, not a string or a float)."""
    if type(value) is not int or not 1 <= value <= 64:
        raise ConfigError(f"cache.verify_workers: expected an integer from 1 to 64, got {value!r}")
    return value


def _period(value: Any) -> float:
    """The scrub period: a duration above 0 (every blob re-read within it)."""
    seconds = parse_duration(value, "cache.scrub_period")
    if seconds <= 0:
        raise ConfigError(f"cache.scrub_period: expected a duration above 0, got {value!r}")
    return seconds


def resolve_cache_dir(explicit: str | None, config: dict[str, Any]) -> str:
    """``--dir`` > ``$RUNNERKEEP_CACHE_DIR`` > config ``paths.cache_dir``."""
    return explicit or os.environ.get(CACHE_DIR_ENV) or paths_of(config)["cache_dir"]
