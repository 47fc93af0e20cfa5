"""Install the runnerkeep zipapp on this host as a directory compiled by this host's Python.

Usage: python3 install_zipapp.py PYZ INSTALL_DIR [--check]

The zipapp ships sources only (the same bytes from any controller Python), and zipimport never
writes bytecode, so running it directly compiles every imported module on each start. This
script unpacks it into INSTALL_DIR/releases/<digest>-<cache tag>, compiles it there with
checked-hash .pyc files (valid exactly while the source is the same, whatever the mtimes) and
then points the symlink INSTALL_DIR/lib at it in one rename; the wrapper runs
`python3 INSTALL_DIR/lib`. The release is named after the archive's digest and this Python's
bytecode tag, so nothing changes while both stay the same, and a host whose Python was upgraded
gets bytecode for its new version on the next run. The previous release is kept (a process
started from it keeps importing from it); older ones are removed.

Prints "changed INSTALL_DIR/lib" or "unchanged INSTALL_DIR/lib"; with --check it only reports
what a real run would do. Exits 1 with a one-line reason on failure.
"""

from __future__ import annotations

import compileall
import contextlib
import hashlib
import io
import os
import py_compile
import shutil
import sys
import zipfile

LINK = "lib"
RELEASES = "releases"
MIN_PYTHON = (3, 9)


class InstallError(Exception):
    """A reason to stop, said in one line."""


def release_name(archive: bytes) -> str:
    digest = hashlib.sha256(archive).hexdigest()[:16]
    return f"{digest}-{sys.implementation.cache_tag}"


def current_target(link: str) -> str | None:
    try:
        return os.readlink(link)
    except (FileNotFoundError, OSError):
        return None


def safe_members(archive: zipfile.ZipFile) -> list[zipfile.ZipInfo]:
    """Regular file members with plain relative names; anything else stops the install."""
    members = []
    for info in archive.infolist():
        parts = info.filename.split("/")
        if info.filename.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InstallError(f"unexpected member name in the zipapp: {info.filename!r}")
        members.append(info)
    return members


def unpack(archive: bytes, directory: str) -> None:
    with zipfile.ZipFile(io.BytesIO(archive)) as zipped:
        for info in safe_members(zipped):
            path = os.path.join(directory, *info.filename.split("/"))
            os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "wb") as handle:
                handle.write(zipped.read(info))


def compile_release(directory: str, final: str) -> None:
    """Bytecode for every module, named for the final path (tracebacks show where it runs)."""
    output = io.StringIO()
    with contextlib.redirect_stdout(output):
        ok = compileall.compile_dir(
            directory,
            ddir=final,
            quiet=1,
            workers=1,
            invalidation_mode=py_compile.PycInvalidationMode.CHECKED_HASH,
        )
    if not ok:
        lines = [line for line in output.getvalue().splitlines() if line.strip()]
        reason = lines[-1] if lines else "compileall failed"
        raise InstallError(f"{sys.executable} cannot compile runnerkeep: {reason}")


def sync_tree(directory: str) -> None:
    """Files and directories on disk before the symlink points at them (a crash right after
    the flip must not leave the command pointing at empty files)."""
    for dirpath, _dirnames, filenames in os.walk(directory):
        for name in filenames:
            fd = os.open(os.path.join(dirpath, name), os.O_RDONLY | os.O_NOFOLLOW)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fd = os.open(dirpath, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def build_release(archive: bytes, releases: str, name: str) -> None:
    final = os.path.join(releases, name)
    staging = os.path.join(releases, f".{name}.tmp{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    os.mkdir(staging, 0o755)
    try:
        unpack(archive, staging)
        compile_release(staging, final)
        sync_tree(staging)
        if os.path.lexists(final):  # left by a run that stopped before its flip
            shutil.rmtree(final)
        os.rename(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def flip(install_dir: str, target: str) -> None:
    link = os.path.join(install_dir, LINK)
    staging = os.path.join(install_dir, f".{LINK}.tmp{os.getpid()}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)
    os.symlink(target, staging)
    if os.path.isdir(link) and not os.path.islink(link):
        shutil.rmtree(link)  # not ours (we only ever make a symlink there)
    os.replace(staging, link)
    fd = os.open(install_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(releases: str, keep: set[str]) -> None:
    for name in os.listdir(releases):
        if name not in keep:
            shutil.rmtree(os.path.join(releases, name), ignore_errors=True)


def install(pyz: str, install_dir: str, check: bool) -> bool:
    """Make INSTALL_DIR/lib the compiled release of PYZ; True when something changed."""
    if sys.version_info < MIN_PYTHON:
        raise InstallError(
            f"runnerkeep needs Python {'.'.join(map(str, MIN_PYTHON))}+ on the host; "
            f"{sys.executable} is {sys.version.split()[0]} (set runner_base_python)"
        )
    link = os.path.join(install_dir, LINK)
    previous = current_target(link)
    try:
        with open(pyz, "rb") as handle:
            archive = handle.read()
    except FileNotFoundError:
        if check:  # check mode: the copy task before this one did not really copy it
            return True
        raise
    target = f"{RELEASES}/{release_name(archive)}"
    if previous == target and os.path.isdir(os.path.join(install_dir, target)):
        return False
    if check:
        return True
    releases = os.path.join(install_dir, RELEASES)
    os.makedirs(releases, mode=0o755, exist_ok=True)
    build_release(archive, releases, release_name(archive))
    flip(install_dir, target)
    keep = {release_name(archive)}
    if previous and previous.startswith(f"{RELEASES}/"):
        keep.add(previous[len(RELEASES) + 1 :])
    prune(releases, keep)
    return True


def main(argv: list[str]) -> int:
    args = [a for a in argv if a != "--check"]
    if len(args) != 2:
        print("usage: install_zipapp.py PYZ INSTALL_DIR [--check]", file=sys.stderr)
        return 2
    pyz, install_dir = args
    os.umask(0o022)
    try:
        changed = install(pyz, install_dir, check="--check" in argv)
    except (InstallError, OSError, zipfile.BadZipFile) as exc:
        print(f"install_zipapp: {exc}", file=sys.stderr)
        return 1
    print(f"{'changed' if changed else 'unchanged'} {os.path.join(install_dir, LINK)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
