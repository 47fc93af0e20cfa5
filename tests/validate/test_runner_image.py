"""The checks a runner image must pass (pytest-testinfra; see conftest.py and the profile).

Each check fails with a single line ``<check>: expected <X>, found <Y>`` so that a CI log,
the JUnit XML and the Markdown summary all say what is wrong without a traceback.
"""

from __future__ import annotations

import json
import re
import secrets
import socket
from typing import Any

import pytest
from validate_profile import format_size

TINY = "runnerkeep-validate/tiny:1"
CLI = "runnerkeep"


def expect(ok: bool, check: str, expected: str, found: str) -> None:
    if not ok:
        pytest.fail(f"{check}: expected {expected}, found {found}", pytrace=False)


def _out(result: Any, limit: int = 400) -> str:
    """The interesting part of a command's output, on one line."""
    text = (result.stderr or "").strip() or (result.stdout or "").strip() or "no output"
    text = " ".join(text.split())
    if len(text) > limit:
        text = "..." + text[-limit:]
    return f"exit {result.rc}: {text}" if result.rc else text


def _sh(host: Any, cmd: str) -> Any:
    return host.run("sh -c " + _quote(cmd))


def _quote(cmd: str) -> str:
    return "'" + cmd.replace("'", "'\"'\"'") + "'"


def _have(host: Any, command: str) -> str:
    """Path of ``command`` on the host, or '' (POSIX ``command -v``)."""
    res = _sh(host, f"command -v {command}")
    return res.stdout.strip() if res.rc == 0 else ""


# ----------------------------------------------------------------- boot, provision


def test_provision(target: dict[str, Any]) -> None:
    """provision.yml completes on the image"""
    prov = target.get("provision") or {}
    if prov.get("rc") == 0:
        return
    failures = prov.get("failures") or []
    if failures:
        found = "; ".join(f"task '{f['task']}' failed: {f['msg']}" for f in failures[:3])
    else:
        found = f"ansible-playbook exit {prov.get('rc')}: {prov.get('tail', '')}"
    expect(False, "provision", f"{prov.get('playbook', 'provision.yml')} to complete", found)


def test_systemd_running(host: Any, profile: dict[str, Any]) -> None:
    """systemd is running with no failed units"""
    state = host.run("systemctl is-system-running").stdout.strip() or "no answer"
    failed = host.run("systemctl list-units --failed --no-legend --plain").stdout.split("\n")
    units = [line.split()[0] for line in failed if line.strip()]
    allowed = set(profile["systemd"]["allowed_failed_units"])
    bad = [u for u in units if u not in allowed]
    expect(not bad, "systemd", "no failed units", f"failed: {', '.join(bad)}")
    ok = state == "running" or (state == "degraded" and units and not bad)
    expect(ok, "systemd", "`systemctl is-system-running` = running", repr(state))


def test_service_active(host: Any, service: str) -> None:
    """a service the profile names is enabled and active"""
    load = host.run(f"systemctl show -p LoadState --value {service}").stdout.strip()
    found = {"not-found": "no such unit", "masked": "the unit is masked"}.get(load, load)
    expect(load == "loaded", f"service {service}", "the unit installed", found or "no answer")
    active = host.run(f"systemctl is-active {service}").stdout.strip() or "unknown"
    enabled = host.run(f"systemctl is-enabled {service}").stdout.strip() or "unknown"
    expect(active == "active", f"service {service}", "active", active)
    expect(enabled in ("enabled", "static", "alias"), f"service {service}", "enabled", enabled)


def test_sshd_reachable(runner: Any, target: dict[str, Any]) -> None:
    """sshd answers on the published port and accepts the key"""
    port = runner.ssh_port
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
            s.settimeout(5)
            banner = s.recv(64).decode(errors="replace").strip()
    except OSError as exc:
        banner = f"no connection ({exc})"
    expect(banner.startswith("SSH-2.0-"), "sshd", "an SSH-2.0 banner on port 22", repr(banner))
    proc = runner.ssh("true", check=False, timeout=30)
    expect(
        proc.returncode == 0,
        "sshd",
        "key login as root to succeed",
        f"exit {proc.returncode}: {proc.stderr.strip()[-300:]}",
    )


# --------------------------------------------------------------------------- docker


def test_docker_engine(host: Any, note: Any) -> None:
    """the Docker engine answers"""
    if not _have(host, "docker"):
        expect(False, "docker engine", "a docker CLI and engine", "no `docker` command on PATH")
    res = host.run("docker info --format '{{.ServerVersion}} {{.Driver}}'")
    ok = res.rc == 0 and "<no value>" not in res.stdout and res.stdout.strip()
    expect(bool(ok), "docker engine", "`docker info` to answer", _out(res))
    version, _, driver = res.stdout.strip().partition(" ")
    note(f"engine {version}, storage driver {driver}")


@pytest.fixture(scope="module")
def tiny_image(host: Any) -> str:
    """A tiny image imported inside the host (dash and its libraries; no registry needed)."""
    res = _sh(
        host,
        "set -e; d=$(mktemp -d); "
        'for f in /bin/dash $(ldd /bin/dash | grep -o "/[^ ]*"); do cp --parents -L "$f" "$d"; '
        f'done; tar -C "$d" -c . | docker import - {TINY} >/dev/null; rm -rf "$d"',
    )
    expect(res.rc == 0, "docker", f"to import a test image {TINY}", _out(res))
    return TINY


def test_docker_runs_container(host: Any, profile: dict[str, Any], tiny_image: str) -> None:
    """the Docker engine runs a container"""
    if not profile["docker"]["run_container"]:
        pytest.skip("docker.run_container is off in the profile")
    res = host.run(f"docker run --rm --network none {tiny_image} /bin/dash -c 'echo validate-ok'")
    expect(
        res.rc == 0 and res.stdout.strip() == "validate-ok",
        "docker run",
        "a container to print validate-ok",
        _out(res),
    )


def test_docker_save_load(host: Any, profile: dict[str, Any], tiny_image: str) -> None:
    """the Docker engine saves and loads an image"""
    if not profile["docker"]["save_load"]:
        pytest.skip("docker.save_load is off in the profile")
    res = _sh(
        host,
        f'set -e; f=$(mktemp); docker save -o "$f" {tiny_image}; docker rmi {tiny_image} '
        f'>/dev/null; docker load -i "$f" >/dev/null; rm -f "$f"; '
        f"docker image inspect --format ok {tiny_image}",
    )
    expect(
        res.rc == 0 and res.stdout.strip() == "ok",
        "docker save/load",
        f"{tiny_image} to survive docker save, rmi and load",
        _out(res),
    )


# ----------------------------------------------------------------------- runnerkeep


def test_self_check(host: Any, profile: dict[str, Any], note: Any) -> None:
    """the runnerkeep CLI self-check passes"""
    if not profile["runnerkeep"]["self_check"]:
        pytest.skip("runnerkeep.self_check is off in the profile")
    if not _have(host, CLI):
        expect(False, "self-check", "`runnerkeep self-check` to pass", "no `runnerkeep` command")
    res = host.run(f"{CLI} self-check --json")
    try:
        report = json.loads(res.stdout)
        bad = [f"{c['name']}: {c['detail']}" for c in report["checks"] if not c["ok"]]
    except (ValueError, KeyError, TypeError):
        bad = [_out(res)]
    expect(res.rc == 0 and not bad, "self-check", "all checks to pass", "; ".join(bad))
    note(f"runnerkeep {report.get('version')}: {len(report['checks'])} checks passed")


def _df(host: Any, path: str) -> tuple[int, str, str] | None:
    res = host.run(f"df -B1 --output=size,target,fstype {path}")
    lines = res.stdout.strip().splitlines()
    if res.rc != 0 or len(lines) < 2:
        return None
    size, mount, fstype = lines[-1].split()[:3]
    return int(size), mount, fstype


def test_disk(host: Any, disk: dict[str, Any], note: Any) -> None:
    """a filesystem the profile names exists and is large enough"""
    path = disk["path"]
    check = f"disk {path}"
    expect(host.file(path).is_directory, check, f"{path} to exist", "no such directory")
    info = _df(host, path)
    expect(info is not None, check, "df to report its filesystem", "no answer from df")
    size, mount, fstype = info
    if disk["mount_point"]:
        expect(mount == path, check, f"a filesystem mounted at {path}", f"it lies on {mount}")
    expect(
        size >= disk["min_bytes"],
        check,
        f"at least {format_size(disk['min_bytes'])} ({disk['min_size']})",
        f"{format_size(size)} ({fstype} at {mount})",
    )
    note(f"{format_size(size)} {fstype} at {mount} (min {format_size(disk['min_bytes'])})")


def test_disk_budget(host: Any, profile: dict[str, Any], note: Any) -> None:
    """the disk budget fits on the cache filesystem"""
    if not profile["budget"]["enabled"]:
        pytest.skip("budget.enabled is off in the profile")
    path = profile["budget"]["path"]
    info = _df(host, path)
    where = f"{format_size(info[0])} at {info[1]}" if info else path
    if not _have(host, CLI):
        expect(False, "disk budget", f"a runnerkeep budget for {where}", "no `runnerkeep` command")
    res = host.run(f"{CLI} disk budget --json")
    if res.rc != 0:
        msg = " ".join((res.stderr or res.stdout).split())
        msg = re.sub(r"^(runnerkeep: )?error: ", "", msg)
        expect(False, "disk budget", f"the filesystem ({where}) to fit the disk budget", msg)
    budget = json.loads(res.stdout)
    need = budget["post_target_free_bytes"] + budget["cache_quota_bytes"]
    expect(
        budget["capacity_bytes"] >= need and budget["cache_quota_bytes"] > 0,
        "disk budget",
        f"capacity >= post-stage target + cache quota = {format_size(need)}",
        f"{format_size(budget['capacity_bytes'])} on {budget['path']}",
    )
    note(
        f"capacity {format_size(budget['capacity_bytes'])}; post-stage target "
        f"{format_size(budget['post_target_free_bytes'])}; cache quota "
        f"{format_size(budget['cache_quota_bytes'])}"
    )


# ------------------------------------------------------------------------ toolchains


def test_toolchain_required(host: Any, required_tool: dict[str, Any], note: Any) -> None:
    """a required toolchain is present with a matching version"""
    cmd, pattern = required_tool["command"], required_tool["version"]
    check = f"toolchain {cmd}"
    want = (
        f"`{required_tool['version_command']}` matching /{pattern}/"
        if pattern
        else f"`{cmd}` on PATH"
    )
    where = _have(host, cmd)
    expect(bool(where), check, want, "command not found")
    note(where)
    if not pattern:
        return  # presence is all the profile asks
    res = _sh(host, required_tool["version_command"] + " 2>&1")
    version = (res.stdout or "").strip()
    first = version.splitlines()[0] if version else f"no output (exit {res.rc})"
    expect(res.rc == 0, check, want, f"exit {res.rc}: {first}")
    expect(bool(re.search(pattern, version, re.MULTILINE)), check, want, repr(first))
    note(f"{where}: {first}")


def test_toolchain_forbidden(host: Any, forbidden_tool: dict[str, Any]) -> None:
    """a forbidden toolchain is absent"""
    cmd = forbidden_tool["command"]
    path = _have(host, cmd)
    why = f" ({forbidden_tool['reason']})" if forbidden_tool["reason"] else ""
    expect(not path, f"forbidden toolchain {cmd}", f"no `{cmd}`{why}", path)


# ---------------------------------------------------------------- timers and hooks


def test_timer(host: Any, timer: dict[str, Any]) -> None:
    """a runnerkeep timer is installed, enabled and active"""
    name = timer["name"]
    by = f" (installed by role {timer['role']})" if timer.get("role") else ""
    enabled = host.run(f"systemctl is-enabled {name}").stdout.strip() or "not installed"
    active = host.run(f"systemctl is-active {name}").stdout.strip() or "unknown"
    expect(enabled == "enabled", f"timer {name}", f"enabled{by}", enabled)
    expect(active == "active", f"timer {name}", f"active{by}", active)


def test_hook(host: Any, hook: dict[str, Any]) -> None:
    """a runner hook is installed (executable if the runner runs it)"""
    path = hook["path"]
    by = f" (installed by role {hook['role']})" if hook.get("role") else ""
    f = host.file(path)
    expect(f.exists, f"hook {path}", f"the file{by}", "no such file")
    expect(f.is_file, f"hook {path}", "a regular file", "not a regular file")
    if hook.get("executable", True):
        expect(bool(f.mode & 0o111), f"hook {path}", "an executable file", f"mode {f.mode:o}")


def test_cache_roundtrip(host: Any, profile: dict[str, Any], tiny_image: str) -> None:
    """a cache save, restore and verify round trip works"""
    if not profile["runnerkeep"]["cache_roundtrip"]:
        pytest.skip("runnerkeep.cache_roundtrip is off in the profile")
    key = f"runnerkeep-validate-{secrets.token_hex(4)}"
    steps = [
        ("save", f"{CLI} cache save --key {key} {tiny_image}"),
        ("rmi", f"docker rmi {tiny_image}"),
        ("restore", f"{CLI} cache restore --key {key}"),
        ("inspect", f"docker image inspect --format ok {tiny_image}"),
        ("verify", f"{CLI} cache verify --key {key}"),
    ]
    for step, cmd in steps:
        res = host.run(cmd)
        expect(res.rc == 0, f"cache {step}", f"`{cmd}` to succeed", _out(res))


def test_cleanup_dry_run(host: Any, profile: dict[str, Any]) -> None:
    """a cleanup dry run completes"""
    if not profile["runnerkeep"]["cleanup_dry_run"]:
        pytest.skip("runnerkeep.cleanup_dry_run is off in the profile")
    cmd = f"{CLI} cleanup --stage post --dry-run --json"
    res = host.run(cmd)
    expect(res.rc == 0, "cleanup dry run", f"`{cmd}` to complete", _out(res))
    try:
        json.loads(res.stdout)
    except ValueError:
        expect(False, "cleanup dry run", "a JSON report", repr(res.stdout[:200]))
