"""The fleet harness itself: start, teardown on every path, engine errors, host facts."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import yaml
from harness import REPO_ROOT
from harness.fleet import (
    FLEET_DIR,
    LABEL_FLEET,
    LABEL_HARNESS,
    LABEL_OWNER,
    Fleet,
    _boot_id,
    remove_leftovers,
)

TESTS_DIR = REPO_ROOT / "tests"


def _docker_lines(*args: str) -> list[str]:
    proc = subprocess.run(["docker", *args], capture_output=True, text=True, timeout=60, check=True)
    return [line for line in proc.stdout.splitlines() if line.strip()]


def _fleet_containers(fleet_id: str) -> list[str]:
    return _docker_lines("ps", "-aq", "--filter", f"label={LABEL_FLEET}={fleet_id}")


def _fleet_volumes(fleet_id: str) -> list[str]:
    return _docker_lines("volume", "ls", "-q", "--filter", f"label={LABEL_FLEET}={fleet_id}")


def _containers_named(prefix: str) -> list[str]:
    names = _docker_lines(
        "ps", "-a", "--filter", f"label={LABEL_HARNESS}=1", "--format", "{{.Names}}"
    )
    return [n for n in names if n.startswith(prefix + "-")]


def _harness_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(TESTS_DIR), env.get("PYTHONPATH", "")) if p)
    env.update(extra)
    return env


def _unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(2)}"


# (a) ---------------------------------------------------------------------------


def test_stop_removes_containers_volumes_and_workdir(runner_image: str) -> None:
    fleet = Fleet.start(1, name=_unique("rka"), image=runner_image, docker_disk="256m")
    assert len(_fleet_containers(fleet.fleet_id)) == 1
    workdir = fleet.workdir
    assert (workdir / "inventory.yml").is_file()

    fleet.stop()

    assert _fleet_containers(fleet.fleet_id) == []
    assert _fleet_volumes(fleet.fleet_id) == []
    assert not workdir.exists()
    fleet.stop()  # idempotent


# (b) ---------------------------------------------------------------------------


def test_failing_test_inside_a_fleet_leaves_nothing(tmp_path: Path) -> None:
    id_file = tmp_path / "fleet_id"
    (tmp_path / "test_inner.py").write_text(
        textwrap.dedent(
            f"""
            from pathlib import Path

            def test_fails_inside_fleet(make_fleet):
                fleet = make_fleet(1, name="rkfail", docker_disk="256m")
                Path({str(id_file)!r}).write_text(fleet.fleet_id)
                assert fleet.hosts[0].exec("true").returncode == 0
                assert False, "deliberate failure"
            """
        )
    )
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "harness.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-q",
            "test_inner.py",
        ],
        cwd=tmp_path,
        env=_harness_env(),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "deliberate failure" in proc.stdout
    fleet_id = id_file.read_text().strip()
    assert fleet_id.startswith("rkfail-")
    assert _fleet_containers(fleet_id) == []
    assert _fleet_volumes(fleet_id) == []
    assert not (FLEET_DIR / fleet_id).exists()


# (c) ---------------------------------------------------------------------------


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_run_leaves_nothing(runner_image: str, signum: int) -> None:
    name = _unique("rki")
    script = textwrap.dedent(
        f"""
        import time
        from harness.fleet import Fleet

        with Fleet.start(1, name={name!r}, image={runner_image!r}, docker_disk="256m") as f:
            print("READY", f.fleet_id, flush=True)
            time.sleep(120)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        env=_harness_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not _containers_named(name):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "fleet container never appeared"
            time.sleep(0.2)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode != 0, out + err
    assert _containers_named(name) == [], err
    assert not any(p.name.startswith(name + "-") for p in FLEET_DIR.glob("*")), err


# (d) ---------------------------------------------------------------------------


NO_ENGINE = {"DOCKER_HOST": "unix:///nonexistent.sock", "RUNNERKEEP_NO_ENGINE_INSTALL": "1"}


def test_no_engine_reports_what_to_install() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "harness.engine"],
        env=_harness_env(**NO_ENGINE),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    assert "apt-get install -y docker.io" in proc.stderr
    assert "dockerd" in proc.stderr
    assert "DOCKER_HOST" in proc.stderr


def test_engine_fixture_fails_instead_of_skipping(tmp_path: Path) -> None:
    (tmp_path / "test_needs_engine.py").write_text("def test_x(engine):\n    pass\n")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            "-p",
            "harness.pytest_plugin",
            "-p",
            "no:cacheprovider",
            "-rA",
            "test_needs_engine.py",
        ],
        cwd=tmp_path,
        env=_harness_env(**NO_ENGINE),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1, proc.stdout
    assert "1 error" in proc.stdout and "skipped" not in proc.stdout
    assert "apt-get install -y docker.io" in proc.stdout


# (e) ---------------------------------------------------------------------------


def test_started_host(make_fleet, runner_image: str, tmp_path: Path) -> None:
    fleet = make_fleet(
        1, docker_disk="384m", cache_disk="96m", extra_tmpfs={"/srv/runner-work": "32m"}
    )
    (host,) = fleet.hosts

    assert host.exec("systemctl is-system-running").stdout.strip() == "running"
    for unit in ("ssh", "docker", "cron"):
        assert host.exec(f"systemctl is-active {unit}").stdout.strip() == "active"

    # sshd: published on loopback only, key auth works, other keys and passwords don't.
    ports = _docker_lines("port", host.container, "22/tcp")
    assert ports and all(p.startswith("127.0.0.1:") for p in ports)
    assert host.ssh("hostname").stdout.strip() == host.name
    other_key = tmp_path / "other"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True
    )
    denied = subprocess.run(
        [*host.ssh_command("true")[:2], str(other_key), *host.ssh_command("true")[3:]],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert denied.returncode == 255
    sshd_cfg = host.exec("sshd -T").stdout
    assert "passwordauthentication no" in sshd_cfg
    assert "permitrootlogin without-password" in sshd_cfg  # = prohibit-password
    with socket.create_connection(("127.0.0.1", host.ssh_port), timeout=5) as s:
        assert s.recv(64).startswith(b"SSH-2.0-")

    # Host keys are made at boot, not shipped in the image.
    in_image = subprocess.run(
        [
            "docker",
            "run",
            "--rm",
            "--label",
            f"{LABEL_HARNESS}=1",
            "--entrypoint",
            "sh",
            runner_image,
            "-c",
            "ls /etc/ssh/ | grep -c '^ssh_host_' || true",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert in_image.stdout.strip() == "0"
    assert host.exec("ls /etc/ssh/ssh_host_ed25519_key.pub").returncode == 0

    # Sized tmpfs mounts (with exec) from the harness.
    sizes = {}
    for path in ("/var/lib/docker", "/var/cache/runnerkeep", "/srv/runner-work"):
        fstype, size = host.exec(f"df -B1 --output=fstype,size {path} | tail -n1").stdout.split()
        assert fstype == "tmpfs", path
        sizes[path] = int(size)
    assert sizes["/var/lib/docker"] == 384 * 2**20
    assert sizes["/var/cache/runnerkeep"] == 96 * 2**20
    assert sizes["/srv/runner-work"] == 32 * 2**20
    assert "noexec" not in host.exec("findmnt -no OPTIONS /var/lib/docker").stdout

    # Inner engine on vfs runs a container from a tiny image imported inside.
    assert host.exec("docker info --format '{{.Driver}}'").stdout.strip() == "vfs"
    host.exec(
        "set -e; rm -rf /tmp/tiny; mkdir /tmp/tiny; "
        'for f in /bin/dash $(ldd /bin/dash | grep -o "/[^ ]*"); do '
        'cp --parents -L "$f" /tmp/tiny; done; '
        "tar -C /tmp/tiny -c . | docker import - tiny:1 >/dev/null"
    )
    run = host.exec("docker run --rm tiny:1 /bin/dash -c 'echo hi from inner'")
    assert run.stdout.strip() == "hi from inner"
    saved = host.exec("docker save tiny:1 | docker load && docker image inspect tiny:1 >/dev/null")
    assert saved.returncode == 0

    # testinfra over SSH (paramiko) and docker exec.
    ti = host.testinfra_host("paramiko")
    assert ti.service("ssh").is_running
    assert json.loads(ti.file("/etc/docker/daemon.json").content_string) == {
        "storage-driver": "vfs"
    }
    assert host.testinfra_host("docker").check_output("hostname") == host.name

    # Files can be copied in.
    src = tmp_path / "payload.txt"
    src.write_text("payload\n")
    host.copy_to(src, "/tmp/payload.txt")
    assert host.exec("cat /tmp/payload.txt").stdout == "payload\n"


def test_session_fleet_inventory_and_playbook(fleet: Fleet, tmp_path: Path) -> None:
    assert [h.name for h in fleet.hosts] == ["rk-1", "rk-2"]
    inv = yaml.safe_load(Path(fleet.inventory).read_text())
    hosts = inv["all"]["children"]["runners"]["hosts"]
    assert set(hosts) == {"rk-1", "rk-2"}
    for h in fleet.hosts:
        v = hosts[h.name]
        assert v["ansible_host"] == "127.0.0.1"
        assert v["ansible_port"] == h.ssh_port
        assert v["ansible_user"] == "root"
        assert v["ansible_connection"] == "ssh"
        assert v["ansible_python_interpreter"] == "/usr/bin/python3"
        assert Path(v["ansible_ssh_private_key_file"]).is_file()
        assert v["runnerkeep_harness_container"] == h.container

    playbook = tmp_path / "ping.yml"
    playbook.write_text(
        textwrap.dedent(
            """
            - hosts: runners
              gather_facts: false
              tasks:
                - ansible.builtin.ping:
                - ansible.builtin.command: cat /etc/hostname
                  register: hn
                  changed_when: false
                - ansible.builtin.assert:
                    that: hn.stdout == inventory_hostname and marker == 42
            """
        )
    )
    result = fleet.run_playbook(str(playbook), extra_vars={"marker": 42})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "rk-1" in result.stdout and "rk-2" in result.stdout
    limited = fleet.run_playbook(str(playbook), extra_vars={"marker": 42}, limit="rk-2")
    assert limited.returncode == 0
    assert "rk-1" not in limited.stdout.split("PLAY RECAP")[1]


def test_remove_leftovers_spares_live_fleets(runner_image: str, make_fleet) -> None:
    live = make_fleet(1, docker_disk="128m")
    dead_owner = f"{socket.gethostname()}:{_boot_id()}:999999999:1"
    crashed_id = _unique("rkcrash") + "-abc"
    subprocess.run(
        [
            "docker",
            "create",
            "--label",
            f"{LABEL_HARNESS}=1",
            "--label",
            f"{LABEL_FLEET}={crashed_id}",
            "--label",
            f"{LABEL_OWNER}={dead_owner}",
            runner_image,
        ],
        capture_output=True,
        check=True,
        timeout=60,
    )
    assert len(_fleet_containers(crashed_id)) == 1

    assert remove_leftovers() >= 1

    assert _fleet_containers(crashed_id) == []
    assert len(_fleet_containers(live.fleet_id)) == 1
