"""Fixtures for the runner-image validation suite (tests/validate).

The suite checks ONE booted, provisioned runner host. ``run_validation.py`` boots it with
the fleet harness, runs provision.yml and then runs::

    pytest tests/validate --validate-target TARGET.json --validate-profile PROFILE.yml

``TARGET.json`` says how to reach the host (container, loopback SSH port, key) and what
happened while booting and provisioning. Every check fails with one line
``<check>: expected <X>, found <Y>``; ``--validate-results FILE`` also writes each check's
title, outcome and message as JSON (the Markdown summary is made from it).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

_HERE = Path(__file__).resolve().parent
for _p in (_HERE, _HERE.parent):  # validate_profile, and the harness package under tests/
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from validate_profile import (  # noqa: E402
    expected_hooks,
    expected_timers,
    load_profile,
    provision_roles,
)

_RESULTS: list[dict[str, Any]] = []
_CACHE = pytest.StashKey[dict[str, Any]]()
# fixture name -> (its items from the profile, each item's test id)
_PARAMS: dict[str, tuple[Callable[[dict[str, Any]], list[Any]], Callable[[Any], str]]] = {
    "disk": (lambda p: p["disks"], lambda d: d["path"]),
    "required_tool": (lambda p: p["toolchains"]["required"], lambda t: t["command"]),
    "forbidden_tool": (lambda p: p["toolchains"]["forbidden"], lambda t: t["command"]),
    "timer": (expected_timers, lambda t: t["name"]),
    "hook": (expected_hooks, lambda h: h["path"]),
    "service": (lambda p: p["services"], str),
}
_EMPTY = {
    "timer": "no runnerkeep timers to check: the roles in provision.yml ({roles}) install none",
    "hook": "no runner hooks to check: the roles in provision.yml ({roles}) install none",
    "disk": "the profile names no disks",
    "required_tool": "the profile requires no toolchains",
    "forbidden_tool": "the profile forbids no toolchains",
    "service": "the profile names no services",
}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("runnerkeep image validation")
    group.addoption("--validate-target", help="JSON file describing the booted host")
    group.addoption("--validate-profile", help="profile YAML (default profiles/default.yml)")
    group.addoption("--validate-results", help="write per-check results as JSON here")


def _cached(config: pytest.Config, key: str, compute: Callable[[], Any]) -> Any:
    """``compute()`` once per session (the profile and what it expands to)."""
    cache = config.stash.setdefault(_CACHE, {})
    if key not in cache:
        cache[key] = compute()
    return cache[key]


def _profile(config: pytest.Config) -> dict[str, Any]:
    return _cached(config, "profile", lambda: load_profile(config.getoption("--validate-profile")))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """Parametrize the per-item checks from the profile (ids are the item names)."""
    config = metafunc.config
    profile = _profile(config)
    for name, (find, ident) in _PARAMS.items():
        if name not in metafunc.fixturenames:
            continue
        items = _cached(config, name, lambda find=find: find(profile))
        if items:
            metafunc.parametrize(name, items, ids=[ident(i) for i in items])
        else:  # one readable skip instead of pytest's "got empty parameter set"
            roles = _cached(
                config, "roles", lambda: provision_roles(profile["provision"]["playbook"])
            )
            why = _EMPTY.get(name, "nothing to check").format(roles=", ".join(roles) or "none")
            metafunc.parametrize(
                name, [pytest.param(None, marks=pytest.mark.skip(reason=why))], ids=["none"]
            )


@pytest.fixture(scope="session")
def profile(request: pytest.FixtureRequest) -> dict[str, Any]:
    return _profile(request.config)


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> dict[str, Any]:
    path = request.config.getoption("--validate-target")
    if not path:
        pytest.skip("no --validate-target: run tests/validate/run_validation.py IMAGE instead")
    return json.loads(Path(path).read_text())


@pytest.fixture
def note(request: pytest.FixtureRequest) -> Any:
    """``note("docker 20.10.24 on vfs")``: what a passing check found (for the summary)."""

    def record(text: str) -> None:
        request.node._rk_detail = " ".join(str(text).split())

    return record


@pytest.fixture(scope="session")
def runner(target: dict[str, Any]) -> Any:
    """The harness RunnerHost (docker exec and plain ssh to the container)."""
    from harness.fleet import RunnerHost

    h = target["host"]
    return RunnerHost(h["name"], h["container"], h["ssh_port"], h["key_file"], h["ssh_config"])


@pytest.fixture(scope="session")
def host(runner: Any, target: dict[str, Any]) -> Any:
    """testinfra Host: over SSH (paramiko) when sshd answered at boot, else docker exec."""
    return runner.testinfra_host(target.get("backend", "paramiko"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Any:
    outcome = yield
    report = outcome.get_result()
    if report.when == "call" or (report.when == "setup" and not report.passed):
        title = (item.function.__doc__ or item.name).strip().splitlines()[0]
        param = getattr(item, "callspec", None)
        if param is not None:
            title = f"{title} [{param.id}]"
        message = ""
        if call.excinfo is not None:
            exc = call.excinfo.value
            if call.excinfo.errisinstance(pytest.fail.Exception):
                message = str(exc)
            elif call.excinfo.errisinstance(pytest.skip.Exception):
                message = getattr(exc, "msg", str(exc))
            else:
                message = f"{item.name}: the check could not run: {type(exc).__name__}: {exc}"
        if report.passed:
            message = getattr(item, "_rk_detail", "")
        _RESULTS.append(
            {
                "id": item.nodeid.split("::", 1)[-1],
                "title": title,
                "outcome": "skipped" if report.skipped else report.outcome,
                "message": message.strip(),
            }
        )


def pytest_sessionfinish(session: pytest.Session) -> None:
    path = session.config.getoption("--validate-results")
    if path:
        Path(path).write_text(json.dumps(_RESULTS, indent=2) + "\n")
