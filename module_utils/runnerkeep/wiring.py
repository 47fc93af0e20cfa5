"""How the subsystems reach each other: the one core module that imports cache/, cleanup/ and
disk/ together. The front doors (the CLI, the Ansible modules) take what they need from here
and pass it into the subsystem that needs it; cache/, cleanup/ and disk/ never import each
other (tools/structure_check.py checks it). The three things one needs of another:

- the cache's quota when ``cache.max_size`` is unset: the disk budget's (``cache_settings``);
- a cleanup stage's targets on the budget's filesystem: the disk budget's (``run_cleanup``);
- the cache's ``--make-room``: the post-build cleanup stage (``make_room``); the watch's
  emergency step: the emergency stage (the front door passes ``run_cleanup`` to
  ``disk.watch.run_watch``);
- the watch's cache scrub metrics: the scrub's summary in the store (``scrub_status``).
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from .cache import cache_config, scrub
from .cleanup import stages
from .cleanup.report import CleanupReport
from .disk.budget import cache_quota, cleanup_targets

# What ``--make-room`` runs when a save is short of space: (bytes needed, a path on the short
# filesystem) -> the post-build stage's report (cache.save.save_entry's ``make_room``).
MakeRoom = Callable[[Optional[int], Optional[str]], CleanupReport]


def cache_settings(config: dict[str, Any]) -> dict[str, Any]:
    """The ``cache`` section, its quota the disk budget's when ``cache.max_size`` is unset."""
    return cache_config.cache_settings(config, budget_quota=cache_quota)


def run_cleanup(stage: str, config: dict[str, Any], **options: Any) -> CleanupReport:
    """``cleanup.run_cleanup`` with the disk budget's targets (on a monitored host)."""
    return stages.run_cleanup(stage, config, budget_targets=cleanup_targets, **options)


def make_room(config: dict[str, Any]) -> MakeRoom:
    """The post-build cleanup a save runs on a filesystem that is short (``--make-room``),
    asked to free up to the bytes the save needs there."""

    def post_stage(needed_bytes: int | None, path: str | None) -> CleanupReport:
        return run_cleanup(
            "post",
            config,
            target_free_bytes=needed_bytes,
            paths=[path] if path else None,
            dry_run=False,
        )

    return post_stage


def scrub_status(config: dict[str, Any]) -> Callable[[float], dict[str, Any] | None]:
    """The cache scrub's summary at a time (``cache.scrub.read_scrub_status``: the oldest
    unverified blob's age then, the scrub's totals; None when the store was never scrubbed),
    for the watch's metrics. It only reads: the watch runs as root, the store is its owner's."""
    store_dir = cache_config.resolve_cache_dir(None, config)

    def status(now: float) -> dict[str, Any] | None:
        return scrub.read_scrub_status(store_dir, now)

    return status
