"""Session-shared provisioned fleet: started once, provisioned once, used by every fleet test.

Loaded by tests/integration/conftest.py as a plugin.
"""

from __future__ import annotations

import pytest
from harness.provision import provision


@pytest.fixture(scope="session")
def provisioned_fleet(fleet):
    """The session fleet after one provision.yml run; the run's output is kept for assertions."""
    result = provision(fleet)
    assert result.returncode == 0, f"provision.yml failed:\n{result.stdout}\n{result.stderr}"
    fleet.first_provision = result
    return fleet
