"""Admission control's decisions: what a job needs, cleanup before refusing, the drain, the
fleet guard, and the watch's step that stops a drained runner's agent and brings it back."""

from __future__ import annotations

import json

import pytest
from runnerkeep import admission, drain
from runnerkeep.disk.budget import BudgetInputs, compute_budget
from runnerkeep.disk.disk_config import DISK_DEFAULTS
from runnerkeep.disk.metrics import WatchReadings, parse_metrics, watch_metric_set
from runnerkeep.errors import ConfigError, RunnerkeepError
from runnerkeep.fsutil import FilesystemUsage

GiB = 1024**3
CAPACITY = 100 * GiB
# Defaults on 100 GiB: reserve 5 GiB, job peak (floor) 10 GiB: a job needs 15 GiB free.
NEED = 15 * GiB


def make_budget(path="/data"):
    inputs = BudgetInputs(path=path, capacity_bytes=CAPACITY, capacity_inodes=1_000_000)
    return compute_budget(inputs, DISK_DEFAULTS)


class Host:
    """A fake host: free space per mount point, cleanup stages that free what they are set
    to, and the calls made."""

    def __init__(self, free, frees=None, inodes=900_000):
        self.free = dict(free)
        self.frees = frees or {}
        self.inodes = inodes
        self.calls = []
        self.time = 0.0

    def probe(self, path):
        mount = "/work" if path.startswith("/work") else "/data"
        return FilesystemUsage(path, mount, CAPACITY, self.free[mount], 1_000_000, self.inodes)

    def run_cleanup(self, stage, config, **options):
        self.calls.append((stage, options["force"], options["target_free_bytes"]))
        for mount, amount in self.frees.get(stage, {}).items():
            self.free[mount] += amount
        return {}

    def tools(self, others=()):
        return admission.Tools(
            run_cleanup=self.run_cleanup,
            budget=lambda config: make_budget(),
            probe=self.probe,
            other_jobs=lambda config, requester: list(others),
            clock=lambda: self.time,
        )


def config_of(tmp_path, **admission_keys):
    section = {"agent_unit": "gitlab-runner.service", **admission_keys}
    return {"paths": {"state_dir": str(tmp_path)}, "admission": section}


def test_a_job_that_fits_is_admitted_without_cleanup(tmp_path):
    host = Host({"/data": NEED})
    outcome = admission.admit(config_of(tmp_path), [10, 9], host.tools())
    assert outcome.admitted and host.calls == []
    assert drain.read_drain(str(tmp_path)) is None


def test_short_runs_pre_then_emergency_forced_past_its_own_lock_then_fits(tmp_path):
    host = Host(
        {"/data": 4 * GiB}, frees={"pre": {"/data": 1 * GiB}, "emergency": {"/data": 20 * GiB}}
    )
    outcome = admission.admit(config_of(tmp_path), [10, 9], host.tools())
    assert outcome.admitted
    assert host.calls == [("pre", False, NEED), ("emergency", True, NEED)]
    assert outcome.cleanup == ["pre stage ran", "emergency stage ran"]
    assert drain.read_drain(str(tmp_path)) is None


def test_the_pre_stage_alone_may_be_enough(tmp_path):
    host = Host({"/data": 4 * GiB}, frees={"pre": {"/data": 11 * GiB}})
    assert admission.admit(config_of(tmp_path), [10], host.tools()).admitted
    assert [c[0] for c in host.calls] == ["pre"]


def test_still_short_fails_with_one_line_and_drains(tmp_path):
    host = Host({"/data": 4 * GiB}, frees={"pre": {"/data": GiB // 10}})
    outcome = admission.admit(config_of(tmp_path), [10], host.tools(), now=500.0)
    assert not outcome.admitted and outcome.drained
    assert outcome.line == (
        "runnerkeep: this runner cannot fit the job: needs 15.0 GiB free on /data, has 4.1 GiB "
        "after cleanup; runner drained"
    )
    assert "\n" not in outcome.line
    record = drain.read_drain(str(tmp_path))
    assert record["drained"] is True and record["since"] == 500.0
    assert record["unit"] == "gitlab-runner.service"
    assert record["reason"].startswith("free bytes on /data: needs 15.0 GiB free on /data")


def test_inodes_short_is_said_as_inodes(tmp_path):
    host = Host({"/data": 50 * GiB}, inodes=10)
    outcome = admission.admit(config_of(tmp_path), [10], host.tools())
    assert not outcome.admitted
    assert "free inodes on /data, has 10 after cleanup" in outcome.line
    assert drain.read_drain(str(tmp_path))["reason"].startswith("free inodes on /data: ")


def test_the_emergency_stage_waits_for_other_jobs(tmp_path):
    host = Host({"/data": 4 * GiB}, frees={"emergency": {"/data": 50 * GiB}})
    outcome = admission.admit(config_of(tmp_path), [10], host.tools(others=[{"pid": 77}]))
    assert not outcome.admitted
    assert [c[0] for c in host.calls] == ["pre"]
    assert "emergency stage skipped: 1 other job(s) running" in outcome.cleanup
    # Why the emergency stage could not help is on the same one line.
    assert outcome.line.endswith(
        "; runner drained; emergency stage skipped: 1 other job(s) running"
    )
    assert "\n" not in outcome.line


def test_other_jobs_leaves_out_the_requesters_own_lock(tmp_path, monkeypatch):
    live = [{"job_id": "mine", "pid": 9}, {"job_id": "other", "pid": 44}]
    monkeypatch.setattr(admission, "active_jobs", lambda *a, **k: (live, []))
    assert admission.other_jobs(config_of(tmp_path), [10, 9, 8]) == [live[1]]


def test_a_failing_stage_is_a_note_and_the_check_goes_on(tmp_path):
    host = Host({"/data": 4 * GiB}, frees={"emergency": {"/data": 50 * GiB}})

    def failing(stage, config, **options):
        if stage == "pre":
            raise RunnerkeepError("another cleanup run is in progress")
        return host.run_cleanup(stage, config, **options)

    tools = host.tools()
    tools.run_cleanup = failing
    outcome = admission.admit(config_of(tmp_path), [10], tools)
    assert outcome.admitted
    assert outcome.cleanup[0] == "pre stage failed: another cleanup run is in progress"


def test_the_deadline_stops_further_stages(tmp_path):
    host = Host({"/data": 4 * GiB}, frees={"emergency": {"/data": 50 * GiB}})
    tools = host.tools()

    def slow_pre(stage, config, **options):
        host.time += 400  # past the 5 minute default
        return {}

    tools.run_cleanup = slow_pre
    outcome = admission.admit(config_of(tmp_path), [10], tools)
    assert not outcome.admitted
    assert "emergency stage skipped: admission.deadline passed" in outcome.cleanup


def test_no_cleanup_when_turned_off(tmp_path):
    host = Host({"/data": 4 * GiB})
    outcome = admission.admit(config_of(tmp_path, run_cleanup=False), [10], host.tools())
    assert not outcome.admitted and host.calls == []
    assert "after cleanup" not in outcome.line


def test_a_drained_runner_refuses_at_once(tmp_path):
    drain.write_drain(str(tmp_path), drain.new_record(True, "free bytes on /: x", "a.service", 0))
    host = Host({"/data": 90 * GiB})
    outcome = admission.admit(config_of(tmp_path), [10], host.tools(), now=600.0)
    assert not outcome.admitted and host.calls == []
    assert outcome.line.startswith("runnerkeep: this runner is drained (10 min): free bytes on /")


def test_a_damaged_drain_record_is_an_error_not_an_admission(tmp_path):
    (tmp_path / "drain.json").write_text("{")
    with pytest.raises(drain.DrainRecordError):
        admission.admit(config_of(tmp_path), [10], Host({"/data": 90 * GiB}).tools())


def test_the_fleet_guard_refuses_the_job_but_keeps_the_runner(tmp_path):
    host = Host({"/data": 4 * GiB})
    config = config_of(tmp_path, max_drained=2, fleet_drained=2)
    outcome = admission.admit(config, [10], host.tools())
    assert not outcome.admitted and not outcome.drained
    assert outcome.line.endswith(
        "runner not drained: fleet guard: 2 other runner(s) drained at the last count, at most 2 "
        "may be"
    )
    assert drain.read_drain(str(tmp_path)) is None


def test_no_agent_unit_refuses_without_draining(tmp_path):
    config = {"paths": {"state_dir": str(tmp_path)}}
    outcome = admission.admit(config, [10], Host({"/data": 0}).tools())
    assert not outcome.admitted
    assert "no agent unit configured (admission.agent_unit)" in outcome.line
    assert drain.read_drain(str(tmp_path)) is None


def test_disabled_admits_everything(tmp_path):
    host = Host({"/data": 0})
    assert admission.admit(config_of(tmp_path, enabled=False), [10], host.tools()).admitted
    assert host.calls == []


def test_every_job_filesystem_is_checked_the_work_dir_for_the_peak(tmp_path):
    config = config_of(tmp_path)
    config["disk"] = {"work_dirs": ["/work/runner"]}
    host = Host({"/data": 40 * GiB, "/work": 3 * GiB})
    outcome = admission.admit(config, [10], host.tools())
    assert not outcome.admitted
    assert "needs 10.0 GiB free on /work, has 3.0 GiB" in outcome.line
    assert "/data" not in outcome.line


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("agent_unit", "x y", "admission.agent_unit"),
        ("settle_time", "soon", "admission.settle_time"),
        ("deadline", 0, "admission.deadline"),
        ("max_drained", -1, "admission.max_drained"),
        ("fleet_drained", True, "admission.fleet_drained"),
        ("enabled", "yes", "admission.enabled"),
        ("socket", "rel/path", "admission.socket"),
        ("unknown_key", 1, "unknown key"),
    ],
)
def test_bad_settings_are_one_clear_error(tmp_path, key, value, message):
    with pytest.raises(ConfigError, match=message):
        admission.admission_settings({"admission": {key: value}})


def test_admissions_are_serialized_by_a_bounded_lock(tmp_path):
    host = Host({"/data": NEED})
    assert admission.admit_locked(config_of(tmp_path), [10], host.tools()).admitted
    assert (tmp_path / "admission.lock").exists()


# --- the watch's drain step --------------------------------------------------------------


class Units:
    def __init__(self, active=True, fail=()):
        self.active = active
        self.fail = fail
        self.calls = []

    def __call__(self, action, unit):
        self.calls.append((action, unit))
        if action == "is-active":
            return self.active, "active" if self.active else "inactive"
        if action in self.fail:
            return False, "Job failed"
        self.active = action == "start"
        return True, ""


def drained(tmp_path, since=1000.0):
    record = drain.new_record(True, "free bytes on /data: needs 15 GiB", "r.service", since)
    drain.write_drain(str(tmp_path), record)


def test_not_drained_does_nothing(tmp_path):
    units = Units()
    result = admission.watch_drain(config_of(tmp_path), {"state": "ok"}, 5000.0, control=units)
    assert result["drained"] is False and result["action"] is None and units.calls == []


def test_drained_waits_while_a_job_holds_the_lock(tmp_path):
    drained(tmp_path)
    units = Units()
    state = {"state": "critical", "since": 900.0}
    result = admission.watch_drain(
        config_of(tmp_path), state, 1100.0, jobs=lambda c: [{"pid": 5}], control=units
    )
    assert result["drained"] and units.calls == []
    assert result["action"] == "waiting for 1 job(s) to end before stopping r.service"


def test_drained_stops_the_agent_once_the_job_ended(tmp_path):
    drained(tmp_path)
    units = Units()
    state = {"state": "critical", "since": 900.0}
    config = config_of(tmp_path)
    result = admission.watch_drain(config, state, 1100.0, jobs=lambda c: [], control=units)
    assert units.calls == [("is-active", "r.service"), ("stop", "r.service")]
    assert result["action"] == "stopped r.service" and "stopped" in result["alert"]
    again = admission.watch_drain(config, state, 1160.0, jobs=lambda c: [], control=units)
    assert again["alert"] is None and units.calls[-1] == ("is-active", "r.service")


def test_comes_back_only_after_the_settle_time_above_warning(tmp_path):
    drained(tmp_path, since=1000.0)
    units = Units(active=False)
    config = config_of(tmp_path, settle_time="10m")
    ok_state = {"state": "ok", "since": 1200.0}
    early = admission.watch_drain(config, ok_state, 1700.0, jobs=lambda c: [], control=units)
    assert early["drained"] is True and ("start", "r.service") not in units.calls
    late = admission.watch_drain(config, ok_state, 1800.0, jobs=lambda c: [], control=units)
    assert late["drained"] is False and late["action"] == "started r.service"
    assert ("start", "r.service") in units.calls
    record = drain.read_drain(str(tmp_path))
    assert record["drained"] is False and record["since"] == 1800.0
    assert record["unit"] == "r.service"


def test_a_warning_state_never_brings_it_back(tmp_path):
    drained(tmp_path, since=0.0)
    units = Units(active=False)
    result = admission.watch_drain(
        config_of(tmp_path), {"state": "warning", "since": 1.0}, 99999.0, lambda c: [], units
    )
    assert result["drained"] is True and ("start", "r.service") not in units.calls


def test_a_failed_start_stays_drained_and_says_so(tmp_path):
    drained(tmp_path, since=0.0)
    units = Units(active=False, fail=("start",))
    result = admission.watch_drain(
        config_of(tmp_path), {"state": "ok", "since": 1.0}, 99999.0, lambda c: [], units
    )
    assert result["drained"] is True
    assert result["error"] == "cannot start the runner's agent again: Job failed"
    assert drain.read_drain(str(tmp_path))["drained"] is True


def test_a_damaged_record_is_an_error_and_nothing_is_done(tmp_path):
    (tmp_path / "drain.json").write_text(json.dumps({"drained": 1}))
    units = Units()
    result = admission.watch_drain(
        config_of(tmp_path), {"state": "ok"}, 99999.0, lambda c: [], units
    )
    assert "drain state is unknown" in result["error"] and units.calls == []


def test_the_drain_metrics(tmp_path):
    readings = WatchReadings(state={"state": "critical"}, counters={}, run_time=1600.0)
    readings.drain = {
        "drained": True,
        "reason": "free bytes on /data: needs 15 GiB",
        "since": 1000.0,
    }
    samples = parse_metrics(_drain_text(readings))
    assert samples[("runnerkeep_runner_drained", (("reason", "free bytes on /data"),))] == 1
    assert samples[("runnerkeep_runner_drained_seconds", ())] == 600
    readings.drain = {"drained": False, "reason": "", "since": 1500.0}
    samples = parse_metrics(_drain_text(readings))
    assert samples[("runnerkeep_runner_drained", (("reason", ""),))] == 0
    assert samples[("runnerkeep_runner_drained_seconds", ())] == 0
    readings.drain = {"error": "drain.json damaged"}
    assert _drain_text(readings) == ""  # unknown is not "not drained"


def _drain_text(readings):
    metrics = watch_metric_set(_complete(readings)).render()
    return "\n".join(
        line
        for line in metrics.splitlines()
        if "runner_drained" in line and not line.startswith("#")
    )


def _complete(readings):
    from runnerkeep.disk.metrics import event_totals

    readings.counters = event_totals(readings.counters)
    return readings
