"""Role runner_maintenance and playbooks/maintain.yml on containerized runner hosts (systemd).

Two hosts of our own (destructive tests): provisioned with provision.yml (which applies the
role with its defaults), then the role again with test settings. One
host runs a "job" (the GitHub job-started hook run from a live parent process): maintain.yml
must skip it and clean the other, and the job-completed hook must release the lock.
"""

from __future__ import annotations

import json
import time

import pytest
from harness.fleet import Fleet
from harness.provision import provision

pytestmark = pytest.mark.integration

ROLE_PLAY = """\
- hosts: runners
  gather_facts: false
  become: true
  roles:
    - role: runner_maintenance
      runner_maintenance_github_runner_dirs: [/opt/actions-runner]
      runner_maintenance_cleanup:
        cleaners:
          seeded:
            kind: files
            roots: [/var/tmp/rk-junk]
            min_age: 1d
            cost: 5
"""


@pytest.fixture(scope="module")
def fleet(runner_image, tmp_path_factory):
    f = Fleet.start(2, name="rkc", image=runner_image)
    try:
        result = provision(f, quiet=True)  # provision.yml with the small-disk fleet vars
        assert result.returncode == 0, result.stdout[-3000:]
        for host in f.hosts:
            host.exec("mkdir -p /opt/actions-runner")  # where a GitHub runner would live
        play = tmp_path_factory.mktemp("cleanup-role") / "role.yml"
        play.write_text(ROLE_PLAY)
        f.role_result = f.run_playbook(str(play), quiet=True)
        assert f.role_result.returncode == 0, f.role_result.stdout[-3000:]
        yield f
    finally:
        f.stop()


def seed(host):
    host.exec(
        "mkdir -p /var/tmp/rk-junk/old /var/tmp/rk-junk/new && "
        "head -c 300000 /dev/urandom > /var/tmp/rk-junk/old/a.bin && "
        "head -c 1000 /dev/urandom > /var/tmp/rk-junk/new/b.bin && "
        "touch -h -d '10 days ago' /var/tmp/rk-junk/old/a.bin /var/tmp/rk-junk/old"
    )


def test_role_installs_hooks_timer_and_config(fleet):
    host = fleet.hosts[0]
    out = host.exec(
        "ls /usr/local/lib/runnerkeep/hooks && cat /opt/actions-runner/.env && "
        "systemctl list-timers --all runnerkeep-cleanup.timer --no-pager && "
        "systemctl is-enabled runnerkeep-cleanup.timer && "
        "cat /etc/runnerkeep/config.d/50-cleanup.json"
    ).stdout
    for name in (
        "github-job-started.sh",
        "github-job-completed.sh",
        "gitlab-pre-build.sh",
        "gitlab-post-build.sh",
        "gitlab-config.toml.snippet",
    ):
        assert name in out
    assert "ACTIONS_RUNNER_HOOK_JOB_STARTED=/usr/local/lib/runnerkeep/hooks/" in out
    assert "ACTIONS_RUNNER_HOOK_JOB_COMPLETED=" in out
    assert "runnerkeep-cleanup.timer" in out and "enabled" in out
    listed = json.loads(host.exec("runnerkeep cleanup list-cleaners --json").stdout)
    assert "seeded" in [c["name"] for c in listed["cleaners"]]
    # Idempotent: a second run changes nothing.
    again = fleet.run_playbook(fleet.role_result.args[-1], quiet=True)
    assert again.returncode == 0
    assert "changed=0" in again.stdout.split("PLAY RECAP", 1)[1]


def test_maintain_skips_busy_runner_and_cleans_the_other(fleet):
    busy, idle = fleet.hosts
    for host in fleet.hosts:
        seed(host)
    # A "runner worker" that lives through the job: it runs the hook and keeps running.
    busy.exec(
        "nohup sh -c 'GITHUB_RUN_ID=42 GITHUB_JOB=build "
        "/usr/local/lib/runnerkeep/hooks/github-job-started.sh >/tmp/hook.log 2>&1; "
        "sleep 600' >/dev/null 2>&1 &"
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if busy.exec("runnerkeep cleanup status", check=False).returncode == 7:
            break
        time.sleep(0.5)
    else:
        pytest.fail(
            "the job-started hook did not take the lock: "
            + busy.exec("cat /tmp/hook.log", check=False).stdout
        )

    dry = fleet.run_playbook(
        "playbooks/maintain.yml",
        extra_vars={"maintain_serial": 1, "maintain_target_free": "100%"},
        check=True,
        quiet=True,
    )
    assert dry.returncode == 0, dry.stdout[-3000:]
    assert f"{idle.name}: " in dry.stdout and "would be freed" in dry.stdout
    assert idle.exec("test -e /var/tmp/rk-junk/old/a.bin", check=False).returncode == 0

    result = fleet.run_playbook(
        "playbooks/maintain.yml",
        extra_vars={"maintain_serial": 1, "maintain_target_free": "100%"},
        quiet=True,
    )
    assert result.returncode == 0, result.stdout[-3000:]
    assert f"{busy.name}: skipped, a CI job holds the runner lock" in result.stdout
    assert f"{idle.name}: " in result.stdout and "freed" in result.stdout
    assert busy.exec("test -e /var/tmp/rk-junk/old/a.bin", check=False).returncode == 0
    assert idle.exec("test -e /var/tmp/rk-junk/old", check=False).returncode != 0
    assert idle.exec("test -e /var/tmp/rk-junk/new/b.bin", check=False).returncode == 0

    # Job completed: the hook releases the lock and runs the post stage.
    done = busy.exec(
        "GITHUB_RUN_ID=42 GITHUB_JOB=build /usr/local/lib/runnerkeep/hooks/github-job-completed.sh"
    )
    assert "released the runner lock" in done.stdout
    assert busy.exec("runnerkeep cleanup status", check=False).returncode == 0
    # The hooks also recorded the job's disk peak for the disk budget.
    history = json.loads(busy.exec("runnerkeep disk history --json").stdout)
    assert "gh-42-1-build" in json.dumps(history), history


def test_nightly_service_runs_the_post_stage(fleet):
    host = fleet.hosts[1]
    seed(host)
    host.exec("systemctl start runnerkeep-cleanup.service", timeout=300)
    status = host.exec(
        "systemctl show -p Result -p ExecMainStatus runnerkeep-cleanup.service"
    ).stdout
    assert "Result=success" in status
    log = host.exec("journalctl -u runnerkeep-cleanup.service --no-pager", check=False).stdout
    assert "cleanup stage post" in log
