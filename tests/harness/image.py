"""Build the runner host image (images/runner), cached by a hash of its inputs.

The image tag is ``runnerkeep/runner:<hash>`` where the hash covers every file in
images/runner (except *.md) and the ID of the chosen base image, so repeated runs
reuse it and any change to the Dockerfile, its files or the base rebuilds it.

Base image choice (``BASE_IMAGE`` build arg), first that works:
1. ``$RUNNERKEEP_BASE_IMAGE`` if set (must exist locally or be pullable);
2. ``debian:bookworm-slim`` if present locally;
3. a debootstrap base built earlier (``runnerkeep/bookworm-base:<hash>``);
4. ``docker pull debian:bookworm-slim`` (short timeout);
5. build the base offline: ``debootstrap --variant=minbase --include=python3 bookworm``
   + ``docker import`` -> ``runnerkeep/bookworm-base:<hash>``.
``RUNNERKEEP_BASE=slim`` or ``RUNNERKEEP_BASE=debootstrap`` forces one path.

``python -m harness.image [--print-base] [--force]`` builds and prints the tag.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

from . import REPO_ROOT
from ._docker import DockerError, docker, docker_bin, image_exists, image_id, log, run_streamed

IMAGE_DIR = REPO_ROOT / "images" / "runner"
IMAGE_REPO = "runnerkeep/runner"
BASE_REPO = "runnerkeep/bookworm-base"
SLIM = "debian:bookworm-slim"
PULL_TIMEOUT = float(os.environ.get("RUNNERKEEP_PULL_TIMEOUT", "25"))
BUILD_TIMEOUT = 1800
DEBOOTSTRAP_TIMEOUT = 900

DEBOOTSTRAP_SUITE = "bookworm"
DEBOOTSTRAP_VARIANT = "minbase"
DEBOOTSTRAP_INCLUDE = "python3"
# Bump to force a new debootstrap base (e.g. to pick up point-release updates).
DEBOOTSTRAP_RECIPE_VERSION = "1"


class ImageBuildError(RuntimeError):
    """The runner image (or its base) could not be built."""


def _mirror() -> str:
    return os.environ.get("RUNNERKEEP_DEBIAN_MIRROR", "http://deb.debian.org/debian")


def debootstrap_base_tag() -> str:
    recipe = "|".join(
        (
            DEBOOTSTRAP_RECIPE_VERSION,
            DEBOOTSTRAP_SUITE,
            DEBOOTSTRAP_VARIANT,
            DEBOOTSTRAP_INCLUDE,
            _mirror(),
        )
    )
    return f"{BASE_REPO}:{hashlib.sha256(recipe.encode()).hexdigest()[:16]}"


def input_files() -> list[Path]:
    """Files whose content defines the image (sorted, README/notes excluded)."""
    files = [
        p
        for p in IMAGE_DIR.rglob("*")
        if p.is_file() and p.suffix != ".md" and "__pycache__" not in p.parts
    ]
    return sorted(files, key=lambda p: p.relative_to(IMAGE_DIR).as_posix())


def inputs_hash(base_id: str) -> str:
    h = hashlib.sha256()
    h.update(f"base={base_id}\n".encode())
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


def build_debootstrap_base() -> str:
    """Build the offline base with debootstrap + docker import; return its tag."""
    tag = debootstrap_base_tag()
    if image_exists(tag):
        return tag
    debootstrap = shutil.which("debootstrap")
    if debootstrap is None:
        raise ImageBuildError(
            f"{SLIM} is not available and cannot be pulled, and debootstrap is missing: "
            "apt-get install -y debootstrap (or make debian:bookworm-slim available)"
        )
    if os.geteuid() != 0:
        raise ImageBuildError("debootstrap needs root to build the offline base image")
    workdir = Path(tempfile.mkdtemp(prefix="runnerkeep-debootstrap-"))
    rootfs = workdir / "rootfs"
    try:
        log(f"debootstrap {DEBOOTSTRAP_SUITE} ({DEBOOTSTRAP_VARIANT}) from {_mirror()} (~1 min)")
        t0 = time.monotonic()
        rc = run_streamed(
            [
                debootstrap,
                f"--variant={DEBOOTSTRAP_VARIANT}",
                f"--include={DEBOOTSTRAP_INCLUDE}",
                DEBOOTSTRAP_SUITE,
                str(rootfs),
                _mirror(),
            ],
            timeout=DEBOOTSTRAP_TIMEOUT,
        )
        if rc != 0:
            raise ImageBuildError(f"debootstrap failed with exit code {rc}")
        # Slim the base like debian:*-slim: no apt lists or package caches.
        for sub in ("var/lib/apt/lists", "var/cache/apt/archives"):
            d = rootfs / sub
            if d.is_dir():
                for child in d.iterdir():
                    if child.is_file() and child.name != "lock":
                        child.unlink()
        log(f"debootstrap done in {time.monotonic() - t0:.0f}s; importing as {tag}")
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
                    f"runnerkeep debootstrap base {DEBOOTSTRAP_SUITE}",
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
        return tag
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def choose_base() -> str:
    """Pick the BASE_IMAGE build arg (see module docstring)."""
    explicit = os.environ.get("RUNNERKEEP_BASE_IMAGE")
    if explicit:
        if image_exists(explicit) or _try_pull(explicit):
            return explicit
        raise ImageBuildError(f"RUNNERKEEP_BASE_IMAGE={explicit} is not available")
    mode = os.environ.get("RUNNERKEEP_BASE", "auto")
    if mode not in ("auto", "slim", "debootstrap"):
        raise ImageBuildError(f"RUNNERKEEP_BASE must be auto, slim or debootstrap, not {mode!r}")
    if mode == "debootstrap":
        return build_debootstrap_base()
    if image_exists(SLIM):
        return SLIM
    if mode == "auto" and image_exists(debootstrap_base_tag()):
        return debootstrap_base_tag()
    if _try_pull(SLIM):
        return SLIM
    if mode == "slim":
        raise ImageBuildError(f"RUNNERKEEP_BASE=slim but {SLIM} cannot be pulled")
    log(f"{SLIM} unavailable (offline?); building a base with debootstrap")
    return build_debootstrap_base()


def _build_env() -> dict[str, str]:
    env = dict(os.environ)
    if "DOCKER_BUILDKIT" not in env:
        buildx = subprocess.run(
            [docker_bin(), "buildx", "version"], capture_output=True, timeout=30, check=False
        )
        if buildx.returncode != 0:
            env["DOCKER_BUILDKIT"] = "0"  # legacy builder; no buildx plugin installed
    return env


def ensure_runner_image(force: bool = False) -> str:
    """Return the runner image tag, building it (and its base) if needed."""
    with _build_lock():
        base = choose_base()
        base_id = image_id(base) or base
        tag = f"{IMAGE_REPO}:{inputs_hash(base_id)}"
        if not force and image_exists(tag):
            log(f"runner image {tag} is up to date (base {base})")
            return tag
        log(f"building {tag} from {base} (a few minutes on a cold cache)")
        t0 = time.monotonic()
        rc = run_streamed(
            [
                docker_bin(),
                "build",
                "--build-arg",
                f"BASE_IMAGE={base}",
                "--label",
                f"io.runnerkeep.image-base={base}",
                "-t",
                tag,
                str(IMAGE_DIR),
            ],
            timeout=BUILD_TIMEOUT,
            env=_build_env(),
        )
        if rc != 0 or not image_exists(tag):
            raise ImageBuildError(f"docker build of {tag} failed (exit {rc}); see output above")
        docker("tag", tag, f"{IMAGE_REPO}:latest", check=False)
        log(f"built {tag} in {time.monotonic() - t0:.0f}s")
        return tag


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.image", description=__doc__)
    parser.add_argument("--force", action="store_true", help="rebuild even if cached")
    parser.add_argument("--print-base", action="store_true", help="only choose/print the base")
    args = parser.parse_args(argv)
    from .engine import EngineUnavailable, ensure_engine

    try:
        ensure_engine()
        if args.print_base:
            print(choose_base())
        else:
            print(ensure_runner_image(force=args.force))
    except (EngineUnavailable, ImageBuildError, DockerError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
