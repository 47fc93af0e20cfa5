"""Fixtures for the cleanup unit tests (helpers live in cleanuptest_helpers.py)."""

from __future__ import annotations

import pytest


@pytest.fixture
def make_config(tmp_path):
    def _make(cleaners, **section):
        return {
            "paths": {
                "state_dir": str(tmp_path / "state"),
                "cache_dir": str(tmp_path / "cache"),
                "log_dir": str(tmp_path / "logs"),
            },
            "cleanup": {"cleaners": cleaners, **section},
        }

    return _make
