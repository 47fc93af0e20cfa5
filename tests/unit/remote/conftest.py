"""Fixtures of the fleet tier's transport tests: real loopback registries, one per test
module (docker-registry starts in about a second)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from harness.registry import LocalRegistry


@pytest.fixture(scope="module")
def plain_registry() -> Iterator[LocalRegistry]:
    """http, no auth, relative upload Locations."""
    with LocalRegistry(relative_urls=True) as reg:
        yield reg


@pytest.fixture(scope="module")
def auth_registry() -> Iterator[LocalRegistry]:
    """http + htpasswd users pusher and puller (absolute upload Locations)."""
    with LocalRegistry(auth=True) as reg:
        yield reg


@pytest.fixture(scope="module")
def tls_registry() -> Iterator[LocalRegistry]:
    """https with a throwaway CA + htpasswd users."""
    with LocalRegistry(tls=True, auth=True) as reg:
        yield reg
