"""An operator's drain and undrain (``runnerkeep admission drain|undrain``): jobs are refused
with the operator's reason, the agent stops when idle, only undrain ends it, check mode writes
nothing, and the CLI needs root and names what is wrong."""

from __future__ import annotations

import argparse
import json
import os

import pytest
from runnerkeep import admission, drain
from runnerkeep.errors import ConfigError, RunnerkeepError
from runnerkeep_cli import commands_admission
from runnerkeep_cli.options import common_options


class Units:
    def __init__(self, active=True, start_ok=True):
        self.active = active
        self.start_ok = start_ok
        self.calls = []

    def __call__(self, action, unit):
        self.calls.append((action, unit))
        if action == "is-active":
            return self.active, "active" if self.active else "inactive"
        if action == "start" and not self.start_ok:
            return False, "Job for a.service failed"
        self.active = action == "start"
        return True, ""


def config_of(tmp_path, **admission_keys):
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    return {"paths": {"state_dir": str(state)}, "admission": admission_keys}


def no_jobs(config):
    return []


def test_drain_stops_an_idle_agent_and_refuses_jobs_with_the_reason(tmp_path):
    config = config_of(tmp_path, agent_unit="a.service")
    units = Units()
    result = admission.drain_by_operator(
        config, "  disk\nreplacement ", now=100.0, jobs=no_jobs, control=units
    )
    assert result["action"] == "stopped a.service" and not units.active
    assert result["changed"] is True
    record = drain.read_drain(config["paths"]["state_dir"])
    assert record == {
        "drained": True,
        "reason": "operator: disk replacement",
        "since": 100.0,
        "unit": "a.service",
        "by": "operator",
    }
    refused = admission.admit(config, [], admission.Tools(run_cleanup=None), now=100.0 + 600)
    assert refused.admitted is False and refused.drained is True
    assert "drained by an operator (10 min): operator: disk replacement" in refused.line
    assert "runnerkeep admission undrain" in refused.line


def test_draining_again_keeps_the_first_time_and_reports_no_change(tmp_path):
    config = config_of(tmp_path, agent_unit="a.service")
    units = Units()
    admission.drain_by_operator(config, "patching", now=100.0, jobs=no_jobs, control=units)
    again = admission.drain_by_operator(config, "patching", now=500.0, jobs=no_jobs, control=units)
    assert again["changed"] is False and again["action"] == "a.service already stopped"
    assert drain.read_drain(config["paths"]["state_dir"])["since"] == 100.0


def test_an_admission_drain_becomes_an_operator_drain(tmp_path):
    config = config_of(tmp_path, agent_unit="a.service")
    state = config["paths"]["state_dir"]
    drain.write_drain(state, drain.new_record(True, "free bytes on /: x", "a.service", 5.0))
    result = admission.drain_by_operator(config, "hold", jobs=no_jobs, control=Units(False))
    assert result["changed"] is True
    assert drain.read_drain(state)["by"] == "operator"


def test_the_fleet_guard_does_not_stop_an_operator(tmp_path):
    config = config_of(tmp_path, agent_unit="a.service", max_drained=1, fleet_drained=5)
    admission.drain_by_operator(config, "hold", jobs=no_jobs, control=Units())
    assert drain.is_drained(config["paths"]["state_dir"])


def test_without_an_agent_unit_jobs_are_refused_and_nothing_is_stopped(tmp_path):
    config = config_of(tmp_path)
    units = Units()
    result = admission.drain_by_operator(config, "hold", jobs=no_jobs, control=units)
    assert "no agent unit configured" in result["action"]
    assert units.calls == []
    assert drain.is_drained(config["paths"]["state_dir"])


@pytest.mark.parametrize("reason", ["", "   ", "\n", None, 7])
def test_a_drain_needs_a_reason(tmp_path, reason):
    config = config_of(tmp_path)
    with pytest.raises(ConfigError, match="a drain needs a reason"):
        admission.drain_by_operator(config, reason, jobs=no_jobs, control=Units())
    assert os.listdir(config["paths"]["state_dir"]) == []


def test_check_mode_writes_nothing_not_even_the_lock(tmp_path):
    config = config_of(tmp_path, agent_unit="a.service")
    units = Units()
    result = admission.drain_by_operator(config, "hold", check=True, jobs=no_jobs, control=units)
    assert result["action"] == "would refuse jobs from now on and stop a.service once no job runs"
    assert os.listdir(config["paths"]["state_dir"]) == [] and units.calls == []
    admission.drain_by_operator(config, "hold", jobs=no_jobs, control=units)
    before = sorted(os.listdir(config["paths"]["state_dir"]))
    undo = admission.undrain_by_operator(config, check=True, control=units)
    assert undo["changed"] is True
    assert undo["action"] == "would start a.service and admit jobs again"
    assert drain.is_drained(config["paths"]["state_dir"])
    assert sorted(os.listdir(config["paths"]["state_dir"])) == before


def test_undrain_starts_the_agent_whoever_drained(tmp_path):
    config = config_of(tmp_path, agent_unit="a.service")
    state = config["paths"]["state_dir"]
    drain.write_drain(state, drain.new_record(True, "free bytes on /: x", "a.service", 5.0))
    units = Units(active=False)
    result = admission.undrain_by_operator(config, now=50.0, control=units)
    assert result["action"] == "started a.service" and units.active
    assert result["was"] == "free bytes on /: x" and result["was_by"] == "admission"
    record = drain.read_drain(state)
    assert record["drained"] is False and record["reason"].startswith("back: undrained by an")
    assert admission.undrain_by_operator(config, control=units)["changed"] is False


def test_an_agent_that_will_not_start_keeps_the_runner_drained(tmp_path):
    config = config_of(tmp_path, agent_unit="a.service")
    admission.drain_by_operator(config, "hold", jobs=no_jobs, control=Units())
    with pytest.raises(RunnerkeepError, match=r"cannot start the runner's agent a\.service"):
        admission.undrain_by_operator(config, control=Units(active=False, start_ok=False))
    assert drain.is_drained(config["paths"]["state_dir"])


def test_a_damaged_record_is_an_error_and_is_left_alone(tmp_path):
    config = config_of(tmp_path, agent_unit="a.service")
    path = os.path.join(config["paths"]["state_dir"], "drain.json")
    with open(path, "w") as handle:
        handle.write("{damaged")
    for call in (
        lambda: admission.drain_by_operator(config, "x", jobs=no_jobs, control=Units()),
        lambda: admission.undrain_by_operator(config, control=Units()),
    ):
        with pytest.raises(drain.DrainRecordError, match="drain state is unknown"):
            call()
    with open(path) as handle:
        assert handle.read() == "{damaged"


# --- the CLI -------------------------------------------------------------------------------


def parse(argv):
    parser = argparse.ArgumentParser(prog="runnerkeep")
    groups = parser.add_subparsers(dest="group")
    commands_admission.register(groups, common_options(), "")
    return parser.parse_args(["admission", *argv])


def write_config(tmp_path, **admission_keys):
    path = tmp_path / "config.json"
    path.write_text(json.dumps(config_of(tmp_path, **admission_keys)))
    return str(path)


def test_the_cli_refuses_a_user_who_is_not_root(tmp_path, monkeypatch):
    monkeypatch.setattr(commands_admission.os, "geteuid", lambda: 1000)
    config = write_config(tmp_path)
    for argv in (["drain", "--reason", "x"], ["undrain"]):
        args = parse([*argv, "--config", config])
        with pytest.raises(RunnerkeepError, match="run it as root"):
            args.handler(args)
    args = parse(["drain", "--reason", "x", "--check", "--config", config])
    assert args.handler(args).data["action"].startswith("would refuse jobs")


def test_the_cli_drains_and_undrains_and_status_says_by_whom(tmp_path, monkeypatch):
    monkeypatch.setattr(commands_admission.os, "geteuid", lambda: 0)
    monkeypatch.setattr(admission, "_live_jobs", no_jobs)
    config = write_config(tmp_path)  # no agent unit: nothing to stop or start
    args = parse(["drain", "--reason", "new disk", "--config", config])
    result = args.handler(args)
    assert result.exit_code == 0 and result.text.startswith("drained (operator: new disk)")
    status = parse(["status", "--config", config])
    assert "DRAINED by an operator for 0 min: operator: new disk" in status.handler(status).text
    args = parse(["undrain", "--config", config])
    assert args.handler(args).text == "not drained: jobs are admitted again"


def test_the_cli_requires_a_reason():
    with pytest.raises(SystemExit):
        parse(["drain"])
