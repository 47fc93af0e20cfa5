"""host_layout's one call (layout.apply_layout): its order (accounts, directories, reclaim, units
switched off, files, removals, lines, the other units), its result and check mode over all of it.
systemd does not run in this container: systemd_runs is set per test, systemctl is FakeRun, and
the unit dir is a directory of tmp_path (so a unit file there counts as one)."""

from __future__ import annotations

import fcntl
import os

import pytest
from provisiontest_helpers import (
    DISABLED_INACTIVE,
    ENABLED_ACTIVE,
    JOB_GID,
    JOB_UID,
    owner_mode,
    read,
    snapshot,
    write,
)
from runnerkeep.provision import changes as changes_module
from runnerkeep.provision import layout, systemd_units
from runnerkeep.provision.changes import LayoutError
from runnerkeep.provision.layout import apply_layout


@pytest.fixture
def host(tmp_path, tmp_path_factory, monkeypatch):
    """A host tree in tmp_path whose etc/systemd/system is the unit dir; systemd runs."""
    unit_dir = tmp_path / "etc" / "systemd" / "system"
    os.makedirs(unit_dir)
    monkeypatch.setattr(changes_module, "SYSTEMD_UNIT_DIR", str(unit_dir))
    monkeypatch.setattr(layout, "systemd_runs", lambda: True)
    # Calls take turns on a lock in root's /run: the tests' own lock file instead.
    lock_dir = tmp_path_factory.mktemp("lock")  # outside the tree check mode must not touch
    monkeypatch.setattr(layout, "LOCK_PATH", str(lock_dir / "host-layout.lock"))
    return tmp_path, unit_dir


def file_spec(path, content, mode="0644", **more):
    return {
        "path": str(path),
        "content": content,
        "mode": mode,
        "owner": "root",
        "group": "root",
        **more,
    }


def upgrade_params(root, unit_dir):
    """A role's upgrade: a config changes, a unit file comes, an old unit goes."""
    conf = root / "etc" / "runnerkeep" / "config.json"
    return {
        "directories": [
            {"path": str(conf.parent), "mode": "0755", "owner": "root", "group": "root"}
        ],
        "files": [
            file_spec(conf, "v2\n"),
            file_spec(unit_dir / "new.service", "[Unit]\n", systemd=True),
        ],
        "absent": [str(unit_dir / "old.service")],
        "units": [
            {"name": "new.service", "enabled": True, "state": "started", "restart_on": [str(conf)]},
            {"name": "old.service", "enabled": False, "state": "stopped"},
        ],
    }


def test_units_going_are_switched_off_before_their_files_go_the_others_after(host, fake_run):
    root, unit_dir = host
    conf = write(str(root / "etc" / "runnerkeep" / "config.json"), b"v1\n")
    old_unit = write(str(unit_dir / "old.service"), b"[Unit]\n")
    fake_run.states.update({"new.service": ENABLED_ACTIVE, "old.service": ENABLED_ACTIVE})
    seen = []
    fake_run.on_call = lambda argv: seen.append(
        (argv[1:2] + argv[-1:], os.path.exists(old_unit), read(conf))
    )
    result = apply_layout(upgrade_params(root, unit_dir), False, False, fake_run)
    assert seen == [
        (["show", "old.service"], True, b"v1\n"),
        (["disable", "old.service"], True, b"v1\n"),
        (["stop", "old.service"], True, b"v1\n"),
        (["daemon-reload", "daemon-reload"], False, b"v2\n"),
        (["show", "new.service"], False, b"v2\n"),
        (["restart", "new.service"], False, b"v2\n"),
    ]
    assert result["units"] == [
        {"name": "old.service", "actions": ["disable", "stop"]},
        {"name": "new.service", "actions": ["restart"]},
    ]
    assert {"changed", "changes", "units", "systemd"} <= set(result)
    assert "diff" not in result
    assert result["changed"] is True and result["systemd"] is True
    assert {c["path"]: c["changes"] for c in result["changes"]} == {
        "unit:old.service": ["disable", "stop"],
        conf: ["content"],
        str(unit_dir / "new.service"): ["created"],
        old_unit: ["removed"],
        "systemd": ["daemon-reload"],
        "unit:new.service": ["restart"],
    }


def test_a_diff_only_when_asked(host, fake_run):
    root, unit_dir = host
    conf = write(str(root / "etc" / "runnerkeep" / "config.json"), b"v1\n")
    fake_run.states.update({"new.service": ENABLED_ACTIVE})
    result = apply_layout(upgrade_params(root, unit_dir), False, True, fake_run)
    assert [d["before_header"] for d in result["diff"]] == [conf, str(unit_dir / "new.service")]
    assert result["diff"][0]["before"] == "v1\n" and result["diff"][0]["after"] == "v2\n"


def test_a_second_run_changes_nothing(host, fake_run):
    root, unit_dir = host
    params = upgrade_params(root, unit_dir)
    params["directories"].append(
        {"path": str(root / "state"), "mode": "0750", "owner": "root", "group": "root"}
    )
    params["lines"] = [{"paths": [str(root / "a" / ".env"), str(root / "b" / ".env")]}]
    params["lines"][0]["lines"] = {"RUNNERKEEP": "on"}
    fake_run.states.update({"new.service": DISABLED_INACTIVE, "old.service": DISABLED_INACTIVE})
    first = apply_layout(params, False, False, fake_run)
    assert first["changed"] is True
    assert read(str(root / "b" / ".env")) == b"RUNNERKEEP=on\n"
    fake_run.states["new.service"] = ENABLED_ACTIVE
    fake_run.calls.clear()
    second = apply_layout(params, False, False, fake_run)
    assert second["changed"] is False
    assert second["changes"] == []
    assert fake_run.commands() == []


def test_look_for_reports_what_exists_after_the_call(host, fake_run):
    root, _ = host
    kept = write(str(root / "kept"), b"x")
    os.symlink(root / "nowhere", root / "dangling")
    params = {
        "absent": [str(root / "gone")],
        "look_for": [kept, str(root / "dangling"), str(root / "gone")],
    }
    write(str(root / "gone"), b"x")
    result = apply_layout(params, False, False, fake_run)
    assert result["present"] == {
        kept: True,
        str(root / "dangling"): True,
        str(root / "gone"): False,
    }


def test_daemon_reload_when_asked(host, fake_run):
    apply_layout({"daemon_reload": True}, False, False, fake_run)
    assert fake_run.calls == [["systemctl", "daemon-reload"]]


def test_without_systemd_units_and_unit_files_are_skipped(host, fake_run, monkeypatch):
    root, unit_dir = host
    monkeypatch.setattr(layout, "systemd_runs", lambda: False)
    old_unit = write(str(unit_dir / "old.service"), b"[Unit]\n")
    result = apply_layout(upgrade_params(root, unit_dir), False, True, fake_run)
    assert fake_run.calls == []
    assert result["systemd"] is False and result["units"] == []
    assert not os.path.exists(unit_dir / "new.service")
    assert read(str(root / "etc" / "runnerkeep" / "config.json")) == b"v2\n"
    assert not os.path.exists(old_unit)


def test_the_real_systemd_probe_looks_for_its_run_dir(tmp_path, monkeypatch):
    monkeypatch.setattr(systemd_units, "SYSTEMD_RUN_DIR", str(tmp_path / "run-systemd"))
    assert systemd_units.systemd_runs() is False
    os.mkdir(tmp_path / "run-systemd")
    assert systemd_units.systemd_runs() is True


def test_accounts_come_before_directories(host, fake_run):
    root, _ = host
    params = {
        "groups": [{"name": "rk-test-no-such-group"}],
        "users": [{"name": "rk-test-no-such-user", "group": "rk-test-no-such-group"}],
        "directories": [
            {
                "path": str(root / "d"),
                "mode": "0700",
                "owner": "rk-test-no-such-user",
                "group": "root",
            }
        ],
    }
    # FakeRun does not really add the user: the directory then finds it missing.
    with pytest.raises(LayoutError, match="user 'rk-test-no-such-user' does not exist"):
        apply_layout(params, False, False, fake_run)
    assert [c[0] for c in fake_run.calls] == ["groupadd", "useradd"]


def test_directories_come_before_the_reclaim_that_moves_into_them(host, fake_run):
    root, _ = host
    state = root / "state"
    os.makedirs(state / "registry")
    os.chown(state / "registry", JOB_UID, JOB_GID)
    os.symlink("/etc", state / "registry" / "planted")
    aside = state / "migrated-aside"
    params = {
        "directories": [
            {"path": str(state), "mode": "0755", "owner": "root", "group": "root"},
            {"path": str(aside), "mode": "0700", "owner": "root", "group": "root"},
        ],
        "reclaim": [{"path": str(state), "policy": "root_state", "aside_dir": str(aside)}],
    }
    result = apply_layout(params, False, False, fake_run)
    assert owner_mode(str(aside)) == (0, 0, 0o700)
    assert os.listdir(aside) == [str(state / "registry" / "planted").lstrip("/").replace("/", "%")]
    assert owner_mode(str(state / "registry"))[:2] == (0, 0)
    assert result["changed"] is True


def test_check_mode_writes_nothing_and_runs_only_the_show(host, fake_run):
    root, unit_dir = host
    write(str(root / "etc" / "runnerkeep" / "config.json"), b"v1\n", JOB_UID, JOB_GID, 0o666)
    write(str(unit_dir / "old.service"), b"[Unit]\n")
    write(str(root / "runner" / ".env"), b"A=1\n", JOB_UID, JOB_GID, 0o600)
    os.makedirs(root / "state" / "job")
    os.chown(root / "state" / "job", JOB_UID, JOB_GID)
    fake_run.states.update({"new.service": ENABLED_ACTIVE, "old.service": ENABLED_ACTIVE})
    params = upgrade_params(root, unit_dir)
    params["groups"] = [{"name": "rk-test-no-such-group"}]
    params["directories"].append(
        {"path": str(root / "new-dir"), "mode": "0700", "owner": "root", "group": "root"}
    )
    params["reclaim"] = [
        {"path": str(root / "state"), "policy": "root_state", "aside_dir": str(root / "aside")}
    ]
    params["secret_files"] = [
        {
            "path": str(root / "key"),
            "random_bytes": 32,
            "mode": "0600",
            "owner": "root",
            "group": "root",
        }
    ]
    params["lines"] = [{"paths": [str(root / "runner" / ".env")], "lines": {"A": "2"}}]
    before = snapshot(str(root))
    result = apply_layout(params, True, True, fake_run)
    assert snapshot(str(root)) == before
    assert fake_run.commands() == []
    assert [c[1] for c in fake_run.calls] == ["show", "show"]
    assert result["changed"] is True
    assert {c["path"] for c in result["changes"]} >= {
        "group:rk-test-no-such-group",
        str(root / "new-dir"),
        str(root / "state" / "job"),
        str(root / "key"),
        str(root / "runner" / ".env"),
        "systemd",
        "unit:old.service",
        "unit:new.service",
    }
    # The key's bytes are in no diff.
    assert str(root / "key") not in [d["before_header"] for d in result["diff"]]


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"directories": [{"path": "var/lib/x", "mode": "0755"}]}, "paths must be absolute"),
        ({"absent": ["relative"]}, "paths must be absolute"),
        ({"look_for": ["/etc/../etc/x"]}, "write the path without . , .. or doubled slashes"),
        ({"lines": [{"paths": ["/a//b/.env"], "lines": {}}]}, "write the path without"),
        ({"reclaim": [{"path": "/s", "aside_dir": "aside"}]}, "paths must be absolute"),
        ({"files": [{"path": "/a/./b", "mode": "0644"}]}, "write the path without"),
    ],
)
def test_a_relative_or_unnormal_path_fails_before_anything_is_done(host, fake_run, params, message):
    root, _ = host
    before = snapshot(str(root))
    with pytest.raises(LayoutError, match=message):
        apply_layout(
            {"groups": [{"name": "rk-test-no-such-group"}], **params}, False, False, fake_run
        )
    assert fake_run.calls == []
    assert snapshot(str(root)) == before


def test_a_second_call_waits_for_the_first_and_then_fails_saying_so(host, fake_run, monkeypatch):
    root, _ = host
    monkeypatch.setattr(layout, "LOCK_WAIT_SECONDS", 0.3)
    fd = os.open(layout.LOCK_PATH, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        with pytest.raises(LayoutError, match=r"another host_layout run has held .* let it finish"):
            apply_layout({"directories": [dir_spec(root / "d")]}, False, False, fake_run)
        assert not os.path.exists(root / "d")
    finally:
        os.close(fd)
    apply_layout({"directories": [dir_spec(root / "d")]}, False, False, fake_run)
    assert os.path.isdir(root / "d")


def dir_spec(path, mode="0755"):
    return {"path": str(path), "mode": mode, "owner": "root", "group": "root"}


def test_a_directory_written_with_a_trailing_slash_is_made_or_refused_clearly(host, fake_run):
    root, _ = host
    params = {"directories": [dir_spec(str(root / "new") + "/", "0750")]}
    try:
        apply_layout(params, False, False, fake_run)
    except LayoutError:
        return  # refusing the path with a clear message is right too
    assert owner_mode(str(root / "new")) == (0, 0, 0o750)
