"""How runner_base installs the zipapp on a host (roles/runner_base/files/install_zipapp.py).

The archive carries sources only; the host's Python unpacks it into a release directory, compiles
it there (checked-hash .pyc) and flips the `lib` symlink the wrapper runs. These tests run the
script with the running Python, as the role does with the host's.
"""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest
from runnerkeep import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD = os.path.join(ROOT, "tools", "build_zipapp.py")
INSTALL = os.path.join(ROOT, "roles", "runner_base", "files", "install_zipapp.py")
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}


def run(*args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        list(args), capture_output=True, text=True, env=ENV, timeout=120, check=False, **kw
    )


def install(pyz: str, install_dir: str, *extra: str) -> subprocess.CompletedProcess:
    return run(sys.executable, INSTALL, pyz, install_dir, *extra)


def snapshot(top: str) -> dict[str, tuple]:
    """Every path under top with its type, mode and content or link target."""
    state: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if os.path.islink(path):
                state[path] = ("link", os.readlink(path))
            elif os.path.isdir(path):
                state[path] = ("dir", st.st_mode)
            else:
                with open(path, "rb") as handle:
                    state[path] = ("file", st.st_mode, handle.read())
    return state


def with_extra_module(pyz: str, out: str) -> str:
    """A different archive (one more source file), standing for the next runnerkeep version."""
    with zipfile.ZipFile(pyz) as src, zipfile.ZipFile(out, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr(f"runnerkeep/_upgrade_{os.path.basename(out)[:-4]}.py", "X = 1\n")
    return out


def loaded_from(verbose_stderr: str, release: str) -> dict[str, str]:
    """module file under release -> where its code object came from (python -v)."""
    origins = {}
    for line in verbose_stderr.splitlines():
        if line.startswith("# code object from "):
            path = line[len("# code object from ") :].strip("'\"")
            if path.startswith(release):
                origins[path] = "bytecode" if path.endswith(".pyc") else "source"
    return origins


@pytest.fixture(scope="module")
def pyz(tmp_path_factory: pytest.TempPathFactory) -> str:
    out = str(tmp_path_factory.mktemp("build") / "runnerkeep.pyz")
    subprocess.run([sys.executable, BUILD, "--output", out], capture_output=True, check=True)
    return out


def test_install_is_idempotent_and_the_lib_runs(pyz, tmp_path):
    lib = str(tmp_path / "lib")
    first = install(pyz, str(tmp_path))
    assert (first.returncode, first.stdout.strip()) == (0, f"changed {lib}")
    target = os.readlink(lib)
    assert target.startswith("releases/") and target.endswith(sys.implementation.cache_tag)
    before = snapshot(str(tmp_path))
    second = install(pyz, str(tmp_path))
    assert (second.returncode, second.stdout.strip()) == (0, f"unchanged {lib}")
    assert snapshot(str(tmp_path)) == before
    ran = run(sys.executable, lib, "--version", cwd=str(tmp_path))
    assert ran.stdout.strip() == f"runnerkeep {__version__}", ran.stderr
    modes = {v[1] & 0o7777 for v in snapshot(str(tmp_path / "releases")).values() if v[0] != "link"}
    assert modes <= {0o755, 0o644}


def test_modules_load_from_host_bytecode_and_a_changed_source_is_compiled(pyz, tmp_path):
    install(pyz, str(tmp_path))
    release = os.path.realpath(tmp_path / "lib")
    ran = run(sys.executable, "-v", str(tmp_path / "lib"), "--version")
    origins = loaded_from(ran.stderr, release)
    assert len(origins) > 10 and set(origins.values()) == {"bytecode"}, origins
    # checked-hash bytecode is valid exactly while its source is the same
    errors = os.path.join(release, "runnerkeep", "errors.py")
    with open(errors, "a") as handle:
        handle.write("# edited on the host\n")
    ran = run(sys.executable, "-v", str(tmp_path / "lib"), "--version")
    assert loaded_from(ran.stderr, release)[errors] == "source"


def test_a_process_keeps_importing_from_the_release_it_started_in(pyz, tmp_path):
    install(pyz, str(tmp_path))
    release = os.path.realpath(tmp_path / "lib")
    # __main__ replaces sys.path[0] (the `lib` symlink) by the release directory it points at
    probe = (
        "import atexit, runpy, sys; atexit.register(lambda: print(sys.path[0])); "
        "sys.argv = ['runnerkeep', '--version']; runpy.run_path(sys.argv_lib, run_name='__main__')"
    ).replace("sys.argv_lib", repr(str(tmp_path / "lib")))
    ran = run(sys.executable, "-c", probe)
    assert ran.stdout.splitlines()[-1] == release, ran.stderr


def test_check_mode_reports_and_changes_nothing(pyz, tmp_path):
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    checked = install(pyz, str(fresh), "--check")
    assert (checked.returncode, checked.stdout.split()[0]) == (0, "changed")
    assert snapshot(str(fresh)) == {}
    missing = install(str(tmp_path / "not-copied-yet.pyz"), str(fresh), "--check")
    assert (missing.returncode, missing.stdout.split()[0]) == (0, "changed")
    install(pyz, str(fresh))
    before = snapshot(str(fresh))
    newer = with_extra_module(pyz, str(tmp_path / "v2.pyz"))
    assert install(newer, str(fresh), "--check").stdout.split()[0] == "changed"
    assert install(pyz, str(fresh), "--check").stdout.split()[0] == "unchanged"
    assert snapshot(str(fresh)) == before


def test_upgrade_flips_the_link_keeps_the_previous_release_and_prunes_older(pyz, tmp_path):
    releases = tmp_path / "releases"
    install(pyz, str(tmp_path))
    first = os.readlink(tmp_path / "lib")
    v2 = with_extra_module(pyz, str(tmp_path / "v2.pyz"))
    assert install(v2, str(tmp_path)).stdout.split()[0] == "changed"
    second = os.readlink(tmp_path / "lib")
    assert second != first
    assert sorted(os.listdir(releases)) == sorted(os.path.basename(t) for t in (first, second))
    v3 = with_extra_module(pyz, str(tmp_path / "v3.pyz"))
    install(v3, str(tmp_path))
    third = os.readlink(tmp_path / "lib")
    assert sorted(os.listdir(releases)) == sorted(os.path.basename(t) for t in (second, third))
    assert os.path.exists(tmp_path / third / "runnerkeep" / "_upgrade_v3.py")
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == []  # no staging left


def test_a_broken_archive_is_one_line_and_leaves_the_installed_release(pyz, tmp_path):
    install(pyz, str(tmp_path))
    before = snapshot(str(tmp_path))
    bad = tmp_path.parent / f"{tmp_path.name}-bad.pyz"
    bad.write_bytes(b"#!/usr/bin/env python3\nnot a zip archive\n")
    failed = install(str(bad), str(tmp_path))
    assert failed.returncode == 1
    assert failed.stderr.startswith("install_zipapp: ") and len(failed.stderr.splitlines()) == 1
    assert "Traceback" not in failed.stderr
    assert snapshot(str(tmp_path)) == before
    missing = install(str(tmp_path / "absent.pyz"), str(tmp_path))
    assert missing.returncode == 1 and len(missing.stderr.splitlines()) == 1


def test_an_archive_that_does_not_compile_is_refused_before_the_flip(pyz, tmp_path):
    install(pyz, str(tmp_path))
    before = snapshot(str(tmp_path))
    broken = tmp_path.parent / f"{tmp_path.name}-syntax.pyz"
    with zipfile.ZipFile(pyz) as src, zipfile.ZipFile(broken, "w") as dst:
        for info in src.infolist():
            dst.writestr(info, src.read(info))
        dst.writestr("runnerkeep/_broken.py", "def (:\n")
    failed = install(str(broken), str(tmp_path))
    assert failed.returncode == 1 and "cannot compile runnerkeep" in failed.stderr
    assert snapshot(str(tmp_path)) == before


def test_unsafe_member_names_are_refused(pyz, tmp_path):
    evil = tmp_path / "evil.pyz"
    with zipfile.ZipFile(evil, "w") as dst:
        dst.writestr("__main__.py", "print(1)\n")
        dst.writestr("../escaped.py", "X = 1\n")
    target = tmp_path / "target"
    target.mkdir()
    failed = install(str(evil), str(target))
    assert failed.returncode == 1 and "unexpected member name" in failed.stderr
    assert not (tmp_path / "escaped.py").exists()
    assert os.listdir(target / "releases") == []
