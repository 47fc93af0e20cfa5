"""Integration tests: need a Docker engine and the containerized runner fleet.

Fixtures come from ``harness.pytest_plugin`` (tests/harness/pytest_plugin.py):
``engine``, ``runner_image``, ``fleet`` (2 hosts, session, not provisioned) and
``make_fleet`` (per-test factory, always torn down). Every test collected under
this directory gets the ``integration`` marker.

More fixtures (e.g. ``provisioned_fleet``) go in ``*_fixtures.py`` files next to this
file (``fleet_fixtures.py``, ``cache_fixtures.py``, ...): each is loaded as a pytest
plugin automatically, so its fixtures and hooks are visible to every test here.
Write them against ``harness.fleet.Fleet`` and the
fixtures above, e.g.::

    @pytest.fixture(scope="session")
    def provisioned_fleet(fleet):
        result = fleet.run_playbook("playbooks/provision.yml")
        assert result.returncode == 0, result.stdout
        return fleet
"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest
from harness.pytest_plugin import (  # noqa: F401  (fixtures and hooks for this directory)
    engine,
    fleet,
    make_fleet,
    pytest_addoption,
    runner_image,
)

_HERE = Path(__file__).resolve().parent


def pytest_configure(config: pytest.Config) -> None:
    for path in sorted(_HERE.glob("*_fixtures.py")):
        modname = f"runnerkeep_integration_{path.stem}"
        if config.pluginmanager.has_plugin(modname):
            continue
        spec = importlib.util.spec_from_file_location(modname, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[modname] = module
        spec.loader.exec_module(module)
        config.pluginmanager.register(module, modname)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if _HERE in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.integration)
