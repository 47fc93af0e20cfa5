"""host_layout units: daemon-reload only when a unit file changed (or asked), enable/start only
when needed, restart only when a file the running unit reads changed, disable/stop for going
units. systemd does not run in this container, so systemctl is the recording FakeRun: the tests
read the commands the module would run."""

from __future__ import annotations

import pytest
from provisiontest_helpers import DISABLED_INACTIVE, ENABLED_ACTIVE, changes
from runnerkeep.provision.changes import LayoutError
from runnerkeep.provision.systemd_units import apply_units

CONF = "/etc/runnerkeep/config.json"
SHOW = ["systemctl", "show", "--property=Id,LoadState,UnitFileState,ActiveState", "--"]


def unit(name="watch.timer", enabled=True, state="started", restart_on=()):
    return {"name": name, "enabled": enabled, "state": state, "restart_on": list(restart_on)}


def test_nothing_to_do_runs_only_the_show(fake_run):
    fake_run.states["watch.timer"] = ENABLED_ACTIVE
    done = changes()
    result = apply_units([unit()], False, done, fake_run)
    assert fake_run.calls == [[*SHOW, "watch.timer"]]
    assert result == [{"name": "watch.timer", "actions": []}]
    assert not done.changed


def test_no_units_and_no_unit_file_change_runs_nothing(fake_run):
    done = changes()
    done.note_content(CONF)
    done.note_content("/etc/systemd/system.conf")  # beside the unit dir, not in it
    assert apply_units([], False, done, fake_run) == []
    assert fake_run.calls == []


def test_a_changed_unit_file_reloads_first(fake_run):
    fake_run.states["watch.timer"] = ENABLED_ACTIVE
    done = changes()
    done.note_content("/etc/systemd/system/watch.timer")
    apply_units([unit()], False, done, fake_run)
    assert fake_run.calls[0] == ["systemctl", "daemon-reload"]
    assert fake_run.commands() == [["systemctl", "daemon-reload"]]
    assert done.by_path == {"systemd": ["daemon-reload"]}


def test_a_reload_when_asked_even_without_units(fake_run):
    done = changes()
    apply_units([], True, done, fake_run)
    assert fake_run.calls == [["systemctl", "daemon-reload"]]


def test_a_new_unit_is_enabled_then_started(fake_run):
    fake_run.states["watch.timer"] = DISABLED_INACTIVE
    done = changes()
    result = apply_units([unit()], False, done, fake_run)
    assert fake_run.commands() == [
        ["systemctl", "enable", "watch.timer"],
        ["systemctl", "start", "watch.timer"],
    ]
    assert result == [{"name": "watch.timer", "actions": ["enable", "start"]}]
    assert done.by_path == {"unit:watch.timer": ["enable", "start"]}


@pytest.mark.parametrize("file_state", ["static", "enabled-runtime", "alias"])
def test_a_unit_that_needs_no_enable_is_not_enabled(fake_run, file_state):
    fake_run.states["watch.timer"] = {**ENABLED_ACTIVE, "UnitFileState": file_state}
    apply_units([unit()], False, changes(), fake_run)
    assert fake_run.commands() == []


def test_unset_enabled_and_state_leave_the_unit_alone(fake_run):
    fake_run.states["watch.timer"] = DISABLED_INACTIVE
    apply_units([{"name": "watch.timer", "restart_on": []}], False, changes(), fake_run)
    assert fake_run.commands() == []


def test_a_running_unit_restarts_when_a_file_it_reads_changed(fake_run):
    fake_run.states["watch.service"] = ENABLED_ACTIVE
    fake_run.states["other.service"] = ENABLED_ACTIVE
    done = changes()
    done.note_content(CONF)
    units = [unit("watch.service", restart_on=[CONF]), unit("other.service", restart_on=["/x"])]
    result = apply_units(units, False, done, fake_run)
    assert fake_run.commands() == [["systemctl", "restart", "watch.service"]]
    assert result[1] == {"name": "other.service", "actions": []}
    # One show for every unit, in the order given.
    assert fake_run.calls[0] == [*SHOW, "watch.service", "other.service"]


def test_a_stopped_unit_whose_file_changed_is_started_not_restarted(fake_run):
    fake_run.states["watch.service"] = {**ENABLED_ACTIVE, "ActiveState": "inactive"}
    done = changes()
    done.note_content(CONF)
    apply_units([unit("watch.service", restart_on=[CONF])], False, done, fake_run)
    assert fake_run.commands() == [["systemctl", "start", "watch.service"]]


def test_a_going_unit_is_disabled_and_stopped(fake_run):
    fake_run.states["old.timer"] = ENABLED_ACTIVE
    done = changes()
    apply_units([unit("old.timer", enabled=False, state="stopped")], False, done, fake_run)
    assert fake_run.commands() == [
        ["systemctl", "disable", "old.timer"],
        ["systemctl", "stop", "old.timer"],
    ]
    assert done.by_path == {"unit:old.timer": ["disable", "stop"]}


def test_a_gone_or_stopped_unit_needs_nothing(fake_run):
    fake_run.states["stopped.timer"] = DISABLED_INACTIVE
    units = [unit("never-there.timer", False, "stopped"), unit("stopped.timer", False, "stopped")]
    done = changes()
    apply_units(units, False, done, fake_run)
    assert fake_run.commands() == []
    assert not done.changed


def test_a_failing_systemctl_names_the_command(fake_run):
    fake_run.states["watch.timer"] = DISABLED_INACTIVE
    fake_run.failures[("systemctl", "start", "watch.timer")] = (
        1,
        "",
        "Job failed.\nSee 'journalctl -xeu watch.timer' for details.\n",
    )
    with pytest.raises(LayoutError) as raised:
        apply_units([unit()], False, changes(), fake_run)
    assert str(raised.value) == (
        "systemctl start watch.timer failed (rc=1): See 'journalctl -xeu watch.timer' for details."
    )


def test_a_failing_reload_stops_before_any_unit(fake_run):
    fake_run.failures[("systemctl", "daemon-reload")] = (1, "", "")
    with pytest.raises(LayoutError, match=r"systemctl daemon-reload failed \(rc=1\): no output"):
        apply_units([unit()], True, changes(), fake_run)
    assert fake_run.calls == [["systemctl", "daemon-reload"]]


def test_a_failing_show_fails_with_its_message(fake_run):
    fake_run.failures[(*SHOW, "watch.timer")] = (1, "", "Failed to connect to bus\n")
    with pytest.raises(
        LayoutError, match=r"systemctl show failed \(rc=1\): Failed to connect to bus"
    ):
        apply_units([unit()], False, changes(), fake_run)


def test_check_mode_runs_nothing_but_the_show(fake_run):
    fake_run.states["new.timer"] = DISABLED_INACTIVE
    fake_run.states["old.timer"] = ENABLED_ACTIVE
    fake_run.states["watch.service"] = ENABLED_ACTIVE
    done = changes(check_mode=True)
    done.note_content("/etc/systemd/system/new.timer")
    done.note_content(CONF)
    units = [
        unit("new.timer"),
        unit("old.timer", enabled=False, state="stopped"),
        unit("watch.service", restart_on=[CONF]),
    ]
    result = apply_units(units, False, done, fake_run)
    assert fake_run.commands() == []
    assert fake_run.calls == [[*SHOW, "new.timer", "old.timer", "watch.service"]]
    # The same report a real run would give.
    assert [r["actions"] for r in result] == [["enable", "start"], ["disable", "stop"], ["restart"]]
    assert done.by_path["systemd"] == ["daemon-reload"]
