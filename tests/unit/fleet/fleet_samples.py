"""Sample ``runnerkeep fleet-facts --json`` outputs and registered task results for the tests."""

from __future__ import annotations

import copy
import json
from typing import Any

GIB = 1024**3
MIB = 1024**2
NOW = 1_800_000_000.0


def facts(free_gib: float = 40.0, **changes: Any) -> dict[str, Any]:
    """A healthy 100 GiB runner; ``changes`` replace whole parts (``drain={...}``)."""
    base: dict[str, Any] = {
        "format": 1,
        "version": "0.1.0",
        "hostname": "runner",
        "time": NOW - 30,
        "state_dir": "/var/lib/runnerkeep",
        "disk": {"filesystems": [{"mount_point": "/", "size_bytes": 100 * GIB}]},
        "budget": {
            "path": "/var/cache/runnerkeep/images",
            "capacity_bytes": 100 * GIB,
            "capacity_inodes": 6_000_000,
            "free_bytes": int(free_gib * GIB),
            "free_inodes": 5_000_000,
            "cache_bytes": 2 * GIB,
            "cache_quota_bytes": 10 * GIB,
            "job_peak_bytes": 4 * GIB,
            "job_peak_inodes": 10_000,
            "job_peak_source": "p95",
            "history_jobs": 12,
            "warning_free_bytes": 13 * GIB,
            "critical_free_bytes": 9 * GIB,
            "emergency_free_bytes": 5 * GIB,
            "warning_free_inodes": 320_000,
            "critical_free_inodes": 310_000,
            "emergency_free_inodes": 300_000,
            "warnings": [],
            "error": None,
        },
        "watch": {"state": "ok", "since": NOW - 3600, "last_run": NOW - 60},
        "cache": {"dir": "/var/cache/runnerkeep/images", "entries": 3, "disk_bytes": 2 * GIB},
        "history": {
            "count": 12,
            "running": 0,
            "jobs": [
                {"start_time": NOW - i * 600, "peak_bytes": (i % 4 + 1) * GIB} for i in range(12)
            ],
        },
        "last_cleanup": {"time": NOW - 7200, "stage": "post", "bytes_freed": 3 * GIB},
        "corruption": {"corrupt_events": 0, "quarantined": 0, "last_time": None},
        "drain": None,
    }
    base.update(copy.deepcopy(changes))
    return base


def registered(host_facts: dict[str, Any]) -> dict[str, Any]:
    """What ansible.builtin.command registers for a successful fleet-facts run."""
    return {"rc": 0, "stdout": json.dumps(host_facts), "stderr": "", "changed": False}


UNREACHABLE = {
    "unreachable": True,
    "msg": "Failed to connect to the host via ssh: ssh: connect to host 10.0.0.9 port 22: "
    "Connection refused",
    "changed": False,
}
