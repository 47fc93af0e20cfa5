"""The agent unit root stops and starts: a glob must not be able to match every service of
the host (`systemctl stop '*.service'` stops sshd and docker too)."""

from __future__ import annotations

import pytest
from runnerkeep import drain
from runnerkeep.errors import ConfigError


@pytest.mark.parametrize(
    "unit",
    ["gitlab-runner.service", "actions.runner.*.service", "a.service", "run[12].service"],
)
def test_agent_units_as_fleets_name_them_are_accepted(unit):
    assert drain.check_unit(unit) == unit
    record = {"drained": True, "reason": "r", "since": 1.0, "unit": unit}
    assert drain.valid_record(record)["unit"] == unit


@pytest.mark.parametrize(
    "unit", ["*.service", "?*.service", "a*.service", "ab?.service", "[a-z]*.service"]
)
def test_a_glob_that_could_match_every_service_is_refused(unit):
    with pytest.raises(ConfigError, match="three plain characters"):
        drain.check_unit(unit)
    record = {"drained": True, "reason": "r", "since": 1.0, "unit": unit}
    assert drain.valid_record(record) is None  # a record naming it is damaged


def test_systemctl_is_never_run_with_such_a_glob(monkeypatch):
    ran = []
    monkeypatch.setattr(drain.subprocess, "run", lambda *a, **k: ran.append(a))
    with pytest.raises(ConfigError):
        drain.systemctl("stop", "*.service")
    assert ran == []
