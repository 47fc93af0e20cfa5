"""The groups and system users a role needs (groupadd, useradd, usermod)."""

from __future__ import annotations

import grp
import pwd
from typing import Any, Callable

from .changes import Changes, LayoutError

Run = Callable[[list[str]], tuple[int, str, str]]


def ensure_group(spec: dict[str, Any], changes: Changes, run: Run) -> None:
    name = spec["name"]
    try:
        grp.getgrnam(name)
        return
    except KeyError:
        pass
    changes.note(f"group:{name}", "created")
    if not changes.check_mode:
        _run(run, ["groupadd"] + (["--system"] if spec.get("system") else []) + ["--", name])


def ensure_user(spec: dict[str, Any], changes: Changes, run: Run) -> None:
    """Create the user, or bring its primary group, shell and home in line; its supplementary
    groups are added to, never taken away (other tooling may add the user to groups)."""
    name = spec["name"]
    wanted_groups = list(spec.get("groups") or [])
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        changes.note(f"user:{name}", "created")
        if not changes.check_mode:
            _run(run, _useradd(spec, wanted_groups))
        return
    argv = _usermod_argv(spec, entry, wanted_groups)
    if argv:
        changes.note(f"user:{name}", "changed")
        if not changes.check_mode:
            _run(run, [*argv, "--", name])


def _useradd(spec: dict[str, Any], groups: list[str]) -> list[str]:
    argv = ["useradd", "--no-create-home", "--gid", spec["group"]]
    if spec.get("system"):
        argv.append("--system")
    if groups:
        argv += ["--groups", ",".join(groups)]
    argv += ["--shell", spec.get("shell") or "/usr/sbin/nologin"]
    argv += ["--home-dir", spec.get("home") or "/nonexistent"]
    return [*argv, "--", spec["name"]]


def _usermod_argv(spec: dict[str, Any], entry: Any, groups: list[str]) -> list[str]:
    argv: list[str] = []
    try:
        gid = grp.getgrnam(spec["group"]).gr_gid
    except KeyError:
        gid = None  # check mode: the group is still to be created
    if gid != entry.pw_gid:
        argv += ["--gid", spec["group"]]
    shell = spec.get("shell") or "/usr/sbin/nologin"
    if shell != entry.pw_shell:
        argv += ["--shell", shell]
    home = spec.get("home") or "/nonexistent"
    if home != entry.pw_dir:
        argv += ["--home", home]
    missing = [g for g in groups if not _is_member(spec["name"], g)]
    if missing:
        argv += ["--append", "--groups", ",".join(missing)]
    return ["usermod", *argv] if argv else []


def _is_member(user: str, group: str) -> bool:
    try:
        return user in grp.getgrnam(group).gr_mem
    except KeyError:
        return False


def _run(run: Run, argv: list[str]) -> None:
    rc, out, err = run(argv)
    if rc != 0:
        text = (err or out).strip().splitlines()
        raise LayoutError(f"{' '.join(argv)} failed (rc={rc}): {text[-1] if text else 'no output'}")
