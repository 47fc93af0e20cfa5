"""The collection as a platform team uses it: built, installed into a throwaway project, used.

The consumer project lives in a temp dir with its own ansible.cfg, inventory and group_vars;
Ansible is configured by that ansible.cfg alone (no ANSIBLE_* or PYTHONPATH from this
repository), so the roles, modules, module_utils and the zipapp can only come from the
installed tarball. Its playbook provisions a fresh runner with the FQCN roles and calls every
module by FQCN; the collection's own playbook restores the cache after the images are gone; a
second run of the consumer playbook changes nothing.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import weakref
from pathlib import Path

import pytest
import yaml
from harness.provision import FLEET_VARS

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent
IMAGES = ("consumer/base:1", "consumer/app:1")
OLD_TEMP = "/var/tmp/rk-consumer-old"

ANSIBLE_CFG = """\
[defaults]
inventory = inventory.yml
collections_path = ./collections
roles_path = ./roles
host_key_checking = False
retry_files_enabled = False
interpreter_python = auto_silent
stdout_callback = default
callback_result_format = yaml

[ssh_connection]
pipelining = True
"""

# What a platform team writes: the four roles, then the modules in its own tasks.
SITE = """\
- name: Runners managed by runnerkeep
  hosts: runners
  become: true
  roles:
    - runnerkeep.runner.runner_base
    - runnerkeep.runner.image_cache
    - runnerkeep.runner.runner_maintenance
    - runnerkeep.runner.disk_monitor
  tasks:
    - name: Build the job's images (once)
      ansible.builtin.shell: |
        set -e
        if docker image inspect consumer/base:1 consumer/app:1 >/dev/null 2>&1; then
          echo present; exit 0
        fi
        rm -rf /tmp/rk-build && mkdir -p /tmp/rk-build/base /tmp/rk-build/app
        cd /tmp/rk-build/base && head -c 2M /dev/urandom > a.bin
        printf 'FROM scratch\\nCOPY a.bin /a.bin\\n' > Dockerfile
        docker build -q -t consumer/base:1 . >/dev/null
        cd /tmp/rk-build/app && head -c 1M /dev/urandom > b.bin
        printf 'FROM consumer/base:1\\nCOPY b.bin /b.bin\\n' > Dockerfile
        docker build -q -t consumer/app:1 . >/dev/null
        rm -rf /tmp/rk-build
        echo built
      register: consumer_build
      changed_when: "'built' in consumer_build.stdout"

    - name: Save the images
      runnerkeep.runner.image_cache:
        state: saved
        key: consumer-images
        images: [consumer/base:1, consumer/app:1]
      register: consumer_save

    - name: Restore them
      runnerkeep.runner.image_cache:
        state: restored
        key: consumer-images
        fail_on_miss: true
      register: consumer_restore

    - name: Clean old temp files
      runnerkeep.runner.runner_cleanup:
        stage: post
        cleaners: [tmp]
        run_all: true
      register: consumer_cleanup

    - name: Disk budget
      runnerkeep.runner.disk_budget:
      register: consumer_budget

    - name: Disk facts
      runnerkeep.runner.disk_facts:
      register: consumer_facts

    # The test reads what the modules returned from this file (instrumentation, not a change).
    - name: Report to the test
      ansible.builtin.copy:
        content: >-
          {{ {'save': consumer_save.result, 'restore': consumer_restore.result,
          'hit': consumer_restore.hit, 'loaded': consumer_restore.loaded,
          'cleanup_items': consumer_cleanup.items_removed,
          'job_peak_bytes': consumer_budget.budget.job_peak_bytes,
          'cache_quota_bytes': consumer_budget.cache_quota_bytes,
          'docker_root': consumer_facts.ansible_facts.runnerkeep_disk.docker_root} | to_json }}
        dest: "{{ playbook_dir }}/report-{{ inventory_hostname }}.json"
        mode: "0600"
      delegate_to: localhost
      become: false
      changed_when: false
"""


def recap(output: str) -> dict[str, dict[str, int]]:
    """PLAY RECAP as {host: {ok: n, changed: n, ...}}."""
    hosts = {}
    for line in output.split("PLAY RECAP", 1)[1].splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if match:
            hosts[match.group(1)] = {
                k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))
            }
    return hosts


def reported(project: Path, host: str) -> dict:
    path = project / f"report-{host}.json"
    data = json.loads(path.read_text())
    path.unlink()
    return data


class Consumer:
    """The throwaway project: runs Ansible there, configured by its ansible.cfg only."""

    def __init__(self, root: Path, fleet) -> None:
        self.root = root
        self.fleet = fleet
        (root / "group_vars").mkdir(parents=True)
        (root / "ansible.cfg").write_text(ANSIBLE_CFG)
        (root / "inventory.yml").write_text(Path(fleet.inventory).read_text())
        # The group_vars a user sets first; these fit the harness's 1 GiB cache disk.
        (root / "group_vars" / "runners.yml").write_text(yaml.safe_dump(FLEET_VARS))
        (root / "site.yml").write_text(SITE)
        # SSH's control sockets need a short path (108 bytes): pytest's tmp dirs under a
        # parallel worker are too deep for them.
        self.control_dir = tempfile.mkdtemp(prefix="rkcp-", dir="/tmp")
        weakref.finalize(self, shutil.rmtree, self.control_dir, True)
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("ANSIBLE_")}
        self.env.pop("PYTHONPATH", None)
        self.env.update(
            ANSIBLE_CONFIG=str(root / "ansible.cfg"),
            ANSIBLE_LOCAL_TEMP=str(root / ".tmp"),
            ANSIBLE_SSH_CONTROL_PATH_DIR=self.control_dir,
            ANSIBLE_NOCOLOR="1",
        )

    def run(self, tool: str, *args: str, timeout: float = 1200) -> subprocess.CompletedProcess:
        cmd = [str(BIN / tool), *args]
        proc = subprocess.run(
            cmd, cwd=self.root, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        sys.stdout.write(f"$ {' '.join(cmd)} (rc={proc.returncode})\n{proc.stdout}")
        sys.stderr.write(proc.stderr)
        return proc


@pytest.fixture
def tarball(tmp_path) -> Path:
    out = tmp_path / "dist"
    done = subprocess.run(
        [sys.executable, str(REPO / "tools" / "build_collection.py"), "--output-dir", str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (built,) = out.glob("runnerkeep-runner-*.tar.gz")
    return built


def test_consumer_project_uses_the_installed_collection(make_fleet, tarball, tmp_path):
    fleet = make_fleet(count=1, name="rkc")
    host = fleet.hosts[0]
    consumer = Consumer(tmp_path / "project", fleet)

    install = consumer.run(
        "ansible-galaxy", "collection", "install", str(tarball), "-p", "./collections"
    )
    assert install.returncode == 0, install.stderr
    installed = consumer.root / "collections" / "ansible_collections" / "runnerkeep" / "runner"
    assert (installed / "roles" / "runner_base" / "files" / "runnerkeep.pyz").is_file()
    verify = consumer.run(
        "ansible-galaxy",
        "collection",
        "verify",
        "--offline",
        "-p",
        "./collections",
        "runnerkeep.runner",
    )
    assert verify.returncode == 0, verify.stdout + verify.stderr

    # Old temp files for the cleanup to find (the tmp cleaner takes what is older than 2 days).
    host.exec(f"mkdir -p {OLD_TEMP} && head -c 1M /dev/zero > {OLD_TEMP}/old.bin")
    host.exec(f"touch -h -d '10 days ago' {OLD_TEMP}/old.bin {OLD_TEMP}")

    first = consumer.run("ansible-playbook", "site.yml")
    assert first.returncode == 0, first.stdout
    assert recap(first.stdout)[host.name]["failed"] == 0
    # Roles and modules ran from the installed collection, nothing else is configured.
    assert "runnerkeep.runner.runner_base : Install the runnerkeep zipapp" in first.stdout
    done = reported(consumer.root, host.name)
    assert done["save"] == "saved" and done["restore"] == "hit" and done["hit"] is True
    assert done["cleanup_items"] >= 1
    assert host.exec(f"test -e {OLD_TEMP}", check=False).returncode != 0
    # The budget follows the group_vars (job peak floor 100MiB) the roles wrote into the config.
    assert done["job_peak_bytes"] == 100 * 1024**2 and done["cache_quota_bytes"] > 0
    assert done["docker_root"] == "/var/lib/docker"
    assert host.exec("runnerkeep --version").stdout.startswith("runnerkeep ")

    # The cache round trip through the collection's own playbook, by its FQCN.
    host.exec("docker rmi -f " + " ".join(IMAGES))
    restore = consumer.run(
        "ansible-playbook", "runnerkeep.runner.cache_restore", "-e", "cache_key=consumer-images"
    )
    assert restore.returncode == 0, restore.stdout
    assert "consumer-images: hit (loaded)" in restore.stdout
    images = host.exec("docker image ls --format '{{.Repository}}:{{.Tag}}'").stdout.split()
    assert set(IMAGES) <= set(images)

    second = consumer.run("ansible-playbook", "site.yml")
    assert second.returncode == 0, second.stdout
    counts = recap(second.stdout)[host.name]
    assert counts["changed"] == 0 and counts["failed"] == 0, second.stdout
    again = reported(consumer.root, host.name)
    assert again["save"] == "unchanged" and again["restore"] == "hit"
    assert again["loaded"] is False and again["cleanup_items"] == 0
