"""Sessions: `nox` runs every test (lint, unit on each Python, package, collection, sanity, rules,
integration); `nox -s demo` runs the main job; `nox -s bench` the speed targets.

Sessions that need a Docker engine find one (DOCKER_HOST or the default socket) or, as root on
Debian, install docker.io and start dockerd themselves (tests/harness/engine.py).
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess

import nox
import nox.command

ROOT = os.path.dirname(os.path.abspath(__file__))
nox.options.sessions = [
    "lint",
    "unit",
    "package",
    "collection",
    "sanity",
    "rules",
    "integration",
]
nox.options.error_on_missing_interpreters = True

# The core runs on runner hosts from Python 3.9; the unit session runs on every supported
# Python this machine has. pyenv versions are made visible to nox through PYENV_VERSION (the
# shims then answer to python3.9 ... python3.13; the current global version stays first).
SUPPORTED_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")


def _expose_pyenv_versions() -> None:
    versions_dir = os.path.expanduser("~/.pyenv/versions")
    if not os.path.isdir(versions_dir) or not shutil.which("pyenv"):
        return
    installed = sorted(os.listdir(versions_dir))
    chosen = []
    for minor in SUPPORTED_PYTHONS:
        patches = [
            v for v in installed if v.startswith(minor + ".") and v[len(minor) + 1 :].isdigit()
        ]
        if patches:
            chosen.append(max(patches, key=lambda v: int(v.rsplit(".", 1)[1])))
    current = subprocess.run(
        ["pyenv", "version-name"], capture_output=True, text=True, check=False
    ).stdout.strip()
    order = [v for v in current.split(":") if v] + [v for v in chosen if v not in current]
    os.environ["PYENV_VERSION"] = ":".join(order)


def _runs(program: str) -> bool:
    path = shutil.which(program)
    if not path:
        return False
    return subprocess.run([path, "-c", "pass"], capture_output=True, check=False).returncode == 0


_expose_pyenv_versions()
UNIT_PYTHONS = [v for v in SUPPORTED_PYTHONS if _runs(f"python{v}")]

PYTHON_PATHS = os.pathsep.join(os.path.join(ROOT, p) for p in ("module_utils", "cli", "tests"))
HARNESS_DEPS = [
    "pytest",
    "pytest-xdist",
    "pytest-testinfra",
    "docker",
    "paramiko",
    "pyyaml",
    "ansible-core",
]


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


def _ensure_host_programs(session: nox.Session) -> None:
    """Install (as root on Debian) the host programs tests call when missing
    (tests/harness/engine.py HOST_PROGRAMS); elsewhere say what to install."""
    session.run(
        "python",
        "-c",
        "from harness.engine import ensure_host_programs; ensure_host_programs()",
        env=_env(),
    )


@nox.session(python=UNIT_PYTHONS or None)
def unit(session: nox.Session) -> None:
    """Core unit tests: fast, no Docker; once per supported Python found here."""
    missing = [v for v in SUPPORTED_PYTHONS if v not in UNIT_PYTHONS]
    env = _env()
    if missing:
        session.warn(
            f"Python {', '.join(missing)} not found: the unit tests do not run on them here "
            "(install them, e.g. with pyenv, to run them; CI machines have all five)"
        )
    if len(UNIT_PYTHONS) < 2:
        # The zipapp's cross-version reproducibility needs a second interpreter to compare with.
        env["RUNNERKEEP_SINGLE_PYTHON"] = "1"
    session.install("pytest", "pytest-xdist", "hypothesis", "ansible-core")
    # tests/unit/remote talks to a real docker-registry on loopback (with openssl, htpasswd).
    _ensure_host_programs(session)
    # Most unit time is waiting (subprocesses, deadlines, sockets), not CPU: workers overlap it.
    workers = os.environ.get("RUNNERKEEP_UNIT_WORKERS", "4")
    session.run("pytest", "tests/unit", "-n", workers, *session.posargs, env=env)


def _check_installed(session: nox.Session, bindir: str, python: str) -> None:
    """The console script and the packages of one install, with nothing from the checkout on the
    path (PYTHONPATH cleared)."""
    env = {"PYTHONPATH": ""}
    script = os.path.join(bindir, "runnerkeep")
    session.run(script, "--version", external=True, env=env)
    # self-check exits 0 (all good) or 6 (a check found problems, e.g. no Docker engine here).
    session.run(script, "self-check", "--json", external=True, env=env, success_codes=[0, 6])
    modules = "runnerkeep.cache, runnerkeep.cleanup, runnerkeep.disk, runnerkeep_cli.main"
    session.run(python, "-c", f"import {modules}", external=True, env=env)


@nox.session
def package(session: nox.Session) -> None:
    """`pip install .`, `pip install dist/runnerkeep-*.whl` and `pipx install .` each give a
    working `runnerkeep` console script, each checked in a fresh venv."""
    session.install("build", "pipx")
    tmp = session.create_tmp()
    for stale in ("wheelhouse", "venv-source", "venv-wheel", "pipx"):
        shutil.rmtree(os.path.join(tmp, stale), ignore_errors=True)
    wheelhouse = os.path.join(tmp, "wheelhouse")
    session.run("python", "-m", "build", "--wheel", "--outdir", wheelhouse, ROOT)
    wheels = glob.glob(os.path.join(wheelhouse, "runnerkeep-*.whl"))
    if len(wheels) != 1:
        session.error(f"expected one runnerkeep wheel in {wheelhouse}, found {wheels}")
    os.makedirs(os.path.join(ROOT, "dist"), exist_ok=True)
    wheel = shutil.copy2(wheels[0], os.path.join(ROOT, "dist"))
    session.log(f"built {wheel}")
    for name, target in (("source", ROOT), ("wheel", wheel)):
        venv = os.path.join(tmp, f"venv-{name}")
        session.run("python", "-m", "venv", venv)
        bindir = os.path.join(venv, "bin")
        session.run(os.path.join(bindir, "pip"), "install", "-q", target, external=True)
        _check_installed(session, bindir, os.path.join(bindir, "python"))
    pipx_home = os.path.join(tmp, "pipx")
    pipx_env = {
        "PIPX_HOME": pipx_home,
        "PIPX_BIN_DIR": os.path.join(pipx_home, "bin"),
        "PIPX_MAN_DIR": os.path.join(pipx_home, "man"),
    }
    session.run("pipx", "install", ROOT, env=pipx_env)
    venv_bin = os.path.join(pipx_home, "venvs", "runnerkeep", "bin")
    _check_installed(session, os.path.join(pipx_home, "bin"), os.path.join(venv_bin, "python"))


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
    _ensure_host_programs(session)
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
    # Two workers, one test file each at a time: most of a fleet test is waiting on containers
    # booting and SSH round trips, so two files overlap well on two cores (17.8 min for 183
    # tests against ~18 min for 151 serially). RUNNERKEEP_INTEGRATION_WORKERS=0: serial.
    workers = os.environ.get("RUNNERKEEP_INTEGRATION_WORKERS", "2")
    parallel = ["-n", workers, "--dist", "loadfile"] if workers != "0" else []
    session.run(
        "pytest",
        "tests/integration",
        "-m",
        "integration",
        "-p",
        "no:cacheprovider",
        *parallel,
        *session.posargs,
        env=_env(),
    )


@nox.session
def demo(session: nox.Session) -> None:
    """The main job: a 3-runner fleet, provisioned, exercised, summarised, torn down; then the
    fleet cache tier on 3 runners and a cache host."""
    session.install(*HARNESS_DEPS)
    _ensure_engine(session)
    session.run("python", "tools/build_zipapp.py")
    session.run("python", "tools/demo.py", *session.posargs, env=_env())
    # The fleet cache tier: runner 1 saves and pushes, 2 restores from the fleet, 3 repairs.
    session.run("python", "tools/demo_fleet_cache.py", env=_env())


@nox.session
def scale(session: nox.Session) -> None:
    """What a fleet run costs per host (docs/scale.md): controller CPU, each runner's CPU and
    wall time of provision/maintain/fleet_report/cache restore on N runners:
    `nox -s scale -- --runners 1,3,10 [--json FILE] [--baseline FILE] [--check-targets]`.
    Not in the default run; its 3-runner form is tests/integration/test_scale.py."""
    session.install(*HARNESS_DEPS)
    _ensure_engine(session)
    session.run("python", "tools/build_zipapp.py")
    session.run("python", "tools/scale.py", *(session.posargs or ["--runners", "3"]), env=_env())


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
