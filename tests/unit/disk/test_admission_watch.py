"""The watch cycle's drain step (admission control): a drained runner's agent is stopped once
no job holds the lock, brought back once the state has been ok for the settle time; each
change is an alert; the drain state is in the metrics and the result; a damaged drain.json is
an error of the cycle and no drained sample."""

from __future__ import annotations

import os

from runnerkeep import admission, drain
from runnerkeep.disk.metrics import metric_value, parse_metrics
from runnerkeep.disk.watch import run_watch

GiB = 1024**3


class Units:
    def __init__(self):
        self.active = True
        self.calls = []

    def __call__(self, action, unit):
        self.calls.append((action, unit))
        if action == "is-active":
            return self.active, "active" if self.active else "inactive"
        self.active = action == "start"
        return True, ""


def metrics(config):
    path = os.path.join(config["disk"]["textfile_dir"], "runnerkeep_disk.prom")
    with open(path) as handle:
        return parse_metrics(handle.read())


def drained_samples(samples):
    return {labels: value for (name, labels), value in samples.items() if name.endswith("drained")}


def test_drained_runner_is_stopped_then_brought_back(make_config, fake_disk, syslog_calls):
    config = make_config()
    config["admission"] = {"agent_unit": "fake-agent.service", "settle_time": "0s"}
    units = Units()
    jobs: list[dict] = [{"pid": 1234}]

    def step(cfg, state, now):
        return admission.watch_drain(cfg, state, now, jobs=lambda c: list(jobs), control=units)

    fake_disk.free_bytes = 4 * GiB  # emergency: the job could not fit
    state_dir = config["paths"]["state_dir"]
    reason = "free bytes on /fake: needs 15.0 GiB free on /fake, has 4.0 GiB"
    drain.write_drain(state_dir, drain.new_record(True, reason, "fake-agent.service"))

    waiting = run_watch(config, drain_func=step)
    assert waiting["drain"]["action"].startswith("waiting for 1 job(s) to end")
    assert units.calls == []
    assert drained_samples(metrics(config)) == {(("reason", "free bytes on /fake"),): 1}

    jobs.clear()  # the refused job ended
    stopped = run_watch(config, drain_func=step)
    assert stopped["drain"]["action"] == "stopped fake-agent.service"
    assert ("stop", "fake-agent.service") in units.calls and not units.active
    assert any("agent fake-agent.service stopped" in a["message"] for a in stopped["alerts"])
    assert any(sev == "warning" and "runner drained" in msg for sev, msg in syslog_calls)

    fake_disk.free_bytes = 90 * GiB  # freed: the state returns to ok, settle time 0
    back = run_watch(config, drain_func=step)
    assert back["state"] == "ok"
    assert back["drain"]["action"] == "started fake-agent.service" and units.active
    assert drain.read_drain(state_dir)["drained"] is False
    samples = metrics(config)
    assert drained_samples(samples) == {(("reason", ""),): 0}
    assert metric_value(samples, "runnerkeep_runner_drained_seconds") == 0
    assert "runner back" in " ".join(a["message"] for a in back["alerts"])


def test_a_damaged_drain_record_is_a_cycle_error_and_no_sample(
    make_config, fake_disk, syslog_calls
):
    config = make_config()
    os.makedirs(config["paths"]["state_dir"], exist_ok=True)
    with open(os.path.join(config["paths"]["state_dir"], "drain.json"), "w") as handle:
        handle.write("{not json")
    result = run_watch(config, drain_func=admission.watch_drain)
    assert any(e.startswith("drain: ") and "drain state is unknown" in e for e in result["errors"])
    samples = metrics(config)
    assert drained_samples(samples) == {}
    assert metric_value(samples, "runnerkeep_disk_watch_errors") >= 1


def test_without_the_step_no_drain_state_is_reported(make_config, fake_disk, syslog_calls):
    config = make_config()
    result = run_watch(config)
    assert result["drain"] is None
    assert drained_samples(metrics(config)) == {}


def test_never_drained_reports_not_drained(make_config, fake_disk, syslog_calls):
    config = make_config()
    result = run_watch(config, drain_func=admission.watch_drain)
    assert result["drain"]["drained"] is False and result["drain"]["action"] is None
    assert drained_samples(metrics(config)) == {(("reason", ""),): 0}


def test_the_disk_report_shows_the_drain_state(make_config, tmp_path):
    from runnerkeep.disk.usage_report import disk_report, render_report

    config = make_config()
    state_dir = config["paths"]["state_dir"]
    assert disk_report(config, include_docker=False, include_largest=False)["drain"] is None
    reason = "free bytes on /x: needs 1.0 GiB free on /x, has 1 B"
    drain.write_drain(state_dir, drain.new_record(True, reason, "a.service", 0.0))
    report = disk_report(config, include_docker=False, include_largest=False)
    assert report["drain"]["drained"] is True
    assert "runner: DRAINED since " in render_report(report)
    assert reason in render_report(report)
    with open(os.path.join(state_dir, "drain.json"), "w") as handle:
        handle.write("[]")
    damaged = disk_report(config, include_docker=False, include_largest=False)
    assert "drain state is unknown" in damaged["drain"]["error"]
    assert any(e.startswith("drain: ") for e in damaged["errors"])
    assert "DRAINED" not in render_report(damaged)


def test_an_operators_drain_is_stopped_but_never_brought_back_by_the_watch(
    make_config, fake_disk, syslog_calls
):
    config = make_config()
    config["admission"] = {"agent_unit": "fake-agent.service", "settle_time": "0s"}
    units = Units()
    jobs: list[dict] = [{"pid": 1234}]

    def step(cfg, state, now):
        return admission.watch_drain(cfg, state, now, jobs=lambda c: list(jobs), control=units)

    fake_disk.free_bytes = 90 * GiB  # plenty: an admission drain would come back at once
    drained = admission.drain_by_operator(
        config, "disk replacement", jobs=lambda c: list(jobs), control=units
    )
    assert drained["action"].startswith("waiting for 1 job(s) to end")
    assert units.active  # the running job finishes first

    jobs.clear()
    stopped = run_watch(config, drain_func=step)
    assert stopped["state"] == "ok"
    assert stopped["drain"]["action"] == "stopped fake-agent.service" and not units.active
    for _ in range(2):
        again = run_watch(config, drain_func=step)
        assert again["drain"]["drained"] is True and again["drain"]["by"] == "operator"
    assert ("start", "fake-agent.service") not in units.calls
    assert drain.read_drain(config["paths"]["state_dir"])["drained"] is True
    assert drained_samples(metrics(config)) == {(("reason", "operator"),): 1}


def test_the_bring_back_leaves_a_record_changed_during_the_cycle(
    make_config, fake_disk, syslog_calls, monkeypatch
):
    """The watch read an admission drain; an operator drained the runner before the watch
    wrote "back": the operator's record stays, the agent is not started."""
    config = make_config()
    config["admission"] = {"agent_unit": "fake-agent.service", "settle_time": "0s"}
    state_dir = config["paths"]["state_dir"]
    drain.write_drain(state_dir, drain.new_record(True, "free bytes on /: x", "fake-agent.service"))
    units = Units()
    units.active = False
    real_read = drain.read_drain
    first = []

    def operator_drains_after_the_first_read(path):
        record = real_read(path)
        if not first:  # between the cycle's read and the bring-back's re-read
            first.append(record)
            admission.drain_by_operator(config, "maintenance", jobs=lambda c: [], control=units)
        return record

    monkeypatch.setattr(drain, "read_drain", operator_drains_after_the_first_read)
    result = admission.watch_drain(
        config, {"state": "ok", "since": 0.0}, 10**10, jobs=lambda c: [], control=units
    )
    assert first[0]["by"] == "admission"
    assert result["action"] == "the drain record changed during this cycle: left as it is"
    assert ("start", "fake-agent.service") not in units.calls
    record = real_read(state_dir)
    assert record["drained"] is True and record["by"] == "operator"
