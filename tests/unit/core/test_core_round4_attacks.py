"""Round-4 attacks on drain._UNIT_RE (07c437a): a glob needs three plain characters before its
first glob character. Real agent units (escaped, templated) must still pass; nothing that
could reach systemctl as an option, a path or a match-everything glob may."""

from __future__ import annotations

import pytest
from runnerkeep import drain
from runnerkeep.errors import ConfigError


@pytest.mark.parametrize(
    "unit",
    [
        "actions.runner.my\\x2dorg-repo.runner1.service",  # systemd-escape output
        "actions.runner.*.service",
        "gitlab-runner@ci.service",
        "gitlab-runner@*.service",
        "abc[.service",  # an unclosed '[' is a literal to fnmatch: harmless
        "run?.service",
    ],
)
def test_real_agent_units_are_accepted(unit):
    assert drain.check_unit(unit) == unit


@pytest.mark.parametrize(
    "unit",
    [
        "*.service",
        "**.service",
        "a\\*.service",  # a backslash is not a plain character
        "ab*.service",
        "[ab]c*.service",
        "-abc.service",  # an option to systemctl
        "--all.service",
        "abc*/x.service",
        "abc .service",
        "abc*.service\n",
        "abc*.service\0",
        "abc*.socket",
        "abc*.service.service*",
        ".service",
    ],
)
def test_globs_options_and_paths_are_refused(unit):
    with pytest.raises(ConfigError):
        drain.check_unit(unit)
    record = {"drained": True, "reason": "r", "since": 1.0, "unit": unit}
    assert drain.valid_record(record) is None


def test_a_refused_unit_never_reaches_systemctl(monkeypatch):
    ran = []
    monkeypatch.setattr(drain.subprocess, "run", lambda *a, **k: ran.append(a))
    for unit in ("ab*.service", "-x.service", "*.service"):
        with pytest.raises(ConfigError):
            drain.systemctl("stop", unit)
    assert ran == []
