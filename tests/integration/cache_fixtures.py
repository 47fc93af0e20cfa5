"""Fixtures and helpers for the cache integration tests (tests/integration/test_cache_*.py).

They use the Docker engine on this machine (the host engine, not the runner fleet) for real
`docker save` / `docker load`. Test images are built offline: a base imported from a tarball
holding /bin/sh (dash) and its libraries, and images FROM it with several COPY/RUN layers of
random data, so every run's layers are new. Everything created is removed in teardown.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import uuid

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHONPATH = os.pathsep.join([os.path.join(REPO, "module_utils"), os.path.join(REPO, "cli")])
MiB = 1024 * 1024


def docker(*args: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(["docker", *args], capture_output=True, text=True, check=check, **kw)


def image_id(ref: str) -> str | None:
    proc = docker("image", "inspect", "--format", "{{.Id}}", ref, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else None


def rmi(*refs: str) -> None:
    if refs:
        docker("rmi", "-f", *refs, check=False)


class Cli:
    """Runs ``python -m runnerkeep_cli`` with a private config (reserve 0, private state dir)."""

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.state_dir = os.path.join(workdir, "state")
        self.config = os.path.join(workdir, "config.json")
        self.write_config({"reserve": "0"})

    def write_config(self, cache_section: dict) -> None:
        with open(self.config, "w") as handle:
            json.dump({"paths": {"state_dir": self.state_dir}, "cache": cache_section}, handle)

    def env(self, extra: dict | None = None) -> dict:
        env = dict(os.environ)
        env["PYTHONPATH"] = PYTHONPATH
        env["RUNNERKEEP_CONFIG"] = self.config
        env.pop("RUNNERKEEP_CACHE_DIR", None)
        env.update(extra or {})
        return env

    def cmd(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "runnerkeep_cli", *args]

    def __call__(self, *args: str, env: dict | None = None, timeout: float = 120):
        return subprocess.run(
            self.cmd(*args), capture_output=True, text=True, env=self.env(env), timeout=timeout
        )

    def popen(self, *args: str, env: dict | None = None, **kw) -> subprocess.Popen:
        return subprocess.Popen(
            self.cmd(*args),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env(env),
            **kw,
        )

    def json(self, *args: str, env: dict | None = None) -> tuple[int, dict]:
        proc = self(*args, "--json", env=env)
        try:
            data = json.loads(proc.stdout) if proc.stdout.strip() else {}
        except ValueError:
            data = {"stdout": proc.stdout}
        data.setdefault("_stderr", proc.stderr)
        return proc.returncode, data


def _base_tarball(path: str) -> None:
    """A tiny root filesystem: /bin/sh (dash) and the libraries it needs."""
    files = {"/bin/sh": os.path.realpath("/bin/dash")}
    out = subprocess.run(["ldd", "/bin/dash"], capture_output=True, text=True, check=True).stdout
    for line in out.splitlines():
        parts = line.split()
        lib = parts[2] if "=>" in parts and len(parts) > 2 else parts[0]
        if lib.startswith("/"):
            files[lib] = os.path.realpath(lib)
    with tarfile.open(path, "w") as tar:
        for target, source in files.items():
            tar.add(source, arcname=target.lstrip("/"))
        info = tarfile.TarInfo("tmp")
        info.type = tarfile.DIRTYPE
        info.mode = 0o1777
        tar.addfile(info)


def build_image(tag: str, base: str, layer_sizes: list[int], workdir: str, run: bool = True) -> str:
    """docker build FROM base: one COPY layer per size (random data), plus a RUN layer."""
    ctx = os.path.join(workdir, "ctx-" + uuid.uuid4().hex[:8])
    os.makedirs(ctx)
    lines = [f"FROM {base}"]
    for i, size in enumerate(layer_sizes):
        with open(os.path.join(ctx, f"f{i}.bin"), "wb") as handle:
            handle.write(os.urandom(size))
        lines.append(f"COPY f{i}.bin /data/f{i}.bin")
    if run:
        lines.append(f"RUN echo {tag} > /marker")
    lines.append('CMD ["/bin/sh", "-c", "read x < /marker; echo $x"]')
    with open(os.path.join(ctx, "Dockerfile"), "w") as handle:
        handle.write("\n".join(lines) + "\n")
    docker("build", "-q", "-t", tag, ctx)
    shutil.rmtree(ctx, ignore_errors=True)
    return image_id(tag)


@pytest.fixture(scope="session")
def cache_images(tmp_path_factory):
    """base, A and B (A and B share base). Built once; removed at the end of the session."""
    if docker("info", check=False).returncode != 0:
        pytest.fail("these tests need the Docker engine on this machine ('docker info' fails)")
    work = str(tmp_path_factory.mktemp("images"))
    prefix = "rkcache-test-" + uuid.uuid4().hex[:8]
    tags = {
        "base": f"{prefix}/base:1",
        "a": f"{prefix}/a:1",
        "b": f"{prefix}/b:1",
    }
    tarball = os.path.join(work, "base.tar")
    _base_tarball(tarball)
    created = []
    try:
        with open(tarball, "rb") as handle:
            subprocess.run(
                ["docker", "import", "-", tags["base"]],
                stdin=handle,
                check=True,
                capture_output=True,
            )
        created.append(tags["base"])
        ids = {"base": image_id(tags["base"])}
        ids["a"] = build_image(tags["a"], tags["base"], [int(1.5 * MiB), int(1.2 * MiB)], work)
        created.append(tags["a"])
        ids["b"] = build_image(
            tags["b"], tags["base"], [int(1.5 * MiB), int(1.5 * MiB), int(1.5 * MiB)], work
        )
        created.append(tags["b"])
        yield {"tags": tags, "ids": ids, "prefix": prefix, "work": work}
    finally:
        ids_now = [image_id(t) for t in created]
        rmi(*created)
        rmi(*[i for i in ids_now if i])


@pytest.fixture
def cli(tmp_path):
    return Cli(str(tmp_path))


@pytest.fixture
def small_tmpfs(tmp_path):
    """Factory: mount a tmpfs of N bytes; always unmounted in teardown."""
    mounted: list[str] = []

    def mount(size: int, name: str = "tmpfs") -> str:
        path = str(tmp_path / name)
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", path], check=True)
        mounted.append(path)
        return path

    yield mount
    for path in reversed(mounted):
        subprocess.run(["umount", "-l", path], check=False)


def fill_to(path: str, free_bytes: int) -> None:
    """Write a filler file so the filesystem holding ``path`` has exactly ``free_bytes`` free."""
    st = os.statvfs(path)
    free = st.f_bavail * st.f_frsize
    filler = free - free_bytes
    assert filler >= 0, f"cannot leave {free_bytes} free: only {free} free"
    with open(os.path.join(path, "filler"), "ab") as handle:
        handle.write(b"\0" * filler)
    st = os.statvfs(path)
    assert st.f_bavail * st.f_frsize == free_bytes, (st.f_bavail * st.f_frsize, free_bytes)


def entry_of(store_dir: str, key: str) -> dict:
    with open(os.path.join(store_dir, "entries", key + ".json"), "rb") as handle:
        return json.load(handle)


def tmp_leftovers(store_dir: str) -> list[str]:
    tmp = os.path.join(store_dir, "tmp")
    return sorted(os.listdir(tmp)) if os.path.isdir(tmp) else []
