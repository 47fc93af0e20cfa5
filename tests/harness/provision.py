"""provision.yml on a harness fleet, with the variables a fleet of small test disks needs."""

from __future__ import annotations

import subprocess
from typing import Any

PROVISION = "playbooks/provision.yml"

# The harness gives each runner a 1 GiB cache disk; a real runner's 10 GiB job-peak floor
# cannot fit there, so the fleet's budget assumes small jobs (what a user sets in group_vars).
FLEET_VARS: dict[str, Any] = {
    "disk_monitor_settings": {
        "job_peak_floor": "100MiB",
        "job_peak_floor_inodes": 5000,
        "cache_quota_min": "128MiB",
    },
}


def provision(fleet, *extra_args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    """Run provision.yml on ``fleet`` (a harness.fleet.Fleet) with FLEET_VARS."""
    return fleet.run_playbook(PROVISION, *extra_args, extra_vars=FLEET_VARS, **kwargs)
