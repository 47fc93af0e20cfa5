"""``runnerkeep self-check``: can this host run runnerkeep (python, config, dirs, Docker)?"""

from __future__ import annotations

import os
import sys
from dataclasses import asdict, dataclass
from typing import Any

from . import __version__
from .config import load_config
from .docker_cli import engine_info
from .errors import RunnerkeepError


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


def run_self_check(config_file: str | None = None) -> dict[str, Any]:
    """Run every check; never raises for a failed check, it reports it."""
    checks: list[Check] = []
    version_ok = sys.version_info >= (3, 9)
    checks.append(Check("python", version_ok, f"python {sys.version.split()[0]} (needs >= 3.9)"))
    try:
        config = load_config(config_file)
        checks.append(Check("config", True, "config file readable"))
    except RunnerkeepError as exc:
        config = {"paths": {}}
        checks.append(Check("config", False, str(exc)))
    for key, path in sorted(config["paths"].items()):
        if not os.path.isdir(path):
            checks.append(Check(key, False, f"{path} does not exist (run provision.yml)"))
        elif not os.access(path, os.W_OK | os.X_OK):
            checks.append(Check(key, False, f"{path} is not writable by uid {os.geteuid()}"))
        else:
            checks.append(Check(key, True, f"{path} exists and is writable"))
    try:
        info = engine_info()
        checks.append(
            Check(
                "docker",
                True,
                f"engine {info.get('ServerVersion')} answers, "
                f"driver {info.get('Driver')}, root {info.get('DockerRootDir')}",
            )
        )
    except RunnerkeepError as exc:
        checks.append(Check("docker", False, str(exc)))
    return {
        "version": __version__,
        "ok": all(c.ok for c in checks),
        "checks": [asdict(c) for c in checks],
    }
