"""Sessions: `nox` runs lint, unit and integration; `nox -s demo` runs the main job; `nox -s bench`.

Sessions that need a Docker engine find one (DOCKER_HOST or the default socket) or, as root on
Debian, install docker.io and start dockerd themselves (tests/harness/engine.py).
"""

from __future__ import annotations

import glob
import os

import nox
import nox.command

ROOT = os.path.dirname(os.path.abspath(__file__))
nox.options.sessions = ["lint", "unit", "package", "integration"]
nox.options.error_on_missing_interpreters = True

PYTHON_PATHS = os.pathsep.join(os.path.join(ROOT, p) for p in ("module_utils", "cli", "tests"))
HARNESS_DEPS = ["pytest", "pytest-testinfra", "docker", "paramiko", "pyyaml", "ansible-core"]


def _env() -> dict[str, str]:
    return {"PYTHONPATH": PYTHON_PATHS, "ANSIBLE_CONFIG": os.path.join(ROOT, "ansible.cfg")}


def _ensure_engine(session: nox.Session) -> None:
    session.run("python", "-m", "harness.engine", env=_env())


@nox.session
def lint(session: nox.Session) -> None:
    """ruff (lint + format check), yamllint, ansible-lint (production profile)."""
    session.install("ruff", "yamllint", "ansible-core", "ansible-lint")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")
    session.run("yamllint", "-s", "-c", ".yamllint.yml", ".")
    session.run("ansible-lint", "--offline", "playbooks", "roles", "galaxy.yml", "meta/runtime.yml")


@nox.session
def unit(session: nox.Session) -> None:
    """Core unit tests: fast, no Docker."""
    session.install("pytest", "hypothesis", "ansible-core")
    session.run("pytest", "tests/unit", *session.posargs, env=_env())


@nox.session
def package(session: nox.Session) -> None:
    """`pip install .` into a fresh venv gives a working `runnerkeep` console script."""
    session.install(".")
    session.run("runnerkeep", "--version")
    # self-check exits 0 (all good) or 6 (a check found problems, e.g. no Docker engine here).
    session.run("runnerkeep", "self-check", "--json", success_codes=[0, 6])
    session.run(
        "python",
        "-c",
        "import runnerkeep.cache, runnerkeep.cleanup, runnerkeep.disk, runnerkeep_cli",
    )


@nox.session
def collection(session: nox.Session) -> None:
    """Build dist/runnerkeep-runner-VERSION.tar.gz, the Ansible collection runnerkeep.runner."""
    session.install("ansible-core")
    session.run("python", "tools/build_collection.py")


@nox.session
def sanity(session: nox.Session) -> None:
    """ansible-test sanity on the built collection (tools/run_sanity.py): every sanity test that
    has targets on this Python (validate-modules, pylint, pep8, yamllint, ansible-doc, import,
    compile, ...), compile and import also on 3.9 and 3.13. Needs PyPI for the test venvs; no
    container registry (so --venv, not --docker)."""
    # tests/sanity/ignore-2.19.txt belongs to ansible-core 2.19: move both together.
    session.install("ansible-core>=2.19,<2.20")
    session.run("python", "tools/run_sanity.py", *session.posargs)


@nox.session
def rules(session: nox.Session) -> None:
    """Prometheus rules and the Alertmanager example: promtool check/test, amtool check-config
    (Debian's prometheus and prometheus-alertmanager; the harness installs them when missing)."""
    session.run(
        "python",
        "-c",
        "from harness.engine import ensure_host_programs; ensure_host_programs()",
        env=_env(),
    )
    session.run("python", "tools/check_rules.py")


@nox.session
def build(session: nox.Session) -> None:
    """Build dist/runnerkeep.pyz, the self-contained CLI for runner hosts."""
    session.run("python", "tools/build_zipapp.py")


@nox.session
def integration(session: nox.Session) -> None:
    """Integration tests on a real Docker engine and containerized runner hosts."""
    session.install(*HARNESS_DEPS)
    _ensure_engine(session)
    session.run("python", "tools/build_zipapp.py")
    session.run(
        "pytest",
        "tests/integration",
        "-m",
        "integration",
        "-p",
        "no:cacheprovider",
        *session.posargs,
        env=_env(),
    )


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: a 3-runner fleet, provisioned, exercised, summarised, torn down."""
    session.install(*HARNESS_DEPS)
    _ensure_engine(session)
    session.run("python", "tools/build_zipapp.py")
    session.run("python", "tools/demo.py", *session.posargs, env=_env())


@nox.session
def bench(session: nox.Session) -> None:
    """Speed targets as ratios against baselines measured in the same run."""
    session.install(*HARNESS_DEPS)
    _ensure_engine(session)
    scripts = sorted(glob.glob(os.path.join(ROOT, "tests", "bench", "bench_*.py")))
    if not scripts:
        session.error("no benchmarks found under tests/bench/")
    # Every benchmark runs even when an earlier one misses its target; the session fails last.
    missed = []
    for script in scripts:
        try:
            session.run("python", script, *session.posargs, env=_env())
        except nox.command.CommandFailed:
            missed.append(os.path.basename(script))
    if missed:
        session.error(f"benchmarks that missed a target or failed: {', '.join(missed)}")


@nox.session
def validate(session: nox.Session) -> None:
    """Pre-merge check of a runner image: `nox -s validate -- IMAGE [--profile FILE]`."""
    session.install(*HARNESS_DEPS, "pytest-testinfra")
    _ensure_engine(session)
    session.run("python", "tools/build_zipapp.py")
    session.run("python", "tests/validate/run_validation.py", *session.posargs, env=_env())


@nox.session
def cleanup_leftovers(session: nox.Session) -> None:
    """Remove containers and volumes left by interrupted test runs (label io.runnerkeep.harness)."""
    session.install(*HARNESS_DEPS)
    session.run("python", "-m", "harness.fleet", "cleanup", env=_env())
