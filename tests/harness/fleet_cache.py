"""A harness fleet with its fleet cache tier: the registry on the cache host, runners pointed at it.

    from harness.fleet import Fleet
    from harness.fleet_cache import FleetCache

    with Fleet.start(2, cache_host=True) as fleet:
        tier = FleetCache.for_fleet(fleet, push_hosts=["rk-1"])
        result = tier.provision()            # provision.yml (its cache_hosts play first)
        assert result.returncode == 0

``for_fleet`` makes a push user and a pull user with fresh random passwords and writes them as
Ansible variables beside the fleet's inventory (group_vars/cache_hosts.yml for the role's users,
host_vars/<runner>.yml for each runner's URL, user and push switch): runners named in
``push_hosts`` get the push port and the push user, the others the pull port and the pull user.
The workdir holding them is the fleet's (mode 0700, removed with it).
"""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import REPO_ROOT
from .fleet import CACHE_HOST_STORAGE, Fleet
from .provision import FLEET_VARS

PULL_PORT = 5000
PUSH_PORT = 5001
REPOSITORY = "runnerkeep/cache"
FLEET_CACHE_ROLE = "runnerkeep.runner.fleet_cache"
CONFIG_DIR = "/etc/runnerkeep"
CA_FILE = f"{CONFIG_DIR}/fleet-cache-ca.pem"
CREDENTIALS_FILE = f"{CONFIG_DIR}/cache-remote.credentials"
# Where blobs live in the registry's storage (Distribution's filesystem driver).
BLOBS_DIR = f"{CACHE_HOST_STORAGE}/docker/registry/v2/blobs/sha256"
REPOSITORY_DIR = f"{CACHE_HOST_STORAGE}/docker/registry/v2/repositories/{REPOSITORY}"


@dataclass
class FleetCache:
    """The fleet cache settings of one harness fleet (see the module doc)."""

    fleet: Fleet
    push_hosts: list[str]
    push_user: tuple[str, str]
    pull_user: tuple[str, str]
    timeout: float = 10
    extra_role_vars: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def for_fleet(
        cls,
        fleet: Fleet,
        push_hosts: Sequence[str] = (),
        *,
        timeout: float = 10,
        role_vars: dict[str, Any] | None = None,
    ) -> FleetCache:
        if fleet.cache_host is None:
            raise ValueError("the fleet has no cache host: Fleet.start(..., cache_host=True)")
        tier = cls(
            fleet,
            list(push_hosts),
            ("fleet-push", "push-" + secrets.token_urlsafe(18)),
            ("fleet-pull", "pull-" + secrets.token_urlsafe(18)),
            timeout=timeout,
            extra_role_vars=dict(role_vars or {}),
        )
        tier.write_vars()
        return tier

    @property
    def cache_name(self) -> str:
        assert self.fleet.cache_host is not None
        return self.fleet.cache_host.name

    def url(self, push: bool) -> str:
        port = PUSH_PORT if push else PULL_PORT
        return f"https://{self.cache_name}:{port}/{REPOSITORY}"

    def write_vars(self) -> None:
        inventory_dir = Path(self.fleet.inventory).parent
        group_vars = inventory_dir / "group_vars"
        host_vars = inventory_dir / "host_vars"
        group_vars.mkdir(exist_ok=True)
        host_vars.mkdir(exist_ok=True)
        role = {
            "fleet_cache_push_users": [_user(self.push_user)],
            "fleet_cache_pull_users": [_user(self.pull_user)],
            **self.extra_role_vars,
        }
        _write_json_yaml(group_vars / "cache_hosts.yml", role)
        for host in self.fleet.hosts:
            push = host.name in self.push_hosts
            user = self.push_user if push else self.pull_user
            _write_json_yaml(
                host_vars / f"{host.name}.yml",
                {
                    "image_cache_remote_url": self.url(push),
                    "image_cache_remote_push": push,
                    "image_cache_remote_timeout": self.timeout,
                    "image_cache_remote_user": user[0],
                    "image_cache_remote_password": user[1],
                },
            )

    def provision(self, *extra_args: str, **kwargs: Any) -> subprocess.CompletedProcess:
        """provision.yml, whose cache_hosts play provisions the registry before the runners'
        play (which then sees the CA fact it published). A provision.yml without that play is
        followed by playbooks/fleet_cache.yml in the same ansible-playbook run."""
        provision_yml = REPO_ROOT / "playbooks" / "provision.yml"
        if FLEET_CACHE_ROLE in provision_yml.read_text():
            return self.fleet.run_playbook(
                str(provision_yml), *extra_args, extra_vars=FLEET_VARS, **kwargs
            )
        return self.fleet.run_playbook(
            "playbooks/fleet_cache.yml",
            *extra_args,
            str(provision_yml),
            extra_vars=FLEET_VARS,
            **kwargs,
        )

    def cache_exec(self, cmd: str, **kwargs: Any) -> subprocess.CompletedProcess:
        """Run ``cmd`` on the cache host (docker exec, as root)."""
        assert self.fleet.cache_host is not None
        return self.fleet.cache_host.exec(cmd, **kwargs)


def _user(pair: tuple[str, str]) -> dict[str, str]:
    return {"name": pair[0], "password": pair[1]}


def _write_json_yaml(path: Path, data: dict[str, Any]) -> None:
    # JSON is YAML; 0600: passwords.
    path.write_text(json.dumps(data, indent=2) + "\n")
    path.chmod(0o600)
