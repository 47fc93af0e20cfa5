"""The fleet cache fleet shared by test_fleet_cache_role.py and test_fleet_cache_faults.py.

- ``cache_fleet`` (session): two runners and a cache host, provisioned (provision.yml, then
  playbooks/fleet_cache.yml in the same run): ``rk-1`` pushes (push port, push user), ``rk-2``
  pulls (pull port, pull user). Returns the ``harness.fleet_cache.FleetCache``; its
  ``first_run`` is the playbook run's result. Started once for both modules (a provisioned fleet
  costs minutes); each test uses keys of its own.
- helpers: ``build_image`` (an image of random layers FROM scratch in a runner's own engine),
  ``runnerkeep_json`` (a CLI call on a runner with --json, its exit code and report).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
from harness.fleet import Fleet, RunnerHost
from harness.fleet_cache import FleetCache

# The cache host's registry storage (tmpfs): room for the tests' images, small enough to fill.
STORAGE_DISK = "384m"
# A budget the first push exceeds (the budget check's test), its metrics where node_exporter looks.
ROLE_VARS = {
    "fleet_cache_size_budget": "1M",
    "fleet_cache_metrics_dir": "/var/lib/prometheus/node-exporter",
}


@pytest.fixture(scope="session")
def cache_fleet(runner_image: str, request: pytest.FixtureRequest) -> Iterator[FleetCache]:
    keep = _keep(request.config)
    fleet = Fleet.start(
        2,
        name="rkfc",
        image=runner_image,
        keep=keep,
        cache_host=True,
        cache_host_disk=STORAGE_DISK,
    )
    try:
        tier = FleetCache.for_fleet(fleet, push_hosts=["rkfc-1"], timeout=5, role_vars=ROLE_VARS)
        result = tier.provision()
        assert result.returncode == 0, f"provisioning failed:\n{result.stdout[-4000:]}"
        tier.first_run = result  # type: ignore[attr-defined]
        yield tier
    finally:
        if keep:
            print(f"\n--keep-fleet: fleet {fleet.fleet_id} left running ({fleet.inventory})")
        else:
            fleet.stop()


def _keep(config: pytest.Config) -> bool:
    try:
        return bool(config.getoption("--keep-fleet"))
    except ValueError:
        return False


BUILD = r"""
set -e
work="$(mktemp -d)"
cd "$work"
i=0
for size in $2; do
    i=$((i + 1))
    head -c "$size" /dev/urandom > "layer$i.bin"
done
{ echo 'FROM scratch'; for f in layer*.bin; do echo "COPY $f /$f"; done; } > Dockerfile
docker build -q -t "$1" . >/dev/null
cd / && rm -rf "$work"
docker image inspect --format '{{.Id}}' "$1"
"""


def build_image(host: RunnerHost, tag: str, sizes: str = "2M 1M") -> str:
    """Build ``tag`` (layers of random bytes of ``sizes``, e.g. "2M 1M") in ``host``'s engine;
    returns its image ID."""
    return host.exec(["sh", "-c", BUILD, "build", tag, sizes], timeout=300).stdout.strip()


def image_id(host: RunnerHost, tag: str) -> str | None:
    proc = host.exec(["docker", "image", "inspect", "--format", "{{.Id}}", tag], check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def runnerkeep_json(
    host: RunnerHost, *args: str, timeout: float = 300
) -> tuple[int, dict[str, Any]]:
    """``runnerkeep ARGS --json`` on ``host``: (exit code, report + ``_stderr``)."""
    proc = host.exec(["runnerkeep", *args, "--json"], check=False, timeout=timeout)
    try:
        report = json.loads(proc.stdout) if proc.stdout.strip() else {}
    except ValueError:
        report = {"_stdout": proc.stdout}
    report["_stderr"] = proc.stderr
    return proc.returncode, report


def new_key(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
