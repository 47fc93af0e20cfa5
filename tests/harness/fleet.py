"""A fleet of runner-host containers reachable over SSH on loopback.

    from harness.fleet import Fleet

    with Fleet.start(2, name="rk", docker_disk="2g") as fleet:
        fleet.run_playbook("playbooks/provision.yml")
        fleet.hosts[0].exec("docker info")

    # a mixed fleet: one host per Debian release (harness.image.RELEASES)
    with Fleet.start(3, release=["bullseye", "bookworm", "trixie"]) as fleet:
        fleet.hosts[0].release  # "bullseye"

    # runners plus a fleet cache host (inventory group cache_hosts, roles/fleet_cache)
    with Fleet.start(2, cache_host=True) as fleet:
        fleet.cache_host.name  # "rk-cache": the name runners reach it by

Each host is a container of the runner image (systemd as PID 1, inner Docker on
vfs, sshd) started with an explicit capability list (never --privileged), sized
tmpfs mounts for /var/lib/docker and /var/cache/runnerkeep, and sshd published on
127.0.0.1 with a port Docker picks. The fleet's workdir (default
``<repo>/.fleet/<fleet-id>``) holds the generated ed25519 key, an ssh_config and
the Ansible inventory ``inventory.yml`` (hosts of a ``release`` fleet carry
``runnerkeep_harness_release``).

With ``cache_host=True`` the fleet gets one more container of the same image, ``<name>-cache``
(``fleet.cache_host``, not in ``fleet.hosts``), in the inventory group ``cache_hosts``, with a
sized tmpfs at ``CACHE_HOST_STORAGE`` for the registry's storage; every container of such a
fleet joins the fleet's own Docker network, where each reaches the others by inventory name.

Containers carry the labels ``io.runnerkeep.harness=1``, ``io.runnerkeep.fleet=<id>``
and ``io.runnerkeep.owner=<host>:<boot-id>:<pid>:<start-time>``. ``stop()`` removes
them; it also runs at interpreter exit and on SIGINT/SIGTERM. Leftovers of crashed
runs: ``python -m harness.fleet cleanup`` (``remove_leftovers()``).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import REPO_ROOT
from ._docker import DockerError, docker, docker_bin, log, quiet_lines

LABEL_HARNESS = "io.runnerkeep.harness"
LABEL_FLEET = "io.runnerkeep.fleet"
LABEL_OWNER = "io.runnerkeep.owner"
LABEL_HOST = "io.runnerkeep.host"
LABEL_RELEASE = "io.runnerkeep.release"

#: What a runner host needs instead of --privileged: systemd and an inner Docker engine run
#: with this explicit list.
CAPABILITIES = (
    "SYS_ADMIN",
    "NET_ADMIN",
    "SYS_PTRACE",
    "MKNOD",
    "SYS_MODULE",
    "DAC_READ_SEARCH",
    "NET_RAW",
    "SYS_CHROOT",
    "SETFCAP",
    "AUDIT_WRITE",
    "IPC_LOCK",
)
SECURITY_OPTS = ("seccomp=unconfined", "apparmor=unconfined")

#: The fleet cache host's registry storage (roles/fleet_cache's fleet_cache_storage_dir).
CACHE_HOST_STORAGE = "/srv/fleet-cache"

DEFAULT_BOOT_TIMEOUT = float(os.environ.get("RUNNERKEEP_BOOT_TIMEOUT", "120"))
FLEET_DIR = REPO_ROOT / ".fleet"
_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,30}$")
_SIZE_RE = re.compile(r"^[0-9]+[kmgKMG]?$")

SSH_OPTIONS = (
    "-o",
    "BatchMode=yes",
    "-o",
    "IdentitiesOnly=yes",
    "-o",
    "StrictHostKeyChecking=no",
    "-o",
    "UserKnownHostsFile=/dev/null",
    "-o",
    "LogLevel=ERROR",
    "-o",
    "ConnectTimeout=5",
)


class FleetError(RuntimeError):
    """The fleet could not be started (message says which host and why)."""


class HostCommandError(subprocess.CalledProcessError):
    """A command run with RunnerHost.exec(check=True) failed."""

    def __str__(self) -> str:
        return (
            f"{super().__str__()}\nstdout: {(self.stdout or '').strip()[-2000:]}"
            f"\nstderr: {(self.stderr or '').strip()[-2000:]}"
        )


# --------------------------------------------------------------------------- hosts


@dataclass
class RunnerHost:
    """One runner container. ``name`` is the inventory name (``rk-1``)."""

    name: str
    container: str
    ssh_port: int
    key_file: str
    ssh_config: str = ""
    release: str = ""  # Debian codename of the host's image ("" when an image was given)
    image: str = ""
    _testinfra: dict[str, Any] = field(default_factory=dict, repr=False)

    def exec(
        self,
        cmd: str | Sequence[str],
        check: bool = True,
        timeout: float | None = 120,
        input: str | None = None,
        user: str | None = None,
    ) -> subprocess.CompletedProcess:
        """Run ``cmd`` in the container via ``docker exec`` (a str goes through ``sh -c``)."""
        argv = ["sh", "-c", cmd] if isinstance(cmd, str) else list(cmd)
        opts = ["-i"] if input is not None else []
        if user:
            opts += ["-u", user]
        try:
            proc = subprocess.run(
                [docker_bin(), "exec", *opts, self.container, *argv],
                capture_output=True,
                text=True,
                input=input,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise HostCommandError(
                124, argv, f"timed out after {timeout}s on {self.name}", ""
            ) from exc
        if check and proc.returncode != 0:
            raise HostCommandError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc

    def ssh_command(self, *remote: str) -> list[str]:
        """argv for ``ssh`` to this host over the published loopback port."""
        return [
            "ssh",
            "-i",
            self.key_file,
            "-p",
            str(self.ssh_port),
            *SSH_OPTIONS,
            "root@127.0.0.1",
            *remote,
        ]

    def ssh(self, cmd: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess:
        """Run ``cmd`` over SSH (what Ansible sees), not docker exec."""
        proc = subprocess.run(
            self.ssh_command(cmd), capture_output=True, text=True, timeout=timeout, check=False
        )
        if check and proc.returncode != 0:
            raise HostCommandError(proc.returncode, cmd, proc.stdout, proc.stderr)
        return proc

    def testinfra_host(self, backend: str = "paramiko") -> Any:
        """A testinfra Host over SSH (``paramiko``) or ``docker exec`` (``docker``)."""
        import testinfra

        if backend == "paramiko":
            return testinfra.get_host(
                f"paramiko://root@127.0.0.1:{self.ssh_port}",
                ssh_identity_file=self.key_file,
                ssh_config=self.ssh_config or None,
            )
        if backend == "docker":
            return testinfra.get_host(f"docker://{self.container}")
        if backend == "ssh":
            return testinfra.get_host(
                f"ssh://root@127.0.0.1:{self.ssh_port}",
                ssh_identity_file=self.key_file,
                ssh_config=self.ssh_config or None,
            )
        raise ValueError(f"unknown testinfra backend {backend!r} (paramiko, docker, ssh)")

    def copy_to(self, local: str | os.PathLike, remote: str) -> None:
        """Copy a local file or directory into the container (``docker cp``)."""
        docker("cp", str(local), f"{self.container}:{remote}", timeout=300)

    def copy_from(self, remote: str, local: str | os.PathLike) -> None:
        docker("cp", f"{self.container}:{remote}", str(local), timeout=300)


# ------------------------------------------------------------------ owner tracking


def _boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _start_time(pid: int) -> str:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return ""
    return stat.rsplit(")", 1)[1].split()[19]  # field 22: starttime


def _owner_token(pid: int | None = None) -> str:
    pid = os.getpid() if pid is None else pid
    return f"{socket.gethostname()}:{_boot_id()}:{pid}:{_start_time(pid)}"


def owner_alive(token: str) -> bool:
    """True if the process that created a fleet still runs (or runs elsewhere)."""
    try:
        host, boot, pid, start = token.rsplit(":", 3)
    except ValueError:
        return False
    if host != socket.gethostname():
        return True  # another controller's fleet; leave it alone
    if boot != _boot_id() or not pid.isdigit():
        return False
    return _start_time(int(pid)) == start and start != ""


# ------------------------------------------------------ teardown on exit / signals

_LIVE: dict[str, Fleet] = {}
_LIVE_LOCK = threading.RLock()
_HANDLERS_INSTALLED = False
_PREVIOUS: dict[int, Any] = {}


def _teardown_live(reason: str) -> None:
    with _LIVE_LOCK:
        fleets = [f for f in _LIVE.values() if not f.keep]
    for fleet in fleets:
        log(f"{reason}: tearing down fleet {fleet.fleet_id}")
        with contextlib.suppress(Exception):
            fleet.stop()


def _on_signal(signum: int, frame: Any) -> None:
    _teardown_live(f"signal {signal.Signals(signum).name}")
    previous = _PREVIOUS.get(signum, signal.SIG_DFL)
    if callable(previous):
        previous(signum, frame)
        return
    if previous == signal.SIG_IGN:
        return
    if signum == signal.SIGINT:
        raise KeyboardInterrupt
    # Default action for SIGTERM: die by the signal, as we would have without us.
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)


def _install_handlers() -> None:
    global _HANDLERS_INSTALLED
    if _HANDLERS_INSTALLED:
        return
    atexit.register(_teardown_live, "exit")
    if threading.current_thread() is threading.main_thread():
        for sig in (signal.SIGINT, signal.SIGTERM):
            previous = signal.getsignal(sig)
            if previous is _on_signal:
                continue
            _PREVIOUS[sig] = previous
            signal.signal(sig, _on_signal)
    _HANDLERS_INSTALLED = True


# -------------------------------------------------------------------------- fleet


def _ansible_playbook_bin() -> str:
    beside = Path(sys.executable).parent / "ansible-playbook"
    if beside.exists():
        return str(beside)
    found = shutil.which("ansible-playbook")
    if found is None:
        raise FileNotFoundError(
            "ansible-playbook not found next to the Python interpreter or on PATH: "
            "pip install ansible-core"
        )
    return found


def _yaml_str(value: Any) -> str:
    return json.dumps(value)  # a JSON scalar is a valid YAML flow scalar


def _host_releases(count: int, release: str | Sequence[str] | None, image: str | None) -> list[str]:
    """The release of each of ``count`` hosts ([] when none was asked for)."""
    from .image import release_info

    if release is None:
        return []
    if image is not None:
        raise ValueError("give Fleet.start an image or a release, not both")
    releases = [release] * count if isinstance(release, str) else list(release)
    if len(releases) != count:
        raise ValueError(f"{len(releases)} releases given for {count} hosts: give one per host")
    return [release_info(r).name for r in releases]


def _resolve_images(releases: list[str], image: str | None) -> list[tuple[str, str]]:
    """(release, image) per host: each release's runner image, built once per release."""
    from .image import ensure_runner_image

    if not releases:
        return [("", image or ensure_runner_image())]
    built = {r: ensure_runner_image(release=r) for r in dict.fromkeys(releases)}
    return [(r, built[r]) for r in releases]


class Fleet:
    """Containers started by ``Fleet.start``; a context manager that stops them."""

    def __init__(
        self,
        name: str,
        fleet_id: str,
        workdir: Path,
        image: str,
        *,
        own_workdir: bool,
        keep: bool = False,
        host_images: Sequence[tuple[str, str]] = (),
    ) -> None:
        self.name = name
        self.fleet_id = fleet_id
        self.workdir = workdir
        self.image = image
        # (release, image) of host i+1; empty: every host runs ``image`` (release unknown).
        self.host_images = list(host_images)
        self.keep = keep
        self.hosts: list[RunnerHost] = []
        # The fleet cache host (start(cache_host=True)); it is not one of the runners.
        self.cache_host: RunnerHost | None = None
        # The fleet's own Docker network (name resolution between hosts), "" for the default.
        self.network = ""
        self.key_file = str(workdir / "id_ed25519")
        self.ssh_config = str(workdir / "ssh_config")
        self.inventory = str(workdir / "inventory.yml")
        self._own_workdir = own_workdir
        self._containers: list[str] = []
        self._stopped = False
        self._stop_lock = threading.RLock()
        self._abort = threading.Event()
        self._playbook_runs = 0

    # -- start ---------------------------------------------------------------

    @classmethod
    def start(
        cls,
        count: int,
        name: str = "rk",
        docker_disk: str = "2g",
        cache_disk: str = "1g",
        extra_tmpfs: dict[str, str] | None = None,
        workdir: str | None = None,
        *,
        image: str | None = None,
        release: str | Sequence[str] | None = None,
        boot_timeout: float = DEFAULT_BOOT_TIMEOUT,
        keep: bool = False,
        cache_host: bool = False,
        cache_host_disk: str = "1g",
    ) -> Fleet:
        """Start ``count`` runner hosts and wait until each is fully up (see module doc).

        ``extra_tmpfs`` maps container paths to sizes (``{"/tmp": "256m"}``); sizes
        take docker's tmpfs syntax (``512m``, ``2g``). ``keep=True`` leaves the
        fleet running at exit (debugging; remove later with ``stop()`` or cleanup).
        ``release`` picks the Debian release of the runner image (built if needed): one
        codename for every host, or one per host (a list of ``count`` codenames); it cannot
        be combined with ``image``. Neither given: the default release's image.
        ``cache_host`` adds the fleet cache host (see the module doc) with a registry storage
        tmpfs of ``cache_host_disk``.
        """
        from .engine import ensure_engine

        if count < 1:
            raise ValueError("count must be >= 1")
        releases = _host_releases(count, release, image)
        if not _NAME_RE.match(name):
            raise ValueError(f"fleet name {name!r} must match {_NAME_RE.pattern}")
        mounts = {"/var/lib/docker": docker_disk, "/var/cache/runnerkeep": cache_disk}
        mounts.update(extra_tmpfs or {})
        for path, size in mounts.items():
            if not path.startswith("/") or not _SIZE_RE.match(str(size)):
                raise ValueError(f"bad tmpfs {path}={size} (want an absolute path and e.g. 512m)")
            if path in ("/run", "/run/lock", "/sys/fs/cgroup"):
                raise ValueError(f"{path} is mounted by the harness already")
        if cache_host and not _SIZE_RE.match(str(cache_host_disk)):
            raise ValueError(f"bad cache_host_disk {cache_host_disk!r} (want e.g. 512m)")

        ensure_engine()
        host_images = _resolve_images(releases, image)
        image = host_images[0][1]
        fleet_id = f"{name}-{secrets.token_hex(3)}"
        own = workdir is None or not Path(workdir).exists()
        wd = Path(workdir) if workdir else FLEET_DIR / fleet_id
        wd.mkdir(parents=True, exist_ok=True)
        if own:
            wd.chmod(0o700)  # holds the private key
        fleet = cls(
            name,
            fleet_id,
            wd.resolve(),
            image,
            own_workdir=own,
            keep=keep,
            host_images=host_images if releases else (),
        )
        (wd / "owner").write_text(_owner_token() + "\n")
        with _LIVE_LOCK:
            _install_handlers()
            _LIVE[fleet_id] = fleet
        t0 = time.monotonic()
        try:
            fleet._generate_key()
            fleet._write_ssh_config()
            if cache_host:
                fleet._create_network()
                fleet._run_cache_host(docker_disk, cache_host_disk)
            for i in range(1, count + 1):
                fleet._run_container(i, mounts)
            fleet._wait_all(boot_timeout)
            fleet._write_inventory()
        except BaseException:
            fleet.stop()
            raise
        log(
            f"fleet {fleet_id}: {count} host(s) up in {time.monotonic() - t0:.1f}s; "
            f"inventory {fleet.inventory}"
        )
        return fleet

    def _generate_key(self) -> None:
        subprocess.run(
            [
                "ssh-keygen",
                "-q",
                "-t",
                "ed25519",
                "-N",
                "",
                "-C",
                f"runnerkeep-harness-{self.fleet_id}",
                "-f",
                self.key_file,
            ],
            check=True,
            capture_output=True,
            timeout=30,
        )

    def _write_ssh_config(self) -> None:
        Path(self.ssh_config).write_text(
            "Host *\n"
            "    User root\n"
            f"    IdentityFile {self.key_file}\n"
            "    IdentitiesOnly yes\n"
            "    StrictHostKeyChecking no\n"
            "    UserKnownHostsFile /dev/null\n"
            "    LogLevel ERROR\n"
        )

    def _create_network(self) -> None:
        """The fleet's own network: Docker's DNS there answers each host's inventory name."""
        self.network = self.fleet_id
        docker(
            "network",
            "create",
            "--label",
            f"{LABEL_HARNESS}=1",
            "--label",
            f"{LABEL_FLEET}={self.fleet_id}",
            "--label",
            f"{LABEL_OWNER}={_owner_token()}",
            self.network,
            timeout=60,
        )

    def _run_cache_host(self, docker_disk: str, storage_disk: str) -> None:
        mounts = {"/var/lib/docker": docker_disk, CACHE_HOST_STORAGE: storage_disk}
        release, image = self._image_of(1)
        self.cache_host = self._start_container(
            f"{self.name}-cache", f"{self.fleet_id}-cache", release, image, mounts
        )

    def _run_container(self, index: int, mounts: dict[str, str]) -> None:
        release, image = self._image_of(index)
        host = self._start_container(
            f"{self.name}-{index}", f"{self.fleet_id}-{index}", release, image, mounts
        )
        self.hosts.append(host)

    def _start_container(
        self, host_name: str, container: str, release: str, image: str, mounts: dict[str, str]
    ) -> RunnerHost:
        if self.aborting():
            raise FleetError(f"fleet {self.fleet_id} aborted")
        pubkey = Path(self.key_file + ".pub").read_text().strip()
        args = [
            "run",
            "-d",
            "--name",
            container,
            "--hostname",
            host_name,
            "--label",
            f"{LABEL_HARNESS}=1",
            "--label",
            f"{LABEL_FLEET}={self.fleet_id}",
            "--label",
            f"{LABEL_OWNER}={_owner_token()}",
            "--label",
            f"{LABEL_HOST}={host_name}",
            "--label",
            f"{LABEL_RELEASE}={release}",
            "--cgroupns=host",
            "-v",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "-p",
            "127.0.0.1::22",
            "-e",
            f"RUNNERKEEP_AUTHORIZED_KEY={pubkey}",
        ]
        if self.network:
            args += ["--network", self.network, "--network-alias", host_name]
        for cap in CAPABILITIES:
            args += ["--cap-add", cap]
        for opt in SECURITY_OPTS:
            args += ["--security-opt", opt]
        for path, size in mounts.items():
            args += ["--tmpfs", f"{path}:size={size},exec"]
        self._containers.append(container)  # before run: stop() must know it
        docker(*args, image, timeout=120)
        if self.aborting():  # stop() ran while we created it
            docker("rm", "-f", "-v", container, check=False, timeout=60)
            raise FleetError(f"fleet {self.fleet_id} aborted")
        port_line = docker("port", container, "22/tcp", timeout=30).stdout.split()
        port = next(
            (int(p.rsplit(":", 1)[1]) for p in port_line if p.startswith("127.0.0.1:")), None
        )
        if port is None:
            raise FleetError(f"{container}: sshd port not published on 127.0.0.1: {port_line}")
        return RunnerHost(
            host_name,
            container,
            port,
            self.key_file,
            ssh_config=self.ssh_config,
            release=release,
            image=image,
        )

    def _image_of(self, index: int) -> tuple[str, str]:
        """(release, image) of host ``index`` (1-based)."""
        if self.host_images:
            return self.host_images[index - 1]
        return "", self.image

    def aborting(self) -> bool:
        """True once stop() or Ctrl-C asked the start-up to give up (for wait_host loops)."""
        return self._abort.is_set()

    def container_state(self, container: str) -> str:
        """docker's State.Status of a container ("running", "exited", ...) or "missing"."""
        proc = docker(
            "inspect", "--format", "{{.State.Status}}", container, check=False, timeout=30
        )
        return proc.stdout.strip() if proc.returncode == 0 else "missing"

    def wait_host(self, host: RunnerHost, deadline: float) -> None:
        """Wait until systemd is running, the inner engine answers and ssh takes the key.

        Called for every host in parallel by start(); a subclass overrides it to change what
        "ready" means (tests/validate boots images that may be broken). Raise FleetError to
        fail the start; check ``aborting()`` in loops.
        """
        stage = "systemd"
        last = ""
        degraded_since: float | None = None
        while True:
            if self.aborting():
                raise FleetError(f"{host.name}: aborted")
            if time.monotonic() > deadline:
                raise FleetError(
                    f"{host.name} ({host.container}): not ready within the boot timeout; "
                    f"stuck at {stage}: {last}"
                )
            try:
                if stage == "systemd":
                    state = host.exec(
                        ["systemctl", "is-system-running"], check=False, timeout=15
                    ).stdout.strip()
                    last = state
                    if state == "running":
                        stage = "docker"
                        continue
                    if state == "degraded":
                        degraded_since = degraded_since or time.monotonic()
                        if time.monotonic() - degraded_since > 5:
                            failed = host.exec(
                                ["systemctl", "--failed", "--no-legend", "--plain"],
                                check=False,
                            ).stdout.strip()
                            raise FleetError(
                                f"{host.name} ({host.container}): systemd is degraded; "
                                f"failed units:\n{failed}"
                            )
                    elif state in ("", "offline", "unknown") or "Failed" in state:
                        status = self.container_state(host.container)
                        if status not in ("running", "created"):
                            logs = docker("logs", "--tail", "40", host.container, check=False)
                            raise FleetError(
                                f"{host.name} ({host.container}) is {status}; "
                                f"logs:\n{logs.stdout}{logs.stderr}"
                            )
                elif stage == "docker":
                    proc = host.exec(
                        ["docker", "info", "--format", "{{.ServerVersion}} {{.Driver}}"],
                        check=False,
                        timeout=20,
                    )
                    last = (proc.stdout + proc.stderr).strip()
                    if proc.returncode == 0 and "<no value>" not in proc.stdout:
                        stage = "ssh"
                        continue
                elif stage == "ssh":
                    proc = host.ssh("true", check=False, timeout=20)
                    last = f"rc={proc.returncode} {proc.stderr.strip()}"
                    if proc.returncode == 0:
                        return
            except subprocess.TimeoutExpired as exc:
                last = f"timeout: {exc}"
            except HostCommandError as exc:
                last = str(exc)
            time.sleep(0.5)

    def _wait_all(self, boot_timeout: float) -> None:
        deadline = time.monotonic() + boot_timeout
        every = self.hosts + ([self.cache_host] if self.cache_host else [])
        pool = ThreadPoolExecutor(max_workers=min(16, len(every)))
        try:
            futures = {pool.submit(self.wait_host, h, deadline): h for h in every}
            wait(futures)
            errors = [str(f.exception()) for f in futures if f.exception() is not None]
        except BaseException:
            self._abort.set()  # Ctrl-C while waiting: make the workers give up now
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        if errors:
            raise FleetError(f"fleet {self.fleet_id} failed to start:\n" + "\n".join(errors))

    def _write_inventory(self) -> None:
        common = "        ansible_ssh_common_args: " + _yaml_str(
            "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null"
        )
        lines = [
            f"# runnerkeep harness fleet {self.fleet_id} (generated; removed by Fleet.stop())",
            "all:",
            "  children:",
            "    runners:",
            "      vars:",
            f"        runnerkeep_harness_fleet: {_yaml_str(self.fleet_id)}",
            common,
            "      hosts:",
        ]
        for h in self.hosts:
            lines += self._inventory_host(h)
        if self.cache_host is not None:
            lines += [
                "    cache_hosts:",
                "      vars:",
                f"        runnerkeep_harness_fleet: {_yaml_str(self.fleet_id)}",
                common,
                "      hosts:",
                *self._inventory_host(self.cache_host),
            ]
        Path(self.inventory).write_text("\n".join(lines) + "\n")

    @staticmethod
    def _inventory_host(h: RunnerHost) -> list[str]:
        lines = [
            f"        {h.name}:",
            f"          ansible_host: {_yaml_str('127.0.0.1')}",
            f"          ansible_port: {h.ssh_port}",
            "          ansible_user: root",
            f"          ansible_ssh_private_key_file: {_yaml_str(h.key_file)}",
            "          ansible_connection: ssh",
            "          ansible_python_interpreter: /usr/bin/python3",
            f"          runnerkeep_harness_container: {_yaml_str(h.container)}",
        ]
        if h.release:
            lines.append(f"          runnerkeep_harness_release: {_yaml_str(h.release)}")
        return lines

    # -- use -----------------------------------------------------------------

    def host(self, name: str) -> RunnerHost:
        for h in self.hosts:
            if name in (h.name, h.container):
                return h
        raise KeyError(name)

    def run_playbook(
        self,
        playbook: str,
        *extra_args: str,
        extra_vars: dict[str, Any] | None = None,
        limit: str | None = None,
        check: bool = False,
        timeout: float = 1800,
        env: dict[str, str] | None = None,
        quiet: bool = False,
    ) -> subprocess.CompletedProcess:
        """Run ``ansible-playbook -i <inventory> playbook`` from the repo root.

        Output is captured (``.stdout``/``.stderr`` of the result), echoed to our (unless ``quiet``)
        stdout/stderr (pytest shows it for failing tests) and saved in the workdir.
        The return code is not checked: assert on ``result.returncode``.
        """
        path = Path(playbook)
        if not path.is_absolute() and not path.exists():
            path = REPO_ROOT / playbook
        cmd = [_ansible_playbook_bin(), "-i", self.inventory]
        if extra_vars:
            cmd += ["-e", json.dumps(extra_vars)]
        if limit:
            cmd += ["--limit", limit]
        if check:
            cmd.append("--check")
        cmd += [*extra_args, str(path)]
        run_env = dict(os.environ)
        run_env.update(
            {
                "ANSIBLE_HOST_KEY_CHECKING": "False",
                "ANSIBLE_SSH_CONTROL_PATH_DIR": str(self.workdir / "cp"),
                "ANSIBLE_LOCAL_TEMP": str(self.workdir / "ansible-tmp"),
                "ANSIBLE_NOCOLOR": "1",
                "PATH": f"{Path(sys.executable).parent}{os.pathsep}{run_env.get('PATH', '')}",
            }
        )
        run_env.update(env or {})
        self._playbook_runs += 1
        t0 = time.monotonic()
        proc = subprocess.run(
            cmd,
            cwd=REPO_ROOT,
            env=run_env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        took = time.monotonic() - t0
        header = f"$ {' '.join(cmd)}  (rc={proc.returncode}, {took:.1f}s)\n"
        with contextlib.suppress(OSError):
            Path(self.workdir / f"ansible-{self._playbook_runs}.log").write_text(
                header + proc.stdout + "\n--- stderr ---\n" + proc.stderr
            )
        if not quiet:
            sys.stdout.write(header + proc.stdout)
            if proc.stderr:
                sys.stderr.write(proc.stderr)
        return proc

    # -- stop ----------------------------------------------------------------

    def stop(self) -> None:
        """Remove the containers (with their anonymous volumes) and the workdir. Idempotent."""
        with self._stop_lock:
            self._abort.set()
            if self._stopped:
                return
            names = list(self._containers)
            by_label = quiet_lines(
                "ps", "-aq", "--filter", f"label={LABEL_FLEET}={self.fleet_id}", timeout=30
            )
            targets = names + by_label
            if targets:
                with contextlib.suppress(DockerError):
                    docker("rm", "-f", "-v", *targets, check=False, timeout=120)
            volumes = quiet_lines(
                "volume", "ls", "-q", "--filter", f"label={LABEL_FLEET}={self.fleet_id}"
            )
            if volumes:
                with contextlib.suppress(DockerError):
                    docker("volume", "rm", "-f", *volumes, check=False, timeout=60)
            left = quiet_lines(
                "ps", "-aq", "--filter", f"label={LABEL_FLEET}={self.fleet_id}", timeout=30
            )
            if left:  # a `docker run` was still in flight: try once more
                time.sleep(1)
                docker("rm", "-f", "-v", *left, check=False, timeout=120)
            networks = quiet_lines(
                "network", "ls", "-q", "--filter", f"label={LABEL_FLEET}={self.fleet_id}"
            )
            if networks:  # after the containers: a network in use cannot go
                with contextlib.suppress(DockerError):
                    docker("network", "rm", *networks, check=False, timeout=60)
            if self._own_workdir:
                shutil.rmtree(self.workdir, ignore_errors=True)
            else:
                for f in ("id_ed25519", "id_ed25519.pub", "ssh_config", "inventory.yml", "owner"):
                    with contextlib.suppress(OSError):
                        (self.workdir / f).unlink()
            self._stopped = True
            with _LIVE_LOCK:
                _LIVE.pop(self.fleet_id, None)

    @property
    def stopped(self) -> bool:
        return self._stopped

    def __enter__(self) -> Fleet:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self.keep:
            self.stop()

    def __repr__(self) -> str:
        return f"<Fleet {self.fleet_id} hosts={[h.name for h in self.hosts]}>"


# ----------------------------------------------------------------------- cleanup


def _labels(kind: str, ids: Iterable[str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    ids = list(ids)
    if not ids:
        return out
    proc = docker(kind, "inspect", "--format", "{{json .}}", *ids, check=False, timeout=60)
    for line in proc.stdout.splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            labels = (obj.get("Config") or {}).get("Labels") if kind == "container" else None
            if kind == "volume":
                labels = obj.get("Labels")
                key = obj.get("Name", "")
            else:
                key = obj.get("Id", "")
            out[key] = labels or {}
    return out


def remove_leftovers(include_live: bool = False) -> int:
    """Remove harness containers/volumes (label io.runnerkeep.harness=1) of dead runs.

    Fleets whose owning process still runs on this machine (parallel test
    sessions) are kept unless ``include_live``. Returns how many containers and
    volumes were removed. Also removes stale fleet workdirs under <repo>/.fleet.
    """
    removed = 0
    cids = quiet_lines("ps", "-aq", "--no-trunc", "--filter", f"label={LABEL_HARNESS}=1")
    doomed = [
        cid
        for cid, labels in _labels("container", cids).items()
        if include_live or not owner_alive(labels.get(LABEL_OWNER, ""))
    ]
    if doomed:
        docker("rm", "-f", "-v", *doomed, check=False, timeout=300)
        removed += len(doomed)
    vols = quiet_lines("volume", "ls", "-q", "--filter", f"label={LABEL_HARNESS}=1")
    vdoomed = [
        name
        for name, labels in _labels("volume", vols).items()
        if include_live or not owner_alive(labels.get(LABEL_OWNER, ""))
    ]
    if vdoomed:
        docker("volume", "rm", "-f", *vdoomed, check=False, timeout=120)
        removed += len(vdoomed)
    removed += _remove_dead_networks(include_live)
    if FLEET_DIR.is_dir():
        for wd in FLEET_DIR.iterdir():
            owner = wd / "owner"
            token = owner.read_text().strip() if owner.is_file() else ""
            if wd.is_dir() and (include_live or not owner_alive(token)):
                shutil.rmtree(wd, ignore_errors=True)
    return removed


def _remove_dead_networks(include_live: bool) -> int:
    """Remove the fleet networks (cache host fleets) of dead runs; their containers went first."""
    nets = quiet_lines("network", "ls", "-q", "--filter", f"label={LABEL_HARNESS}=1")
    if not nets:
        return 0
    proc = docker("network", "inspect", "--format", "{{json .}}", *nets, check=False, timeout=60)
    doomed = []
    for line in proc.stdout.splitlines():
        with contextlib.suppress(ValueError):
            obj = json.loads(line)
            token = (obj.get("Labels") or {}).get(LABEL_OWNER, "")
            if include_live or not owner_alive(token):
                doomed.append(obj.get("Id", ""))
    doomed = [n for n in doomed if n]
    if doomed:
        docker("network", "rm", *doomed, check=False, timeout=60)
    return len(doomed)


def list_fleets() -> list[tuple[str, str, str]]:
    """(container, fleet id, status) of every harness container on the engine."""
    rows = quiet_lines(
        "ps",
        "-a",
        "--filter",
        f"label={LABEL_HARNESS}=1",
        "--format",
        '{{.Names}}\t{{.Label "' + LABEL_FLEET + '"}}\t{{.Status}}',
    )
    return [tuple(r.split("\t", 2)) for r in rows]  # type: ignore[misc]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.fleet")
    sub = parser.add_subparsers(dest="cmd", required=True)
    c = sub.add_parser("cleanup", help="remove containers/volumes of crashed harness runs")
    c.add_argument("--all", action="store_true", help="also fleets of still-running processes")
    sub.add_parser("list", help="list harness containers")
    s = sub.add_parser("start", help="start a fleet and keep it (prints the inventory path)")
    s.add_argument("count", type=int, nargs="?", default=2)
    s.add_argument("--name", default="rk")
    s.add_argument("--docker-disk", default="2g")
    s.add_argument("--cache-disk", default="1g")
    s.add_argument("--cache-host", action="store_true", help="add a fleet cache host")
    s.add_argument(
        "--release",
        action="append",
        metavar="CODENAME",
        help="Debian release of the hosts (bullseye, bookworm, trixie); once for all hosts, "
        "or once per host (a mixed fleet: COUNT is then the number given)",
    )
    args = parser.parse_args(argv)
    if args.cmd == "cleanup":
        n = remove_leftovers(include_live=args.all)
        print(f"removed {n} harness container(s)/volume(s)")
    elif args.cmd == "list":
        for row in list_fleets():
            print("\t".join(row))
    elif args.cmd == "start":
        releases = args.release or []
        count = len(releases) if len(releases) > 1 else args.count
        fleet = Fleet.start(
            count,
            name=args.name,
            docker_disk=args.docker_disk,
            cache_disk=args.cache_disk,
            release=releases[0] if len(releases) == 1 else (releases or None),
            keep=True,
            cache_host=args.cache_host,
        )
        print(fleet.inventory)
        print(
            f"stop with: docker rm -f -v $(docker ps -aq --filter label={LABEL_FLEET}="
            f"{fleet.fleet_id}) && rm -rf {fleet.workdir}"
            + (f" && docker network rm {fleet.network}" if fleet.network else ""),
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
