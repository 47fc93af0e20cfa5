"""How runner_base installs the zipapp on a host (roles/runner_base/files/install_zipapp.py).

The archive carries sources only; the host's Python unpacks it into a release directory, compiles
it there (checked-hash .pyc) and flips the `lib` symlink the wrapper runs. These tests run the
script with the running Python, as the role does with the host's.
"""

from __future__ import annotations

import ast
import fcntl
import glob
import os
import subprocess
import sys
import time
import zipfile

import pytest
from runnerkeep import __version__

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
BUILD = os.path.join(ROOT, "tools", "build_zipapp.py")
INSTALL = os.path.join(ROOT, "roles", "runner_base", "files", "install_zipapp.py")
WRAPPER = os.path.join(ROOT, "roles", "runner_base", "templates", "runnerkeep.sh.j2")
LOCK = ".install.lock"
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
    assert [n for n in os.listdir(tmp_path) if n.startswith(".")] == [LOCK]  # no staging left


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


def inodes(release: str) -> dict[str, int]:
    """relative path -> inode of every file in a release (a replaced file gets a new inode)."""
    found = {}
    for dirpath, _dirnames, filenames in os.walk(release):
        for name in filenames:
            path = os.path.join(dirpath, name)
            found[os.path.relpath(path, release)] = os.lstat(path).st_ino
    return found


def version_runs(lib: str) -> bool:
    ran = run(sys.executable, lib, "--version")
    return ran.returncode == 0 and ran.stdout.strip() == f"runnerkeep {__version__}"


def pyc_of(release: str, module: str) -> str:
    (path,) = glob.glob(os.path.join(release, "runnerkeep", "__pycache__", f"{module}.*.pyc"))
    return path


def delete_module(release: str) -> None:
    os.unlink(os.path.join(release, "runnerkeep", "errors.py"))
    os.unlink(pyc_of(release, "errors"))


def truncate_source(release: str) -> None:
    open(os.path.join(release, "runnerkeep", "config.py"), "w").close()


def truncate_bytecode(release: str) -> None:
    path = pyc_of(release, "errors")
    with open(path, "r+b") as handle:
        handle.truncate(os.path.getsize(path) // 2)


def corrupt_source(release: str) -> None:
    path = os.path.join(release, "runnerkeep", "errors.py")
    with open(path, "r+b") as handle:
        handle.write(b"#")  # same size, one byte different


@pytest.mark.parametrize(
    "damage", [delete_module, truncate_source, truncate_bytecode, corrupt_source]
)
def test_a_rerun_repairs_a_damaged_release_in_a_new_directory(pyz, tmp_path, damage):
    lib = str(tmp_path / "lib")
    install(pyz, str(tmp_path))
    damaged = os.path.realpath(lib)
    damage(damaged)
    before = inodes(damaged)
    checked = install(pyz, str(tmp_path), "--check")
    assert checked.stdout.split()[0] == "changed", checked.stderr
    repaired = install(pyz, str(tmp_path))
    assert (repaired.returncode, repaired.stdout.strip()) == (0, f"changed {lib}"), repaired.stderr
    assert os.path.realpath(lib) != damaged
    assert version_runs(lib)
    # the damaged release is never rewritten in place: a process may still run from it
    assert inodes(damaged) == before
    again = install(pyz, str(tmp_path))
    assert again.stdout.strip() == f"unchanged {lib}"


def test_a_release_whose_manifest_is_lost_or_altered_is_rebuilt(pyz, tmp_path):
    install(pyz, str(tmp_path))
    first = os.path.realpath(tmp_path / "lib")
    manifests = [n for n in os.listdir(first) if n.endswith(".json")]
    assert len(manifests) == 1, os.listdir(first)
    os.unlink(os.path.join(first, manifests[0]))
    assert install(pyz, str(tmp_path)).stdout.split()[0] == "changed"
    second = os.path.realpath(tmp_path / "lib")
    assert second != first
    with open(os.path.join(second, manifests[0]), "r+b") as handle:
        handle.truncate(10)
    assert install(pyz, str(tmp_path)).stdout.split()[0] == "changed"
    assert os.path.realpath(tmp_path / "lib") not in (first, second)
    assert version_runs(str(tmp_path / "lib"))


def test_a_rollback_flips_back_to_the_kept_release_without_rebuilding_it(pyz, tmp_path):
    lib = str(tmp_path / "lib")
    install(pyz, str(tmp_path))
    a_target = os.readlink(lib)
    a_files = inodes(os.path.realpath(lib))
    v2 = with_extra_module(pyz, str(tmp_path / "v2.pyz"))
    install(v2, str(tmp_path))
    b_target = os.readlink(lib)
    back = install(pyz, str(tmp_path))
    assert back.stdout.strip() == f"changed {lib}", back.stderr
    assert os.readlink(lib) == a_target
    assert inodes(os.path.realpath(lib)) == a_files  # the same files a running process holds
    assert sorted(os.listdir(tmp_path / "releases")) == sorted(
        os.path.basename(t) for t in (a_target, b_target)
    )


def test_pruning_keeps_the_current_and_the_last_flipped_release(pyz, tmp_path):
    releases = tmp_path / "releases"
    lib = str(tmp_path / "lib")
    install(pyz, str(tmp_path))
    a_target = os.readlink(lib)
    install(with_extra_module(pyz, str(tmp_path / "v2.pyz")), str(tmp_path))
    install(pyz, str(tmp_path))  # back to A: B is now the previous one
    stale = releases / ".old.tmp999999"  # staging of a run that was killed
    stale.mkdir()
    (stale / "x.py").write_text("X = 1\n")
    install(with_extra_module(pyz, str(tmp_path / "v3.pyz")), str(tmp_path))
    c_target = os.readlink(lib)
    assert sorted(os.listdir(releases)) == sorted(os.path.basename(t) for t in (a_target, c_target))


def test_a_held_install_lock_is_a_bounded_wait_then_one_line(pyz, tmp_path):
    install(pyz, str(tmp_path))
    before = snapshot(str(tmp_path))
    v2 = with_extra_module(pyz, str(tmp_path.parent / f"{tmp_path.name}-v2.pyz"))
    fd = os.open(tmp_path / LOCK, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        failed = install(v2, str(tmp_path), "--lock-wait", "0.2")
    finally:
        os.close(fd)
    assert failed.returncode == 1, failed.stdout + failed.stderr
    assert failed.stderr.startswith("install_zipapp: ") and len(failed.stderr.splitlines()) == 1
    assert str(tmp_path / LOCK) in failed.stderr and "Traceback" not in failed.stderr
    assert snapshot(str(tmp_path)) == before


def test_an_install_waits_for_the_lock_and_then_runs(pyz, tmp_path):
    install(pyz, str(tmp_path))
    v2 = with_extra_module(pyz, str(tmp_path.parent / f"{tmp_path.name}-v2.pyz"))
    marker = tmp_path / "lib" / "runnerkeep" / f"_upgrade_{tmp_path.name}-v2.py"
    fd = os.open(tmp_path / LOCK, os.O_RDWR)
    fcntl.flock(fd, fcntl.LOCK_EX)
    waiting = subprocess.Popen(
        [sys.executable, INSTALL, v2, str(tmp_path)], stdout=subprocess.PIPE, text=True, env=ENV
    )
    try:
        time.sleep(0.5)
        assert not os.path.exists(marker)
    finally:
        os.close(fd)
    out, _ = waiting.communicate(timeout=120)
    assert (waiting.returncode, out.split()[0]) == (0, "changed")
    assert os.path.exists(marker)


def test_two_installs_at_once_never_break_each_other(pyz, tmp_path):
    target = tmp_path / "target"
    target.mkdir()
    archives = [with_extra_module(pyz, str(tmp_path / f"c{n}.pyz")) for n in (1, 2)]
    for _round in range(4):
        procs = [
            subprocess.Popen(
                [sys.executable, INSTALL, a, str(target)],
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
                env=ENV,
            )
            for a in archives
        ]
        results = [(p.wait(timeout=120), p.stderr.read()) for p in procs]
        for p in procs:
            p.stdout.close()
            p.stderr.close()
        assert [rc for rc, _ in results] == [0, 0], results
        assert version_runs(str(target / "lib"))
    assert len(os.listdir(target / "releases")) == 2
    assert [n for n in os.listdir(target / "releases") if n.startswith(".")] == []


OLD_FUTURES = {
    "nested_scopes",
    "generators",
    "division",
    "absolute_import",
    "with_statement",
    "print_function",
    "unicode_literals",
    "barry_as_FLUFL",
    "generator_stop",
}


def test_the_script_parses_on_old_pythons_so_the_version_check_can_speak():
    with open(INSTALL) as handle:
        source = handle.read()
    tree = ast.parse(source, feature_version=(3, 4))  # no f-strings, walrus, ... (3.6+)
    futures = {
        alias.name
        for node in ast.walk(tree)
        if isinstance(node, ast.ImportFrom) and node.module == "__future__"
        for alias in node.names
    }
    assert futures <= OLD_FUTURES  # `annotations` (3.7) is a SyntaxError on 3.6


def old_python_dirs() -> list[str]:
    """bin directories of the Pythons 3.5-3.8 pyenv holds here (nox exposes them the same way)."""
    root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
    found = glob.glob(os.path.join(root, "versions", "3.[5-8].*", "bin"))
    return sorted(d for d in found if os.access(os.path.join(d, "python3"), os.X_OK))


@pytest.mark.skipif(not old_python_dirs(), reason="no Python 3.5-3.8 under pyenv on this machine")
@pytest.mark.parametrize("bindir", old_python_dirs() or ["none"])
def test_an_old_python_gets_one_line_and_nothing_is_written(pyz, tmp_path, bindir):
    python = os.path.join(bindir, "python3")
    ran = run(python, INSTALL, pyz, str(tmp_path))
    assert ran.returncode == 1
    assert ran.stderr.startswith("install_zipapp: runnerkeep needs Python 3.9+"), ran.stderr
    assert len(ran.stderr.splitlines()) == 1
    assert os.listdir(tmp_path) == []


def render_wrapper(python: str, install_dir: str) -> str:
    import jinja2
    from ansible.plugins.filter.core import quote

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, keep_trailing_newline=True)
    env.filters["quote"] = quote
    with open(WRAPPER) as handle:
        template = env.from_string(handle.read())
    return template.render(
        ansible_managed="managed", runner_base_python=python, runner_base_install_dir=install_dir
    )


def test_the_wrapper_runs_with_spaces_in_its_paths(pyz, tmp_path):
    install_dir = tmp_path / "install dir; x"
    install_dir.mkdir()
    assert install(pyz, str(install_dir)).returncode == 0
    bindir = tmp_path / "python bin"
    bindir.mkdir()
    os.symlink(sys.executable, bindir / "python3")
    wrapper = tmp_path / "runnerkeep"
    wrapper.write_text(render_wrapper(str(bindir / "python3"), str(install_dir)))
    ran = run("/bin/sh", str(wrapper), "--version")
    assert ran.stdout.strip() == f"runnerkeep {__version__}", ran.stderr
    # the default paths render exactly as before (no change on hosts already provisioned)
    plain = render_wrapper("/usr/bin/python3", "/usr/local/lib/runnerkeep")
    assert plain.splitlines()[-1] == 'exec /usr/bin/python3 /usr/local/lib/runnerkeep/lib "$@"'


def _fake_command(tmp_path, exit_code: int) -> str:
    """A stand-in for the runnerkeep wrapper: records its arguments, answers, exits."""
    command = tmp_path / "fake-runnerkeep"
    command.write_text(
        f"#!/bin/sh\necho \"$@\" > {tmp_path}/called\necho 'check  result'\nexit {exit_code}\n"
    )
    command.chmod(0o755)
    return str(command)


def test_self_check_runs_after_the_install_and_its_failure_is_the_exit_code(pyz, tmp_path):
    target = str(tmp_path / "install")
    ok = install(pyz, target, "--self-check", _fake_command(tmp_path, 0))
    assert ok.returncode == 0, ok.stderr
    assert ok.stdout.startswith("changed ") and "check  result" in ok.stdout
    assert (tmp_path / "called").read_text().strip() == "self-check"
    failing = install(pyz, target, "--self-check", _fake_command(tmp_path, 6))
    assert failing.returncode == 6
    assert failing.stdout.startswith("unchanged ") and "check  result" in failing.stdout


def test_self_check_does_not_run_in_check_mode_and_needs_a_command(pyz, tmp_path):
    target = str(tmp_path / "install")
    checked = install(pyz, target, "--check", "--self-check", _fake_command(tmp_path, 6))
    assert checked.returncode == 0 and not (tmp_path / "called").exists()
    missing = install(pyz, target, "--self-check")
    assert missing.returncode == 2 and "--self-check COMMAND" in missing.stderr
