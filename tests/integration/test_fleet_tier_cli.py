"""`runnerkeep cache save / restore` with a fleet tier, end to end: the real CLI, this machine's
Docker engine and a loopback docker-registry with TLS and htpasswd users.

- a save on one host pushes; an empty second store restores the key into a daemon that lacks
  the image (a hit from the fleet tier, image ID unchanged);
- a corrupt blob in the local store is quarantined and fetched again: the restore exits 0 and
  says `repaired`;
- a key the fleet tier lacks is a miss (exit 3);
- an untrusted job's save does not push, and says why;
- wrong credentials are a miss (exit 3) naming the cause, never the password.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import uuid

import pytest
from cache_fixtures import Cli, MiB, _base_tarball, build_image, docker, image_id, rmi
from harness.registry import LocalRegistry

pytestmark = pytest.mark.integration

UNTRUSTED_GITLAB_JOB = {
    "GITLAB_CI": "true",
    "CI_PROJECT_ID": "10",
    "CI_PROJECT_PATH": "group/app",
    "CI_MERGE_REQUEST_IID": "4",
    "CI_MERGE_REQUEST_SOURCE_PROJECT_ID": "99",
}


@pytest.fixture(scope="module")
def registry():
    with LocalRegistry(tls=True, auth=True) as reg:
        yield reg


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    """A base imported from a tarball and an app of two random layers on it (new each run);
    a backup archive to put it back. Removed at the end."""
    if docker("info", check=False).returncode != 0:
        pytest.fail("these tests need the Docker engine on this machine ('docker info' fails)")
    work = str(tmp_path_factory.mktemp("fleet-cli"))
    prefix = "rkfleetcli-test-" + uuid.uuid4().hex[:8]
    base, tag = f"{prefix}/base:1", f"{prefix}/app:1"
    tarball = os.path.join(work, "base.tar")
    _base_tarball(tarball)
    docker("import", tarball, base)
    try:
        build_image(tag, base, [3 * MiB, 1 * MiB], work)
        backup = os.path.join(work, "backup.tar")
        docker("save", "-o", backup, tag)
        yield {"tag": tag, "id": image_id(tag), "backup": backup}
    finally:
        rmi(tag, base)


@contextlib.contextmanager
def absent(app: dict):
    """The app image out of the daemon for the block; back (by tag) afterwards."""
    rmi(app["tag"])
    assert image_id(app["tag"]) is None
    try:
        yield
    finally:
        if docker("tag", app["id"], app["tag"], check=False).returncode != 0:
            docker("load", "-i", app["backup"])


class FleetHost(Cli):
    """The CLI as one runner host sees it: its own store, the registry as cache.remote, and no
    CI facts from the machine running the tests (a job's are given per call)."""

    def __init__(self, workdir: str, remote: dict) -> None:
        os.makedirs(workdir, exist_ok=True)
        self.store = os.path.join(workdir, "store")
        super().__init__(workdir)
        self.write_config({"reserve": "0", "remote": remote})

    def env(self, extra: dict | None = None) -> dict:
        env = super().env()
        for name in list(env):
            if name.startswith(("GITHUB_", "GITLAB_", "CI_")):
                del env[name]
        env["RUNNERKEEP_CACHE_DIR"] = self.store
        env.update(extra or {})
        return env


@pytest.fixture
def hosts(tmp_path, registry, request):
    """host(name, **remote options): a runner host on a repository of this test's own."""
    repository = "cli/" + uuid.uuid4().hex[:12]

    def host(name: str, credentials: tuple[str, str] | None = None, **options) -> FleetHost:
        remote = registry.remote_config(
            repository, credentials or registry.push_user, timeout=15, **options
        )
        return FleetHost(str(tmp_path / name), remote)

    return host


def event_results(host: FleetHost) -> list[tuple[str, str]]:
    with open(os.path.join(host.state_dir, "events.jsonl")) as handle:
        found = [json.loads(line) for line in handle]
    return [(e["op"], e["result"]) for e in found if e.get("kind") == "cache"]


def rot_biggest_blob(store: str) -> None:
    blob = max(glob.glob(os.path.join(store, "blobs", "sha256", "*")), key=os.path.getsize)
    with open(blob, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"\xff" * 64)


def test_a_save_pushes_and_an_empty_host_restores_from_the_fleet(hosts, app):
    first = hosts("rk-1", push=True)
    code, saved = first.json("cache", "save", "--key", "k", app["tag"])
    assert code == 0, saved["_stderr"]
    assert saved["push"]["pushed"] is True, saved["push"]
    assert saved["push"]["bytes_sent"] > 4 * MiB

    second = hosts("rk-2")
    with absent(app):
        code, restored = second.json("cache", "restore", "--key", "k")
        assert code == 0, restored["_stderr"]
        assert restored["source"] == "fleet" and restored["loaded"] is True
        assert restored["repaired"] is False
        assert image_id(app["tag"]) == app["id"]
    # Now the key is local: the next restore never asks the registry.
    code, again = second.json("cache", "restore", "--key", "k")
    assert code == 0 and "source" not in again
    # One pull and two hits for the watch to count; the local miss the fleet served is none.
    assert event_results(second) == [("pull", "pulled"), ("restore", "hit"), ("restore", "hit")]
    assert second("cache", "verify").returncode == 0


def test_a_corrupt_local_blob_is_repaired_from_the_fleet(hosts, app):
    host = hosts("rk-3", push=True)
    code, saved = host.json("cache", "save", "--key", "k", app["tag"])
    assert code == 0 and saved["push"]["pushed"] is True, saved
    rot_biggest_blob(host.store)
    with absent(app):
        proc = host("cache", "restore", "--key", "k")
        assert proc.returncode == 0, proc.stderr
        assert "repaired from the fleet tier" in proc.stdout
        assert image_id(app["tag"]) == app["id"]
    assert os.listdir(os.path.join(host.store, "quarantine"))  # the rotten blob, kept aside
    assert event_results(host)[-3:] == [
        ("restore", "corrupt"),
        ("repair", "repaired"),
        ("restore", "hit"),
    ]
    assert host("cache", "verify").returncode == 0


def test_a_key_the_fleet_lacks_is_a_miss(hosts, app):
    host = hosts("rk-4")
    with absent(app):
        proc = host("cache", "restore", "--key", "never-saved")
        assert proc.returncode == 3, proc.stderr
        assert "not in the fleet cache" in proc.stderr
        assert "Traceback" not in proc.stderr
        assert image_id(app["tag"]) is None


def test_an_untrusted_jobs_save_does_not_push(hosts, app):
    job = hosts("rk-5", push=True)
    proc = job("cache", "save", "--key", "pr-build", app["tag"], env=UNTRUSTED_GITLAB_JOB)
    assert proc.returncode == 0, proc.stderr
    assert "not pushed: untrusted job" in proc.stdout
    assert "merge request !4 from project 99" in proc.stdout
    with open(os.path.join(job.state_dir, "events.jsonl")) as handle:
        refused = [json.loads(line) for line in handle if '"push_refused"' in line]
    assert refused and "untrusted" in refused[0]["reason"]
    other = hosts("rk-6")
    assert other("cache", "pull", "--key", "pr-build").returncode == 3  # nothing reached it


def test_wrong_credentials_are_a_miss_without_the_password(hosts, app, registry):
    good = hosts("rk-7", push=True)
    code, saved = good.json("cache", "save", "--key", "k", app["tag"])
    assert code == 0 and saved["push"]["pushed"] is True, saved
    wrong = hosts("rk-8", credentials=(registry.push_user[0], "Not-The-Password-42"))
    with absent(app):
        proc = wrong("cache", "restore", "--key", "k")
        assert proc.returncode == 3, proc.stderr
        assert "wrong credentials" in proc.stderr
        for secret in ("Not-The-Password-42", registry.push_user[1]):
            assert secret not in proc.stdout + proc.stderr
        assert image_id(app["tag"]) is None
