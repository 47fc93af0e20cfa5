"""Docker cleaners against this machine's real engine.

Every object these tests create carries a per-run label, and the cleaners are scoped to it with
``cleanup.docker_filters``, so other people's images and containers on the shared engine are
never candidates (in-use detection still looks at every container). Images come from
``docker import`` of a tiny tarball (no registry here); last use times are recorded in the
cleanup state the way job hooks record them. Everything is removed in teardown.
"""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
import time
import uuid

import pytest
from runnerkeep.cleanup import record_image_use, run_cleanup
from runnerkeep.fsutil import FilesystemUsage, filesystem_usage

pytestmark = pytest.mark.integration

DAY = 86400.0


def docker(*args, check=True, input_bytes=None):
    proc = subprocess.run(
        ["docker", *args], capture_output=True, input=input_bytes, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {proc.stderr.decode()}")
    return proc.stdout.decode().strip()


def tarball(size: int) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        data = os.urandom(size)
        info = tarfile.TarInfo("payload.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


class Lab:
    """Per-test Docker objects, all labelled; ``teardown`` removes every one."""

    def __init__(self, tmp_path):
        self.tag = uuid.uuid4().hex[:10]
        self.label = f"runnerkeep.cleanup-test={self.tag}"
        self.tmp_path = tmp_path
        self.containers: list[str] = []
        self.refs: list[str] = []

    def image(self, name: str, size: int = 200_000) -> str:
        ref = f"rkclean-{self.tag}-{name}:1"
        docker("import", "--change", f"LABEL {self.label}", "-", ref, input_bytes=tarball(size))
        self.refs.append(ref)
        return docker("image", "inspect", "--format", "{{.Id}}", ref)

    def container(self, ref: str, labelled: bool = True) -> str:
        args = ["create", "--name", f"rkclean-{self.tag}-{len(self.containers)}"]
        if labelled:
            args += ["--label", self.label]
        cid = docker(*args, ref, "/nonexistent")
        self.containers.append(cid)
        return cid

    def exists(self, ref_or_id: str) -> bool:
        return (
            subprocess.run(
                ["docker", "image", "inspect", ref_or_id], capture_output=True, check=False
            ).returncode
            == 0
        )

    def container_exists(self, cid: str) -> bool:
        return (
            subprocess.run(
                ["docker", "container", "inspect", cid], capture_output=True, check=False
            ).returncode
            == 0
        )

    def config(self, **cleaners) -> dict:
        state = self.tmp_path / "state"
        state.mkdir(exist_ok=True)
        return {
            "paths": {
                "state_dir": str(state),
                "cache_dir": str(self.tmp_path / "cache"),
                "log_dir": str(self.tmp_path / "logs"),
            },
            "cleanup": {
                "docker_filters": [f"label={self.label}"],
                "protected_images": [f"rkclean-{self.tag}-protected*"],
                "cleaners": {
                    "docker-build-cache": {"enabled": False},  # shared engine: not ours
                    **cleaners,
                },
            },
        }

    def teardown(self):
        for cid in self.containers:
            docker("rm", "-f", cid, check=False)
        ids = docker("ps", "-aq", "--filter", f"label={self.label}", check=False).split()
        if ids:
            docker("rm", "-f", *ids, check=False)
        ids = docker("image", "ls", "-aq", "--filter", f"label={self.label}", check=False)
        if ids:
            docker("rmi", "-f", *sorted(set(ids.split())), check=False)


@pytest.fixture
def lab(engine, tmp_path):
    lab = Lab(tmp_path)
    try:
        yield lab
    finally:
        lab.teardown()


def seed_images(lab):
    now = time.time()
    ids = {
        "oldest": lab.image("oldest"),
        "older": lab.image("older"),
        "recent": lab.image("recent"),
        "in-use": lab.image("in-use"),
        "protected": lab.image("protected-runner"),
    }
    state = lab.config()["paths"]["state_dir"]
    record_image_use(
        state,
        {
            ids["oldest"]: now - 20 * DAY,
            ids["older"]: now - 10 * DAY,
            ids["recent"]: now - 3600,
            ids["in-use"]: now - 30 * DAY,
            ids["protected"]: now - 40 * DAY,
        },
    )
    # A container outside the test's scope (no label) still protects its image.
    lab.container(f"rkclean-{lab.tag}-in-use:1", labelled=False)
    return ids


def test_images_removed_least_recently_used_first_and_only_the_right_ones(lab):
    ids = seed_images(lab)
    config = lab.config(**{"docker-images": {"min_age": "1d"}})
    dry = run_cleanup("post", config, run_all=True, cleaner_names=["docker-images"], dry_run=True)
    listed = [i["path"] for i in dry.cleaner("docker-images").items]
    assert listed == [
        f"image rkclean-{lab.tag}-oldest:1",
        f"image rkclean-{lab.tag}-older:1",
    ]
    assert lab.exists(ids["oldest"])  # dry run removed nothing

    real = run_cleanup("post", config, run_all=True, cleaner_names=["docker-images"])
    assert [i["path"] for i in real.cleaner("docker-images").items] == listed
    assert real.cleaner("docker-images").errors == []
    assert not lab.exists(ids["oldest"]) and not lab.exists(ids["older"])
    assert lab.exists(ids["recent"])  # used within min_age
    assert lab.exists(ids["in-use"])  # a container uses it
    assert lab.exists(ids["protected"])  # protected pattern
    # What the cleaner counted against what the dry run predicted (the headline bytes_freed is
    # the host disk's statvfs, which everything else on this machine moves too).
    assert abs(real.bytes_freed_claimed - dry.bytes_freed) <= 0.01 * dry.bytes_freed


def test_image_stage_stops_at_target(lab):
    ids = seed_images(lab)
    config = lab.config(**{"docker-images": {"min_age": "1d"}})
    real_fs = filesystem_usage("/var/lib/docker")

    def probe(path):
        # statvfs of the host disk moves with everything else on it: this stand-in frees
        # 200 kB for each seeded image that is really gone from the engine.
        gone = sum(not lab.exists(image_id) for image_id in ids.values())
        return FilesystemUsage(
            path="/",
            mount_point=real_fs.mount_point,
            total_bytes=real_fs.total_bytes,
            free_bytes=10**9 + gone * 200_000,
            total_inodes=10**7,
            free_inodes=10**6,
        )

    # One image's worth (200 kB payload): only the least recently used goes.
    report = run_cleanup(
        "post",
        config,
        cleaner_names=["docker-images"],
        target_free_bytes=10**9 + 1000,
        target_free_inodes=0,
        probe=probe,
    )
    cr = report.cleaner("docker-images")
    assert cr.status == "stopped: target met"
    assert [i["path"] for i in cr.items] == [f"image rkclean-{lab.tag}-oldest:1"]
    assert not lab.exists(ids["oldest"]) and lab.exists(ids["older"])


def test_stopped_containers_then_dangling_images(lab):
    a = lab.image("a")
    stopped = lab.container(f"rkclean-{lab.tag}-a:1")
    # Re-tagging "b" onto a new image leaves the first one dangling.
    first_b = lab.image("b")
    second_b = lab.image("b")
    assert first_b != second_b
    config = lab.config(**{"docker-containers": {"min_age": "0s"}})
    report = run_cleanup(
        "pre", config, run_all=True, cleaner_names=["docker-containers", "docker-dangling-images"]
    )
    assert [c.name for c in report.cleaners] == ["docker-containers", "docker-dangling-images"]
    assert not lab.container_exists(stopped)
    assert not lab.exists(first_b)
    assert lab.exists(second_b) and lab.exists(a)  # tagged images are not "dangling"
    assert report.cleaner("docker-containers").items_removed == 1
    assert report.cleaner("docker-dangling-images").items_removed == 1


def test_containers_younger_than_min_age_stay(lab):
    lab.image("a")
    young = lab.container(f"rkclean-{lab.tag}-a:1")
    config = lab.config(**{"docker-containers": {"min_age": "1h"}})
    run_cleanup("post", config, run_all=True, cleaner_names=["docker-containers"])
    assert lab.container_exists(young)


def test_real_run_records_image_use_from_containers(lab):
    from runnerkeep.cleanup.docker_cleaners import load_image_use

    image = lab.image("used")
    lab.container(f"rkclean-{lab.tag}-used:1")
    config = lab.config(**{"docker-images": {"min_age": "1d"}})
    run_cleanup("post", config, run_all=True, cleaner_names=["docker-images"])
    uses = load_image_use(config["paths"]["state_dir"])
    assert image in uses and time.time() - uses[image] < 3600
