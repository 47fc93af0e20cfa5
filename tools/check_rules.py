#!/usr/bin/env python3
"""Check the monitoring files with the Prometheus tools: exit 0 when all pass, 1 when one fails,
2 when a tool is missing.

- ``promtool check rules``: every rule file under monitoring/prometheus parses and is valid;
- ``promtool test rules``: the rule unit tests (``*.test.yml``) pass;
- ``amtool check-config``: the example Alertmanager configuration is valid.

promtool ships in Debian's ``prometheus`` package, amtool in ``prometheus-alertmanager``. Each
run is bounded in time. Standard library only.
"""

from __future__ import annotations

import argparse
import glob
import os
import shutil
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMETHEUS_DIR = os.path.join(ROOT, "monitoring", "prometheus")
ALERTMANAGER_DIR = os.path.join(ROOT, "monitoring", "alertmanager")
TIMEOUT_SECONDS = 120
PACKAGES = {"promtool": "prometheus", "amtool": "prometheus-alertmanager"}


def rule_files() -> list[str]:
    every = sorted(glob.glob(os.path.join(PROMETHEUS_DIR, "*.yml")))
    return [path for path in every if not path.endswith(".test.yml")]


def test_files() -> list[str]:
    return sorted(glob.glob(os.path.join(PROMETHEUS_DIR, "*.test.yml")))


def alertmanager_files() -> list[str]:
    return sorted(glob.glob(os.path.join(ALERTMANAGER_DIR, "*.yml")))


def missing_tools() -> list[str]:
    found = {"promtool": shutil.which("promtool"), "amtool": shutil.which("amtool")}
    return [name for name, path in found.items() if path is None]


def run(argv: list[str], cwd: str) -> bool:
    """Run one check, its output passed through; True when it exits 0 within the time bound."""
    print("+ " + " ".join(os.path.relpath(a, ROOT) if a.startswith(ROOT) else a for a in argv))
    try:
        proc = subprocess.run(argv, cwd=cwd, timeout=TIMEOUT_SECONDS, check=False)
    except subprocess.TimeoutExpired:
        print(f"check_rules: {argv[0]} did not finish within {TIMEOUT_SECONDS}s", file=sys.stderr)
        return False
    return proc.returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.parse_args(argv)
    missing = missing_tools()
    if missing:
        packages = " ".join(sorted({PACKAGES[name] for name in missing}))
        print(
            f"check_rules: {', '.join(missing)} not found; install: apt-get install -y {packages}",
            file=sys.stderr,
        )
        return 2
    rules, tests, configs = rule_files(), test_files(), alertmanager_files()
    if not rules or not tests:
        print(f"check_rules: no rule files or rule tests in {PROMETHEUS_DIR}", file=sys.stderr)
        return 1
    results = [
        run(["promtool", "check", "rules", *rules], PROMETHEUS_DIR),
        # Test files name their rule files relative to themselves.
        run(["promtool", "test", "rules", *tests], PROMETHEUS_DIR),
    ]
    if configs:
        results.append(run(["amtool", "check-config", *configs], ALERTMANAGER_DIR))
    failed = results.count(False)
    print(f"check_rules: {len(results) - failed} of {len(results)} checks passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
