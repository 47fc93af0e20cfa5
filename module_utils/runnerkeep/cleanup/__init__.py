"""Staged disk cleanup: pre-build, post-build and emergency stages with per-filesystem targets.

Public API::

    from runnerkeep.cleanup import run_cleanup, CleanupReport
    report = run_cleanup("post", config, target_free_bytes="20%", dry_run=True)
    report.as_dict()

Front doors call ``runnerkeep.wiring.run_cleanup``: the same, with the disk budget's targets
handed in as ``budget_targets`` (cleanup does not import disk/). Also here: the CI job lock
(``take_job_lock``, ``release_job_lock``, ``job_lock``, ``active_jobs``; the job record itself
is ``runnerkeep.jobs``) and ``list_cleaners``. See ``stages.py`` for the engine, ``walk.py``
for the safe walker, ``catalog.py`` for the built-in cleaners and ``docker_cleaners.py`` for
Docker.
"""

from __future__ import annotations

from .docker_cleaners import record_image_use
from .lock import (
    active_jobs,
    check_job_lock,
    job_lock,
    release_job_lock,
    take_job_lock,
    wait_for_jobs,
)
from .report import CleanerReport, CleanupReport
from .stages import cleanup_section, list_cleaners, run_cleanup

__all__ = [
    "CleanerReport",
    "CleanupReport",
    "active_jobs",
    "check_job_lock",
    "cleanup_section",
    "job_lock",
    "list_cleaners",
    "record_image_use",
    "release_job_lock",
    "run_cleanup",
    "take_job_lock",
    "wait_for_jobs",
]
