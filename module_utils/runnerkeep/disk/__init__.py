"""Disk budget, job peaks, report and watch (monitoring + alerts + emergency cleanup).

Public entry points (the CLI, the Ansible modules, cleanup and cache import these):

- ``usage_report.disk_report(config)``: filesystems, Docker usage by kind, cache usage, largest
  dirs (``runnerkeep disk report``).
- ``disk_config.disk_settings(config)``: the ``disk`` config section over its defaults.
- ``history.job_start / job_end / read_history``: per-job disk peaks, bounded JSON lines.
- ``budget.current_budget(config) -> Budget``: cache quota, stage targets, watermarks.
- ``watch.run_watch(config)``: one watch cycle (metrics, alerts on change, emergency cleanup);
  ``metrics.WATCH_METRICS`` lists every metric it writes.
"""

from __future__ import annotations

from .budget import Budget, current_budget

__all__ = ["Budget", "current_budget"]
