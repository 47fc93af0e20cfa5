"""Admission control on a runner container: a job that cannot fit fails fast and drains the
runner, the agent's unit stops after the job ends, freeing space brings it back; a job that
fits only after the emergency stage runs; an operator drains and undrains with
playbooks/drain.yml, and the watch leaves that drain alone.

The real runner agents (GitHub's actions-runner, gitlab-runner) cannot be downloaded here: a
small systemd service (``rk-fake-agent.service``, a sleep) stands in for the agent's unit, and
a shell process stands in for the agent's worker: it runs the real job-started hook (installed
by runner_maintenance) as its child, as the CI user, so the hook's ``$PPID`` lives as long as
the "job", then the real job-completed hook when the test ends the job.

The job filesystem is a 400 MiB tmpfs at /mnt/ci (``disk.path``), so filling it is cheap; the
fleet's small-disk budget (100 MiB job peak floor, 5% reserve) makes a job need 120 MiB free
there.
"""

from __future__ import annotations

import json
import time

import pytest
from harness.fleet import Fleet
from harness.provision import FLEET_VARS, PROVISION

pytestmark = pytest.mark.integration

JOB_USER = "runner"
CI = "/mnt/ci"
AGENT = "rk-fake-agent.service"
DRAIN = "/var/lib/runnerkeep/drain.json"
METRICS = "/var/lib/prometheus/node-exporter/runnerkeep_disk.prom"
HOOKS = "/usr/local/lib/runnerkeep/hooks"
WAIT = 180  # seconds any one step may take before the test gives up (not a speed target)

AGENT_UNIT = """\
[Unit]
Description=stands in for the CI runner agent (actions.runner.*.service, gitlab-runner.service)

[Service]
ExecStart=/bin/sleep infinity
"""

# The agent's worker for job $1 (run as the CI user): the job-started hook as its child, alive
# until /tmp/job-$1.end appears (bounded), then the job-completed hook.
WORKER = f"""\
#!/bin/sh
n=$1
export GITHUB_RUN_ID=$n GITHUB_RUN_ATTEMPT=1 GITHUB_JOB=build
{HOOKS}/github-job-started.sh >/tmp/job-$n.out 2>&1
echo $? >/tmp/job-$n.rc
i=0
while [ ! -e /tmp/job-$n.end ] && [ $i -lt 2400 ]; do sleep 0.25; i=$((i+1)); done
{HOOKS}/github-job-completed.sh >/tmp/job-$n.completed 2>&1
echo done >/tmp/job-$n.done
"""

PROVISION_VARS = {
    **FLEET_VARS,
    "disk_monitor_settings": {**FLEET_VARS["disk_monitor_settings"], "path": CI},
    "runner_maintenance_agent_unit": AGENT,
    # Settle time 0: the first watch cycle in ok brings the runner back (the wait itself is
    # covered by tests/unit; here what matters is that the watch does it).
    "runner_maintenance_admission_settle_time": "0s",
    "runner_maintenance_cleanup": {
        "cleaners": {
            "ci-junk": {
                "kind": "files",
                "roots": [f"{CI}/junk"],
                "stages": ["emergency"],
                "min_age": "1d",
                "cost": 5,
            }
        }
    },
}


@pytest.fixture(scope="module")
def admission_fleet(runner_image):
    fleet = Fleet.start(1, name="rkad", image=runner_image, extra_tmpfs={CI: "400m"})
    try:
        host = fleet.hosts[0]
        result = fleet.run_playbook(PROVISION, extra_vars=PROVISION_VARS, quiet=True)
        assert result.returncode == 0, result.stdout[-4000:]
        host.exec(f"id {JOB_USER} >/dev/null 2>&1 || useradd -m -g runner -s /bin/sh {JOB_USER}")
        # Only the test's own watch cycles and cleanups run.
        host.exec("systemctl stop runnerkeep-watch.timer runnerkeep-cleanup.timer")
        host.exec(f"cat > /etc/systemd/system/{AGENT}", input=AGENT_UNIT)
        host.exec(f"systemctl daemon-reload && systemctl start {AGENT}")
        host.exec(
            "cat > /usr/local/bin/rk-worker && chmod 0755 /usr/local/bin/rk-worker", input=WORKER
        )
        yield fleet
    finally:
        fleet.stop()


@pytest.fixture(scope="module")
def runner(admission_fleet):
    return admission_fleet.hosts[0]


def wait_for(host, path: str) -> None:
    end = time.monotonic() + WAIT
    while host.exec(f"test -e {path}", check=False).returncode != 0:
        assert time.monotonic() < end, f"{path} did not appear within {WAIT} s"
        time.sleep(0.5)


def start_job(host, n: int) -> tuple[int, str]:
    """Start job ``n``; (the job-started hook's exit code, its output) once the hook is done,
    while the job itself goes on."""
    host.exec(["su", JOB_USER, "-s", "/bin/sh", "-c", f"nohup rk-worker {n} >/dev/null 2>&1 &"])
    wait_for(host, f"/tmp/job-{n}.rc")
    assert host.exec(f"test -e /tmp/job-{n}.done", check=False).returncode != 0  # still running
    rc = int(host.exec(f"cat /tmp/job-{n}.rc").stdout.strip())
    return rc, host.exec(f"cat /tmp/job-{n}.out").stdout


def end_job(host, n: int) -> None:
    host.exec(f"touch /tmp/job-{n}.end")
    wait_for(host, f"/tmp/job-{n}.done")


def watch(host) -> None:
    run = host.exec("systemctl start runnerkeep-watch.service", check=False, timeout=WAIT)
    assert run.returncode == 0, host.exec(
        "journalctl -u runnerkeep-watch --no-pager | tail -30", check=False
    ).stdout


def agent_state(host) -> str:
    return host.exec(f"systemctl is-active {AGENT}", check=False).stdout.strip()


def drain_record(host) -> dict | None:
    text = host.exec(f"cat {DRAIN}", check=False).stdout
    return json.loads(text) if text else None


def drained_metric(host) -> list[str]:
    return [
        line
        for line in host.exec(f"cat {METRICS}").stdout.splitlines()
        if line.startswith("runnerkeep_runner_drained{")
    ]


def fill(host, mib: int) -> None:
    host.exec(f"dd if=/dev/zero of={CI}/filler bs=1M count={mib} status=none")


def test_the_role_installs_the_admission_service(runner):
    assert runner.exec("systemctl is-active runnerkeep-admission.socket").stdout.strip() == "active"
    config = json.loads(runner.exec("cat /etc/runnerkeep/config.d/55-admission.json").stdout)
    assert config["admission"]["agent_unit"] == AGENT
    assert config["admission"]["max_drained"] == 1 and config["admission"]["fleet_drained"] == 0
    listing = runner.exec("stat -c '%a %U %G' /run/runnerkeep/admission.sock").stdout.split()
    assert listing == ["660", "root", "runner"]


def test_a_job_that_fits_only_after_the_emergency_stage_runs(runner):
    fill(runner, 250)
    runner.exec(
        f"mkdir -p {CI}/junk && for i in $(seq 1 100); do "
        f"dd if=/dev/zero of={CI}/junk/f$i bs=1M count=1 status=none; done && "
        f"touch -d '10 days ago' {CI}/junk/* {CI}/junk"
    )
    try:
        rc, out = start_job(runner, 1)
        assert rc == 0, out
        assert "runnerkeep: job fits after cleanup (pre stage ran, emergency stage ran)" in out
        # The emergency stage removed old junk until the stage's target was met.
        left = runner.exec(f"ls {CI}/junk", check=False).stdout.split()
        assert len(left) < 100
        free = int(runner.exec(f"df -B1 --output=avail {CI} | tail -1").stdout)
        assert free >= 120 * 1024**2
        assert drain_record(runner) is None
        assert agent_state(runner) == "active"
    finally:
        end_job(runner, 1)
        runner.exec(f"rm -rf {CI}/filler {CI}/junk")


def test_a_job_that_cannot_fit_fails_fast_drains_and_comes_back(runner):
    fill(runner, 300)
    rc, out = start_job(runner, 2)
    assert rc == 1, out
    refusals = [line for line in out.splitlines() if "cannot fit" in line]
    assert len(refusals) == 1, out
    assert refusals[0].startswith(
        f"runnerkeep: this runner cannot fit the job: needs 120.0 MiB free on {CI}, has "
    )
    assert refusals[0].endswith(" after cleanup; runner drained")
    record = drain_record(runner)
    assert record["drained"] is True and record["unit"] == AGENT
    assert record["reason"].startswith(f"free bytes on {CI}: ")
    assert runner.exec(f"stat -c '%a %U' {DRAIN}").stdout.split() == ["644", "root"]

    # The refused job still holds its lock: the agent keeps running until it ends.
    watch(runner)
    assert agent_state(runner) == "active"
    assert drained_metric(runner) == [f'runnerkeep_runner_drained{{reason="free bytes on {CI}"}} 1']
    # A job the agent takes meanwhile is refused at once.
    rc3, out3 = start_job(runner, 3)
    assert rc3 == 1 and "runnerkeep: this runner is drained" in out3, out3
    end_job(runner, 2)
    end_job(runner, 3)

    # After the job: the watch stops the agent.
    watch(runner)
    assert agent_state(runner) == "inactive"
    report = json.loads(
        runner.exec("runnerkeep disk report --json --no-docker", check=False).stdout
    )
    assert report["drain"]["drained"] is True
    status = runner.exec("runnerkeep admission status").stdout
    assert "DRAINED" in status

    # Still short: the watch keeps it drained.
    watch(runner)
    assert agent_state(runner) == "inactive" and drain_record(runner)["drained"] is True

    # Space freed: the next watch cycle (state ok, settle time 0) brings the runner back.
    runner.exec(f"rm -f {CI}/filler")
    watch(runner)
    assert agent_state(runner) == "active"
    assert drain_record(runner)["drained"] is False
    assert drained_metric(runner) == ['runnerkeep_runner_drained{reason=""} 0']
    rc4, out4 = start_job(runner, 4)
    assert rc4 == 0, out4
    end_job(runner, 4)


def test_an_operator_drains_and_undrains_with_the_playbook(admission_fleet, runner):
    fleet = admission_fleet
    before = drain_record(runner)
    checked = fleet.run_playbook(
        "playbooks/drain.yml", extra_vars={"drain_reason": "x"}, check=True
    )
    assert checked.returncode == 0 and "would refuse jobs from now on" in checked.stdout
    assert drain_record(runner) == before and agent_state(runner) == "active"

    no_reason = fleet.run_playbook("playbooks/drain.yml", quiet=True)
    assert no_reason.returncode != 0 and "say why the runner is drained" in no_reason.stdout

    drained = fleet.run_playbook(
        "playbooks/drain.yml", extra_vars={"drain_reason": "disk replacement"}
    )
    assert drained.returncode == 0 and "changed=1" in drained.stdout, drained.stdout[-3000:]
    assert agent_state(runner) == "inactive"  # no job ran: stopped at once
    record = drain_record(runner)
    assert record["by"] == "operator" and record["reason"] == "operator: disk replacement"
    rc, out = start_job(runner, 5)
    end_job(runner, 5)
    assert rc == 1 and "this runner is drained by an operator" in out, out

    # Plenty of free space and settle time 0: an admission drain would come back here.
    watch(runner)
    assert agent_state(runner) == "inactive" and drain_record(runner)["drained"] is True
    assert drained_metric(runner) == ['runnerkeep_runner_drained{reason="operator"} 1']

    back = fleet.run_playbook("playbooks/drain.yml", extra_vars={"drain_undrain": True})
    assert back.returncode == 0 and "started " + AGENT in back.stdout, back.stdout[-3000:]
    assert agent_state(runner) == "active" and drain_record(runner)["drained"] is False
    rc6, out6 = start_job(runner, 6)
    end_job(runner, 6)
    assert rc6 == 0, out6
