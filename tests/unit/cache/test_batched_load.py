"""The one-pass restore of one image in batches of layers (cache/batched_load.py): each batch
its own load, every batch but the last as an untagged stand-in image holding the layers up to
it, removed once the real image holds them; a bad layer leaves nothing in the daemon; an
engine that wants every layer in every archive gets the pull-then-restore path. The registry
is remote_fakes' in-memory one, the engine fake_engine's stand-in (the real engine:
tests/integration/test_fleet_tier_formats.py)."""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import pytest
from cachetest_helpers import config_for, random_layer, sha
from fake_engine import FakeEngine, chains_of
from remote_fakes import registry_with_key
from runnerkeep.cache import Store, batched_load, verify_store
from runnerkeep.cache.batched_load import PARTIAL_LABEL, layer_batches
from runnerkeep.cache.remote_layout import RemoteCacheMiss
from runnerkeep.cache.remote_restore import restore_from_fleet
from runnerkeep.cache.tar_reader import blob_member_name

LAYERS = [random_layer(300_000, f"layer{i}") for i in range(5)]
APP_ID = sha(config_for(LAYERS, "0"))
BATCH = 600_000  # two 300 kB layers per batch: batches [0, 1], [2, 3], [4]


def member(layer: bytes) -> str:
    return blob_member_name(sha(layer))


@pytest.fixture(autouse=True)
def small_batches(monkeypatch):
    monkeypatch.setattr(batched_load, "BATCH_BYTES", BATCH)


def make_engine(monkeypatch, **options) -> FakeEngine:
    path = tempfile.mkdtemp(prefix="rk-fake-", dir="/tmp")  # unix socket names are short
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}/engine.sock")
    return FakeEngine(os.path.join(path, "engine.sock"), **options)


@pytest.fixture
def engine(monkeypatch):
    fake = make_engine(monkeypatch)
    yield fake
    fake.close()
    shutil.rmtree(os.path.dirname(fake.path), ignore_errors=True)


@pytest.fixture
def registry(tmp_path):
    fake = registry_with_key(tmp_path, [(["app:1"], LAYERS)])
    return fake


@pytest.fixture
def target(tmp_path):
    return Store(str(tmp_path / "dst"), key_file=None)


def test_layers_are_grouped_in_order_until_each_batch_is_big_enough():
    sizes = [{"size": s} for s in (10, 70, 5, 100, 1, 1)]
    assert layer_batches(sizes, 50) == [[0, 1], [2, 3], [4, 5]]
    assert layer_batches(sizes, 1000) == [[0, 1, 2, 3, 4, 5]]
    assert layer_batches([{"size": 200}], 50) == [[0]]


def test_an_image_in_three_batches_loads_each_batch_on_its_own(registry, engine, target):
    result = restore_from_fleet(target, "k", registry)
    assert result["overlapped"] is True and result["loaded"] is True
    assert result["load_batches"] == 3
    loads = engine.wait_for_loads(3)
    assert [load.get("loaded") for load in loads] == [True, True, True]
    # Each archive carries only its own layers, and manifest.json last.
    expected = [LAYERS[0:2], LAYERS[2:4], LAYERS[4:5]]
    for load, layers in zip(loads, expected):
        layer_members = [m for m in load["members"] if m.startswith("blobs/")]
        assert {member(layer) for layer in layers} <= set(layer_members)
        assert not {member(layer) for layer in LAYERS if layer not in layers} & set(layer_members)
        assert load["members"][-1] == "manifest.json"
        assert load["received"] == load["announced"]
    assert result["bytes_loaded"] == sum(load["announced"] for load in loads)
    # The stand-ins are gone, the real image holds every layer and its tag.
    assert list(engine.images) == [APP_ID]
    assert engine.images[APP_ID]["RepoTags"] == ["app:1"]
    assert len(engine.deleted) == 2
    assert set(chains_of([sha(layer) for layer in LAYERS])) <= engine.chains
    assert verify_store(target)["ok"]
    assert result["pulled"]["blobs_fetched"] == len(LAYERS) + 1


def test_the_stand_ins_are_untagged_and_labelled_with_the_store_and_key(registry, engine, target):
    seen = []
    remove = engine.remove

    def record(image_id):
        seen.append(dict(engine.images[image_id]))
        return remove(image_id)

    engine.remove = record
    restore_from_fleet(target, "k", registry)
    assert [image["RepoTags"] for image in seen] == [[], []]
    assert [len(image["RootFS"]["Layers"]) for image in seen] == [2, 4]
    load = engine.wait_for_loads(3)[0]
    assert load["members"][-2].startswith("blobs/sha256/")  # the stand-in's config
    assert APP_ID not in {image["Id"] for image in seen}


def test_a_bad_layer_in_a_later_batch_leaves_nothing_in_the_daemon(registry, engine, target):
    data = bytearray(registry.blobs[sha(LAYERS[3])])
    data[100] ^= 1
    registry.blobs[sha(LAYERS[3])] = bytes(data)
    with pytest.raises(RemoteCacheMiss) as caught:
        restore_from_fleet(target, "k", registry)
    assert caught.value.corrupt and sha(LAYERS[3]) in str(caught.value)
    # The two loads are recorded as their handlers end: the cut one may come first.
    loads = engine.wait_for_loads(2)
    loaded = [load for load in loads if load.get("loaded")]
    cut = [load for load in loads if not load.get("loaded")]
    assert len(loaded) == 1  # the first batch was verified and loaded as a stand-in ...
    assert len(cut) == 1 and "manifest.json" not in cut[0]["members"]
    assert cut[0]["received"] < cut[0]["announced"]
    assert engine.images == {}  # ... and removed again: nothing tagged, nothing left
    assert len(engine.deleted) == 1
    assert target.list_keys() == [] and target.list_blobs() == {}


def test_an_engine_that_wants_every_layer_gets_pull_then_restore(monkeypatch, registry, target):
    engine = make_engine(monkeypatch, refuse_partial=True)
    try:
        result = restore_from_fleet(target, "k", registry)
        assert result["overlapped"] is False and result["loaded"] is True
        assert list(engine.images) == [APP_ID]  # the stand-in of the first batch was removed
        assert engine.images[APP_ID]["RepoTags"] == ["app:1"]
        assert verify_store(target)["ok"]
    finally:
        engine.close()
        shutil.rmtree(os.path.dirname(engine.path), ignore_errors=True)


def test_a_stand_in_config_keeps_the_platform_and_carries_the_label():
    config = json.loads(
        batched_load.stand_in_config({"architecture": "arm64", "os": "linux"}, ["sha256:a"], "x")
    )
    assert config["architecture"] == "arm64" and config["os"] == "linux"
    assert config["rootfs"] == {"type": "layers", "diff_ids": ["sha256:a"]}
    assert config["config"]["Labels"] == {PARTIAL_LABEL: "x"}
