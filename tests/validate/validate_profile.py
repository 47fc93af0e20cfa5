"""Validation profiles: what a team's runner image must have (YAML, see docs/validation.md).

``load_profile(path)`` reads and checks a profile and returns it with every default filled
in; ``ProfileError`` says which key is wrong. ``provision_roles()`` and ``expected_timers()``
/ ``expected_hooks()`` turn the ``runnerkeep`` section into the concrete list of units and
files to check, following what ``playbooks/provision.yml`` installs today.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_PROFILE = REPO_ROOT / "profiles" / "default.yml"
PROVISION = "playbooks/provision.yml"

_SIZE_RE = re.compile(r"^([0-9]+)([kmgt]?)$", re.IGNORECASE)
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
_TIMER_RE = re.compile(r"runnerkeep-[A-Za-z0-9_.@-]+?\.timer")

DEFAULTS: dict[str, Any] = {
    "name": "",
    "description": "",
    "boot": {"timeout": 120},
    "provision": {"playbook": PROVISION, "extra_vars": {}},
    "disks": [],
    "budget": {"enabled": True, "path": "/var/cache/runnerkeep"},
    "systemd": {"allowed_failed_units": []},
    "services": ["docker.service", "ssh.service"],
    "docker": {"run_container": True, "save_load": True},
    "toolchains": {"required": [], "forbidden": []},
    "runnerkeep": {
        "self_check": True,
        "timers": ["auto"],
        "hooks": ["auto"],
        "cache_roundtrip": True,
        "cleanup_dry_run": True,
    },
}


class ProfileError(ValueError):
    """The profile file is missing or malformed (message names the key)."""


def parse_size(value: Any, what: str) -> int:
    """``512m``, ``2g``, ``1024`` (bytes) -> bytes; docker's tmpfs size syntax."""
    m = _SIZE_RE.match(str(value).strip())
    if not m or isinstance(value, bool):
        raise ProfileError(f"{what}: expected a size like 512m or 20g, got {value!r}")
    return int(m.group(1)) * _UNITS[m.group(2).lower()]


def format_size(n: int) -> str:
    for unit, div in (("TiB", 1 << 40), ("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= div:
            return f"{n / div:.1f} {unit}".replace(".0 ", " ")
    return f"{n} B"


def _merge(defaults: dict[str, Any], given: dict[str, Any], where: str) -> dict[str, Any]:
    out = copy.deepcopy(defaults)
    for key, value in given.items():
        if key not in defaults:
            known = ", ".join(sorted(defaults))
            raise ProfileError(f"{where}{key}: unknown key (known: {known})")
        if isinstance(defaults[key], dict) and defaults[key] and key != "extra_vars":
            if not isinstance(value, dict):
                raise ProfileError(f"{where}{key}: expected a mapping, got {value!r}")
            out[key] = _merge(defaults[key], value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def _list_of(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise ProfileError(f"{what}: expected a list, got {value!r}")
    return value


def _check_regex(pattern: Any, what: str) -> str:
    try:
        re.compile(str(pattern))
    except re.error as exc:
        raise ProfileError(f"{what}: bad regular expression {pattern!r}: {exc}") from None
    return str(pattern)


def _normalise_disks(disks: Any) -> list[dict[str, Any]]:
    out = []
    for i, disk in enumerate(_list_of(disks, "disks")):
        what = f"disks[{i}]"
        if not isinstance(disk, dict) or not str(disk.get("path", "")).startswith("/"):
            raise ProfileError(f"{what}: expected a mapping with an absolute path, got {disk!r}")
        unknown = set(disk) - {"path", "size", "min_size", "mount_point"}
        if unknown:
            raise ProfileError(f"{what}: unknown key(s) {sorted(unknown)}")
        size = disk.get("size")
        min_size = disk.get("min_size", size)
        if size is None and min_size is None:
            raise ProfileError(f"{what}: give size (booted tmpfs) and/or min_size")
        entry = {
            "path": str(disk["path"]).rstrip("/") or "/",
            "size": str(size) if size is not None else None,
            "size_bytes": parse_size(size, f"{what}.size") if size is not None else None,
            "min_size": str(min_size),
            "min_bytes": parse_size(min_size, f"{what}.min_size"),
            "mount_point": bool(disk.get("mount_point", size is not None)),
        }
        out.append(entry)
    return out


def _normalise_tools(section: Any) -> dict[str, list[dict[str, Any]]]:
    required, forbidden = [], []
    for i, tool in enumerate(_list_of(section.get("required"), "toolchains.required")):
        what = f"toolchains.required[{i}]"
        if isinstance(tool, str):
            tool = {"command": tool}
        if not isinstance(tool, dict) or not tool.get("command"):
            raise ProfileError(f"{what}: expected a command name or a mapping with command")
        cmd = str(tool["command"])
        required.append(
            {
                "command": cmd,
                "version_command": str(tool.get("version_command", f"{cmd} --version")),
                "version": _check_regex(tool.get("version", ""), f"{what}.version"),
            }
        )
    for i, tool in enumerate(_list_of(section.get("forbidden"), "toolchains.forbidden")):
        what = f"toolchains.forbidden[{i}]"
        if isinstance(tool, str):
            tool = {"command": tool}
        if not isinstance(tool, dict) or not tool.get("command"):
            raise ProfileError(f"{what}: expected a command name or a mapping with command")
        forbidden.append({"command": str(tool["command"]), "reason": str(tool.get("reason", ""))})
    return {"required": required, "forbidden": forbidden}


def _normalise_units(items: Any, what: str, key: str) -> list[Any]:
    out: list[Any] = []
    for i, item in enumerate(_list_of(items, what)):
        if item == "auto":
            out.append("auto")
            continue
        if isinstance(item, str):
            item = {key: item}
        if isinstance(item, dict) and item.get(key):
            entry = {key: str(item[key]), "role": item.get("role")}
            if key == "path":
                entry["executable"] = bool(item.get("executable", True))
            out.append(entry)
        else:
            raise ProfileError(
                f"{what}[{i}]: expected 'auto', a {key} or {{{key}: ..., role: ...}}"
            )
    return out


def load_profile(path: str | Path | None = None) -> dict[str, Any]:
    """Read, check and complete a profile; raises ProfileError with the offending key."""
    path = Path(path) if path else DEFAULT_PROFILE
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ProfileError(f"profile {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ProfileError(f"profile {path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ProfileError(f"profile {path}: expected a mapping at the top level")
    try:
        profile = _merge(DEFAULTS, raw, "")
        profile["disks"] = _normalise_disks(profile["disks"])
        profile["toolchains"] = _normalise_tools(profile["toolchains"] or {})
        rk = profile["runnerkeep"]
        rk["timers"] = _normalise_units(rk["timers"], "runnerkeep.timers", "name")
        rk["hooks"] = _normalise_units(rk["hooks"], "runnerkeep.hooks", "path")
        profile["services"] = [str(s) for s in _list_of(profile["services"], "services")]
        allowed = profile["systemd"]["allowed_failed_units"]
        profile["systemd"]["allowed_failed_units"] = [
            str(u) for u in _list_of(allowed, "systemd.allowed_failed_units")
        ]
        if not isinstance(profile["provision"]["extra_vars"] or {}, dict):
            raise ProfileError("provision.extra_vars: expected a mapping")
        profile["boot"]["timeout"] = float(profile["boot"]["timeout"])
    except ProfileError as exc:
        raise ProfileError(f"profile {path}: {exc}") from None
    profile["name"] = profile["name"] or path.stem
    profile["file"] = str(path)
    return profile


def harness_mounts(profile: dict[str, Any]) -> tuple[str, str, dict[str, str]]:
    """(docker_disk, cache_disk, extra_tmpfs) for ``Fleet.start`` from the profile's disks."""
    docker_disk, cache_disk = "2g", "1g"
    extra: dict[str, str] = {}
    for disk in profile["disks"]:
        if disk["size"] is None:
            continue
        size = disk["size"].lower()
        if disk["path"] == "/var/lib/docker":
            docker_disk = size
        elif disk["path"] == "/var/cache/runnerkeep":
            cache_disk = size
        else:
            extra[disk["path"]] = size
    return docker_disk, cache_disk, extra


# ----------------------------------------------------------- what provision installs


def provision_roles(playbook: str | Path = PROVISION) -> list[str]:
    """Role names the provision playbook applies (``roles:`` and include/import_role)."""
    path = Path(playbook)
    if not path.is_absolute():
        path = REPO_ROOT / path
    plays = yaml.safe_load(path.read_text()) or []
    roles: list[str] = []

    def add(name: Any) -> None:
        if isinstance(name, str) and name:
            short = name.rsplit(".", 1)[-1]  # namespace.collection.role -> role
            if short not in roles:
                roles.append(short)

    for play in plays:
        if not isinstance(play, dict):
            continue
        for role in play.get("roles") or []:
            add((role.get("role") or role.get("name")) if isinstance(role, dict) else role)
        for section in ("pre_tasks", "tasks", "post_tasks"):
            for task in _flatten(play.get(section)):
                args = _module(task, ("include_role", "import_role"))
                if args:
                    add(args.get("name"))
    return roles


def _flatten(tasks: Any) -> Iterator[dict[str, Any]]:
    """Every task of a task list, with the tasks of its blocks (block, rescue, always)."""
    for task in tasks or []:
        if isinstance(task, dict):
            yield task
            for key in ("block", "rescue", "always"):
                yield from _flatten(task.get(key))


def _module(task: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any] | None:
    """The task's arguments for the first of ``names`` it calls (plain or ansible.builtin.)."""
    for name in names:
        for key in (name, f"ansible.builtin.{name}"):
            if isinstance(task.get(key), dict):
                return task[key]
    return None


_VAR_RE = re.compile(r"\{\{\s*([A-Za-z_][A-Za-z0-9_]*)\s*\}\}")
_TEMPLATE_MODULES = ("template", "copy")


def _role_vars(role: str, extra_vars: dict[str, Any] | None) -> dict[str, Any]:
    defaults = REPO_ROOT / "roles" / role / "defaults" / "main.yml"
    data = yaml.safe_load(defaults.read_text()) if defaults.is_file() else None
    merged = dict(data or {})
    merged.update(extra_vars or {})
    return merged


def _role_tasks(role: str) -> list[dict[str, Any]]:
    """Every task of a role's tasks/*.yml, blocks flattened."""
    tasks_dir = REPO_ROOT / "roles" / role / "tasks"
    out: list[dict[str, Any]] = []
    for path in sorted(tasks_dir.rglob("*.yml")) if tasks_dir.is_dir() else []:
        out += _flatten(yaml.safe_load(path.read_text(errors="replace")))
    return out


def _render(text: Any, variables: dict[str, Any]) -> str | None:
    """Substitute plain ``{{ var }}`` references; None if anything else is templated."""
    text = str(text)
    for _ in range(5):  # defaults may refer to other defaults
        rendered = _VAR_RE.sub(
            lambda m: str(variables[m.group(1)]) if m.group(1) in variables else m.group(0), text
        )
        if rendered == text:
            break
        text = rendered
    return None if "{{" in text else text


def _when_holds(task: dict[str, Any], variables: dict[str, Any]) -> bool:
    """False only for a ``when`` that a role default (or extra var) turns off.

    Terms the defaults cannot decide (facts, registered results) are taken as true: the
    host is a systemd Linux runner, which is what the validation boots.
    """
    when = task.get("when", [])
    for term in when if isinstance(when, list) else [when]:
        term = str(term).strip()
        negate = term.startswith("not ")
        name = term[4:].strip() if negate else term
        if re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name) and name in variables:
            value = variables[name]
            if isinstance(value, str):
                value = value.strip().lower() in ("true", "yes", "1", "on")
            if bool(value) == negate:
                return False
    return True


def _loop_items(task: dict[str, Any], variables: dict[str, Any]) -> list[Any]:
    loop = task.get("loop", task.get("with_items"))
    if loop is None:
        return [None]
    if isinstance(loop, str):
        rendered = _VAR_RE.fullmatch(loop.strip())
        loop = variables.get(rendered.group(1)) if rendered else None
    return list(loop) if isinstance(loop, list) else []


def _role_timers(role: str, extra_vars: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """``runnerkeep-*.timer`` units the role enables (systemd_service enabled: true)."""
    variables = _role_vars(role, extra_vars)
    found: list[dict[str, Any]] = []
    for task in _role_tasks(role):
        args = _module(task, ("systemd_service", "systemd", "service"))
        if not args or args.get("enabled") is not True or not _when_holds(task, variables):
            continue
        for item in _loop_items(task, variables):
            name = _render(args.get("name", ""), {**variables, "item": item})
            if name and _TIMER_RE.fullmatch(name):
                found.append({"name": name})
    return found


def _role_hooks(role: str, extra_vars: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """Hook files the role writes: template/copy tasks with ``hook`` in their dest.

    ``executable`` is whether the task's mode has an x bit (runner hook scripts) or not
    (snippets that a runner's config sources).
    """
    variables = _role_vars(role, extra_vars)
    found: list[dict[str, Any]] = []
    for task in _role_tasks(role):
        args = _module(task, _TEMPLATE_MODULES)
        if not args or "hook" not in str(args.get("dest", "")).lower():
            continue
        if not _when_holds(task, variables):
            continue
        mode = _render(args.get("mode", "0644"), variables) or "0644"
        try:
            executable = bool(int(str(mode), 8) & 0o111)
        except ValueError:
            executable = "x" in str(mode)
        for item in _loop_items(task, variables):
            dest = _render(args["dest"], {**variables, "item": item})
            if dest and dest.startswith("/"):
                found.append({"path": dest, "executable": executable})
    return found


def _expand(
    items: list[Any], key: str, finder: Any, roles: list[str], extra_vars: dict[str, Any]
) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    seen: set[str] = set()
    for item in items:
        if item == "auto":
            entries = []
            for role in roles:
                entries += [{**found, "role": role} for found in finder(role, extra_vars)]
        elif item["role"] and item["role"] not in roles:
            continue  # the role is not part of provision.yml (yet): nothing to check
        else:
            entries = [item]
        for entry in entries:
            if entry[key] not in seen:
                seen.add(entry[key])
                out.append(entry)
    return out


def expected_timers(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """Timers to check: the profile's list with ``auto`` expanded from provision's roles."""
    prov = profile["provision"]
    roles = provision_roles(prov["playbook"])
    return _expand(profile["runnerkeep"]["timers"], "name", _role_timers, roles, prov["extra_vars"])


def expected_hooks(profile: dict[str, Any]) -> list[dict[str, Any]]:
    """Hook files to check: the profile's list with ``auto`` expanded from provision's roles."""
    prov = profile["provision"]
    roles = provision_roles(prov["playbook"])
    return _expand(profile["runnerkeep"]["hooks"], "path", _role_hooks, roles, prov["extra_vars"])
