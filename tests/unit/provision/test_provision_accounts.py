"""host_layout groups and users: the groupadd/useradd/usermod command lines, built from the
machine's real passwd/group; the commands themselves go to the recording FakeRun (running them
would change this machine's accounts)."""

from __future__ import annotations

import grp
import pwd
from collections import namedtuple

import pytest
from provisiontest_helpers import changes
from runnerkeep.provision import accounts
from runnerkeep.provision.accounts import ensure_group, ensure_user
from runnerkeep.provision.changes import LayoutError

MISSING_USER = "rk-test-no-such-user"
MISSING_GROUP = "rk-test-no-such-group"


@pytest.fixture(autouse=True)
def _names_really_missing():
    with pytest.raises(KeyError):
        pwd.getpwnam(MISSING_USER)
    with pytest.raises(KeyError):
        grp.getgrnam(MISSING_GROUP)


def user(name, group, **more):
    # As Ansible passes it: every option present, defaults filled in.
    found = {"name": name, "group": group, "groups": [], "system": False}
    found.update({"shell": "/usr/sbin/nologin", "home": "/nonexistent"})
    found.update(more)
    return found


@pytest.mark.parametrize(
    ("system", "argv"),
    [
        (True, ["groupadd", "--system", "--", MISSING_GROUP]),
        (False, ["groupadd", "--", MISSING_GROUP]),
    ],
)
def test_a_missing_group_is_added(fake_run, system, argv):
    done = changes()
    ensure_group({"name": MISSING_GROUP, "system": system}, done, fake_run)
    assert fake_run.calls == [argv]
    assert done.by_path == {f"group:{MISSING_GROUP}": ["created"]}


def test_an_existing_group_is_no_change(fake_run):
    done = changes()
    ensure_group({"name": "nogroup", "system": True}, done, fake_run)
    assert fake_run.calls == []
    assert not done.changed


def test_a_missing_user_is_added_as_a_system_user_without_a_home(fake_run):
    done = changes()
    spec = user(MISSING_USER, "nogroup", system=True, groups=["users", "daemon"])
    ensure_user(spec, done, fake_run)
    assert fake_run.calls == [
        [
            "useradd",
            "--no-create-home",
            "--gid",
            "nogroup",
            "--system",
            "--groups",
            "users,daemon",
            "--shell",
            "/usr/sbin/nologin",
            "--home-dir",
            "/nonexistent",
            "--",
            MISSING_USER,
        ]
    ]
    assert done.by_path == {f"user:{MISSING_USER}": ["created"]}


def test_a_user_without_optional_fields_gets_the_defaults(fake_run):
    ensure_user({"name": MISSING_USER, "group": "users"}, changes(), fake_run)
    [argv] = fake_run.calls
    assert argv[argv.index("--shell") + 1] == "/usr/sbin/nologin"
    assert argv[argv.index("--home-dir") + 1] == "/nonexistent"
    assert "--system" not in argv and "--groups" not in argv


def test_an_existing_right_user_is_no_change(fake_run):
    nobody = pwd.getpwnam("nobody")
    assert (nobody.pw_gid, nobody.pw_shell, nobody.pw_dir) == (
        grp.getgrnam("nogroup").gr_gid,
        "/usr/sbin/nologin",
        "/nonexistent",
    )
    done = changes()
    ensure_user(user("nobody", "nogroup"), done, fake_run)
    assert fake_run.calls == []
    assert not done.changed


def test_an_existing_user_is_brought_in_line(fake_run):
    assert "nobody" not in grp.getgrnam("users").gr_mem
    done = changes()
    spec = user("nobody", "users", shell="/bin/sh", home="/var/empty", groups=["users"])
    ensure_user(spec, done, fake_run)
    assert fake_run.calls == [
        [
            "usermod",
            "--gid",
            "users",
            "--shell",
            "/bin/sh",
            "--home",
            "/var/empty",
            "--append",
            "--groups",
            "users",
            "--",
            "nobody",
        ]
    ]
    assert done.by_path == {"user:nobody": ["changed"]}


def test_supplementary_groups_are_only_added(fake_run, monkeypatch):
    real = grp.getgrnam
    entry = namedtuple("entry", "gr_name gr_passwd gr_gid gr_mem")

    def with_member(name):
        if name == "rk-members":
            return entry("rk-members", "x", 4242, ["nobody"])
        return real(name)

    monkeypatch.setattr(accounts.grp, "getgrnam", with_member)
    spec = user("nobody", "nogroup", groups=["rk-members", "users"])
    ensure_user(spec, changes(), fake_run)
    # Already in rk-members: only users is added, with --append (no group is taken away).
    assert fake_run.calls == [["usermod", "--append", "--groups", "users", "--", "nobody"]]


def test_check_mode_reports_accounts_and_runs_nothing(fake_run):
    done = changes(check_mode=True)
    ensure_group({"name": MISSING_GROUP, "system": True}, done, fake_run)
    ensure_user(user(MISSING_USER, MISSING_GROUP), done, fake_run)
    # The group is still to be created: the existing user would be moved into it.
    ensure_user(user("nobody", MISSING_GROUP), done, fake_run)
    assert fake_run.calls == []
    assert done.by_path == {
        f"group:{MISSING_GROUP}": ["created"],
        f"user:{MISSING_USER}": ["created"],
        "user:nobody": ["changed"],
    }


def test_a_failing_command_fails_naming_it_and_its_last_line(fake_run):
    argv = ["groupadd", "--", MISSING_GROUP]
    fake_run.failures[tuple(argv)] = (9, "", f"groupadd: group '{MISSING_GROUP}' already exists\n")
    with pytest.raises(LayoutError) as raised:
        ensure_group({"name": MISSING_GROUP}, changes(), fake_run)
    assert str(raised.value) == (
        f"groupadd -- {MISSING_GROUP} failed (rc=9): "
        f"groupadd: group '{MISSING_GROUP}' already exists"
    )


def test_a_failing_command_without_output_says_so(fake_run):
    spec = user(MISSING_USER, "nogroup")
    fake_run.failures[tuple(accounts._useradd(spec, []))] = (1, "", "")
    with pytest.raises(LayoutError, match=r"^useradd .* failed \(rc=1\): no output$"):
        ensure_user(spec, changes(), fake_run)
