"""Fleet fixtures shared by the integration tests (loaded by conftest.py as a plugin).

- ``provisioned_fleet`` (session): the session fleet after one provision.yml run.
- ``release_images`` (session): the runner image of every Debian release the harness builds
  (``harness.image.RELEASES``: bullseye, bookworm, trixie), each built once, cached by hash.
- ``mixed_fleet`` (module): one runner host per release, in ``RELEASES`` order, started and
  not provisioned; each ``RunnerHost.release`` names its release. Always torn down.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness.fleet import Fleet
from harness.image import RELEASES, ImageBuildError, ensure_runner_image
from harness.provision import provision


@pytest.fixture(scope="session")
def provisioned_fleet(fleet):
    """The session fleet after one provision.yml run; the run's output is kept for assertions."""
    result = provision(fleet)
    assert result.returncode == 0, f"provision.yml failed:\n{result.stdout}\n{result.stderr}"
    fleet.first_provision = result
    return fleet


@pytest.fixture(scope="session")
def release_images(engine: None) -> dict[str, str]:
    """{release: runner image tag} for every release in harness.image.RELEASES."""
    images = {}
    for release in RELEASES:
        try:
            images[release] = ensure_runner_image(release=release)
        except ImageBuildError as exc:
            pytest.fail(f"runner image for Debian {release} failed: {exc}", pytrace=False)
    return images


def _keep(config: pytest.Config) -> bool:
    try:
        return bool(config.getoption("--keep-fleet"))
    except ValueError:  # the harness plugin's option is not registered
        return False


@pytest.fixture(scope="module")
def mixed_fleet(release_images: dict[str, str], request: pytest.FixtureRequest) -> Iterator[Fleet]:
    """One runner per Debian release (bullseye, bookworm, trixie), not provisioned."""
    keep = _keep(request.config)
    fleet = Fleet.start(len(release_images), name="rkmx", release=list(release_images), keep=keep)
    try:
        yield fleet
    finally:
        if keep:
            print(f"\n--keep-fleet: fleet {fleet.fleet_id} left running ({fleet.inventory})")
        else:
            fleet.stop()
