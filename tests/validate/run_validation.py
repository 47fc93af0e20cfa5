#!/usr/bin/env python3
"""Validate a runner image before it merges: boot it, provision it, check it.

    python tests/validate/run_validation.py IMAGE [--profile FILE] [--output DIR]
    nox -s validate -- IMAGE [--profile FILE] [--output DIR]

IMAGE is a local Docker image (or ``runnerkeep``: build and use the project's own runner
image). The image is booted as a runner container with the fleet harness (tests/harness:
systemd as PID 1, sshd on loopback, tmpfs disks sized by the profile's ``disks``),
``playbooks/provision.yml`` runs against it, then the pytest-testinfra suite in
tests/validate checks it against the profile (default profiles/default.yml).

Writes to DIR (default ./validation-results): ``junit.xml``, ``summary.md``,
``results.json``, ``provision.log``. Exit 0 when every check passes; 1 with one line per
failed check (``FAIL <check>: expected X, found Y``); 2 on bad arguments or profile.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

import yaml

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parents[1]
for _p in (HERE, HERE.parent, REPO_ROOT / "module_utils", REPO_ROOT / "cli"):
    if str(_p) not in sys.path:
        sys.path.insert(0, str(_p))

from harness._docker import DockerError, docker, image_exists  # noqa: E402
from harness.engine import EngineUnavailable, ensure_engine  # noqa: E402
from harness.fleet import Fleet, FleetError, RunnerHost  # noqa: E402
from validate_profile import (  # noqa: E402
    ProfileError,
    harness_mounts,
    load_profile,
)

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2
OWN_IMAGE = "runnerkeep"


def log(msg: str) -> None:
    print(f"[validate] {msg}", file=sys.stderr, flush=True)


class ValidationFleet(Fleet):
    """A harness fleet that boots images which may be broken.

    The stock harness insists on a running systemd, a Docker engine and SSH before it hands
    a host over; here a missing piece is a finding, not a start-up error. Waits until systemd
    settles (running/degraded) and sshd takes the key, or the boot timeout passes, and records
    what it saw in ``boot_notes``. Only a container that exits is a start-up error.
    """

    boot_notes: dict[str, dict[str, Any]]

    def wait_host(self, host: RunnerHost, deadline: float) -> None:
        notes: dict[str, Any] = {"systemd": "", "ssh_ok": False, "ssh_error": ""}
        self.boot_notes = getattr(self, "boot_notes", {})
        self.boot_notes[host.name] = notes
        while time.monotonic() < deadline:
            if self.aborting():
                raise FleetError(f"{host.name}: aborted")
            status = self.container_state(host.container)
            if status not in ("running", "created"):
                logs = docker("logs", "--tail", "30", host.container, check=False)
                raise FleetError(
                    f"container {host.container} is {status}; last log lines:\n"
                    f"{(logs.stdout + logs.stderr).strip()}"
                )
            proc = host.exec(["systemctl", "is-system-running"], check=False, timeout=15)
            notes["systemd"] = proc.stdout.strip() or proc.stderr.strip()
            if notes["systemd"] in ("running", "degraded"):
                break
            time.sleep(0.5)
        while time.monotonic() < deadline:
            proc = host.ssh("true", check=False, timeout=20)
            notes["ssh_error"] = proc.stderr.strip()[-300:]
            if proc.returncode == 0:
                notes["ssh_ok"] = True
                return
            time.sleep(0.5)


# ------------------------------------------------------------------- provision output

_TASK_RE = re.compile(r"^TASK \[(?P<task>.*?)\] \**\s*$")
_FAIL_RE = re.compile(  # "fatal: [h]: FAILED! => {json}" or "... => " + a YAML block
    r"^(?:fatal|failed): \[(?P<host>[^\]]+)\](?: => \(item=.*?\))?: "
    r"(?P<kind>FAILED|UNREACHABLE)! => (?P<body>.*)$"
)


def _short(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


_NOISE = ("Warning: Permanently added", "Shared connection to")


def _result_message(data: Any, raw: str) -> str:
    """The useful words of a failed task's result: msg, plus stderr/stdout when msg is vague."""
    if not isinstance(data, dict):
        return raw
    msg = str(data.get("msg") or "").strip()
    detail = ""
    for key in ("stderr", "stdout"):
        lines = [ln for ln in str(data.get(key) or "").splitlines() if not ln.startswith(_NOISE)]
        text = " ".join(ln.strip() for ln in lines if ln.strip())
        if text:
            detail = text
            break
    if detail and detail not in msg:
        msg = f"{msg}: {detail}" if msg else detail
    return msg or raw


def parse_failures(output: str) -> list[dict[str, str]]:
    """(task, host, msg) of each failed task in ansible-playbook's default output.

    The result after ``=> `` is JSON on the same line, or (callback_result_format = yaml, as in
    ansible.cfg) a YAML block indented on the following lines.
    """
    failures = []
    task = "?"
    lines = output.splitlines()
    for i, line in enumerate(lines):
        m = _TASK_RE.match(line)
        if m:
            task = m.group("task").split(" : ", 1)[-1]
            continue
        m = _FAIL_RE.match(line)
        if not m:
            continue
        body = m.group("body").strip()
        if not body:
            block = []
            for nxt in lines[i + 1 :]:
                if nxt and not nxt[0].isspace():
                    break
                block.append(nxt)
            body = textwrap.dedent("\n".join(block))
        data: Any = None
        with contextlib.suppress(ValueError, yaml.YAMLError):
            data = json.loads(body) if body.startswith("{") else yaml.safe_load(body)
        msg = _result_message(data, body)
        failures.append({"task": task, "host": m.group("host"), "msg": _short(msg)})
    return failures


# ------------------------------------------------------------------------- reports


def write_junit_single(path: Path, name: str, message: str) -> None:
    """A one-case JUnit file for failures before the suite could run (e.g. no boot)."""
    path.write_text(
        '<?xml version="1.0" encoding="utf-8"?>\n'
        '<testsuites><testsuite name="runnerkeep-validate" tests="1" failures="1">'
        f'<testcase classname="run_validation" name={quoteattr(name)}>'
        f"<failure message={quoteattr(message)}>{escape(message)}</failure>"
        "</testcase></testsuite></testsuites>\n"
    )


def _display(path: str) -> str:
    p = Path(path).resolve()
    return str(p.relative_to(REPO_ROOT)) if REPO_ROOT in p.parents else str(p)


def markdown_summary(image: str, profile: dict[str, Any], results: list[dict[str, Any]]) -> str:
    failed = [r for r in results if r["outcome"] == "failed"]
    passed = [r for r in results if r["outcome"] == "passed"]
    skipped = [r for r in results if r["outcome"] == "skipped"]
    verdict = "FAILED" if failed or not results else "passed"
    icon = ":x:" if verdict == "FAILED" else ":white_check_mark:"
    lines = [
        f"## {icon} Runner image validation {verdict}: `{image}`",
        "",
        f"Profile **{profile['name']}** (`{_display(profile['file'])}`): "
        f"{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped.",
        "",
    ]
    if failed:
        lines += ["### Failed checks", ""]
        lines += [f"- **{r['title']}** — {r['message']}" for r in failed]
        lines.append("")
    lines += ["### All checks", "", "| check | result | detail |", "|---|---|---|"]
    for r in results:
        mark = {"passed": "pass", "failed": "**FAIL**", "skipped": "skip"}[r["outcome"]]
        detail = r["message"].replace("|", "\\|").replace("\n", " ")
        lines.append(f"| {r['title']} | {mark} | {detail} |")
    return "\n".join(lines) + "\n"


def finish(
    out: Path, image: str, profile: dict[str, Any], results: list[dict[str, Any]], took: float
) -> int:
    (out / "results.json").write_text(json.dumps(results, indent=2) + "\n")
    (out / "summary.md").write_text(markdown_summary(image, profile, results))
    failed = [r for r in results if r["outcome"] == "failed"]
    for r in failed:
        print(f"FAIL {r['message']}")
    n_pass = sum(r["outcome"] == "passed" for r in results)
    verdict = "FAILED" if failed or not results else "passed"
    print(
        f"validation of {image} with profile {profile['name']} {verdict}: {n_pass} passed, "
        f"{len(failed)} failed ({took:.0f}s); reports in {out}"
    )
    return EXIT_FAILED if verdict == "FAILED" else EXIT_OK


# -------------------------------------------------------------------------- main


def check_init(image: str) -> str:
    """'' if the image starts an init (systemd) as PID 1, else what it starts instead."""
    proc = docker(
        "image",
        "inspect",
        "--format",
        "{{json .Config.Entrypoint}} {{json .Config.Cmd}}",
        image,
        check=False,
        timeout=30,
    )
    if proc.returncode != 0:
        return f"found it cannot be inspected: {proc.stderr.strip()}"
    entrypoint, cmd = (json.loads(part) or [] for part in proc.stdout.split(" ", 1))
    argv = [*entrypoint, *cmd]
    if any("systemd" in arg or arg.endswith("init") for arg in argv):
        return ""
    return f"found ENTRYPOINT {json.dumps(entrypoint or None)} CMD {json.dumps(cmd or None)}"


def boot_failed(out: Path, image: str, profile: dict[str, Any], found: str, took: float) -> int:
    message = _short(
        f"boot: expected {image} to boot as a runner container with systemd as PID 1 "
        f'(e.g. CMD ["/lib/systemd/systemd"]), {found}',
        2000,
    )
    write_junit_single(out / "junit.xml", "boot", message)
    result = {"id": "boot", "title": "the image boots", "outcome": "failed", "message": message}
    return finish(out, image, profile, [result], took)


def resolve_image(image: str) -> str:
    if image == OWN_IMAGE:
        from harness.image import ensure_runner_image

        return ensure_runner_image()
    if not image_exists(image):
        log(f"{image} is not in the local engine; trying docker pull")
        with contextlib.suppress(DockerError):
            docker("pull", image, timeout=600, check=False)
        if not image_exists(image):
            raise DockerError(f"image {image} not found locally and could not be pulled")
    return image


def run_suite(
    out: Path, target_file: Path, profile_file: str, extra: list[str]
) -> tuple[int, list[dict[str, Any]]]:
    results_file = out / "results-raw.json"
    env = dict(os.environ)
    paths = [str(REPO_ROOT / p) for p in ("module_utils", "cli", "tests", "tests/validate")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(HERE),
        "-p",
        "no:cacheprovider",
        "-q",
        "--tb=line",
        "-o",
        "junit_suite_name=runnerkeep-validate",
        f"--junitxml={out / 'junit.xml'}",
        f"--validate-target={target_file}",
        f"--validate-profile={profile_file}",
        f"--validate-results={results_file}",
        *extra,
    ]
    log("$ " + " ".join(cmd))
    # pytest's report goes to stderr: stdout carries only the FAIL lines and the verdict.
    proc = subprocess.run(cmd, cwd=REPO_ROOT, env=env, stdout=sys.stderr, check=False, timeout=1800)
    results = json.loads(results_file.read_text()) if results_file.exists() else []
    with contextlib.suppress(OSError):
        results_file.unlink()
    return proc.returncode, results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="run_validation.py",
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=__doc__.split("\n\n", 1)[1],
    )
    parser.add_argument("image", help=f"image to validate, or '{OWN_IMAGE}' for the project's own")
    parser.add_argument("--profile", default=None, help="profile YAML (profiles/default.yml)")
    parser.add_argument("--output", default="validation-results", help="report folder")
    parser.add_argument("--keep", action="store_true", help="leave the runner container running")
    parser.add_argument("pytest_args", nargs="*", help="extra pytest arguments (after --)")
    args = parser.parse_args(argv)

    t0 = time.monotonic()
    try:
        profile = load_profile(args.profile)
    except ProfileError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    out = Path(args.output).resolve()
    out.mkdir(parents=True, exist_ok=True)
    for stale in ("junit.xml", "summary.md", "results.json", "provision.log", "target.json"):
        with contextlib.suppress(OSError):
            (out / stale).unlink()

    try:
        ensure_engine()
        image = resolve_image(args.image)
    except (EngineUnavailable, DockerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    log(f"validating {image} with profile {profile['name']} ({profile['file']})")

    docker_disk, cache_disk, extra_tmpfs = harness_mounts(profile)
    try:
        fleet = ValidationFleet.start(
            1,
            name="rkv",
            docker_disk=docker_disk,
            cache_disk=cache_disk,
            extra_tmpfs=extra_tmpfs,
            image=image,
            boot_timeout=profile["boot"]["timeout"],
            keep=args.keep,
        )
    except (FleetError, DockerError) as exc:
        found = check_init(image) or f"found: {exc}"  # the image's command, if not an init
        return boot_failed(out, image, profile, found, time.monotonic() - t0)

    try:
        host = fleet.hosts[0]
        notes = fleet.boot_notes.get(host.name, {})
        log(
            f"booted {host.container} (systemd {notes.get('systemd')!r}, "
            f"ssh ok {notes.get('ssh_ok')})"
        )
        playbook = profile["provision"]["playbook"]
        t1 = time.monotonic()
        proc = fleet.run_playbook(
            playbook, extra_vars=profile["provision"]["extra_vars"] or None, quiet=True
        )
        (out / "provision.log").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr)
        failures = parse_failures(proc.stdout)
        log(f"{playbook}: exit {proc.returncode} in {time.monotonic() - t1:.0f}s")
        target = {
            "image": image,
            "host": {
                "name": host.name,
                "container": host.container,
                "ssh_port": host.ssh_port,
                "key_file": host.key_file,
                "ssh_config": host.ssh_config,
            },
            "backend": "paramiko" if notes.get("ssh_ok") else "docker",
            "boot": notes,
            "provision": {
                "playbook": playbook,
                "rc": proc.returncode,
                "failures": failures,
                "tail": _short(proc.stderr or proc.stdout[-600:]),
                "log": str(out / "provision.log"),
            },
        }
        target_file = out / "target.json"
        target_file.write_text(json.dumps(target, indent=2) + "\n")
        _rc, results = run_suite(out, target_file, profile["file"], args.pytest_args)
        if not results:
            results = [
                {
                    "id": "suite",
                    "title": "the validation suite runs",
                    "outcome": "failed",
                    "message": f"suite: expected pytest to run the checks, found exit {_rc}",
                }
            ]
        return finish(out, image, profile, results, time.monotonic() - t0)
    finally:
        if args.keep:
            log(f"--keep: {fleet.hosts[0].container} left running; inventory {fleet.inventory}")
        else:
            fleet.stop()


if __name__ == "__main__":
    sys.exit(main())
