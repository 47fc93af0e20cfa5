"""The one place that runs the docker CLI.

runnerkeep talks to the engine through the ``docker`` command, because the CLI is the only
Docker client a runner host is guaranteed to have and it honours DOCKER_HOST and contexts the
way the runner's jobs do. The exception is the image cache when the CLI would use the local
socket anyway: its save and restore streams and the questions around them (image inspect,
engine info, tags) go straight to the socket (``docker_api.py``), and come here otherwise.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from typing import Any

from .errors import DockerCommandError, DockerUnavailableError

DEFAULT_TIMEOUT = 120.0


def docker_binary() -> str:
    path = shutil.which("docker")
    if not path:
        raise DockerUnavailableError(
            "the docker CLI is not installed or not on PATH; install docker.io (Debian) "
            "or docker-ce-cli"
        )
    return path


def run_docker(
    args: list[str], timeout: float = DEFAULT_TIMEOUT, check: bool = True
) -> subprocess.CompletedProcess:
    """Run ``docker ARGS`` and capture text output; raise with docker's stderr on failure."""
    cmd = [docker_binary(), *args]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        raise DockerCommandError(
            f"'docker {' '.join(args)}' did not finish within {timeout:.0f}s"
        ) from None
    if check and proc.returncode != 0:
        stderr = proc.stderr.strip()
        if _is_daemon_unreachable(stderr):
            raise DockerUnavailableError(f"the Docker engine does not answer: {stderr}")
        raise DockerCommandError(f"'docker {' '.join(args)}' failed: {stderr or proc.returncode}")
    return proc


def _is_daemon_unreachable(stderr: str) -> bool:
    markers = ("Cannot connect to the Docker daemon", "Is the docker daemon running")
    return any(marker in stderr for marker in markers)


def docker_json_lines(args: list[str], timeout: float = DEFAULT_TIMEOUT) -> list[dict[str, Any]]:
    """Run a docker command given ``--format '{{json .}}'`` and parse one object per line."""
    out = run_docker(args, timeout=timeout).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


def engine_info(timeout: float = 20.0) -> dict[str, Any]:
    """``docker info`` as a dict; raises DockerUnavailableError when the engine does not answer."""
    proc = run_docker(["info", "--format", "{{json .}}"], timeout=timeout, check=False)
    if proc.returncode != 0:
        raise DockerUnavailableError(
            f"the Docker engine does not answer ('docker info' failed: {proc.stderr.strip()})"
        )
    info = json.loads(proc.stdout)
    if info.get("ServerErrors"):
        raise DockerUnavailableError(
            f"the Docker engine does not answer: {'; '.join(info['ServerErrors'])}"
        )
    return info


DEFAULT_DOCKER_ROOT = "/var/lib/docker"  # the engine's data root unless configured otherwise


def docker_root_of(info: dict[str, Any]) -> str:
    """The data root a ``docker info`` answer names (the default when it names none)."""
    return info.get("DockerRootDir") or DEFAULT_DOCKER_ROOT


def docker_root_dir(timeout: float = 20.0) -> str:
    """The engine's data root; raises DockerUnavailableError when the engine does not answer."""
    return docker_root_of(engine_info(timeout=timeout))


def inspect_images(refs: list[str]) -> list[dict[str, Any]]:
    """``docker image inspect`` for each ref; raises DockerCommandError naming a missing one."""
    if not refs:
        return []
    out = run_docker(["image", "inspect", *refs]).stdout
    return json.loads(out)
