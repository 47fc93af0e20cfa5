"""dist/runnerkeep.pyz is byte-for-byte the same whichever supported controller Python builds it.

A zipapp that differs by controller Python makes `provision.yml` report `changed` on every host
(and different controllers fight over the file). This builds it with the running Python twice
and with every other CPython 3.9..3.13 found on this machine (PATH, pyenv), and runs the archive
with each of them.
"""

from __future__ import annotations

import glob
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
from runnerkeep import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD = os.path.join(ROOT, "tools", "build_zipapp.py")
SUPPORTED = [(3, minor) for minor in range(9, 14)]
HOW_TO_INSTALL = (
    "install them with pyenv (`pyenv install 3.9 3.10 3.11 3.12 3.13`) or your distribution "
    "(e.g. deadsnakes' python3.X packages), or set RUNNERKEEP_SINGLE_PYTHON=1 to test with the "
    "running Python only"
)


def _dotted(version: tuple[int, int]) -> str:
    return ".".join(str(part) for part in version)


def _pyenv_roots() -> list[str]:
    roots = [os.environ.get("PYENV_ROOT", ""), os.path.expanduser("~/.pyenv")]
    return [r for r in dict.fromkeys(roots) if r and os.path.isdir(r)]


def _candidates(major: int, minor: int) -> list[str]:
    """Paths that may be CPython major.minor (a pyenv shim on PATH may refuse to run)."""
    name = f"python{major}.{minor}"
    found = [shutil.which(name) or ""]
    for root in _pyenv_roots():
        pattern = os.path.join(root, "versions", f"{major}.{minor}.*", "bin", name)
        found += sorted(glob.glob(pattern))
    found += [os.path.join(d, name) for d in ("/usr/bin", "/usr/local/bin")]
    return [p for p in dict.fromkeys(found) if p and os.access(p, os.X_OK)]


def _version_of(python: str) -> tuple[int, int] | None:
    try:
        proc = subprocess.run(
            [python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if proc.returncode != 0:
        return None
    major, _, minor = proc.stdout.strip().partition(".")
    return int(major), int(minor)


def find_interpreters() -> dict[tuple[int, int], str]:
    """One working interpreter per supported version, the running one for its own version."""
    found = {tuple(sys.version_info[:2]): sys.executable}
    for version in SUPPORTED:
        if version in found:
            continue
        for path in _candidates(*version):
            if _version_of(path) == version:
                found[version] = path
                break
    return dict(sorted(found.items()))


def minimal_env() -> dict[str, str]:
    """PATH only, plus what pyenv's shims (python3.9 ... on PATH) need to answer: they run only
    the versions PYENV_VERSION names, and the noxfile exposes them that way."""
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    for name in ("PYENV_VERSION", "PYENV_ROOT", "HOME"):
        if name in os.environ:
            env[name] = os.environ[name]
    return env


def build(python: str, output: str, builder: str = BUILD) -> subprocess.CompletedProcess:
    return subprocess.run(
        [python, builder, "--output", output],
        capture_output=True,
        text=True,
        env=minimal_env(),
        timeout=120,
        check=True,
    )


def digest(path: str) -> str:
    with open(path, "rb") as handle:
        return hashlib.sha256(handle.read()).hexdigest()


@pytest.fixture(scope="module")
def interpreters() -> dict[tuple[int, int], str]:
    found = find_interpreters()
    if len(found) < 2 and os.environ.get("RUNNERKEEP_SINGLE_PYTHON") != "1":
        pytest.fail(
            f"only Python {', '.join(_dotted(v) for v in found)} found; the zipapp must be "
            f"shown to build the same bytes on at least two of 3.9..3.13: {HOW_TO_INSTALL}"
        )
    return found


@pytest.fixture(scope="module")
def snapshot(tmp_path_factory: pytest.TempPathFactory) -> str:
    """The builder and the sources it packs, copied once: every build below packs the same
    sources even while the working tree is being edited."""
    top = tmp_path_factory.mktemp("tree")
    (top / "tools").mkdir()
    shutil.copy2(BUILD, top / "tools" / "build_zipapp.py")
    for tree in ("module_utils/runnerkeep", "cli/runnerkeep_cli"):
        ignore = shutil.ignore_patterns("__pycache__")
        shutil.copytree(os.path.join(ROOT, tree), top / tree, ignore=ignore)
    return str(top / "tools" / "build_zipapp.py")


@pytest.fixture(scope="module")
def reference(snapshot: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """The archive built by the running Python."""
    out = str(tmp_path_factory.mktemp("running") / "runnerkeep.pyz")
    assert build(sys.executable, out, snapshot).stdout.strip() == f"changed {out}"
    return out


def test_same_bytes_when_built_twice_by_the_running_python(snapshot, reference, tmp_path):
    again = str(tmp_path / "runnerkeep.pyz")
    build(sys.executable, again, snapshot)
    assert digest(again) == digest(reference)
    # a rebuild over an equal file leaves it alone and says so
    assert build(sys.executable, again, snapshot).stdout.strip() == f"unchanged {again}"


def test_archive_holds_sources_only(reference):
    with zipfile.ZipFile(reference) as archive:
        names = archive.namelist()
    assert "__main__.py" in names and "runnerkeep_cli/main.py" in names
    assert "runnerkeep/__init__.py" in names
    assert [n for n in names if not n.endswith((".py", ".json"))] == []


def test_same_bytes_from_every_supported_python(interpreters, snapshot, reference, tmp_path):
    digests = {}
    for version, python in interpreters.items():
        out = str(tmp_path / f"py{version[0]}{version[1]}.pyz")
        build(python, out, snapshot)
        build(python, out + ".again", snapshot)
        assert digest(out) == digest(out + ".again"), f"{python} builds differ run to run"
        digests[_dotted(version)] = digest(out)
    assert set(digests.values()) == {digest(reference)}, digests


def test_archive_runs_with_every_supported_python(interpreters, reference, tmp_path):
    for python in interpreters.values():
        ran = subprocess.run(
            [python, reference, "--version"],
            capture_output=True,
            text=True,
            cwd=tmp_path,  # away from the source tree, like on a runner host
            env=minimal_env(),
            timeout=120,
            check=False,
        )
        assert ran.returncode == 0, f"{python}: {ran.stderr}"
        assert ran.stdout.strip() == f"runnerkeep {__version__}"
