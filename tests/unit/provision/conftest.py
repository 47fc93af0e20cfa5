"""Fixtures for the provision (host_layout) unit tests; helpers live in provisiontest_helpers.py.

These tests run as root in tmp_path: they chown to real ids (1000, 65534) to play a job's or the
service user's files, as the module meets them on a runner host.
"""

from __future__ import annotations

import os

import pytest
from provisiontest_helpers import FakeRun


@pytest.fixture(autouse=True)
def _as_root_with_a_known_umask():
    if os.geteuid() != 0:
        pytest.skip("the provision tests chown to other users: needs root (CI runs as root)")
    # The module runs with whatever umask the Ansible connection gives; the tests fix one.
    old = os.umask(0o022)
    yield
    os.umask(old)


@pytest.fixture
def fake_run():
    return FakeRun()
