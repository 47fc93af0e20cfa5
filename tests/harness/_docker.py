"""Small helpers around the docker CLI (the harness uses the CLI, not the SDK)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence

DOCKER = os.environ.get("RUNNERKEEP_DOCKER_CLI", "docker")


class DockerError(RuntimeError):
    """A docker CLI call failed."""


def docker_bin() -> str:
    path = shutil.which(DOCKER)
    if path is None:
        raise DockerError(
            f"docker CLI {DOCKER!r} not found on PATH; install it (Debian: apt-get install -y "
            "docker.io, or docker-ce-cli from Docker's repository)"
        )
    return path


def docker(
    *args: str,
    check: bool = True,
    timeout: float | None = 120,
    capture: bool = True,
    input: str | bytes | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess:
    """Run ``docker ARGS``; text output captured; raise DockerError on failure if check."""
    cmd = [docker_bin(), *args]
    text = not isinstance(input, bytes)
    try:
        proc = subprocess.run(
            cmd,
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
            input=input,
            text=text,
            timeout=timeout,
            env=env,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise DockerError(f"timed out after {timeout}s: {' '.join(cmd)}") from exc
    if check and proc.returncode != 0:
        err = proc.stderr if capture else ""
        if isinstance(err, bytes):
            err = err.decode(errors="replace")
        raise DockerError(f"`{' '.join(cmd)}` failed ({proc.returncode}): {(err or '').strip()}")
    return proc


def quiet_lines(*args: str, timeout: float = 60) -> list[str]:
    """Run docker and return non-empty stdout lines (empty list on failure)."""
    try:
        proc = docker(*args, check=False, timeout=timeout)
    except DockerError:
        return []
    if proc.returncode != 0:
        return []
    return [line.strip() for line in proc.stdout.splitlines() if line.strip()]


def image_exists(ref: str) -> bool:
    proc = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False, timeout=30)
    return proc.returncode == 0


def image_id(ref: str) -> str | None:
    proc = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False, timeout=30)
    return proc.stdout.strip() if proc.returncode == 0 else None


def log(msg: str) -> None:
    print(f"[harness] {msg}", file=sys.stderr, flush=True)


def run_streamed(cmd: Sequence[str], *, timeout: float, env: dict[str, str] | None = None) -> int:
    """Run a command with output going to our stderr (progress), bounded by timeout."""
    proc = subprocess.Popen(list(cmd), stdout=sys.stderr, stderr=sys.stderr, env=env)
    try:
        return proc.wait(timeout=timeout)
    except BaseException:
        proc.kill()
        proc.wait()
        raise
