"""Every unit test writes its run-dir fallbacks (locks, watch state) into its own temp dir,
never into the machine's /run/runnerkeep."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _private_run_dir(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("RUNNERKEEP_RUN_DIR", str(tmp_path_factory.mktemp("run")))
