"""restore_from_fleet: with nothing of the key on the host, each layer from the registry goes
into the engine's load in the same read that verifies and keeps it; otherwise pull then
restore. The registry is remote_fakes' in-memory one, the engine fake_engine's stand-in (the
real engine's side is tests/integration/test_fleet_tier_formats.py)."""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest
from cachetest_helpers import config_for, random_layer, sha
from fake_engine import FakeEngine
from remote_fakes import FakeRegistry, docker_image, registry_with_key
from runnerkeep.cache import Store, verify_store
from runnerkeep.cache.archive_writer import entry_archive_length
from runnerkeep.cache.checks import load_checked_entry
from runnerkeep.cache.remote_layout import RemoteCacheMiss
from runnerkeep.cache.remote_restore import restore_from_fleet

BASE = random_layer(2 << 20, "base")
APP = random_layer(40_000, "app")
APP_ID = sha(config_for([BASE, APP], "0"))


@pytest.fixture
def engine(monkeypatch):
    path = tempfile.mkdtemp(prefix="rk-fake-", dir="/tmp")  # unix socket names are short
    monkeypatch.delenv("DOCKER_CONTEXT", raising=False)
    monkeypatch.setenv("DOCKER_CONFIG", path)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}/engine.sock")
    fake = FakeEngine(os.path.join(path, "engine.sock"))
    yield fake
    fake.close()
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def registry(tmp_path):
    fake = registry_with_key(tmp_path, [(["app:1"], [BASE, APP])])
    return fake


@pytest.fixture
def target(tmp_path):
    return Store(str(tmp_path / "dst"), key_file=None)


def test_an_empty_host_gets_the_layers_as_they_arrive(registry, engine, target):
    result = restore_from_fleet(target, "k", registry)
    assert result["overlapped"] is True and result["loaded"] is True
    [load] = engine.wait_for_loads(1)
    assert load.get("loaded") and load["received"] == load["announced"]
    assert engine.images[APP_ID]["RepoTags"] == ["app:1"]
    entry, _ = load_checked_entry(target, "k")
    assert load["announced"] == entry_archive_length(entry) == result["bytes_loaded"]
    assert entry["provenance"]["pulled_from"] == registry.settings.url
    assert verify_store(target)["ok"]
    assert result["pulled"]["blobs_fetched"] == 3


def test_a_bad_layer_loads_nothing_and_commits_nothing(registry, engine, target):
    data = bytearray(registry.blobs[sha(APP)])
    data[-1] ^= 1
    registry.blobs[sha(APP)] = bytes(data)
    with pytest.raises(RemoteCacheMiss) as caught:
        restore_from_fleet(target, "k", registry)
    assert caught.value.corrupt and sha(APP) in str(caught.value)
    [load] = engine.wait_for_loads(1)
    assert "manifest.json" not in load["members"] and not load.get("loaded")
    assert engine.images == {}
    assert target.list_keys() == [] and target.list_blobs() == {}


def test_a_daemon_holding_the_base_gets_an_incremental_restore(registry, engine, target):
    engine.add_image(config_for([BASE], "base"), ["base:1"])
    result = restore_from_fleet(target, "k", registry)
    assert result["overlapped"] is False
    assert result["layers_left_out"] == 1 and result["pulled"]["blobs_fetched"] == 3
    assert engine.images[APP_ID]["RepoTags"] == ["app:1"]


def test_gzip_layers_take_the_pull_then_restore_path(engine, target):
    registry = FakeRegistry()
    digest, _doc, config = docker_image(registry, [BASE, APP])
    registry.tags["k"] = digest
    result = restore_from_fleet(target, "k", registry)
    assert result["overlapped"] is False and result["loaded"] is True
    assert sha(config) in engine.images


def test_the_one_pass_load_never_re_points_a_name_another_image_holds(registry, engine, target):
    other = random_layer(30_000, "other")
    other_id = sha(config_for([other], "other"))
    engine.add_image(config_for([other], "other"), ["app:1"])  # the name already holds an image
    result = restore_from_fleet(target, "k", registry)
    assert result["overlapped"] is True and result["loaded"] is True
    assert result["not_retagged"] == ["app:1"]
    assert engine.images[other_id]["RepoTags"] == ["app:1"]  # still the image it named
    assert APP_ID in engine.images and "app:1" not in engine.images[APP_ID]["RepoTags"]
    entry, _ = load_checked_entry(target, "k")
    assert entry["images"][0]["tags"] == ["app:1"]  # the stored entry keeps every tag
