"""Find a Docker engine, or install and start one on a bare Debian CI machine.

``ensure_engine()`` checks ``docker info`` (honouring DOCKER_HOST). If no engine
answers and we are root on Debian (and RUNNERKEEP_NO_ENGINE_INSTALL is not set),
it installs ``docker.io`` when missing and starts ``dockerd`` detached, logging to
/var/log/dockerd.log, then waits up to 60 s for ``docker info``. Otherwise it raises
``EngineUnavailable`` saying exactly what to install and start.

``ensure_host_programs()`` installs, with one line per package, every other program the harness
and the integration tests call on this machine (``HOST_PROGRAMS``) when it is missing, so a clean
Debian machine with only python3, pip and git runs the README's commands.

``python -m harness.engine`` does both and exits 0 (engine and programs ready) or 1.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from ._docker import log

ENGINE_WAIT_SECONDS = 60
DOCKERD_LOG = "/var/log/dockerd.log"

HOW_TO = (
    "Install and start a Docker engine: as root on Debian/Ubuntu run\n"
    "    apt-get update && apt-get install -y docker.io\n"
    f"    dockerd >{DOCKERD_LOG} 2>&1 &\n"
    "and wait until `docker info` answers (without systemd; with systemd: "
    "`systemctl start docker`). If the engine runs elsewhere, set DOCKER_HOST "
    "(e.g. DOCKER_HOST=unix:///var/run/docker.sock)."
)


# The engine's programs: installed (with one line) by ensure_engine when no engine answers.
ENGINE_PROGRAMS = {"docker": "docker.io", "dockerd": "docker.io"}

# Program the harness or a test runs on this machine -> the Debian package that ships it.
HOST_PROGRAMS = {
    "debootstrap": "debootstrap",  # the offline runner base image (harness/image.py)
    "skopeo": "skopeo",  # OCI archives in the cache tests
    "unshare": "util-linux",  # private mount namespaces in the hardening tests
    "mount": "mount",
    "umount": "mount",  # tmpfs and bind mounts the disk and cleanup tests make
    "tar": "tar",
    "ssh": "openssh-client",  # the harness reaches runner containers over SSH, as Ansible does
    "ssh-keygen": "openssh-client",  # the fleet's throwaway SSH key
    "ip": "iproute2",  # a network namespace in the watch deadline test
    "prometheus": "prometheus",  # the alert rules end to end (test_alerting_e2e.py)
    "promtool": "prometheus",  # rule unit tests (tools/check_rules.py)
    "prometheus-alertmanager": "prometheus-alertmanager",  # alert routing end to end
    "amtool": "prometheus-alertmanager",  # Alertmanager config check (tools/check_rules.py)
    "chromium": "chromium",  # headless render of the fleet report (test_fleet_report.py)
    "docker-registry": "docker-registry",  # fleet cache tier on loopback (remote tests)
    "curl": "curl",  # the transport baseline of the fleet cache bench
    "openssl": "openssl",  # a throwaway CA and TLS certificate for the loopback registry
    "htpasswd": "apache2-utils",  # bcrypt users of the loopback registry (Distribution's htpasswd)
}
# tests/unit/core/test_external_programs.py finds every program the tests run on this machine
# and fails when one is neither here, nor in ENGINE_PROGRAMS, nor a README requirement.


class EngineUnavailable(RuntimeError):
    """No Docker engine answers and none could be started."""


def _docker_info(timeout: float = 15) -> tuple[bool, str]:
    cli = shutil.which("docker")
    if cli is None:
        return False, "docker CLI not found on PATH"
    try:
        proc = subprocess.run(
            [cli, "info", "--format", "{{.ServerVersion}} {{.Driver}}"],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False, f"`docker info` did not answer within {timeout}s"
    if proc.returncode == 0 and proc.stdout.strip() and "<no value>" not in proc.stdout:
        return True, proc.stdout.strip()
    return False, (proc.stderr or proc.stdout).strip()


def _is_debian() -> bool:
    return Path("/etc/debian_version").exists()


def _may_install() -> bool:
    return (
        os.geteuid() == 0
        and _is_debian()
        and os.environ.get("RUNNERKEEP_NO_ENGINE_INSTALL", "") in ("", "0")
    )


def _default_socket_targeted() -> bool:
    host = os.environ.get("DOCKER_HOST", "")
    return host in ("", "unix:///var/run/docker.sock", "unix:///run/docker.sock")


def _install_docker_io() -> None:
    log("installing docker.io with apt-get (no engine found)")
    _apt_install(["docker.io"])


_apt_updated = False


def _apt_install(packages: list[str]) -> None:
    global _apt_updated
    if not _apt_updated:
        _apt_get(["apt-get", "update"], timeout=300)
        _apt_updated = True
    _apt_get(["apt-get", "install", "-y", "--no-install-recommends", *packages], timeout=600)


def _apt_get(cmd: list[str], timeout: float) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    proc = subprocess.run(
        cmd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if proc.returncode != 0:
        raise EngineUnavailable(
            f"`{' '.join(cmd)}` failed ({proc.returncode}): {proc.stderr.strip()[-2000:]}\n"
            + HOW_TO
        )


def ensure_host_programs() -> None:
    """Install the Debian package of every missing program in HOST_PROGRAMS, or say what to do."""
    missing = {name: pkg for name, pkg in HOST_PROGRAMS.items() if shutil.which(name) is None}
    if not missing:
        return
    if not _may_install():
        raise EngineUnavailable(
            f"programs the tests need are missing: {', '.join(sorted(missing))}; as root on "
            f"Debian: apt-get install -y {' '.join(sorted(set(missing.values())))}"
        )
    for name, pkg in sorted(missing.items()):
        log(f"installing {pkg} with apt-get ({name} not found)")
    _apt_install(sorted(set(missing.values())))


def _start_dockerd() -> None:
    dockerd = shutil.which("dockerd")
    if dockerd is None:
        raise EngineUnavailable("dockerd not found after installing docker.io.\n" + HOW_TO)
    log(f"starting {dockerd} (log: {DOCKERD_LOG})")
    with open(DOCKERD_LOG, "ab") as out:
        subprocess.Popen(
            [dockerd],
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # detached: survives our exit and our Ctrl-C
            close_fds=True,
        )


def ensure_engine() -> None:
    """Make sure a Docker engine answers ``docker info``; raise EngineUnavailable if not."""
    ok, detail = _docker_info()
    if ok:
        return
    if not _may_install() or not _default_socket_targeted():
        why = (
            "auto-install disabled by RUNNERKEEP_NO_ENGINE_INSTALL"
            if os.environ.get("RUNNERKEEP_NO_ENGINE_INSTALL", "") not in ("", "0")
            else "auto-start only happens as root on Debian with the default socket"
        )
        raise EngineUnavailable(
            f"No Docker engine answers (DOCKER_HOST={os.environ.get('DOCKER_HOST', '<unset>')}): "
            f"{detail}\n({why})\n{HOW_TO}"
        )
    if shutil.which("dockerd") is None or shutil.which("docker") is None:
        _install_docker_io()
    _start_dockerd()
    deadline = time.monotonic() + ENGINE_WAIT_SECONDS
    while time.monotonic() < deadline:
        ok, detail = _docker_info(timeout=5)
        if ok:
            log(f"engine ready: {detail}")
            return
        time.sleep(1)
    tail = ""
    with contextlib.suppress(OSError):
        tail = Path(DOCKERD_LOG).read_text(errors="replace")[-2000:]
    raise EngineUnavailable(
        f"dockerd started but `docker info` did not answer within {ENGINE_WAIT_SECONDS}s: "
        f"{detail}\nLast lines of {DOCKERD_LOG}:\n{tail}\n{HOW_TO}"
    )


def main() -> int:
    try:
        ensure_engine()
        ensure_host_programs()
    except EngineUnavailable as exc:
        print(f"runnerkeep harness: Docker engine unavailable.\n{exc}", file=sys.stderr)
        return 1
    _ok, detail = _docker_info()
    print(f"Docker engine ready: {detail}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
