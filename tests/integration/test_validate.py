"""Pre-merge image validation (tests/validate/run_validation.py) on real images.

The project's own runner image passes the default profile; deliberately broken images
(images/broken/*) and a too-small disk fail, each with its readable
``FAIL <check>: expected X, found Y`` line. The six validations run concurrently (each is
one runner container: boot, provision.yml, the testinfra suite; no-init stops at the boot),
so the module takes about as long as the slowest of them.

Broken images are built once per session on top of the runner image, tagged by a hash of
the runner image ID and their Dockerfile, and removed at the end of the session
(RUNNERKEEP_KEEP_IMAGES=1 keeps them for the next run).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from harness import REPO_ROOT
from harness._docker import docker, image_exists, image_id

sys.path.insert(0, str(REPO_ROOT / "tests" / "validate"))

RUNNER = REPO_ROOT / "tests" / "validate" / "run_validation.py"
BROKEN_DIR = REPO_ROOT / "images" / "broken"
BROKEN = ("no-docker", "no-python", "no-toolchain", "no-init")
BROKEN_REPO = "runnerkeep/validate-broken"
TIMEOUT = 900


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str
    out: Path

    @property
    def fails(self) -> list[str]:
        return [line for line in self.stdout.splitlines() if line.startswith("FAIL ")]

    def show(self) -> str:
        return (
            f"exit {self.rc}\n--- stdout ---\n{self.stdout}\n--- stderr ---\n{self.stderr[-4000:]}"
        )


def _broken_tag(name: str, runner_image: str) -> str:
    h = hashlib.sha256(f"{image_id(runner_image)}\n".encode())
    h.update((BROKEN_DIR / name / "Dockerfile").read_bytes())
    return f"{BROKEN_REPO}:{name}-{h.hexdigest()[:12]}"


def _build(name: str, runner_image: str) -> str:
    tag = _broken_tag(name, runner_image)
    if image_exists(tag):
        return tag
    env = dict(os.environ)
    env.setdefault("DOCKER_BUILDKIT", "0")
    proc = subprocess.run(
        [
            "docker",
            "build",
            "-q",
            "--build-arg",
            f"RUNNER_IMAGE={runner_image}",
            "-t",
            tag,
            str(BROKEN_DIR / name),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
        check=False,
    )
    assert proc.returncode == 0, f"building {tag} failed:\n{proc.stdout}\n{proc.stderr}"
    return tag


@pytest.fixture(scope="session")
def broken_images(runner_image: str) -> dict[str, str]:
    with ThreadPoolExecutor(max_workers=len(BROKEN)) as pool:
        tags = dict(zip(BROKEN, pool.map(lambda n: _build(n, runner_image), BROKEN)))
    yield tags
    if os.environ.get("RUNNERKEEP_KEEP_IMAGES", "") in ("", "0"):
        docker("rmi", *tags.values(), check=False, timeout=120)


def _run(image: str, out: Path, *args: str) -> Outcome:
    env = dict(os.environ)
    paths = [str(REPO_ROOT / p) for p in ("module_utils", "cli", "tests")]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    proc = subprocess.run(
        [sys.executable, str(RUNNER), image, "--output", str(out), *args],
        cwd=REPO_ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    return Outcome(proc.returncode, proc.stdout, proc.stderr, out)


@pytest.fixture(scope="session")
def validations(
    runner_image: str, broken_images: dict[str, str], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Outcome]:
    base = tmp_path_factory.mktemp("validate")
    profile = yaml.safe_load((REPO_ROOT / "profiles" / "default.yml").read_text())
    profile["name"] = "tiny-disk"
    for disk in profile["disks"]:
        if disk["path"] == "/var/cache/runnerkeep":
            disk["size"], disk["min_size"] = "64m", "32m"  # the disk check passes, the budget not
    tiny = base / "tiny-disk.yml"
    tiny.write_text(yaml.safe_dump(profile))
    jobs = {
        "own": (runner_image, ()),
        "tiny-disk": (runner_image, ("--profile", str(tiny))),
        **{name: (broken_images[name], ()) for name in BROKEN},
    }
    with ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        futures = {
            name: pool.submit(_run, image, base / name, *args)
            for name, (image, args) in jobs.items()
        }
        return {name: f.result() for name, f in futures.items()}


def _junit_failures(out: Path) -> dict[str, str]:
    root = ET.parse(out / "junit.xml").getroot()
    return {
        case.get("name", ""): (case.find("failure").get("message") or "")
        for case in root.iter("testcase")
        if case.find("failure") is not None
    }


def test_own_image_passes_default_profile(validations: dict[str, Outcome]) -> None:
    res = validations["own"]
    assert res.rc == 0, res.show()
    assert res.fails == []
    assert "passed" in res.stdout.splitlines()[-1]
    assert _junit_failures(res.out) == {}
    summary = (res.out / "summary.md").read_text()
    assert "validation passed" in summary and "**FAIL**" not in summary
    results = json.loads((res.out / "results.json").read_text())
    titles = " ".join(r["title"] for r in results if r["outcome"] == "passed")
    for check in (
        "provision.yml completes",
        "systemd is running",
        "sshd answers",
        "runs a container",
        "saves and loads",
        "self-check passes",
        "disk budget fits",
        "toolchain is present",
        "cache save, restore and verify",
        "cleanup dry run",
    ):
        assert check in titles, f"{check!r} did not pass:\n{res.show()}"


def test_image_without_docker_fails(validations: dict[str, Outcome]) -> None:
    res = validations["no-docker"]
    assert res.rc == 1, res.show()
    assert (
        "FAIL docker engine: expected a docker CLI and engine, found no `docker` command on PATH"
        in res.fails
    ), res.show()
    assert any(
        f.startswith("FAIL provision: expected") and "'Install the Docker engine' failed" in f
        for f in res.fails
    ), res.show()
    assert "test_docker_engine" in _junit_failures(res.out)


def test_image_without_python_fails(validations: dict[str, Outcome]) -> None:
    res = validations["no-python"]
    assert res.rc == 1, res.show()
    assert any(
        f.startswith("FAIL toolchain python3: expected `python3 --version` matching")
        and f.endswith("found command not found")
        for f in res.fails
    ), res.show()
    provision = [f for f in res.fails if f.startswith("FAIL provision:")]
    assert provision and "Ensure python3 is present" in provision[0], res.show()
    summary = (res.out / "summary.md").read_text()
    assert "validation FAILED" in summary and "toolchain python3" in summary


def test_image_missing_required_toolchain_fails(validations: dict[str, Outcome]) -> None:
    res = validations["no-toolchain"]
    assert res.rc == 1, res.show()
    assert res.fails == [
        "FAIL toolchain pigz: expected `pigz --version` matching /pigz 2\\./, "
        "found command not found"
    ], res.show()


def test_disk_too_small_for_budget_fails(validations: dict[str, Outcome]) -> None:
    res = validations["tiny-disk"]
    assert res.rc == 1, res.show()
    budget = [f for f in res.fails if f.startswith("FAIL disk budget:")]
    assert budget, res.show()
    assert budget[0].startswith(
        "FAIL disk budget: expected the filesystem (64 MiB at /var/cache/runnerkeep) to fit "
        "the disk budget, found disk budget cannot be met"
    ), budget[0]
    assert "test_disk_budget" in _junit_failures(res.out)


def test_image_without_systemd_fails_to_boot(
    validations: dict[str, Outcome], broken_images: dict[str, str]
) -> None:
    res = validations["no-init"]
    assert res.rc == 1, res.show()
    assert res.fails == [
        f"FAIL boot: expected {broken_images['no-init']} to boot as a runner container with "
        'systemd as PID 1 (e.g. CMD ["/lib/systemd/systemd"]), found ENTRYPOINT null '
        'CMD ["/bin/sh"]'
    ], res.show()
    assert list(_junit_failures(res.out)) == ["boot"]


def test_bad_profile_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "bad.yml"
    bad.write_text("toolchains:\n  required:\n    - command: git\n      version: '(unclosed'\n")
    res = _run("runnerkeep", tmp_path / "out", "--profile", str(bad))
    assert res.rc == 2, res.show()
    assert "toolchains.required[0].version: bad regular expression" in res.stderr
    assert not (tmp_path / "out" / "junit.xml").exists()


@pytest.mark.parametrize("name", ["default", "github-actions-runner"])
def test_shipped_profiles_load(name: str) -> None:
    from validate_profile import expected_timers, harness_mounts, load_profile

    profile = load_profile(REPO_ROOT / "profiles" / f"{name}.yml")
    assert profile["name"] == name
    assert profile["toolchains"]["required"] and profile["disks"]
    docker_disk, cache_disk, _extra = harness_mounts(profile)
    assert docker_disk and cache_disk
    assert isinstance(expected_timers(profile), list)
