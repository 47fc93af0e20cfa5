"""provision.yml against containerized runner hosts, checked with pytest-testinfra."""

from __future__ import annotations

import re

import pytest
from harness.provision import provision

pytestmark = pytest.mark.integration


def recap(output: str) -> dict[str, dict[str, int]]:
    """Parse ansible-playbook's PLAY RECAP into {host: {ok: n, changed: n, ...}}."""
    hosts = {}
    section = output.split("PLAY RECAP", 1)[1]
    for line in section.splitlines():
        match = re.match(r"^(\S+)\s+:\s+(.*)$", line.strip())
        if match:
            hosts[match.group(1)] = {
                k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", match.group(2))
            }
    return hosts


@pytest.fixture(params=["paramiko", "docker"])
def hosts(request, provisioned_fleet):
    return [h.testinfra_host(backend=request.param) for h in provisioned_fleet.hosts]


def test_docker_engine_active_and_answering(hosts):
    for host in hosts:
        assert host.service("docker").is_running
        assert host.service("docker").is_enabled
        info = host.run("docker info --format '{{.ServerVersion}}'")
        assert info.rc == 0 and info.stdout.strip(), info.stderr


def test_sshd_active(hosts):
    for host in hosts:
        assert host.service("ssh").is_running


def test_runnerkeep_installed_on_path(hosts):
    for host in hosts:
        version = host.run("runnerkeep --version")
        assert version.rc == 0, version.stderr
        assert re.match(r"runnerkeep \d+\.\d+\.\d+", version.stdout)
        check = host.run("runnerkeep self-check")
        assert check.rc == 0, check.stdout + check.stderr


@pytest.mark.parametrize(
    ("path", "user", "mode"),
    [
        # The privilege boundary (docs/threat-model.md): jobs write none of these but the spool.
        ("/var/cache/runnerkeep/images", "runnerkeep", 0o750),
        ("/var/lib/runnerkeep", "root", 0o755),
        ("/var/lib/runnerkeep/spool", "root", 0o1730),
        ("/etc/runnerkeep/secrets.d", "root", 0o700),
        ("/var/log/runnerkeep", "root", 0o750),
        ("/etc/runnerkeep", "root", 0o755),
    ],
)
def test_directories_owner_and_mode(hosts, path, user, mode):
    for host in hosts:
        directory = host.file(path)
        assert directory.is_directory
        assert directory.user == user
        assert directory.mode == mode, f"{path}: {oct(directory.mode)}"


def test_config_file(hosts):
    for host in hosts:
        config = host.file("/etc/runnerkeep/config.json")
        assert config.is_file and config.user == "root" and config.mode == 0o644
        assert '"cache_dir": "/var/cache/runnerkeep/images"' in config.content_string


STORE = "/var/cache/runnerkeep/images"
# What runs as root on a runner between two provision runs: the units' timers and the CLI
# calls a user or a hook makes. None of them may leave anything in the store that is not its
# owner's (module_utils/runnerkeep/cache/owner.py: root drops to the owner for cache commands).
ROOT_UNITS = (
    "runnerkeep-watch.service",
    "runnerkeep-cache-maintenance.service",
    "runnerkeep-cleanup.service",
)
ROOT_COMMANDS = (
    "runnerkeep self-check",
    "runnerkeep disk budget --json",
    "runnerkeep disk report",
    "runnerkeep disk watch",
    "runnerkeep fleet-facts --json",
    "runnerkeep cache list",
    "runnerkeep cache verify",
)


def changed_tasks(output: str, host: str) -> list[str]:
    """The names of the tasks that reported ``changed`` for ``host``."""
    names, task = [], None
    for line in output.splitlines():
        if line.startswith("TASK ["):
            task = line[len("TASK [") :].split("]", 1)[0]
        elif line.startswith(f"changed: [{host}]") and task and task not in names:
            names.append(task)
    return names


def foreign_in_store(host) -> set[str]:
    """Paths in the store not owned by the service user."""
    found = host.exec(f"find {STORE} ! -user runnerkeep -print", check=False)
    return set(found.stdout.splitlines())


def test_root_units_and_commands_leave_nothing_foreign_in_store(provisioned_fleet):
    """Root's timers and CLI calls create nothing in the store as root: the next provision run
    would give it back to the service user and report a change."""
    for host in provisioned_fleet.hosts:
        before = foreign_in_store(host)
        for unit in ROOT_UNITS:
            host.exec(f"systemctl start {unit}", timeout=300)
        for command in ROOT_COMMANDS:
            ran = host.exec(command, check=False, timeout=300)
            # 6: a check found problems (a watermark, bad data): it still ran to the end.
            assert ran.returncode in (0, 6), f"{host.name}: {command}: {ran.stdout}{ran.stderr}"
        left = foreign_in_store(host) - before
        assert not left, f"{host.name}: root left these in the store: {sorted(left)}"


def test_second_run_changes_nothing(provisioned_fleet):
    """Two runs in a row: the second changes nothing. The session fleet is shared, so other
    tests' leftovers are the first run's to put right (that is the playbook's job); what the
    second run may not find is a change made in between by the host itself (its timers)."""
    first = recap(provisioned_fleet.first_provision.stdout)
    assert all(first[h.name]["failed"] == 0 for h in provisioned_fleet.hosts)
    converge = provision(provisioned_fleet)
    assert converge.returncode == 0, converge.stdout
    second = provision(provisioned_fleet)
    assert second.returncode == 0, second.stdout
    counts = recap(second.stdout)
    for host in provisioned_fleet.hosts:
        changed = changed_tasks(second.stdout, host.name)
        assert counts[host.name]["changed"] == 0, (
            f"{host.name} changed on the second run: {changed}"
        )
        assert counts[host.name]["failed"] == 0


def test_unreachable_host_fails_alone(provisioned_fleet, tmp_path):
    """A dead host in the inventory fails with a clear message; the others still finish."""
    # A second inventory adds the dead host to the same group; ansible merges both inventories.
    inventory = tmp_path / "dead.yml"
    inventory.write_text(
        "runners:\n"
        "  hosts:\n"
        "    dead-runner:\n"
        "      ansible_host: 127.0.0.1\n"
        "      ansible_port: 1\n"
        "      ansible_user: root\n"
        "      ansible_connection: ssh\n"
    )
    result = provision(provisioned_fleet, "-i", str(inventory))
    assert result.returncode != 0
    counts = recap(result.stdout)
    assert counts["dead-runner"]["unreachable"] == 1
    assert "Connection refused" in result.stdout or "connect to host" in result.stdout
    for host in provisioned_fleet.hosts:
        assert counts[host.name]["failed"] == 0 and counts[host.name]["unreachable"] == 0
