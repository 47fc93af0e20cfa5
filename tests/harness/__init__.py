"""Containerized runner fleet for integration tests, nox sessions and demos.

Modules:
- ``harness.engine`` -- find or start a Docker engine (``ensure_engine``).
- ``harness.image`` -- build the runner host image, cached by input hash
  (``ensure_runner_image``).
- ``harness.fleet`` -- start/stop fleets of runner containers reachable over
  SSH on loopback (``Fleet``, ``RunnerHost``, ``remove_leftovers``).
- ``harness.pytest_plugin`` -- pytest fixtures (``engine``, ``runner_image``,
  ``fleet``, ``make_fleet``).
"""

from __future__ import annotations

from pathlib import Path

#: Root of the runnerkeep repository (tests/harness/__init__.py -> repo).
REPO_ROOT = Path(__file__).resolve().parents[2]

__all__ = ["REPO_ROOT"]
