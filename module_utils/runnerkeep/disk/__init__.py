"""Disk budget, job peaks, report and watch (monitoring + alerts + emergency cleanup).

Public entry points (the CLI, the Ansible modules and ``runnerkeep.wiring`` import these;
cache/ and cleanup/ never do: what they need of the budget is handed to them):

- ``usage_report.disk_report(config)``: filesystems, Docker usage by kind, cache usage, largest
  dirs (``runnerkeep disk report``).
- ``disk_config.disk_settings(config)``: the ``disk`` config section over its defaults.
- ``history.job_start / job_end / read_history``: per-job disk peaks, bounded JSON lines.
- ``budget.current_budget(config) -> Budget``: cache quota, stage targets, watermarks;
  ``budget.cache_quota`` and ``budget.cleanup_targets``: what the cache and a cleanup stage
  read of it (None where no budget applies).
- ``watch.run_watch(config, cleanup_func=...)``: one watch cycle (metrics, alerts on change,
  emergency cleanup through the ``run_cleanup`` it is given);
  ``metrics.WATCH_METRICS`` lists every metric it writes.
"""

from __future__ import annotations

from .budget import Budget, current_budget

__all__ = ["Budget", "current_budget"]
