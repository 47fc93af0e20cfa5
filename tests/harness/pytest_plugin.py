"""pytest fixtures for the runner fleet (imported by tests/integration/conftest.py).

Also usable as a plugin on its own: ``python -m pytest -p harness.pytest_plugin``
(with ``tests`` on PYTHONPATH).

- ``engine`` (session): a Docker engine answers, else the test FAILS (never skips)
  with what to install/start.
- ``runner_image`` (session): tag of the runner image (built once, cached by hash).
- ``fleet`` (session): 2 runner hosts started once, not provisioned.
- ``make_fleet`` (function): factory ``make_fleet(count=1, **Fleet.start kwargs)``
  for per-test (destructive) fleets, always torn down after the test.

``--keep-fleet`` leaves fleets running after the session for debugging (remove
them later with ``python -m harness.fleet cleanup``).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from .engine import EngineUnavailable, ensure_engine
from .fleet import Fleet
from .image import ImageBuildError, ensure_runner_image

SESSION_FLEET_SIZE = int(os.environ.get("RUNNERKEEP_FLEET_SIZE", "2"))


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runnerkeep harness")
    group.addoption(
        "--keep-fleet",
        action="store_true",
        default=False,
        help="leave harness fleets running after the tests (debugging)",
    )


def _keep(config: pytest.Config) -> bool:
    try:
        return bool(config.getoption("--keep-fleet"))
    except ValueError:  # option not registered (plugin loaded late)
        return False


@pytest.fixture(scope="session")
def engine() -> None:
    """A Docker engine answers ``docker info``; installs/starts one on bare Debian CI."""
    try:
        ensure_engine()
    except EngineUnavailable as exc:
        pytest.fail(f"Docker engine unavailable: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def runner_image(engine: None) -> str:
    """Tag of the runner host image (``runnerkeep/runner:<hash>``)."""
    try:
        return ensure_runner_image()
    except ImageBuildError as exc:
        pytest.fail(f"runner image build failed: {exc}", pytrace=False)


@pytest.fixture(scope="session")
def fleet(runner_image: str, request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """Two runner hosts shared by the session (not provisioned)."""
    keep = _keep(request.config)
    f = Fleet.start(SESSION_FLEET_SIZE, name="rk", image=runner_image, keep=keep)
    try:
        yield f
    finally:
        if keep:
            print(f"\n--keep-fleet: fleet {f.fleet_id} left running; inventory {f.inventory}")
        else:
            f.stop()


@pytest.fixture
def make_fleet(runner_image: str, request: pytest.FixtureRequest) -> Iterator[Callable[..., Fleet]]:
    """Factory for per-test fleets: ``make_fleet(count=1, docker_disk="512m", ...)``."""
    keep = _keep(request.config)
    fleets: list[Fleet] = []

    def make(count: int = 1, **kwargs: Any) -> Fleet:
        kwargs.setdefault("name", "rkt")
        kwargs.setdefault("image", runner_image)
        kwargs.setdefault("keep", keep)
        f = Fleet.start(count, **kwargs)
        fleets.append(f)
        return f

    try:
        yield make
    finally:
        for f in fleets:
            if keep:
                print(f"\n--keep-fleet: fleet {f.fleet_id} left running; inventory {f.inventory}")
            else:
                f.stop()
