"""What provision.yml schedules and installs on every runner, and the cache used on a runner.

The per-role suites test each role's behaviour in depth; this checks the fleet as a whole after
the one provision.yml run every fleet test shares.
"""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.integration

TIMERS = (
    "runnerkeep-cache-maintenance.timer",
    "runnerkeep-cleanup.timer",
    "runnerkeep-watch.timer",
)

# Two images sharing a base, built FROM scratch inside the runner's own engine (no registry).
BUILD = r"""
set -e
rm -rf /tmp/rk-build && mkdir -p /tmp/rk-build/base /tmp/rk-build/app
cd /tmp/rk-build/base && head -c 3M /dev/urandom > a.bin && head -c 2M /dev/urandom > b.bin
printf 'FROM scratch\nCOPY a.bin /a.bin\nCOPY b.bin /b.bin\n' > Dockerfile
docker build -q -t fleet/base:1 . >/dev/null
cd /tmp/rk-build/app && head -c 1M /dev/urandom > c.bin
printf 'FROM fleet/base:1\nCOPY c.bin /c.bin\n' > Dockerfile
docker build -q -t fleet/app:1 . >/dev/null
rm -rf /tmp/rk-build
"""


def test_timers_enabled_and_listed(provisioned_fleet):
    for host in provisioned_fleet.hosts:
        listed = host.exec("systemctl list-timers --all --no-pager").stdout
        for timer in TIMERS:
            enabled = host.exec(f"systemctl is-enabled {timer}", check=False).stdout.strip()
            assert enabled == "enabled", f"{host.name}: {timer} is {enabled}"
            assert timer in listed, f"{host.name}: {timer} not in list-timers"


def test_config_fragments_are_read_by_the_cli(provisioned_fleet):
    host = provisioned_fleet.hosts[0]
    fragments = host.exec("ls /etc/runnerkeep/config.d").stdout.split()
    assert {"20-cache.json", "40-disk.json", "50-cleanup.json"} <= set(fragments)
    budget = json.loads(host.exec("runnerkeep disk budget --json").stdout)
    # The fleet's budget overrides (harness.provision.FLEET_VARS) reached the host.
    assert budget["job_peak_bytes"] == 100 * 1024**2


def test_cache_round_trip_on_a_runner(provisioned_fleet):
    host = provisioned_fleet.hosts[1]
    host.exec(BUILD, timeout=300)
    saved = host.exec("runnerkeep cache save --key fleet-test fleet/base:1 fleet/app:1 --json")
    assert json.loads(saved.stdout)["result"] == "saved"
    host.exec("docker rmi -f fleet/app:1 fleet/base:1")
    restored = host.exec("runnerkeep cache restore --key fleet-test", check=False)
    assert restored.returncode == 0, restored.stderr
    images = host.exec("docker image ls --format '{{.Repository}}:{{.Tag}}'").stdout.split()
    assert {"fleet/base:1", "fleet/app:1"} <= set(images)
    missing = host.exec("runnerkeep cache restore --key never-saved", check=False)
    assert missing.returncode == 3


def test_weekly_cache_maintenance_runs(provisioned_fleet):
    """What the timer starts: verify, then prune with the config's quota; the unit succeeds."""
    host = provisioned_fleet.hosts[1]
    run = host.exec("systemctl start runnerkeep-cache-maintenance.service", check=False)
    assert run.returncode == 0, host.exec(
        "journalctl -u runnerkeep-cache-maintenance --no-pager | tail -20", check=False
    ).stdout
    result = host.exec(
        "systemctl show -p Result --value runnerkeep-cache-maintenance.service"
    ).stdout.strip()
    assert result == "success"
