"""The cache service's systemd unit (roles/image_cache, runnerkeep-cache@.service) may write
where the service's work goes, and nowhere else: the store, its own state, and the spool its
cache events go to for the watch (ProtectSystem=strict makes everything else read-only, and
events.record_event drops a failed write silently). Rendered by Ansible's templating."""

from __future__ import annotations

import os

import pytest

yaml = pytest.importorskip("yaml")
template = pytest.importorskip("ansible.template")
dataloader = pytest.importorskip("ansible.parsing.dataloader")

ROLE = os.path.join(os.path.dirname(__file__), "..", "..", "..", "roles", "image_cache")


def _trusted(value):
    # ansible-core 2.19 templates only strings marked as trusted; older versions template all.
    trust = getattr(template, "trust_as_template", None)
    return trust(value) if trust else value


def render_unit(**inventory) -> str:
    with open(os.path.join(ROLE, "defaults", "main.yml"), encoding="utf-8") as handle:
        variables = {**yaml.safe_load(handle), "ansible_managed": "managed", **inventory}
    trusted = {
        key: _trusted(value) if isinstance(value, str) else value
        for key, value in variables.items()
    }
    path = os.path.join(ROLE, "templates", "runnerkeep-cache@.service.j2")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    templar = template.Templar(loader=dataloader.DataLoader(), variables=trusted)
    return templar.template(_trusted(text))


def writable_paths(unit: str) -> list[str]:
    lines = [line for line in unit.splitlines() if line.startswith("ReadWritePaths=")]
    assert len(lines) == 1, unit
    return lines[0].partition("=")[2].split()


def test_the_service_may_write_the_spool_its_events_go_to():
    unit = render_unit()
    assert "ProtectSystem=strict" in unit.splitlines()
    assert writable_paths(unit) == [
        "/var/cache/runnerkeep/images",
        "/var/lib/runnerkeep/cache-service",
        # "-": a host without runner_base's spool still starts the service.
        "-/var/lib/runnerkeep/spool",
    ]


def test_the_spool_follows_runner_base():
    unit = render_unit(runner_base_spool_dir="/srv/rk/state/spool")
    assert writable_paths(unit)[-1] == "-/srv/rk/state/spool"
