"""The ``disk`` section of the runnerkeep config: defaults, and typed access to its values."""

from __future__ import annotations

import os
from typing import Any

from ..config import merge_section, paths_of
from ..errors import ConfigError
from ..units import parse_duration, parse_size

DISK_DEFAULTS: dict[str, Any] = {
    # The filesystem the budget is about (where jobs write and the cache lives);
    # default: the filesystem of paths.cache_dir.
    "path": None,
    # Docker's data root; default: ask the engine (``docker info``), else /var/lib/docker.
    "docker_root": None,
    # Runner work directories (GitHub Actions _work, GitLab builds dir).
    "work_dirs": [],
    # Extra paths whose filesystems the report and the watch include.
    "extra_paths": [],
    # Roots searched for the largest directories; default: work_dirs and /tmp.
    "report_roots": None,
    "largest_dirs": 10,
    "largest_dirs_depth": 2,
    # Job peaks.
    "history_max_jobs": 500,
    "sample_interval": "5s",
    "sampler_max_lifetime": "6h",
    # Budget arithmetic.
    "peak_percentile": 95,
    "min_history_jobs": 10,
    "job_peak_floor": "10GiB",
    "job_peak_floor_inodes": 100000,
    "reserve": "5%",
    "reserve_inodes": "5%",
    "cache_share": 50,
    "cache_quota_min": "1GiB",
    "hysteresis": "1%",
    # Explicit overrides (size or percent of capacity; inodes: count or percent).
    "cache_quota": None,
    "pre_target_free": None,
    "post_target_free": None,
    "warning_free": None,
    "critical_free": None,
    "emergency_free": None,
    "pre_target_free_inodes": None,
    "post_target_free_inodes": None,
    "warning_free_inodes": None,
    "critical_free_inodes": None,
    "emergency_free_inodes": None,
    # Watch.
    "textfile_dir": "/var/lib/prometheus/node-exporter",
    "metrics_file": "runnerkeep_disk.prom",
    "watch_timeout": "45s",
    "watch_docker": True,
    "syslog": True,
    "syslog_tag": "runnerkeep",
    "webhook_url": None,
    # A file (root-only) holding the webhook URL, so the secret stays out of config fragments.
    "webhook_url_file": None,
    # A file (root-only) holding the webhook request's auth header (disk/alerts.py).
    "webhook_auth_header_file": None,
    "webhook_timeout": "5s",
    "webhook_retries": 2,
    "emergency_cleanup": True,
    "emergency_force": False,
    "emergency_cleanup_cooldown": "5m",
}


def disk_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The ``disk`` section merged over its defaults (unknown keys are a ConfigError)."""
    settings = merge_section(config, "disk", DISK_DEFAULTS)
    for key in ("work_dirs", "extra_paths"):
        if not isinstance(settings[key], list):
            raise ConfigError(f"disk.{key}: expected a list of paths, got {settings[key]!r}")
    if settings["report_roots"] is not None and not isinstance(settings["report_roots"], list):
        raise ConfigError(
            f"disk.report_roots: expected a list of paths, got {settings['report_roots']!r}"
        )
    return settings


def budget_path(config: dict[str, Any]) -> str:
    settings = disk_settings(config)
    return settings["path"] or paths_of(config)["cache_dir"]


def as_int(value: Any, what: str, minimum: int = 0) -> int:
    if isinstance(value, bool):
        raise ConfigError(f"{what}: expected a whole number, got {value!r}")
    try:
        number = int(value)
    except (TypeError, ValueError):
        raise ConfigError(f"{what}: expected a whole number, got {value!r}") from None
    if number < minimum:
        raise ConfigError(f"{what}: must be at least {minimum}, got {number}")
    return number


def seconds(settings: dict[str, Any], key: str) -> float:
    return parse_duration(settings[key], f"disk.{key}")


def size(settings: dict[str, Any], key: str) -> int:
    return parse_size(settings[key], f"disk.{key}")


def expand(path: str) -> str:
    return os.path.abspath(os.path.expanduser(path))
