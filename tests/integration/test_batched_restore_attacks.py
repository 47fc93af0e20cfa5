"""Attacks on the batched one-pass restore from the fleet tier (cache/batched_load.py), with
this machine's Docker engine and a loopback docker-registry: a restore killed between batches
and mid-batch, a blob rotten in the first / a middle / the last batch, the registry killed
mid-batch, two restores at once (one key; two keys sharing base layers), the host's cleanup
pruning a stand-in while the restore still needs it, a tag the daemon already gives another
image, a key of several images, and odd layer shapes (an empty-tar layer repeated, a 0-byte
layer as the last batch, one layer, many small layers).

Images are written here as docker-archives of random layers (new IDs each run, no shared base
with other tests), imported into a source store and pushed; every image, stand-in and
container made is removed at the end. Batches are 1 MiB (layers of 600 kB: two a batch).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import uuid

import pytest
from cache_fixtures import PYTHONPATH, MiB, docker, image_id
from harness.registry import LocalRegistry
from runnerkeep.cache import Store, batched_load, import_archive, verify_store
from runnerkeep.cache.batched_load import PARTIAL_LABEL
from runnerkeep.cache.remote_layout import RemoteCacheMiss
from runnerkeep.cache.remote_push import push_entry
from runnerkeep.cache.remote_restore import restore_from_fleet
from runnerkeep.cleanup import run_cleanup
from runnerkeep.errors import DockerCommandError, RunnerkeepError
from runnerkeep.remote.registry import RegistryClient
from runnerkeep.remote.remote_config import remote_settings

pytestmark = pytest.mark.integration

LAYER = 600_000  # two layers a 1 MiB batch
EMPTY_TAR = bytes(1024)  # the empty layer the classic builder writes (two zero blocks)


def sha(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def layer(size: int = LAYER) -> bytes:
    """A layer tar holding one random file, about ``size`` bytes."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        data = os.urandom(max(size - 3 * 512, 1))
        info = tarfile.TarInfo(f"data-{uuid.uuid4().hex[:8]}.bin")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def config_for(layers: list[bytes]) -> bytes:
    return json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Labels": {"rk-attack": uuid.uuid4().hex}},
            "rootfs": {"type": "layers", "diff_ids": [sha(data) for data in layers]},
        }
    ).encode()


def docker_archive(images: list[tuple[list[str], list[bytes]]]) -> tuple[bytes, list[str]]:
    """A docker-archive (legacy layout, manifest.json last) and its image IDs."""
    buf = io.BytesIO()
    manifest, ids, written = [], [], set()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:

        def add(name: str, data: bytes) -> None:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))

        for tags, layers in images:
            config = config_for(layers)
            ids.append(sha(config))
            paths = []
            for data in layers:
                path = f"{sha(data)[7:]}/layer.tar"
                if path not in written:
                    add(path, data)
                    written.add(path)
                paths.append(path)
            add(f"{sha(config)[7:]}.json", config)
            manifest.append(
                {"Config": f"{sha(config)[7:]}.json", "RepoTags": tags, "Layers": paths}
            )
        add("manifest.json", json.dumps(manifest).encode())
    return buf.getvalue(), ids


def client_for(reg: LocalRegistry, repository: str) -> RegistryClient:
    return RegistryClient(remote_settings({"remote": reg.remote_config(repository)}))


def stand_ins(label: str | None = None) -> list[str]:
    """Stand-in images in the daemon: all, or those of one ``<store root>#<key>`` label."""
    wanted = PARTIAL_LABEL if label is None else f"{PARTIAL_LABEL}={label}"
    listed = docker("images", "-q", "--no-trunc", "--filter", f"label={wanted}")
    return sorted(set(listed.stdout.split()))


def our_stand_ins(tmp_path) -> list[str]:
    """Stand-ins whose label names a store under this test's tmp_path."""
    found = []
    for image in stand_ins():
        proc = docker("image", "inspect", "--format", "{{json .Config.Labels}}", image, check=False)
        if proc.returncode != 0:
            continue  # removed since it was listed (another restore's stand-in)
        labels = json.loads(proc.stdout or "{}") or {}
        if str(labels.get(PARTIAL_LABEL, "")).startswith(str(tmp_path)):
            found.append(image)
    return found


def wait_for(predicate, limit: float = 20.0, step: float = 0.1):
    give_up = time.monotonic() + limit
    while True:
        value = predicate()
        if value or time.monotonic() > give_up:
            return value
        time.sleep(step)


class Lab:
    """Keys published to a registry; every image and stand-in this test made removed after."""

    def __init__(self, tmp_path, reg: LocalRegistry) -> None:
        self.tmp_path = tmp_path
        self.reg = reg
        self.prefix = "rkbatch-attack-" + uuid.uuid4().hex[:8]
        self.repo = "attack/" + uuid.uuid4().hex[:8]
        self.source = Store(str(tmp_path / "source"), key_file=None)
        self.ids: list[str] = []
        self.tags: list[str] = []

    def tag(self, name: str) -> str:
        tag = f"{self.prefix}/{name}:1"
        self.tags.append(tag)
        return tag

    def publish(self, key: str, images: list[tuple[list[str], list[bytes]]]) -> list[str]:
        archive, ids = docker_archive(images)
        path = self.tmp_path / f"{key}.tar"
        path.write_bytes(archive)
        import_archive(self.source, key, str(path))
        path.unlink()
        self.ids += ids
        with self.client() as client:
            push_entry(self.source, key, client)
        return ids

    def client(self) -> RegistryClient:
        return client_for(self.reg, self.repo)

    def store(self, name: str = "store") -> Store:
        return Store(str(self.tmp_path / name), key_file=None)

    def restore(self, store: Store, key: str) -> dict:
        with self.client() as client:
            return restore_from_fleet(store, key, client)

    def teardown(self) -> None:
        docker("rmi", *self.tags, check=False)
        docker("rmi", *self.ids, check=False)
        leftover = our_stand_ins(self.tmp_path)
        if leftover:
            docker("rmi", *leftover, check=False)


@pytest.fixture(scope="module")
def registry():
    if docker("info", check=False).returncode != 0:
        pytest.fail("these tests need the Docker engine on this machine ('docker info' fails)")
    with LocalRegistry() as reg:
        yield reg


@pytest.fixture(autouse=True)
def one_mib_batches(monkeypatch):
    monkeypatch.setattr(batched_load, "BATCH_BYTES", 1 * MiB)


@pytest.fixture
def lab(tmp_path, registry):
    made = Lab(tmp_path, registry)
    try:
        yield made
    finally:
        made.teardown()


def assert_restored(result: dict, want_id: str, tag: str | None = None) -> None:
    assert result["images"][0]["id"] == want_id
    assert image_id(want_id) == want_id
    if tag is not None:
        assert image_id(tag) == want_id


# --- a restore killed --------------------------------------------------------------------------

# Run in a child: restore_from_fleet with 1 MiB batches, optionally stopping (marker file, then
# a long sleep for the parent's SIGKILL) at a point of the batched load; prints the result.
CHILD = r"""
import json, os, sys, time
from runnerkeep.cache import Store, batched_load
from runnerkeep.cache.remote_restore import restore_from_fleet
from runnerkeep.remote.registry import RegistryClient
from runnerkeep.remote.remote_config import remote_settings

args = json.loads(sys.argv[1])
batched_load.BATCH_BYTES = args["batch"]
stop, marker = args.get("stop"), args.get("marker")

def park():
    open(marker, "w").close()
    time.sleep(120)

def barrier():
    open(marker, "w").close()
    give_up = time.monotonic() + 20
    while not os.path.exists(args["peer"]) and time.monotonic() < give_up:
        time.sleep(0.02)

RealLoad = batched_load.ImageLoad
made = [0]

def image_load(*a, **kw):
    made[0] += 1
    if stop == "between" and made[0] == 2:
        park()
    if stop == "barrier" and made[0] == 1:
        barrier()
    return RealLoad(*a, **kw)

batched_load.ImageLoad = image_load
real_write, written = batched_load.write_all, [0]

def write_all(fd, view):
    real_write(fd, view)
    written[0] += len(view)
    if stop == "mid" and written[0] > args["batch"] * 1.5:
        park()

batched_load.write_all = write_all
real_finish = batched_load._finish

def finish(load, done_when, leaves_out):
    real_finish(load, done_when, leaves_out)
    if stop == "after-last" and not any("Loaded image ID" in d for d in done_when):
        park()

batched_load._finish = finish
store = Store(args["store"], key_file=None)
with RegistryClient(remote_settings({"remote": {"url": args["url"]}})) as client:
    result = restore_from_fleet(store, args["key"], client)
print(json.dumps({"overlapped": result["overlapped"], "batches": result.get("load_batches"),
                  "ids": [i["id"] for i in result["images"]]}))
"""


def child(lab: Lab, store: Store, key: str, stop: str | None = None, **more) -> subprocess.Popen:
    args = {
        "batch": 1 * MiB,
        "store": store.root,
        "key": key,
        "url": lab.reg.remote_url(lab.repo),
        "stop": stop,
        "marker": str(lab.tmp_path / f"marker-{uuid.uuid4().hex[:6]}"),
        **more,
    }
    env = dict(os.environ, PYTHONPATH=PYTHONPATH)
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, json.dumps(args)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    proc.marker = args["marker"]  # type: ignore[attr-defined]
    return proc


def finished(proc: subprocess.Popen) -> dict:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    return json.loads(out)


def prune_stand_ins(lab: Lab, label: str, min_age: str = "0s") -> list[str]:
    """runnerkeep's dangling-image cleaner, scoped to one stand-in label (the engine is
    shared: nothing else may be a candidate). Returns what it reported removed."""
    config = {
        "paths": {
            "state_dir": str(lab.tmp_path / "state"),
            "cache_dir": str(lab.tmp_path / "cache"),
            "log_dir": str(lab.tmp_path / "logs"),
        },
        "cleanup": {
            "docker_filters": [f"label={PARTIAL_LABEL}={label}"],
            "cleaners": {
                "docker-build-cache": {"enabled": False},
                "docker-dangling-images": {"min_age": min_age},
            },
        },
    }
    report = run_cleanup(
        "post", config, run_all=True, cleaner_names=["docker-dangling-images"], dry_run=False
    )
    return [item["path"] for item in report.cleaner("docker-dangling-images").items]


@pytest.mark.parametrize("stop", ["between", "mid", "after-last"])
def test_a_restore_killed_mid_way_then_restored_again_and_the_stand_ins_pruned(lab, stop):
    """SIGKILL between two batches (the first one's archive sent whole), in the middle of the
    second batch's layers, or after the last batch loaded (before the stand-ins' removal and
    the commit). The next restore of the key gives the right image; what stand-ins the dead
    restore left are untagged and runnerkeep's dangling-image cleaner removes them."""
    tag = lab.tag("killed")
    [want] = lab.publish("killed", [([tag], [layer() for _ in range(5)])])
    store = lab.store()
    label = f"{store.root}#killed"
    proc = child(lab, store, "killed", stop)
    try:
        assert wait_for(lambda: os.path.exists(proc.marker) or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    # The archive(s) sent whole are registered by the engine even with the client gone.
    expected = {"between": 1, "mid": 1, "after-last": 2}[stop]
    left = wait_for(lambda: len(stand_ins(label)) >= expected and stand_ins(label), 20)
    assert len(left) == expected
    for image in left:
        assert docker("image", "inspect", "--format", "{{.RepoTags}}", image).stdout.strip() == "[]"
    assert store.list_keys() == []
    again = lab.restore(store, "killed")
    assert_restored(again, want, tag)
    assert verify_store(store)["ok"] and store.list_keys() == ["killed"]
    removed = prune_stand_ins(lab, label)
    assert len(removed) == expected
    assert stand_ins(label) == []
    assert image_id(tag) == want  # the real image kept its layers


# --- rotten blobs, the registry dying ---------------------------------------------------------


@pytest.mark.parametrize("how", ["flipped", "truncated", "extended"])
@pytest.mark.parametrize("rotten", [0, 2, 4], ids=["first-batch", "middle-batch", "last-batch"])
def test_a_blob_rotten_in_the_registry_leaves_nothing_anywhere(lab, rotten, how):
    """Bytes changed in place, the blob cut short, or bytes added: the registry serves what
    its disk holds."""
    tag = lab.tag("rot")
    layers = [layer() for _ in range(5)]  # batches [0, 1], [2, 3], [4]
    [want] = lab.publish("rot", [([tag], layers)])
    digest = sha(layers[rotten])[7:]
    data = os.path.join(
        lab.reg.storage_dir, "docker/registry/v2/blobs/sha256", digest[:2], digest, "data"
    )
    with open(data, "r+b") as handle:
        if how == "flipped":
            handle.seek(LAYER // 2)
            handle.write(b"rot")
        elif how == "truncated":
            handle.truncate(LAYER // 2)
        else:
            handle.seek(0, os.SEEK_END)
            handle.write(bytes(4096))
    store = lab.store()
    with pytest.raises(RemoteCacheMiss) as caught:
        lab.restore(store, "rot")
    assert caught.value.corrupt and digest in str(caught.value)
    assert image_id(tag) is None and image_id(want) is None
    assert stand_ins(f"{store.root}#rot") == []
    assert store.list_keys() == [] and store.list_blobs() == {}


@pytest.mark.parametrize("when", ["open", "mid-layer", "restart-mid-layer"])
def test_the_registry_killed_mid_batch_fails_cleanly_and_a_retry_succeeds(tmp_path, when):
    """The registry SIGKILLed as the second batch's first layer is asked for, or in the middle
    of it, or restarted (SIGTERM, start again) in the middle of it: either the restore still
    succeeds or it ends with a runnerkeep error leaving nothing tagged, no stand-in and
    nothing committed; with the registry back, the same restore succeeds."""
    with LocalRegistry() as reg:
        lab = Lab(tmp_path, reg)
        try:
            tag = lab.tag("regdeath")
            layers = [layer() for _ in range(5)]
            [want] = lab.publish("regdeath", [([tag], layers)])
            store = lab.store()
            killed = []

            def kill_registry() -> None:
                if killed:
                    return
                killed.append(True)
                if when == "restart-mid-layer":
                    reg.restart()
                    return
                reg.process.kill()
                reg.process.wait(10)
                reg.process = None

            real_write, written = batched_load.write_all, [0]
            first_batch = len(layers[0]) + len(layers[1]) + 8 * 512
            limit = first_batch + (4096 if when == "open" else LAYER // 2)

            def write_all(fd, view):
                real_write(fd, view)
                written[0] += len(view)
                if written[0] > limit:
                    kill_registry()

            with pytest.MonkeyPatch.context() as mp:
                mp.setattr(batched_load, "write_all", write_all)
                try:
                    result = lab.restore(store, "regdeath")
                except RunnerkeepError:
                    result = None
            assert killed
            assert stand_ins(f"{store.root}#regdeath") == []
            if when != "restart-mid-layer":
                assert result is None
            if result is None:
                assert image_id(tag) is None and image_id(want) is None
                assert store.list_keys() == [] and store.list_blobs() == {}
                if reg.process is None:
                    reg.start()
                result = lab.restore(store, "regdeath")
                assert result["overlapped"] is True and result["load_batches"] == 3
            assert_restored(result, want, tag)
            assert stand_ins(f"{store.root}#regdeath") == []
            assert verify_store(store)["ok"]
        finally:
            lab.teardown()


# --- two restores at once ---------------------------------------------------------------------


@pytest.mark.parametrize("stores", ["one-store", "two-stores", "two-stores-both-batched"])
def test_two_restores_of_one_key_at_once(lab, stores):
    """Same store: the key lock makes them one after the other. Two stores (two runners on
    one engine): free, or forced to meet at their first load so both load in batches, each
    with stand-ins of its own, the same real image at the end."""
    tag = lab.tag("twice")
    [want] = lab.publish("twice", [([tag], [layer() for _ in range(5)])])
    first = lab.store("a")
    second = first if stores == "one-store" else lab.store("b")
    if stores == "two-stores-both-batched":
        marks = [str(lab.tmp_path / "mark-a"), str(lab.tmp_path / "mark-b")]
        procs = [
            child(lab, first, "twice", "barrier", marker=marks[0], peer=marks[1]),
            child(lab, second, "twice", "barrier", marker=marks[1], peer=marks[0]),
        ]
    else:
        procs = [child(lab, first, "twice"), child(lab, second, "twice")]
    results = [finished(proc) for proc in procs]
    if stores == "two-stores-both-batched":
        assert [(r["overlapped"], r["batches"]) for r in results] == [(True, 3), (True, 3)]
    assert [r["ids"] for r in results] == [[want], [want]]
    assert image_id(tag) == want
    assert our_stand_ins(lab.tmp_path) == []
    assert verify_store(first)["ok"] and verify_store(second)["ok"]


@pytest.mark.parametrize("stores", ["one-store", "two-stores"])
def test_two_keys_sharing_base_layers_restored_at_once_both_batched(lab, stores):
    """Both restores pass the 'daemon holds nothing' check, then meet (a barrier at their
    first load): each loads the shared base as its own stand-in, concurrently."""
    base = [layer(), layer()]
    tag_a, tag_b = lab.tag("left"), lab.tag("right")
    [want_a] = lab.publish("left", [([tag_a], base + [layer() for _ in range(3)])])
    [want_b] = lab.publish("right", [([tag_b], base + [layer() for _ in range(3)])])
    store_a = lab.store("a")
    store_b = store_a if stores == "one-store" else lab.store("b")
    marks = [str(lab.tmp_path / "mark-a"), str(lab.tmp_path / "mark-b")]
    procs = [
        child(lab, store_a, "left", "barrier", marker=marks[0], peer=marks[1]),
        child(lab, store_b, "right", "barrier", marker=marks[1], peer=marks[0]),
    ]
    results = [finished(proc) for proc in procs]
    assert [r["ids"] for r in results] == [[want_a], [want_b]]
    assert [r["overlapped"] for r in results] == [True, True]
    assert image_id(tag_a) == want_a and image_id(tag_b) == want_b
    assert our_stand_ins(lab.tmp_path) == []
    assert verify_store(store_a)["ok"] and verify_store(store_b)["ok"]
    for image in (want_a, want_b):  # each image whole: a container starts from it
        run = docker("run", "--rm", "--entrypoint", "/nonexistent", image, check=False)
        assert "no such file or directory" in run.stderr, run.stderr


def restore_pruning_the_first_stand_in(lab: Lab, store, key: str, min_age: str):
    """Restore ``key``, running the dangling-image cleaner (``min_age``, scoped to this
    restore's stand-ins) as soon as the engine has loaded the first stand-in. Returns the
    restore's result and [what the cleaner removed]."""
    label = f"{store.root}#{key}"
    pruned: list[list[str]] = []
    real_finish = batched_load._finish

    def finish(load, done_when, leaves_out):
        real_finish(load, done_when, leaves_out)
        if not pruned and any("Loaded image ID" in line for line in done_when):
            pruned.append(prune_stand_ins(lab, label, min_age=min_age))

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batched_load, "_finish", finish)
        result = lab.restore(store, key)
    return result, pruned


def test_the_hosts_cleanup_pruning_a_stand_in_between_batches_does_not_break_the_restore(lab):
    """docker-dangling-images (min_age 0s) runs while a restore is between batches and prunes
    the first batch's stand-in, whose layers the next batch leaves out."""
    tag = lab.tag("pruned")
    [want] = lab.publish("pruned", [([tag], [layer() for _ in range(5)])])
    store = lab.store()
    label = f"{store.root}#pruned"
    result, pruned = restore_pruning_the_first_stand_in(lab, store, "pruned", min_age="0s")
    assert len(pruned[0]) == 1  # the cleaner did prune the stand-in mid-restore
    assert result["overlapped"] is False  # the restore fell back to pull + restore
    assert_restored(result, want, tag)
    assert stand_ins(label) == []
    assert verify_store(store)["ok"]
    run = docker("run", "--rm", "--entrypoint", "/nonexistent", want, check=False)
    assert "no such file or directory" in run.stderr, run.stderr


def test_a_dangling_cleaner_with_a_min_age_leaves_an_in_flight_stand_in_alone(lab):
    tag = lab.tag("young")
    [want] = lab.publish("young", [([tag], [layer() for _ in range(5)])])
    store = lab.store()
    result, pruned = restore_pruning_the_first_stand_in(lab, store, "young", min_age="1h")
    assert_restored(result, want, tag)
    assert pruned == [[]]  # a stand-in a second old is younger than min_age
    assert result["overlapped"] is True and result["load_batches"] == 3


# --- tags, image count, layer shapes ------------------------------------------------------------


def test_a_tag_the_daemon_gives_another_image_is_not_re_pointed(lab):
    tag = lab.tag("taken")
    [other] = lab.publish("other", [([tag], [layer()])])
    lab.restore(lab.store("first"), "other")  # the daemon now tags ``tag`` -> other
    assert image_id(tag) == other
    [want] = lab.publish("taken", [([tag], [layer() for _ in range(5)])])
    store = lab.store()
    result = lab.restore(store, "taken")
    assert result["overlapped"] is True and result["load_batches"] == 3
    assert result["not_retagged"] == [tag]
    assert image_id(tag) == other  # not re-pointed
    assert image_id(want) == want
    assert stand_ins(f"{store.root}#taken") == []


def test_a_key_of_several_images_takes_the_single_archive_path(lab):
    tags = [lab.tag("multi-a"), lab.tag("multi-b")]
    ids = lab.publish(
        "multi",
        [([tags[0]], [layer() for _ in range(4)]), ([tags[1]], [layer() for _ in range(4)])],
    )
    store = lab.store()
    result = lab.restore(store, "multi")
    assert result["overlapped"] is True and result["load_batches"] == 1
    assert [image_id(t) for t in tags] == ids
    assert our_stand_ins(lab.tmp_path) == []


@pytest.mark.parametrize(
    "shape",
    ["empty-tar-repeated", "zero-byte-last-batch", "zero-byte-middle", "one-layer", "many-small"],
)
def test_odd_layer_shapes_restore_batched_with_the_right_id(lab, shape, monkeypatch):
    """An empty-tar layer repeated within one batch and across batches (the classic builder's
    metadata layers), a 0-byte layer (the stream of nothing), one layer, 40 small layers in
    100 kB batches."""
    big = layer(2 * MiB)
    layers = {
        "empty-tar-repeated": [layer(), EMPTY_TAR, EMPTY_TAR, layer()] + [EMPTY_TAR, layer()] * 2,
        "zero-byte-last-batch": [layer(), layer(), b""],
        "zero-byte-middle": [layer(), layer(), b"", layer()],
        "one-layer": [big],
        "many-small": [layer(30_000) for _ in range(40)],
    }[shape]
    if shape == "many-small":
        monkeypatch.setattr(batched_load, "BATCH_BYTES", 100_000)
    tag = lab.tag(shape)
    [want] = lab.publish(shape, [([tag], layers)])
    store = lab.store()
    result = lab.restore(store, shape)
    assert result["overlapped"] is True
    want_batches = {
        "empty-tar-repeated": 2,
        "zero-byte-last-batch": 2,
        "zero-byte-middle": 2,
        "one-layer": 1,
        "many-small": 10,
    }[shape]
    assert result["load_batches"] == want_batches
    assert_restored(result, want, tag)
    inspected = docker("image", "inspect", "--format", "{{json .RootFS.Layers}}", want)
    assert json.loads(inspected.stdout) == [sha(data) for data in layers]
    assert stand_ins(f"{store.root}#{shape}") == []
    assert verify_store(store)["ok"]


def test_a_layer_the_engine_cannot_unpack_in_a_later_batch_is_downloaded_once(lab, monkeypatch):
    """The registry serves the layer it was given (digest right), but it is no tar: the
    engine refuses batch 2. That is the engine's error, not a refusal of left-out layers."""
    tag = lab.tag("notar")
    layers = [layer(), layer(), os.urandom(LAYER), layer(), layer()]
    lab.publish("notar", [([tag], layers)])
    opened: list[str] = []
    real_open = RegistryClient.open_blob

    def open_blob(self, digest):
        opened.append(digest)
        return real_open(self, digest)

    monkeypatch.setattr(RegistryClient, "open_blob", open_blob)
    store = lab.store()
    with pytest.raises(DockerCommandError):
        lab.restore(store, "notar")
    assert image_id(tag) is None
    assert stand_ins(f"{store.root}#notar") == []
    wanted = {sha(data) for data in layers}
    assert sorted(d for d in opened if d in wanted) == sorted(wanted)  # each fetched once


def test_a_restore_killed_mid_batch_and_run_again_at_once(lab):
    """The next restore starts while the engine may still be registering the dead restore's
    first batch (a stand-in of the same ID the new restore makes): the right image, and the
    host's cleanup leaves no stand-in behind."""
    tag = lab.tag("again")
    [want] = lab.publish("again", [([tag], [layer() for _ in range(5)])])
    store = lab.store()
    label = f"{store.root}#again"
    proc = child(lab, store, "again", "mid")
    try:
        assert wait_for(lambda: os.path.exists(proc.marker) or proc.poll() is not None, 60)
        assert proc.poll() is None, proc.communicate()[1]
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate(timeout=30)
    again = lab.restore(store, "again")
    assert_restored(again, want, tag)
    assert verify_store(store)["ok"] and store.list_keys() == ["again"]
    time.sleep(1)  # whatever the engine still registered for the dead restore is in by now
    prune_stand_ins(lab, label)
    assert stand_ins(label) == []
    assert image_id(tag) == want
