"""The fleet tier speaks the registry's common language, proven with the real tools on this
machine's Docker engine and a loopback docker-registry:

- what `docker push` and `skopeo copy` push (Docker schema2 or OCI manifests, gzip layers) is
  pulled by runnerkeep, verified, stored and restored with the image ID unchanged;
- what runnerkeep pushes (an OCI index of OCI manifests, uncompressed layers) is read by
  `skopeo inspect` / `skopeo copy` and by `docker pull` by tag and by digest, image ID unchanged.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import tarfile
import uuid

import pytest
from cache_fixtures import MiB, _base_tarball, build_image, docker, image_id, rmi
from harness.registry import LocalRegistry
from runnerkeep.cache import (
    Store,
    batched_load,
    remote_push,
    restore_entry,
    save_entry,
    verify_store,
)
from runnerkeep.cache.batched_load import PARTIAL_LABEL
from runnerkeep.cache.remote_layout import (
    DOCKER_MANIFEST,
    GZIP_LAYER_TYPES,
    OCI_MANIFEST,
    RemoteCacheMiss,
)
from runnerkeep.cache.remote_pull import pull_entry
from runnerkeep.cache.remote_push import push_entry
from runnerkeep.cache.remote_restore import restore_from_fleet
from runnerkeep.remote.registry import RegistryClient
from runnerkeep.remote.remote_config import remote_settings

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def registry():
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    """A base imported from a tarball and an app of two random layers on it: new each run, so
    `docker push` compresses every layer itself. Removed at the end."""
    if docker("info", check=False).returncode != 0:
        pytest.fail("these tests need the Docker engine on this machine ('docker info' fails)")
    work = str(tmp_path_factory.mktemp("fleet-formats"))
    prefix = "rkfleet-test-" + uuid.uuid4().hex[:8]
    base, app = f"{prefix}/base:1", f"{prefix}/app:1"
    tarball = os.path.join(work, "base.tar")
    _base_tarball(tarball)
    # A base of its own: other tests import the same tiny base, and a daemon already holding
    # its layer would send the one-pass restore down the incremental path.
    marker = os.path.join(work, "marker")
    with open(marker, "w") as f:
        f.write(prefix)
    with tarfile.open(tarball, "a") as tar:
        tar.add(marker, arcname="etc/rkfleet-marker")
    docker("import", tarball, base)
    try:
        build_image(app, base, [3 * MiB, 1 * MiB], work)
        backup = os.path.join(work, "backup.tar")
        docker("save", "-o", backup, app)
        yield {"tag": app, "base": base, "id": image_id(app), "backup": backup}
    finally:
        rmi(app, base)


@contextlib.contextmanager
def absent(image: dict, *refs: str):
    """The app image out of the daemon (every ref to it removed) for the block; back after."""
    rmi(image["tag"], *refs)
    for name in (image["tag"], *refs):
        assert image_id(name) is None, name
    try:
        yield
    finally:
        rmi(*refs)
        if docker("tag", image["id"], image["tag"], check=False).returncode != 0:
            docker("load", "-i", image["backup"])


def client_for(reg: LocalRegistry, repository: str) -> RegistryClient:
    return RegistryClient(remote_settings({"remote": reg.remote_config(repository)}))


def ref(reg: LocalRegistry, repository: str, tag: str) -> str:
    return f"127.0.0.1:{reg.port}/{repository}:{tag}"


def skopeo(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, check=True, timeout=300
    )


def restore_and_check(store: Store, key: str, want_id: str, tag: str) -> dict:
    """The pulled entry restores into a daemon that lacks the image, ID unchanged."""
    assert verify_store(store)["ok"]
    restored = restore_entry(store, key)
    assert restored["loaded"] is True
    assert image_id(tag) == want_id
    return restored


def test_an_image_docker_pushed_is_pulled_verified_and_restored(registry, image, tmp_path):
    pushed = ref(registry, "fmt/docker", "k1")
    docker("tag", image["tag"], pushed)
    docker("push", pushed)
    with client_for(registry, "fmt/docker") as client:
        manifest = client.get_manifest("k1", (DOCKER_MANIFEST,))
        assert manifest.media_type == DOCKER_MANIFEST
        layers = json.loads(manifest.data)["layers"]
        assert {layer["mediaType"] for layer in layers} <= set(GZIP_LAYER_TYPES)
        store = Store(str(tmp_path / "store"), key_file=None)
        with absent(image, pushed):
            pulled = pull_entry(store, "k1", client)
            assert pulled["images"] == [{"id": image["id"], "tags": [pushed]}]
            restore_and_check(store, "k1", image["id"], pushed)


@pytest.mark.parametrize("oci", [False, True], ids=["schema2", "oci"])
def test_an_image_skopeo_copied_is_pulled_and_restored(registry, image, tmp_path, oci):
    archive = str(tmp_path / "image.tar")
    docker("save", "-o", archive, image["tag"])
    repository = "fmt/skopeo-oci" if oci else "fmt/skopeo"
    target = ref(registry, repository, "k2")
    extra = ["--format", "oci"] if oci else []
    skopeo(
        "copy", *extra, "--dest-tls-verify=false", f"docker-archive:{archive}", f"docker://{target}"
    )
    with client_for(registry, repository) as client:
        top = client.get_manifest("k2", (OCI_MANIFEST, DOCKER_MANIFEST))
        assert top.media_type == (OCI_MANIFEST if oci else DOCKER_MANIFEST)
        config_digest = json.loads(top.data)["config"]["digest"]
        store = Store(str(tmp_path / "store"), key_file=None)
        pulled = pull_entry(store, "k2", client)
    assert pulled["images"][0]["id"] == config_digest
    assert pulled["bytes_fetched"] > 4 * MiB * 0.9  # gzip of random data: about its size
    if not oci:
        assert config_digest == image["id"]
    with absent(image, target):
        restore_and_check(store, "k2", config_digest, target)


def test_what_runnerkeep_pushes_is_read_by_skopeo_and_docker_pull(registry, image, tmp_path):
    store = Store(str(tmp_path / "store"), key_file=None)
    save_entry(store, "rk-key", [image["tag"]], check_space=False)
    with client_for(registry, "fmt/rk") as client:
        pushed = push_entry(store, "rk-key", client)
    by_tag = ref(registry, "fmt/rk", "rk-key")
    by_digest = f"127.0.0.1:{registry.port}/fmt/rk@{pushed['manifests'][0]}"

    inspected = json.loads(skopeo("inspect", "--tls-verify=false", f"docker://{by_tag}").stdout)
    assert inspected["Architecture"] and inspected["Os"] == "linux"
    raw = json.loads(skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{by_tag}").stdout)
    assert raw["annotations"]["io.runnerkeep.key"] == "rk-key"
    copied = str(tmp_path / "copied.tar")
    skopeo("copy", "--src-tls-verify=false", f"docker://{by_tag}", f"docker-archive:{copied}")
    assert os.path.getsize(copied) > 4 * MiB

    with absent(image, by_tag, by_digest):
        docker("pull", by_tag)
        assert image_id(by_tag) == image["id"]
    with absent(image, by_tag, by_digest):
        docker("pull", by_digest)
        assert image_id(by_digest) == image["id"]


def test_a_key_pushed_from_two_platforms_serves_both(registry, image, tmp_path, monkeypatch):
    """An arm64 runner pushed the key first (its platform patched in: this engine builds amd64
    only), then this host: the index lists both, docker pull and runnerkeep's pull still take
    this host's image."""
    store = Store(str(tmp_path / "store"), key_file=None)
    save_entry(store, "two-arch", [image["tag"]], check_space=False)
    with client_for(registry, "fmt/two-arch") as client:
        with monkeypatch.context() as patch:
            patch.setattr(
                remote_push, "_platform", lambda config: {"architecture": "arm64", "os": "linux"}
            )
            push_entry(store, "two-arch", client)
        pushed = push_entry(store, "two-arch", client)
        assert len(pushed["platforms_kept"]) == 1
        by_tag = ref(registry, "fmt/two-arch", "two-arch")
        raw = skopeo("inspect", "--raw", "--tls-verify=false", f"docker://{by_tag}").stdout
        arches = sorted(m["platform"]["architecture"] for m in json.loads(raw)["manifests"])
        assert arches == ["amd64", "arm64"]
        with absent(image, by_tag):
            docker("pull", by_tag)
            assert image_id(by_tag) == image["id"]
        fresh = Store(str(tmp_path / "fresh"), key_file=None)
        assert pull_entry(fresh, "two-arch", client)["result"] == "pulled"
        assert verify_store(fresh)["ok"]


def stand_ins(store: Store, key: str) -> list[str]:
    """The stand-in images of a batched one-pass restore of ``key`` into ``store`` that the
    daemon holds (batched_load; other tests' restores run beside these on the same engine)."""
    label = f"label={PARTIAL_LABEL}={store.root}#{key}"
    return docker("images", "-q", "--no-trunc", "--filter", label).stdout.split()


@pytest.fixture(params=[False, True], ids=["one-archive", "batches"])
def batches(request, monkeypatch):
    """The one-pass restore as one archive, or in batches of layers (of 1 MiB: the last,
    1 MiB, layer is a batch of its own)."""
    if request.param:
        monkeypatch.setattr(batched_load, "BATCH_BYTES", 1 * MiB)
    return request.param


def test_restore_from_the_fleet_in_one_pass(registry, image, tmp_path, batches):
    """Nothing of the key on the host: the layers go into the engine as they arrive, and the
    local entry is committed too (the next restore is a local hit)."""
    source = Store(str(tmp_path / "source"), key_file=None)
    save_entry(source, "one-pass", [image["tag"]], check_space=False)
    with client_for(registry, "fmt/one-pass") as client:
        push_entry(source, "one-pass", client)
        store = Store(str(tmp_path / "store"), key_file=None)
        with absent(image, f"{image['base']}"):
            restored = restore_from_fleet(store, "one-pass", client)
            assert restored["overlapped"] is True and restored["loaded"] is True
            assert (restored["load_batches"] > 1) is batches
            assert image_id(image["tag"]) == image["id"]
            assert stand_ins(store, "one-pass") == []
            assert restored["pulled"]["bytes_fetched"] > 4 * MiB
        assert verify_store(store)["ok"]
        assert restore_entry(store, "one-pass")["loaded"] is False  # a local hit now
        # With the image present, the same call is a pull (nothing left to fetch) + a hit.
        again = restore_from_fleet(store, "one-pass", client)
        assert again["overlapped"] is False and again["loaded"] is False


def test_a_layer_rotten_in_the_registry_loads_nothing_in_one_pass(image, tmp_path, batches):
    source = Store(str(tmp_path / "source"), key_file=None)
    save_entry(source, "rot", [image["tag"]], check_space=False)
    entry, _ = source.read_entry("rot")
    last = entry["images"][0]["layers"][-1]["digest"]
    with LocalRegistry() as reg, client_for(reg, "fmt/rot") as client:
        push_entry(source, "rot", client)
        hexdigest = last.split(":", 1)[1]
        data = os.path.join(
            reg.storage_dir, "docker/registry/v2/blobs/sha256", hexdigest[:2], hexdigest, "data"
        )
        with open(data, "r+b") as handle:
            handle.seek(100)
            handle.write(b"rot")
        store = Store(str(tmp_path / "store"), key_file=None)
        with absent(image, image["base"]):
            with pytest.raises(RemoteCacheMiss) as caught:
                restore_from_fleet(store, "rot", client)
            assert caught.value.corrupt and last in str(caught.value)
            assert image_id(image["tag"]) is None and image_id(image["id"]) is None
            assert stand_ins(store, "rot") == []  # the first batch's stand-in was removed again
    assert store.list_keys() == [] and store.list_blobs() == {}
