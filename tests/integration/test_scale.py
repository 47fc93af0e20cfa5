"""The scale measurement (tools/scale.py, `nox -s scale`) in its 3-runner form, and provision.yml's
check-first fast path it relies on.

No timed assertions: the figures must be complete and sane (every phase ran, every host has its
remote CPU, the controller's CPU was counted), and a no-change provision run reports changed=0
on every host and skips the roles there. A host that drifted from what the last full run left
is not taken for converged: the full run follows and repairs it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from harness import REPO_ROOT
from harness.provision import provision

PHASES = (
    "provision_first",
    "provision_again",
    "maintain",
    "fleet_report",
    "cache_save",
    "cache_restore",
)
CHECK_TASK = "Check first whether the host is as the last full run left it"
TIMER_UNIT = "/etc/systemd/system/runnerkeep-cleanup.timer"


def results(recap: dict) -> int:
    """Task results a host made in a run (ok and skipped): the fast path makes a handful."""
    return recap["ok"] + recap["skipped"]


def recap(output: str) -> dict[str, dict[str, int]]:
    counts: dict[str, dict[str, int]] = {}
    for line in output.split("PLAY RECAP", 1)[-1].splitlines():
        name, sep, rest = line.partition(" : ")
        if sep:
            counts[name.strip()] = {
                k: int(v) for k, v in (p.split("=") for p in rest.split() if "=" in p)
            }
    return counts


def test_scale_measures_a_three_runner_fleet(tmp_path: Path) -> None:
    out = tmp_path / "scale.json"
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        str(REPO_ROOT / p) for p in ("module_utils", "cli", "tests")
    )
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tools" / "scale.py"), "--runners", "3", "--json", out],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=3600,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    result = json.loads(out.read_text())
    assert [r["n"] for r in result["runs"]] == [3]
    run = result["runs"][0]
    assert tuple(run["phases"]) == PHASES
    hosts = None
    for phase, fig in run["phases"].items():
        assert fig["rc"] == 0, phase
        assert fig["wall_s"] > 0 and fig["controller_cpu_s"] > 0, (phase, fig)
        assert len(fig["remote_cpu_s"]) == 3, (phase, fig["remote_cpu_s"])
        assert all(v > 0 for v in fig["remote_cpu_s"].values()), (phase, fig["remote_cpu_s"])
        assert set(fig["recap"]) == set(fig["remote_cpu_s"]), phase
        hosts = hosts or set(fig["recap"])
        assert set(fig["recap"]) == hosts, phase
    first, again = run["phases"]["provision_first"], run["phases"]["provision_again"]
    for host in hosts:
        assert first["recap"][host]["changed"] > 0, host
        assert again["recap"][host]["changed"] == 0, (host, again["recap"][host])
        assert again["recap"][host]["failed"] == 0
        # The fast path: the roles (about 75 tasks) are skipped on a converged host.
        assert results(again["recap"][host]) < results(first["recap"][host]) // 4, again["recap"][
            host
        ]
    # The no-change run costs less than the first, on the controller and on every host.
    assert again["controller_cpu_s"] < first["controller_cpu_s"]
    for host in hosts:
        assert again["remote_cpu_s"][host] < first["remote_cpu_s"][host], host
    assert run["idle_remote_cpu_s_per_host_per_s"] >= 0
    assert "target" in proc.stdout  # the table names each target and its figure


def test_a_drifted_host_gets_the_full_run_and_is_repaired(provisioned_fleet) -> None:
    """Converge, then change what the roles manage on one host behind their back: the check
    finds it, the roles run there (and only there) and put it back; the run after is fast."""
    assert provision(provisioned_fleet).returncode == 0
    drifted, others = provisioned_fleet.hosts[0], provisioned_fleet.hosts[1:]
    drifted.exec(f"chmod 664 {TIMER_UNIT} && systemctl disable --now runnerkeep-watch.timer")
    repair = provision(provisioned_fleet)
    assert repair.returncode == 0, repair.stdout[-4000:]
    counts = recap(repair.stdout)
    assert counts[drifted.name]["changed"] > 0, counts
    for host in others:
        assert counts[host.name]["changed"] == 0, counts
    assert drifted.exec(["stat", "-c", "%a", TIMER_UNIT]).stdout.strip() == "644"
    enabled = drifted.exec(["systemctl", "is-enabled", "runnerkeep-watch.timer"], check=False)
    assert enabled.stdout.strip() == "enabled"
    after = provision(provisioned_fleet)
    assert after.returncode == 0
    counts_after = recap(after.stdout)
    for host in provisioned_fleet.hosts:
        assert counts_after[host.name]["changed"] == 0, counts_after
        assert results(counts_after[host.name]) < results(counts[drifted.name]) // 4, counts_after


def test_check_mode_on_a_drifted_host_reports_and_keeps_the_stamp(provisioned_fleet) -> None:
    """--check writes nothing: not even the stamp a drifted host would lose in a real run."""
    assert provision(provisioned_fleet).returncode == 0
    host = provisioned_fleet.hosts[0]
    stamp = "/var/lib/runnerkeep/provision-state.json"
    before = host.exec(["sha256sum", stamp]).stdout
    host.exec(f"chmod 664 {TIMER_UNIT}")
    try:
        dry = provision(provisioned_fleet, check=True)
        assert dry.returncode == 0, dry.stdout[-4000:]
        assert recap(dry.stdout)[host.name]["changed"] > 0
        assert host.exec(["stat", "-c", "%a", TIMER_UNIT]).stdout.strip() == "664"
        assert host.exec(["sha256sum", stamp]).stdout == before
    finally:
        assert provision(provisioned_fleet).returncode == 0
    assert host.exec(["stat", "-c", "%a", TIMER_UNIT]).stdout.strip() == "644"
