"""runner_base installs the zipapp as a release compiled by the host's own Python.

The archive is the same bytes from any controller Python; on the host it is unpacked into
/usr/local/lib/runnerkeep/releases/<digest>-<cache tag>[-<n>], compiled (checked-hash .pyc), a
manifest of its files written into it and the `lib` symlink the wrapper runs is flipped to it
(roles/runner_base/files/install_zipapp.py). A re-run that finds the current release damaged
builds a fresh one under a new name.
"""

from __future__ import annotations

import re
import zipfile

import pytest

pytestmark = pytest.mark.integration

INSTALL_DIR = "/usr/local/lib/runnerkeep"
TASKS = (
    "Install the runnerkeep zipapp",
    "Unpack and compile runnerkeep for the host's Python, and check that it works",
)
PLAY = """\
- name: runner_base only
  hosts: runners
  become: true
  gather_facts: true
  roles:
    - role: runnerkeep.runner.runner_base
      vars:
        runner_base_artifact: {artifact}
"""


def task_results(output: str, task: str) -> dict[str, str]:
    """{host: ok|changed|skipping|failed} of one task in ansible-playbook's default output."""
    section = output.split(f"{task}]", 1)[1].split("TASK [", 1)[0]
    return {host: state for state, host in re.findall(r"^(\w+): \[([^\]]+)\]", section, re.M)}


def install_tree(host) -> str:
    """Every path of the install dir with type, mode, owner, size and link target."""
    return host.exec(
        f"find {INSTALL_DIR} -path {INSTALL_DIR}/hooks -prune -o "
        "-printf '%p %y %m %u:%g %s %l\\n' | sort"
    ).stdout


def run_role(fleet, tmp_path, artifact, check: bool):
    play = tmp_path / "runner_base.yml"
    play.write_text(PLAY.format(artifact=artifact))
    result = fleet.run_playbook(str(play), check=check)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    return result


@pytest.fixture
def installed_pyz(provisioned_fleet, tmp_path):
    """The zipapp the hosts run now, fetched back (dist/ may have been rebuilt since)."""
    local = tmp_path / "installed.pyz"
    provisioned_fleet.hosts[0].copy_from(f"{INSTALL_DIR}/runnerkeep.pyz", local)
    return local


def test_the_command_runs_from_bytecode_the_host_compiled(provisioned_fleet):
    for host in provisioned_fleet.hosts:
        tag = host.exec(["python3", "-c", "import sys; print(sys.implementation.cache_tag)"])
        target = host.exec(["readlink", f"{INSTALL_DIR}/lib"]).stdout.strip()
        assert re.fullmatch(rf"releases/[0-9a-f]{{16}}-{tag.stdout.strip()}(-[0-9]+)?", target), (
            target
        )
        verbose = host.exec(["python3", "-v", f"{INSTALL_DIR}/lib", "--version"])
        loaded = re.findall(r"^# code object from '?([^'\n]+)'?$", verbose.stderr, re.M)
        ours = [path for path in loaded if path.startswith(f"{INSTALL_DIR}/releases/")]
        assert len(ours) > 10 and all(p.endswith(".pyc") for p in ours), ours
        assert host.exec(["runnerkeep", "--version"]).stdout.startswith("runnerkeep ")
        writable = host.exec(
            [
                "find",
                INSTALL_DIR,
                "-xdev",
                "(",
                "-perm",
                "-g+w",
                "-o",
                "-perm",
                "-o+w",
                ")",
                "-not",
                "-type",
                "l",
                "-print",
            ]
        ).stdout
        assert writable == "", writable


def test_check_mode_reports_nothing_to_do_and_changes_nothing(
    provisioned_fleet, installed_pyz, tmp_path
):
    before = {h.name: install_tree(h) for h in provisioned_fleet.hosts}
    result = run_role(provisioned_fleet, tmp_path, installed_pyz, check=True)
    for task in TASKS:
        assert set(task_results(result.stdout, task).values()) == {"ok"}, task
    assert {h.name: install_tree(h) for h in provisioned_fleet.hosts} == before


def test_a_new_zipapp_is_reported_in_check_mode_then_installed_once(
    provisioned_fleet, installed_pyz, tmp_path
):
    newer = tmp_path / "newer.pyz"
    with zipfile.ZipFile(installed_pyz) as src, zipfile.ZipFile(newer, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("runnerkeep/_integration_marker.py", "X = 1\n")
    hosts = provisioned_fleet.hosts
    before = {h.name: install_tree(h) for h in hosts}
    try:
        checked = run_role(provisioned_fleet, tmp_path, newer, check=True)
        for task in TASKS:
            assert set(task_results(checked.stdout, task).values()) == {"changed"}, task
        assert {h.name: install_tree(h) for h in hosts} == before
        first = run_role(provisioned_fleet, tmp_path, newer, check=False)
        second = run_role(provisioned_fleet, tmp_path, newer, check=False)
        for task in TASKS:
            assert set(task_results(first.stdout, task).values()) == {"changed"}, task
            assert set(task_results(second.stdout, task).values()) == {"ok"}, task
        for host in hosts:
            host.exec(["test", "-f", f"{INSTALL_DIR}/lib/runnerkeep/_integration_marker.py"])
            assert host.exec(["runnerkeep", "--version"]).stdout.startswith("runnerkeep ")
            releases = host.exec(["ls", f"{INSTALL_DIR}/releases"]).stdout.split()
            assert len(releases) == 2, releases  # the new one and the one before it
    finally:  # the session fleet goes back to the zipapp it had
        run_role(provisioned_fleet, tmp_path, installed_pyz, check=False)


def test_a_role_rerun_repairs_a_damaged_release(provisioned_fleet, installed_pyz, tmp_path):
    hosts = provisioned_fleet.hosts
    damaged = {}
    for host in hosts:
        damaged[host.name] = host.exec(["readlink", "-f", f"{INSTALL_DIR}/lib"]).stdout.strip()
        host.exec(["truncate", "-s", "0", f"{damaged[host.name]}/runnerkeep/config.py"])
        broken = host.exec(["runnerkeep", "--version"], check=False)
        assert broken.returncode != 0, broken.stdout  # the damage breaks the command
    before = {h.name: install_tree(h) for h in hosts}
    checked = run_role(provisioned_fleet, tmp_path, installed_pyz, check=True)
    assert set(task_results(checked.stdout, TASKS[1]).values()) == {"changed"}
    assert {h.name: install_tree(h) for h in hosts} == before
    first = run_role(provisioned_fleet, tmp_path, installed_pyz, check=False)
    second = run_role(provisioned_fleet, tmp_path, installed_pyz, check=False)
    assert set(task_results(first.stdout, TASKS[0]).values()) == {"ok"}
    assert set(task_results(first.stdout, TASKS[1]).values()) == {"changed"}
    for task in TASKS:
        assert set(task_results(second.stdout, task).values()) == {"ok"}, task
    for host in hosts:
        now = host.exec(["readlink", "-f", f"{INSTALL_DIR}/lib"]).stdout.strip()
        assert now != damaged[host.name]
        assert host.exec(["runnerkeep", "--version"]).stdout.startswith("runnerkeep ")
        # the damaged release is kept as the previous one, untouched (never rebuilt in place)
        size = host.exec(["stat", "-c", "%s", f"{damaged[host.name]}/runnerkeep/config.py"])
        assert size.stdout.strip() == "0"
