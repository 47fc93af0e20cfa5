"""Build the runner host image (images/runner) for a Debian release, cached by a hash of its inputs.

One Dockerfile serves every release in ``RELEASES`` (Debian 11 bullseye, 12 bookworm, 13
trixie); ``release`` picks the base. The default release (bookworm) is tagged
``runnerkeep/runner:<hash>`` (and ``:latest``), any other ``runnerkeep/runner:<release>-<hash>``
(and ``:<release>``), where the hash covers every file in images/runner (except *.md) and the ID
of the chosen base image, so repeated runs reuse it and any change to the Dockerfile, its files
or the base rebuilds it.

Base image choice (``BASE_IMAGE`` build arg) for release R, first that works:
1. ``$RUNNERKEEP_BASE_IMAGE_<R>`` (e.g. ``RUNNERKEEP_BASE_IMAGE_TRIXIE``) if set, or
   ``$RUNNERKEEP_BASE_IMAGE`` for the default release (must exist locally or be pullable);
2. ``debian:R-slim`` if present locally;
3. a debootstrap base built earlier (``runnerkeep/R-base:<hash>``);
4. ``docker pull debian:R-slim`` (short timeout);
5. build the base offline: ``debootstrap --variant=minbase --include=python3 R``
   + ``docker import`` -> ``runnerkeep/R-base:<hash>`` (~35 s each here).
``RUNNERKEEP_BASE=slim`` or ``RUNNERKEEP_BASE=debootstrap`` forces one path.
The Debian mirror is ``$RUNNERKEEP_DEBIAN_MIRROR``, else the first Debian mirror this machine's
apt sources name (/etc/apt/sources.list*), else deb.debian.org.

``python -m harness.image [--release R | --all-releases] [--print-base] [--force]`` builds and
prints the tag(s).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from . import REPO_ROOT
from ._docker import DockerError, docker, docker_bin, image_exists, image_id, log, run_streamed


@dataclass(frozen=True)
class Release:
    """A Debian release the runner image is built from (its codename is the debootstrap suite)."""

    name: str
    version: str
    python: str  # the python3 its packages install: what Ansible and the CLI run on there
    # Packages the Dockerfile's common list lacks for this release (RELEASE_PACKAGES build arg).
    packages: tuple[str, ...] = ()

    def build_args(self) -> dict[str, str]:
        return {"RELEASE_PACKAGES": " ".join(self.packages)}


RELEASES: dict[str, Release] = {
    r.name: r
    for r in (
        Release("bullseye", "11", "3.9"),
        Release("bookworm", "12", "3.11"),
        # Debian 13 split the docker CLI out of docker.io (which only recommends it).
        Release("trixie", "13", "3.13", packages=("docker-cli",)),
    )
}
DEFAULT_RELEASE = "bookworm"

IMAGE_DIR = REPO_ROOT / "images" / "runner"
IMAGE_REPO = "runnerkeep/runner"
BASE_REPO = f"runnerkeep/{DEFAULT_RELEASE}-base"
SLIM = f"debian:{DEFAULT_RELEASE}-slim"
DEFAULT_MIRROR = "http://deb.debian.org/debian"
APT_SOURCES = Path("/etc/apt")
PULL_TIMEOUT = float(os.environ.get("RUNNERKEEP_PULL_TIMEOUT", "25"))
BUILD_TIMEOUT = 1800
DEBOOTSTRAP_TIMEOUT = 900

DEBOOTSTRAP_SUITE = DEFAULT_RELEASE
DEBOOTSTRAP_VARIANT = "minbase"
DEBOOTSTRAP_INCLUDE = "python3"
# Bump to force a new debootstrap base (e.g. to pick up point-release updates).
DEBOOTSTRAP_RECIPE_VERSION = "1"


class ImageBuildError(RuntimeError):
    """The runner image (or its base) could not be built."""


def release_info(release: str) -> Release:
    """The Release named ``release``; ImageBuildError names the known ones otherwise."""
    try:
        return RELEASES[release]
    except (KeyError, TypeError):
        known = ", ".join(RELEASES)
        raise ImageBuildError(
            f"unknown Debian release {release!r} for the runner image: use one of {known}"
        ) from None


def base_repo(release: str = DEFAULT_RELEASE) -> str:
    return f"runnerkeep/{release_info(release).name}-base"


def slim_image(release: str = DEFAULT_RELEASE) -> str:
    return f"debian:{release_info(release).name}-slim"


def _entries_in(text: str, deb822: bool) -> list[tuple[list[str], list[str], list[str]]]:
    """(URIs, suites, components) of the ``deb`` entries of one apt sources file."""
    entries: list[tuple[list[str], list[str], list[str]]] = []
    if deb822:
        for stanza in re.split(r"\n\s*\n", text):
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, v in (line.split(":", 1) for line in stanza.splitlines() if ":" in line)
                if not k.startswith("#")
            )
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                entries.append(
                    tuple(fields.get(f, "").split() for f in ("uris", "suites", "components"))
                )
        return entries
    for line in text.splitlines():
        words = re.sub(r"\[[^]]*\]", " ", line.split("#", 1)[0]).split()
        if len(words) >= 4 and words[0] == "deb":
            entries.append(([words[1]], [words[2]], words[3:]))
    return entries


def apt_mirror(apt_dir: Path = APT_SOURCES) -> str | None:
    """The first plain-HTTP(S) Debian archive mirror this machine's apt uses, if any.

    Only an entry that can bootstrap a release counts: an HTTP(S) URI ending in ``/debian``
    with the ``main`` component of a release suite (not -security/-updates/-backports, and
    not a third-party repository such as Docker's ``.../linux/debian bookworm stable``).
    """
    files = [apt_dir / "sources.list"]
    for pattern in ("*.list", "*.sources"):
        files += sorted((apt_dir / "sources.list.d").glob(pattern))
    for path in files:
        try:
            text = path.read_text(errors="replace")
        except OSError:
            continue
        for uris, suites, components in _entries_in(text, deb822=path.suffix == ".sources"):
            if "main" not in components or all("-" in suite for suite in suites):
                continue
            for uri in uris:
                if re.match(r"^https?://[^/\s]+(/[^\s]*)?/debian/?$", uri):
                    return uri.rstrip("/")
    return None


def _mirror() -> str:
    return os.environ.get("RUNNERKEEP_DEBIAN_MIRROR") or apt_mirror() or DEFAULT_MIRROR


def debootstrap_base_tag(release: str = DEFAULT_RELEASE) -> str:
    suite = release_info(release).name
    recipe = "|".join(
        (
            DEBOOTSTRAP_RECIPE_VERSION,
            suite,
            DEBOOTSTRAP_VARIANT,
            DEBOOTSTRAP_INCLUDE,
            _mirror(),
        )
    )
    return f"{base_repo(suite)}:{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"


def input_files() -> list[Path]:
    """Files whose content defines the image (sorted, README/notes excluded)."""
    files = [
        p
        for p in IMAGE_DIR.rglob("*")
        if p.is_file() and p.suffix != ".md" and "__pycache__" not in p.parts
    ]
    return sorted(files, key=lambda p: p.relative_to(IMAGE_DIR).as_posix())


def inputs_hash(base_id: str, build_args: dict[str, str] | None = None) -> str:
    h = hashlib.sha256()
    h.update(f"base={base_id}\n".encode())
    for name, value in sorted((build_args or {}).items()):
        h.update(f"arg {name}={value}\n".encode())
    for path in input_files():
        rel = path.relative_to(IMAGE_DIR).as_posix()
        mode = "x" if os.access(path, os.X_OK) else "-"
        data = path.read_bytes()
        h.update(f"{rel}\0{mode}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


@contextlib.contextmanager
def _build_lock() -> Iterator[None]:
    """Serialize builds across processes sharing this engine (parallel test sessions)."""
    path = Path(tempfile.gettempdir()) / "runnerkeep-harness-image.lock"
    with open(path, "a+") as fh:
        deadline = time.monotonic() + BUILD_TIMEOUT + DEBOOTSTRAP_TIMEOUT
        announced = False
        while True:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not announced:
                    log("another process is building the runner image; waiting")
                    announced = True
                if time.monotonic() > deadline:
                    raise ImageBuildError(f"timed out waiting for build lock {path}") from None
                time.sleep(1)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def _try_pull(ref: str) -> bool:
    log(f"trying `docker pull {ref}` (timeout {PULL_TIMEOUT:.0f}s)")
    try:
        proc = docker("pull", "-q", ref, check=False, timeout=PULL_TIMEOUT)
    except DockerError as exc:
        log(f"pull failed: {exc}")
        return False
    if proc.returncode != 0:
        log(f"pull failed: {proc.stderr.strip()[:300]}")
        return False
    return True


def _slim_rootfs(rootfs: Path) -> None:
    """Drop apt lists and package caches, as debian:*-slim does."""
    for sub in ("var/lib/apt/lists", "var/cache/apt/archives"):
        d = rootfs / sub
        if d.is_dir():
            for child in d.iterdir():
                if child.is_file() and child.name != "lock":
                    child.unlink()


def _import_rootfs(rootfs: Path, tag: str, suite: str) -> None:
    """``tar | docker import`` the bootstrapped tree as ``tag``."""
    tar = subprocess.Popen(
        ["tar", "--numeric-owner", "-C", str(rootfs), "-c", "."], stdout=subprocess.PIPE
    )
    try:
        imp = subprocess.run(
            [
                docker_bin(),
                "import",
                "--change",
                'CMD ["/bin/bash"]',
                "--change",
                "ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                "--message",
                f"runnerkeep debootstrap base {suite}",
                "-",
                tag,
            ],
            stdin=tar.stdout,
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
    finally:
        if tar.stdout:
            tar.stdout.close()
        tar.wait(timeout=60)
    if imp.returncode != 0 or tar.returncode != 0:
        raise ImageBuildError(f"docker import failed: {imp.stderr.strip()}")


def build_debootstrap_base(release: str = DEFAULT_RELEASE) -> str:
    """Build the offline base of ``release`` with debootstrap + docker import; return its tag."""
    suite = release_info(release).name
    tag = debootstrap_base_tag(suite)
    if image_exists(tag):
        return tag
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageBuildError(
            f"{slim_image(suite)} is not available and cannot be pulled, and debootstrap is "
            f"missing: apt-get install -y debootstrap (or make {slim_image(suite)} available)"
        )
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root to build the offline base image")
    workdir = Path(tempfile.mkdtemp(prefix=f"runnerkeep-debootstrap-{suite}-"))
    rootfs = workdir / "rootfs"
    try:
        log(f"debootstrap {suite} ({DEBOOTSTRAP_VARIANT}) from {_mirror()} (~1 min)")
        t0 = time.monotonic()
        rc = run_streamed(
            [
                debootstrap,
                f"--variant={DEBOOTSTRAP_VARIANT}",
                f"--include={DEBOOTSTRAP_INCLUDE}",
                suite,
                str(rootfs),
                _mirror(),
            ],
            timeout=DEBOOTSTRAP_TIMEOUT,
        )
        if rc != 0:
            raise ImageBuildError(
                f"debootstrap of Debian {suite} failed with exit code {rc} (mirror {_mirror()}; "
                "set RUNNERKEEP_DEBIAN_MIRROR to a mirror that carries it)"
            )
        _slim_rootfs(rootfs)
        log(f"debootstrap done in {time.monotonic() - t0:.0f}s; importing as {tag}")
        _import_rootfs(rootfs, tag, suite)
        return tag
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _explicit_base(release: str) -> str | None:
    """The base the environment names for ``release``, if any (see module doc)."""
    per_release = os.environ.get(f"RUNNERKEEP_BASE_IMAGE_{release.upper()}")
    if per_release:
        return per_release
    if release == DEFAULT_RELEASE:
        return os.environ.get("RUNNERKEEP_BASE_IMAGE") or None
    return None


def choose_base(release: str = DEFAULT_RELEASE) -> str:
    """Pick the BASE_IMAGE build arg for ``release`` (see module doc)."""
    suite = release_info(release).name
    explicit = _explicit_base(suite)
    if explicit:
        if image_exists(explicit) or _try_pull(explicit):
            return explicit
        raise ImageBuildError(f"the base image {explicit} named for {suite} is not available")
    mode = os.environ.get("RUNNERKEEP_BASE", "auto")
    if mode not in ("auto", "slim", "debootstrap"):
        raise ImageBuildError(f"RUNNERKEEP_BASE must be auto, slim or debootstrap, not {mode!r}")
    if mode == "debootstrap":
        return build_debootstrap_base(suite)
    slim = slim_image(suite)
    if image_exists(slim):
        return slim
    if mode == "auto" and image_exists(debootstrap_base_tag(suite)):
        return debootstrap_base_tag(suite)
    if _try_pull(slim):
        return slim
    if mode == "slim":
        raise ImageBuildError(f"RUNNERKEEP_BASE=slim but {slim} cannot be pulled")
    log(f"{slim} unavailable (offline?); building a base with debootstrap")
    return build_debootstrap_base(suite)


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    if "DOCKER_BUILDKIT" not in env:
        buildx = subprocess.run(
            [docker_bin(), "buildx", "version"], capture_output=True, timeout=30, check=False
        )
        if buildx.returncode != 0:
            env["DOCKER_BUILDKIT"] = "0"  # legacy builder; no buildx plugin installed
    return env


def runner_image_tag(release: str, base_id: str) -> str:
    """The runner image tag; the default release keeps the bare hash its cached images have."""
    info = release_info(release)
    suite = info.name
    digest = inputs_hash(base_id, info.build_args())
    if suite == DEFAULT_RELEASE:
        return f"{IMAGE_REPO}:{digest}"
    return f"{IMAGE_REPO}:{suite}-{digest}"


def alias_tag(release: str) -> str:
    """The moving tag of the newest build: ``:latest`` for the default release, else ``:R``."""
    suite = release_info(release).name
    return f"{IMAGE_REPO}:{'latest' if suite == DEFAULT_RELEASE else suite}"


def ensure_runner_image(force: bool = False, release: str = DEFAULT_RELEASE) -> str:
    """Return the runner image tag of ``release``, building it (and its base) if needed."""
    info = release_info(release)
    suite = info.name
    with _build_lock():
        base = choose_base(suite)
        base_id = image_id(base) or base
        tag = runner_image_tag(suite, base_id)
        if not force and image_exists(tag):
            log(f"runner image {tag} is up to date (base {base})")
            return tag
        log(f"building {tag} from {base} (a few minutes on a cold cache)")
        t0 = time.monotonic()
        build_args: list[str] = []
        for name, value in {"BASE_IMAGE": base, **info.build_args()}.items():
            build_args += ["--build-arg", f"{name}={value}"]
        rc = run_streamed(
            [
                docker_bin(),
                "build",
                *build_args,
                "--label",
                f"io.runnerkeep.image-base={base}",
                "--label",
                f"io.runnerkeep.release={suite}",
                "-t",
                tag,
                str(IMAGE_DIR),
            ],
            timeout=BUILD_TIMEOUT,
            env=_build_env(),
        )
        if rc != 0 or not image_exists(tag):
            raise ImageBuildError(f"docker build of {tag} failed (exit {rc}); see output above")
        docker("tag", tag, alias_tag(suite), check=False)
        log(f"built {tag} in {time.monotonic() - t0:.0f}s")
        return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.image", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--print-base", action="store_true", help="only choose/print the base")
    which = parser.add_mutually_exclusive_group()
    which.add_argument(
        "--release",
        choices=sorted(RELEASES),
        default=DEFAULT_RELEASE,
        help=f"Debian release of the image (default {DEFAULT_RELEASE})",
    )
    which.add_argument("--all-releases", action="store_true", help="every release, in turn")
    args = parser.parse_args(argv)
    from .engine import EngineUnavailable, ensure_engine

    releases = list(RELEASES) if args.all_releases else [args.release]
    try:
        ensure_engine()
        for release in releases:
            if args.print_base:
                print(choose_base(release))
            else:
                print(ensure_runner_image(force=args.force, release=release))
    except (EngineUnavailable, ImageBuildError, DockerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
