#!/usr/bin/env python3
"""Run ``ansible-test sanity`` on the built collection runnerkeep.runner.

ansible-test only works inside ``ansible_collections/<namespace>/<name>``, so this script builds
the collection (tools/build_collection.py, or takes ``--tarball``), unpacks it into such a tree
in a temporary directory and runs there:

    ansible-test sanity --venv --python <this Python's X.Y> [--test NAME ...]

then ``--test compile --test import`` once more for each ``--also-python`` (by default 3.9, the
oldest Python on runner hosts, and 3.13, the newest supported). Exits non-zero when a test
fails.

Offline-ish: ``--venv`` installs each test's pinned requirements from the package index, with
no container registry. ansible-test bootstraps pip in those venvs with a script it downloads
from ci-files.testing.ansible.com; when that host cannot be reached this script writes a
stand-in (ensurepip, then the pinned pip from the index) where ansible-test looks for it and
runs again. ansible-test's home (venvs, that script) is a cache directory of its own
(``--cache-dir``), never the user's ~/.ansible.

The sanity ignore file is tests/sanity/ignore-<ansible-core X.Y>.txt of this repository; a
collection built without it gets it copied in, one built with another copy is refused.
Standard library only.
"""

from __future__ import annotations

import argparse
import filecmp
import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMESPACE = "runnerkeep"
NAME = "runner"
SANITY_DIR = os.path.join(ROOT, "tests", "sanity")
# ansible-test's words when it cannot download its pip bootstrap script.
BOOTSTRAP_MISSING = re.compile(
    r"The bootstrap script can be manually downloaded and saved to: (\S+)"
)
STAND_IN = '''"""Stand-in for ansible-test's get-pip bootstrap, written by tools/run_sanity.py
(runnerkeep) because ci-files.testing.ansible.com could not be reached: ensurepip, then the
pinned packages ansible-test asks for, from the package index pip is configured with."""
import subprocess
import sys

packages = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
subprocess.check_call([sys.executable, "-m", "ensurepip", "--default-pip"])
subprocess.check_call([sys.executable, "-m", "pip", "install", *packages])
'''
ALSO_PYTHON = ("3.9", "3.13")  # the ends of the Pythons runner hosts may have
RUN_TIMEOUT = 3600  # seconds for one ansible-test run (first runs install every venv)


class SanityError(Exception):
    """A reason the sanity run cannot start, said in one line."""


def find_tool(name: str) -> str:
    """A tool of the running Python's environment first (the nox session's), else PATH."""
    beside = os.path.join(os.path.dirname(sys.executable), name)
    if os.access(beside, os.X_OK):
        return beside
    found = shutil.which(name)
    if not found:
        raise SanityError(
            f"{name} not found beside {sys.executable} or on PATH: install ansible-core"
        )
    return found


def ansible_core_version(ansible_test: str) -> str:
    """'2.19' for ansible-test 2.19.x: it names the ignore file."""
    out = run_captured([ansible_test, "--version"], "ansible-test --version")
    match = re.search(r"(\d+)\.(\d+)\.", out)
    if not match:
        raise SanityError(f"cannot read the ansible-test version from {out.strip()!r}")
    return f"{match.group(1)}.{match.group(2)}"


def run_captured(cmd: list[str], what: str, timeout: int = 600) -> str:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SanityError(f"{what} could not run: {exc}") from None
    if done.returncode != 0:
        tail = " / ".join((done.stderr or done.stdout).strip().splitlines()[-3:])
        raise SanityError(f"{what} failed (exit {done.returncode}): {tail}")
    return done.stdout


def interpreter_dir(version: str) -> str:
    """A directory holding a working ``pythonX.Y``: ansible-test finds interpreters on PATH.

    A pyenv shim on PATH may exist and still refuse to run, so each candidate is tried."""
    if version == f"{sys.version_info[0]}.{sys.version_info[1]}":
        candidates = [os.path.realpath(sys.executable)]
    else:
        candidates = []
    pyenv_root = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
    candidates += sorted(glob.glob(os.path.join(pyenv_root, "versions", f"{version}.*", "bin")))
    # A pyenv shim answers only while PYENV_VERSION and HOME are what they were here, and
    # ansible-test runs it with HOME moved to its cache: the versions' own bin dirs come first,
    # a shim never.
    found = shutil.which(f"python{version}") or ""
    if os.sep + "shims" + os.sep not in found:
        candidates.append(found)
    for candidate in filter(None, candidates):
        exe = candidate
        if os.path.isdir(candidate):
            exe = os.path.join(candidate, f"python{version}")
        try:
            done = subprocess.run(
                [exe, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                capture_output=True,
                text=True,
                timeout=30,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if done.returncode == 0 and done.stdout.strip() == version:
            home = os.path.dirname(exe)
            if os.access(os.path.join(home, f"python{version}"), os.X_OK):
                return home
    raise SanityError(f"no working python{version} found (PATH, pyenv); install it or leave it out")


def version_key(version: str) -> tuple[int, ...]:
    if not re.fullmatch(r"\d+\.\d+", version):
        raise SanityError(f"--also-python {version!r}: expected X.Y, e.g. 3.9")
    return tuple(int(part) for part in version.split("."))


def build_tarball(out_dir: str) -> str:
    tool = os.path.join(ROOT, "tools", "build_collection.py")
    if not os.path.exists(tool):
        raise SanityError(f"{tool} is missing; pass --tarball PATH of a built collection")
    run_captured([sys.executable, tool, "--output-dir", out_dir], "tools/build_collection.py")
    built = glob.glob(os.path.join(out_dir, f"{NAMESPACE}-{NAME}-*.tar.gz"))
    if len(built) != 1:
        raise SanityError(f"tools/build_collection.py left {built or 'nothing'} in {out_dir}")
    return built[0]


def unpack(tarball: str, dest: str) -> None:
    """Regular files and directories only, every one inside ``dest``."""
    root = os.path.realpath(dest)
    try:
        with tarfile.open(tarball, "r:gz") as archive:
            members = archive.getmembers()
            for member in members:
                target = os.path.realpath(os.path.join(root, member.name))
                if not (member.isfile() or member.isdir()):
                    raise SanityError(f"{tarball}: {member.name} is not a file or directory")
                if os.path.commonpath([root, target]) != root:
                    raise SanityError(f"{tarball}: {member.name} points outside the collection")
            if hasattr(tarfile, "data_filter"):  # 3.12+, and 3.9.17+ backports
                archive.extractall(root, filter="data")
            else:
                archive.extractall(root)  # every member was checked above
    except (OSError, tarfile.TarError) as exc:
        raise SanityError(f"cannot unpack {tarball}: {exc}") from None


def place_ignore_file(collection: str, core_version: str) -> str | None:
    """The repo's ignore file for this ansible-core, in the collection; None when there is none."""
    name = f"ignore-{core_version}.txt"
    source = os.path.join(SANITY_DIR, name)
    shipped = os.path.join(collection, "tests", "sanity", name)
    if os.path.exists(shipped):
        if not os.path.exists(source) or not filecmp.cmp(source, shipped, shallow=False):
            raise SanityError(
                f"the collection's tests/sanity/{name} differs from {source}; rebuild it"
            )
        return shipped
    if not os.path.exists(source):
        return None
    os.makedirs(os.path.dirname(shipped), exist_ok=True)
    shutil.copyfile(source, shipped)
    print(f"run_sanity: the collection has no tests/sanity/{name}; using {source}")
    return shipped


def sanity_env(cache_dir: str, python_dirs: list[str]) -> dict[str, str]:
    env = dict(os.environ)
    user_pip_conf = os.path.join(
        os.environ.get("XDG_CONFIG_HOME") or os.path.expanduser("~/.config"), "pip", "pip.conf"
    )
    # HOME moves to the cache; the user's pip settings (index, mirrors) must come along.
    if "PIP_CONFIG_FILE" not in env and os.path.exists(user_pip_conf):
        env["PIP_CONFIG_FILE"] = user_pip_conf
    env["HOME"] = cache_dir
    env.pop("XDG_CONFIG_HOME", None)
    env["PATH"] = os.pathsep.join([*python_dirs, env.get("PATH", "")])
    env["ANSIBLE_NOCOLOR"] = "1"
    return env


def ansible_test_sanity(
    ansible_test: str, collection: str, args: list[str], env: dict[str, str]
) -> int:
    """One ansible-test run; writes the pip bootstrap stand-in and retries once if asked for."""
    cmd = [ansible_test, "sanity", "--venv", "--color", "no", *args]
    for attempt in (1, 2):
        print("run_sanity: " + " ".join(cmd[1:]), flush=True)
        returncode, output = stream(cmd, collection, env)
        wanted = BOOTSTRAP_MISSING.search(output)
        if returncode == 0 or not wanted or attempt == 2:
            return returncode
        write_stand_in(wanted.group(1), env["HOME"])
    return 1


def stream(cmd: list[str], cwd: str, env: dict[str, str]) -> tuple[int, str]:
    """Run ``cmd``, showing its output as it comes (without pip's noise); killed after
    RUN_TIMEOUT seconds. Returns (exit status, whole output)."""
    try:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
    except OSError as exc:
        raise SanityError(f"ansible-test could not run: {exc}") from None
    watchdog = threading.Timer(RUN_TIMEOUT, proc.kill)
    watchdog.start()
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line)
            if not PIP_NOISE.match(line):
                sys.stdout.write(line)
                sys.stdout.flush()
        returncode = proc.wait()
    finally:
        watchdog.cancel()
        proc.stdout.close()
    if returncode < 0:
        print(f"run_sanity: ansible-test killed after {RUN_TIMEOUT} s or by a signal", flush=True)
    return returncode, "".join(lines)


def write_stand_in(path: str, cache_dir: str) -> None:
    real = os.path.realpath(path)
    if os.path.commonpath([os.path.realpath(cache_dir), real]) != os.path.realpath(cache_dir):
        raise SanityError(f"ansible-test wants its pip bootstrap at {path}, outside {cache_dir}")
    os.makedirs(os.path.dirname(real), exist_ok=True)
    with open(real, "w", encoding="utf-8") as handle:
        handle.write(STAND_IN)
    print(f"run_sanity: pip bootstrap not downloadable; wrote a stand-in at {real}", flush=True)


# pip's progress while ansible-test fills its venvs: shown, it buries the findings.
PIP_NOISE = re.compile(
    r"^\s*(Collecting |Downloading |Using cached |Installing collected|Successfully |"
    r"Requirement already|Processing |Attempting |Found existing|Uninstalling|Looking in |.*━)"
)


def default_cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return os.path.join(base, "runnerkeep-sanity")


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tarball", help="a built collection (default: build one now)")
    parser.add_argument(
        "--test", action="append", default=[], help="run only this sanity test (repeatable)"
    )
    parser.add_argument(
        "--also-python",
        action="append",
        default=None,
        help="also run compile and import on this Python X.Y (default 3.9 and 3.13; 'none')",
    )
    parser.add_argument("--cache-dir", default=default_cache_dir(), help="ansible-test's home")
    parser.add_argument("--keep", action="store_true", help="keep the unpacked collection")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    ansible_test = find_tool("ansible-test")
    core = ansible_core_version(ansible_test)
    python = f"{sys.version_info[0]}.{sys.version_info[1]}"
    wanted = args.also_python or list(ALSO_PYTHON)
    others = sorted({v for v in wanted if v not in ("none", python)}, key=version_key)
    python_dirs = [interpreter_dir(v) for v in [python, *others]]
    os.makedirs(args.cache_dir, exist_ok=True)
    env = sanity_env(os.path.abspath(args.cache_dir), python_dirs)
    work = tempfile.mkdtemp(prefix="runnerkeep-sanity-")
    try:
        tarball = os.path.abspath(args.tarball) if args.tarball else build_tarball(work)
        collection = os.path.join(work, "ansible_collections", NAMESPACE, NAME)
        os.makedirs(collection)
        unpack(tarball, collection)
        if place_ignore_file(collection, core) is None:
            print(f"run_sanity: no tests/sanity/ignore-{core}.txt for ansible-core {core}")
        tests = [arg for name in args.test for arg in ("--test", name)]
        failed = []
        if ansible_test_sanity(ansible_test, collection, ["--python", python, *tests], env):
            failed.append(f"sanity on Python {python}")
        per_version = [t for t in ("compile", "import") if not args.test or t in args.test]
        for version in others if per_version else []:
            extra = [arg for name in per_version for arg in ("--test", name)]
            if ansible_test_sanity(ansible_test, collection, ["--python", version, *extra], env):
                failed.append(f"{', '.join(per_version)} on Python {version}")
    finally:
        if args.keep:
            print(f"run_sanity: kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    if failed:
        print(f"run_sanity: FAILED: {'; '.join(failed)}", file=sys.stderr)
        return 1
    print(f"run_sanity: ok (ansible-core {core}; Python {python}, also {', '.join(others) or '-'})")
    return 0


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        return run(args)
    except SanityError as exc:
        print(f"run_sanity: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("run_sanity: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
