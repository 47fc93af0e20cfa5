"""Install the runnerkeep zipapp on this host as a directory compiled by this host's Python.

Usage: python3 install_zipapp.py PYZ INSTALL_DIR [--check] [--lock-wait SECONDS]

The zipapp ships sources only (the same bytes from any controller Python), and zipimport never
writes bytecode, so running it directly compiles every imported module on each start. This
script unpacks it into INSTALL_DIR/releases/<digest>-<cache tag>, compiles it there with
checked-hash .pyc files (valid exactly while the source is the same, whatever the mtimes),
writes a manifest of every file's digest and mode into it and then points the symlink
INSTALL_DIR/lib at it in one rename; the wrapper runs `python3 INSTALL_DIR/lib`.

Nothing changes while the current release verifies against its manifest for this archive and
this Python's bytecode tag. A release that does not (a module lost, truncated or edited on the
host, a Python upgrade) is never repaired in place, since a running process may still import
from it: a fresh release is built under a new name (<digest>-<cache tag>-<n>) and the link
flipped to it. A kept release that verifies (a roll back to the previous version) is flipped
to as it is. After a flip the current release and the one flipped to before it are kept
(a process started from it keeps importing from it); older ones are removed.

Runs at once (two controllers, a re-run while one hangs) take turns on INSTALL_DIR/.install.lock
and give up after --lock-wait seconds (default 300) with one line.

Prints "changed INSTALL_DIR/lib" or "unchanged INSTALL_DIR/lib"; with --check it only reports
what a real run would do and writes nothing. Exits 1 with a one-line reason on failure.
With --self-check COMMAND (not in --check), then runs `COMMAND self-check` and exits with its
code (runner_base's check that runnerkeep works, in the same round trip).
"""

# Up to the version check this file must parse on old Pythons (3.0+: no f-strings, no
# `from __future__ import annotations`), so that a host with Python 3.6 gets the one-line
# reason instead of a SyntaxError traceback. Annotations below use only what 3.9 evaluates.
import sys

MIN_PYTHON = (3, 9)

if sys.version_info < MIN_PYTHON:
    sys.stderr.write(
        "install_zipapp: runnerkeep needs Python 3.9+ on the host; "
        + str(sys.executable)
        + " is "
        + sys.version.split()[0]
        + " (set runner_base_python)\n"
    )
    sys.exit(1)

import compileall  # noqa: E402
import contextlib  # noqa: E402
import fcntl  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import py_compile  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import stat  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402

LINK = "lib"
RELEASES = "releases"
LOCK = ".install.lock"
MANIFEST = ".runnerkeep-release.json"
MANIFEST_FORMAT = 1
MANIFEST_MAX_BYTES = 4 << 20
LOCK_WAIT = 300.0
KEEP = 2  # the current release and the one flipped to before it
MAX_REBUILDS = 1000


class InstallError(Exception):
    """A reason to stop, said in one line."""


def base_name(digest: str) -> str:
    return digest[:16] + "-" + sys.implementation.cache_tag


def release_names(base: str) -> "re.Pattern[str]":
    """<base> or <base>-<n>: the releases of one archive for this Python."""
    return re.compile(re.escape(base) + r"(-[0-9]+)?")


def current_target(link: str) -> "str | None":
    try:
        return os.readlink(link)
    except OSError:
        return None


def target_release(target: "str | None") -> "str | None":
    """The release name a link target names, if it is releases/<one plain name>."""
    prefix = RELEASES + "/"
    if target and target.startswith(prefix) and "/" not in target[len(prefix) :]:
        return target[len(prefix) :]
    return None


def safe_members(archive: zipfile.ZipFile) -> "list[zipfile.ZipInfo]":
    """Regular file members with plain relative names; anything else stops the install."""
    members = []
    for info in archive.infolist():
        parts = info.filename.split("/")
        if info.filename.startswith("/") or any(p in ("", ".", "..") for p in parts):
            raise InstallError("unexpected member name in the zipapp: " + repr(info.filename))
        if info.filename == MANIFEST:
            raise InstallError("the zipapp holds " + MANIFEST + ", a name the install reserves")
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
        raise InstallError(sys.executable + " cannot compile runnerkeep: " + reason)


def file_digest(path: str) -> "tuple[str, int] | None":
    """(sha256, permission bits) of a regular file, None for anything else or unreadable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        st = os.fstat(handle.fileno())
        if not stat.S_ISREG(st.st_mode):
            return None
        digest = hashlib.sha256()
        for block in iter(lambda: handle.read(1 << 16), b""):
            digest.update(block)
    return digest.hexdigest(), stat.S_IMODE(st.st_mode)


def release_files(directory: str) -> "list[str]":
    """Every file of a release as a /-separated relative path, the manifest left out."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(directory):
        for name in filenames:
            rel = os.path.relpath(os.path.join(dirpath, name), directory)
            if rel != MANIFEST:
                found.append(rel.replace(os.sep, "/"))
    return sorted(found)


def write_manifest(directory: str, archive_digest: str) -> None:
    """What the release must hold for this archive and this Python, read back by verified()."""
    files = {}
    for rel in release_files(directory):
        entry = file_digest(os.path.join(directory, *rel.split("/")))
        if entry is None:
            raise InstallError("cannot read back " + rel + " in the new release")
        files[rel] = {"sha256": entry[0], "mode": entry[1]}
    manifest = {
        "format": MANIFEST_FORMAT,
        "archive_sha256": archive_digest,
        "cache_tag": sys.implementation.cache_tag,
        "files": files,
    }
    path = os.path.join(directory, MANIFEST)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w") as handle:
        json.dump(manifest, handle, indent=0, sort_keys=True)


def read_manifest(directory: str) -> "dict | None":
    try:
        fd = os.open(os.path.join(directory, MANIFEST), os.O_RDONLY | os.O_NOFOLLOW)
        with os.fdopen(fd, "rb") as handle:
            raw = handle.read(MANIFEST_MAX_BYTES + 1)
        manifest = json.loads(raw) if len(raw) <= MANIFEST_MAX_BYTES else None
    except (OSError, ValueError):
        return None
    return manifest if isinstance(manifest, dict) else None


def verified(directory: str, archive_digest: str) -> bool:
    """True when the release holds exactly what its manifest says it was built with from this
    archive for this Python; any doubt (no manifest, a file lost, changed or re-moded) is False."""
    if os.path.islink(directory) or not os.path.isdir(directory):
        return False
    manifest = read_manifest(directory)
    if manifest is None or manifest.get("format") != MANIFEST_FORMAT:
        return False
    if manifest.get("archive_sha256") != archive_digest:
        return False
    if manifest.get("cache_tag") != sys.implementation.cache_tag:
        return False
    files = manifest.get("files")
    if not isinstance(files, dict) or "__main__.py" not in files:
        return False
    for rel, entry in files.items():
        if not isinstance(rel, str) or not isinstance(entry, dict):
            return False
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            return False
        found = file_digest(os.path.join(directory, *parts))
        if found != (entry.get("sha256"), entry.get("mode")):
            return False
    return True


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


def fresh_name(releases: str, base: str) -> str:
    """A release name no directory has: an existing one is never replaced (it may be running)."""
    for n in range(MAX_REBUILDS):
        name = base if n == 0 else base + "-" + str(n)
        if not os.path.lexists(os.path.join(releases, name)):
            return name
    raise InstallError(
        "more than "
        + str(MAX_REBUILDS)
        + " releases named "
        + base
        + " in "
        + releases
        + "; remove the ones not in use"
    )


def build_release(archive: bytes, archive_digest: str, releases: str, name: str) -> None:
    final = os.path.join(releases, name)
    staging = os.path.join(releases, "." + name + ".tmp" + str(os.getpid()))
    shutil.rmtree(staging, ignore_errors=True)
    os.mkdir(staging, 0o755)
    try:
        unpack(archive, staging)
        compile_release(staging, final)
        write_manifest(staging, archive_digest)
        sync_tree(staging)
        os.rename(staging, final)  # final is a fresh name: never over a release in use
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def flip(install_dir: str, target: str) -> None:
    link = os.path.join(install_dir, LINK)
    staging = os.path.join(install_dir, "." + LINK + ".tmp" + str(os.getpid()))
    with contextlib.suppress(FileNotFoundError):
        os.unlink(staging)
    os.symlink(target, staging)
    if os.path.isdir(link) and not os.path.islink(link):
        shutil.rmtree(link)  # not ours (we only ever make a symlink there)
    os.replace(staging, link)
    # the release's mtime is its flip time: pruning keeps the ones flipped to last
    os.utime(os.path.join(install_dir, target))
    fd = os.open(install_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def prune(releases: str, current: str) -> None:
    """Keep the current release and the newest others by flip time, KEEP in all; staging
    directories left by killed runs go too (the lock says no other run is using them)."""
    others = []
    for name in os.listdir(releases):
        path = os.path.join(releases, name)
        if name.startswith("."):
            shutil.rmtree(path, ignore_errors=True)
        elif name != current:
            with contextlib.suppress(FileNotFoundError):
                others.append((os.lstat(path).st_mtime, name))
    others.sort(reverse=True)
    for _mtime, name in others[KEEP - 1 :]:
        path = os.path.join(releases, name)
        if os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(path)


@contextlib.contextmanager
def install_lock(install_dir: str, wait: float):
    """One install at a time per INSTALL_DIR; a run that cannot get it in `wait` s says so."""
    path = os.path.join(install_dir, LOCK)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise InstallError(
                        "another install holds " + path + " (waited " + str(wait) + " s); "
                        "let it finish or stop it, then run again"
                    ) from None
                time.sleep(0.1)
        yield
    finally:
        os.close(fd)


def verified_release(
    install_dir: str, base: str, archive_digest: str, previous: "str | None"
) -> "str | None":
    """The name of a kept release of this archive that verifies, the current one first."""
    releases = os.path.join(install_dir, RELEASES)
    pattern = release_names(base)
    try:
        names = sorted(n for n in os.listdir(releases) if pattern.fullmatch(n))
    except FileNotFoundError:
        return None
    current = target_release(previous)
    if current in names:
        names.remove(current)
        names.insert(0, current)
    for name in names:
        if verified(os.path.join(releases, name), archive_digest):
            return name
    return None


def read_archive(pyz: str, check: bool) -> "bytes | None":
    try:
        with open(pyz, "rb") as handle:
            return handle.read()
    except FileNotFoundError:
        if check:  # check mode: the copy task before this one did not really copy it
            return None
        raise


def install(pyz: str, install_dir: str, check: bool, lock_wait: float = LOCK_WAIT) -> bool:
    """Make INSTALL_DIR/lib a verified compiled release of PYZ; True when something changed."""
    if check:  # no lock: taking it would create the lock file
        return decide(pyz, install_dir, check=True)
    os.makedirs(install_dir, mode=0o755, exist_ok=True)
    with install_lock(install_dir, lock_wait):
        return decide(pyz, install_dir, check=False)


def decide(pyz: str, install_dir: str, check: bool) -> bool:
    archive = read_archive(pyz, check)
    if archive is None:
        return True
    digest = hashlib.sha256(archive).hexdigest()
    base = base_name(digest)
    previous = current_target(os.path.join(install_dir, LINK))
    reuse = verified_release(install_dir, base, digest, previous)
    if reuse is not None and previous == RELEASES + "/" + reuse:
        return False
    if check:
        return True
    releases = os.path.join(install_dir, RELEASES)
    os.makedirs(releases, mode=0o755, exist_ok=True)
    name = reuse
    if name is None:
        name = fresh_name(releases, base)
        build_release(archive, digest, releases, name)
    flip(install_dir, RELEASES + "/" + name)
    prune(releases, name)
    return True


def parse_args(argv: "list[str]") -> "tuple[str, str, bool, float] | None":
    args = list(argv)
    check = "--check" in args
    args = [a for a in args if a != "--check"]
    lock_wait = LOCK_WAIT
    if "--lock-wait" in args:
        at = args.index("--lock-wait")
        try:
            lock_wait = float(args[at + 1])
        except (IndexError, ValueError):
            return None
        if not 0 <= lock_wait < 86400:
            return None
        del args[at : at + 2]
    if len(args) != 2:
        return None
    return args[0], args[1], check, lock_wait


def self_check(command: str) -> int:
    """``COMMAND self-check`` once installed (one round trip for the role, not two): its
    output follows ours; its exit code is ours when it fails."""
    import subprocess  # only here: the install itself runs no program

    try:
        done = subprocess.run(
            [command, "self-check"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            timeout=300,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(
            "install_zipapp: " + command + " self-check did not run: " + str(exc), file=sys.stderr
        )
        return 1
    sys.stdout.write(done.stdout.decode("utf-8", "replace"))
    return done.returncode


def main(argv: "list[str]") -> int:
    args = list(argv)
    command = None
    if "--self-check" in args:
        at = args.index("--self-check")
        command = args[at + 1] if at + 1 < len(args) else None
        del args[at : at + 2]
    parsed = parse_args(args)
    if parsed is None or ("--self-check" in argv and not command):
        print(
            "usage: install_zipapp.py PYZ INSTALL_DIR [--check] [--lock-wait SECONDS]"
            " [--self-check COMMAND]",
            file=sys.stderr,
        )
        return 2
    pyz, install_dir, check, lock_wait = parsed
    os.umask(0o022)
    try:
        changed = install(pyz, install_dir, check, lock_wait)
    except (InstallError, OSError, zipfile.BadZipFile) as exc:
        print("install_zipapp: " + str(exc), file=sys.stderr)
        return 1
    print(("changed " if changed else "unchanged ") + os.path.join(install_dir, LINK))
    sys.stdout.flush()
    if command and not check:
        return self_check(command)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
